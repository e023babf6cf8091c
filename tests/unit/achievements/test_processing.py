"""The loyalty rules over seed fixture events: what reaches the loyalty and snapshot topics."""

from __future__ import annotations

from typing import Any

from synergy_achievements.processing import LoyaltyProcessor, Outcome, event_time, referrer_of
from synergy_achievements.rules import DEFAULT_ACHIEVEMENT_ROWS, RuleCatalog, default_rules
from synergy_achievements.snapshot import EngagementThresholds
from synergy_achievements.state import UserState
from synergy_schemas.envelope import Envelope
from synergy_schemas.events import AchievementUnlockedData, RankChangedData
from synergy_schemas.snapshots import UserSnapshot

RULES = default_rules()
WISHLIST = "000_4_wishlist_item_added.json"
EventFactory = Any


def run(events: list[dict[str, Any]], state: UserState | None = None,
        processor: LoyaltyProcessor | None = None) -> tuple[UserState | None, list[Outcome]]:
    processor = processor or LoyaltyProcessor()
    outcomes = []
    for event in events:
        outcome = processor.apply(state, event, RULES)
        state = outcome.state
        outcomes.append(outcome)
    return state, outcomes


def unlocked_ids(outcomes: list[Outcome]) -> list[str]:
    unlocks = emitted(outcomes, "achievement_unlocked")
    return [v["data"]["achievement_data"]["achievement_id"] for v in unlocks]


def at_day(prefix: str, day: int) -> tuple[str, str]:
    return f"01HZX00000000000000000{prefix}{day:03d}", f"2024-06-{day:02d}T09:00:00Z"


def emitted(outcomes: list[Outcome], name: str) -> list[dict[str, Any]]:
    return [emit.value for outcome in outcomes for emit in outcome.emits if emit.name == name]


def test_first_scan_unlocks_first_scan_in_seed_000_shape(scan: EventFactory) -> None:
    state, outcomes = run([scan("01HZX0000000000000000000A1")])
    assert state is not None
    assert (state.points_balance, state.lifetime_points) == (500, 500)  # 400 scan + 100 reward
    [unlock] = emitted(outcomes, "achievement_unlocked")
    Envelope.model_validate(unlock)
    AchievementUnlockedData.model_validate(unlock["data"])
    assert unlock["data"]["achievement_data"] == {
        "achievement_id": "first_scan", "achievement_name": "First Scan",
        "achievement_description": "Complete your first product scan", "points_reward": 100,
        "badge_id": "first-scan-badge", "achievement_rarity": "common", "achievement_category": "milestone",
    }
    assert set(unlock["data"]) == {"achievement_data", "user_snapshot", "event_context"}
    assert unlock["data"]["event_context"] == scan("x")["data"]["event_context"]
    assert unlock["identifiers"] == {"id": "user-123"} and unlock["timestamp"] == "2024-05-22T18:35:12Z"
    user = unlock["data"]["user_snapshot"]
    UserSnapshot.model_validate(user)
    assert set(user) == {"identity", "economy", "status", "engagement", "profile_data",
                         "compliance_and_contact", "referral_data"}
    assert user["economy"]["points_balance"] == 500
    assert user["engagement"]["total_scans"] == 1
    assert user["engagement"]["total_achievements_unlocked"] == 1
    [snapshot] = emitted(outcomes, "user_snapshot")
    Envelope.model_validate(snapshot)
    UserSnapshot.model_validate(snapshot["data"]["user_snapshot"])
    assert snapshot["data"]["loyalty"]["achievements"] == {"first_scan": "2024-05-22T18:35:12Z"}
    assert snapshot["data"]["loyalty"]["progress"]["scans_10"]["current"] == 1


def test_scan_points_are_multiplied_by_the_rank_multiplier(scan: EventFactory) -> None:
    state = UserState(brand_id="7", user_id="user-123", lifetime_points=6000, points_balance=100,
                      rank_key="gold",
                      achievements={row["achievement_key"]: 0 for row in DEFAULT_ACHIEVEMENT_ROWS})
    state, _ = run([scan("01HZX0000000000000000000B1", points_award=400)], state)
    assert state is not None and state.points_balance == 100 + 800


def test_crossing_a_rank_threshold_emits_rank_changed(scan: EventFactory) -> None:
    _, outcomes = run([scan("01HZX0000000000000000000C1", points_award=950)])
    [change] = emitted(outcomes, "rank_changed")
    RankChangedData.model_validate(change["data"])
    assert (change["data"]["old_rank_key"], change["data"]["new_rank_key"]) == ("bronze", "silver")
    assert change["data"]["user_snapshot"]["status"]["rank_key"] == "silver"


def test_the_same_event_id_twice_changes_nothing(scan: EventFactory) -> None:
    event = scan("01HZX0000000000000000000D1")
    state, outcomes = run([event, event])
    assert state is not None and state.points_balance == 500 and state.count("product_scanned") == 1
    assert outcomes[1].duplicate and outcomes[1].emits == []


def test_processing_the_same_input_twice_gives_the_same_state_and_output(
    scan: EventFactory, seed_event: Any
) -> None:
    events = [
        scan(f"01HZX00000000000000000E{i:03d}", timestamp=f"2024-05-{10 + i:02d}T12:00:00Z")
        for i in range(8)
    ] + [
        seed_event("000_6_reward_redeemed.json", "01HZX0000000000000000000E9", "2024-05-20T12:00:00Z"),
        seed_event("001_5_reward_redeemed.json", "01HZX0000000000000000000EA", "2024-05-21T12:00:00Z"),
        seed_event("000_4_wishlist_item_added.json", "01HZX0000000000000000000EB"),
    ]
    first_state, first = run(events)
    second_state, second = run(events)
    assert first_state is not None and second_state is not None
    assert first_state.to_bytes() == second_state.to_bytes()
    assert [emit for o in first for emit in o.emits] == [emit for o in second for emit in o.emits]
    # and replaying the whole input onto the resulting state adds nothing
    replayed_state, replayed = run(events, first_state)
    assert replayed_state is not None and replayed_state.to_bytes() == first_state.to_bytes()
    assert all(o.emits == [] for o in replayed)


def test_redemption_subtracts_points_spent_in_both_seed_forms(scan: EventFactory, seed_event: Any) -> None:
    start = UserState(brand_id="7", user_id="user-123", points_balance=12_000, lifetime_points=12_000,
                      rank_key="gold")
    state, outcomes = run([
        seed_event("000_6_reward_redeemed.json", "01HZX0000000000000000000F1"),  # transaction_data
        seed_event("001_5_reward_redeemed.json", "01HZX0000000000000000000F2"),  # data.points_spent
    ], start)
    assert state is not None
    assert state.points_balance == 12_000 - 5_000 - 5_000 + 100  # first_redemption pays 100
    assert state.points_spent == 10_000 and state.count("reward_redeemed") == 2
    assert unlocked_ids(outcomes) == ["first_redemption"]


def test_redemption_beyond_the_balance_is_flagged_not_applied(seed_event: Any) -> None:
    start = UserState(brand_id="7", user_id="user-123", points_balance=4_000, lifetime_points=4_000)
    state, outcomes = run([seed_event("000_6_reward_redeemed.json", "01HZX0000000000000000000G1")], start)
    assert state is not None
    assert (state.points_balance, state.points_spent, state.count("reward_redeemed")) == (4_000, 0, 0)
    [rejection] = emitted(outcomes, "redemption_rejected")
    Envelope.model_validate(rejection)
    assert rejection["data"]["reason"] == "insufficient_points"
    assert rejection["data"]["points_requested"] == 5_000
    assert outcomes[0].rejected_redemption


def test_referral_award_is_routed_to_the_referrer_and_paid_there(seed_event: Any) -> None:
    converted = seed_event("000_3_referral_converted.json", "01HZX0000000000000000000H1")
    referred_state, outcomes = run([converted])
    [award] = [emit for emit in outcomes[0].emits if emit.channel == "referral_award"]
    assert award.key == "7:user-123"  # the referrer's partition key, not the event's
    assert award.value["data"]["points"] == 500
    assert referred_state is not None and referred_state.points_balance == 0
    referrer_state, referrer_outcomes = run([award.value, award.value])
    assert referrer_state is not None
    assert referrer_state.referrals_completed == 1
    assert referrer_state.points_balance == 500 + 200  # award + first_referral reward
    assert unlocked_ids(referrer_outcomes) == ["first_referral"]


def test_referrer_id_keeps_the_user_id_prefix() -> None:
    assert referrer_of("user-456", {"referrer_user_id": 123, "referred_user_id": 456}) == "user-123"
    assert referrer_of("456", {"referrer_user_id": 123, "referred_user_id": 456}) == "123"
    assert referrer_of("u9", {"referrer_user_id": "alice"}) == "alice"
    assert referrer_of("u9", {}) is None


def test_streak_is_judged_in_event_time_whatever_the_arrival_order(scan: EventFactory) -> None:
    days = [3, 1, 7, 2, 5, 4, 6]  # seven consecutive days, arriving shuffled
    events = [scan(*at_day("J", d)) for d in days]
    state, outcomes = run(events)
    assert state is not None and state.longest_streak == 7
    unlocked = unlocked_ids(outcomes)
    assert unlocked.count("scan_streak_7") == 1
    assert state.achievements["scan_streak_7"] == event_time("2024-06-06T09:00:00Z")  # the last gap filled


def test_five_scans_in_seven_days_uses_event_time(scan: EventFactory) -> None:
    spread = [scan(*at_day("K", d))
              for d in (1, 3, 9, 11, 20)]
    state, _ = run(spread)
    assert state is not None and "scan_sprint" not in state.achievements
    # late arrivals dated inside an earlier week complete it: the 3rd, 5th, 6th, 7th and 9th
    late = [scan(*at_day("L", d)) for d in (5, 6, 7)]
    state, _ = run(late, state)
    assert state is not None and "scan_sprint" in state.achievements
    assert state.achievements["scan_sprint"] == event_time("2024-06-07T09:00:00Z")


def test_meta_achievement_counts_unlocked_achievements(scan: EventFactory, seed_event: Any) -> None:
    events = [scan(*at_day("M", d))
              for d in range(1, 11)]  # first_scan, scan_sprint, scan_streak_7, scans_10
    events += [seed_event(WISHLIST, f"01HZX00000000000000000N{i:03d}") for i in range(5)]
    state, outcomes = run(events)
    assert state is not None
    assert {"first_scan", "scan_sprint", "scan_streak_7", "scans_10", "wishlist_5", "achievement_hunter"} \
        <= set(state.achievements)
    ids = [v["event_id"] for v in emitted(outcomes, "achievement_unlocked")]
    assert len(ids) == len(set(ids)) == len(state.achievements)


def test_an_achievement_never_unlocks_twice_even_after_its_event_id_is_forgotten(scan: EventFactory) -> None:
    state, _ = run([scan("01HZX0000000000000000000P1")])
    assert state is not None
    state.applied.clear()
    state, outcomes = run([scan("01HZX0000000000000000000P1")], state)
    assert emitted(outcomes, "achievement_unlocked") == []


def test_wishlist_size_follows_adds_and_removes(seed_event: Any) -> None:
    add = [seed_event(WISHLIST, f"01HZX00000000000000000Q{i:03d}") for i in range(3)]
    remove = [seed_event(WISHLIST, f"01HZX00000000000000000R{i:03d}") for i in range(5)]
    for event in remove:
        event["name"] = "wishlist_removed"  # the alias
    state, _ = run(add + remove)
    assert state is not None and state.wishlist_size == 0


def test_daily_recompute_emits_only_when_time_changed_a_derived_field(scan: EventFactory) -> None:
    processor = LoyaltyProcessor(EngagementThresholds(dormant_after_days=30))
    state, _ = run([scan("01HZX0000000000000000000S1")], processor=processor)
    assert state is not None and state.derived is not None and state.derived["is_dormant"] is False
    same_day = processor.recompute(state, RULES, event_time("2024-05-22T23:00:00Z"))
    assert same_day.emits == []
    later = processor.recompute(state, RULES, event_time("2024-07-01T00:00:00Z"))
    [snapshot] = later.emits
    engagement = snapshot.value["data"]["user_snapshot"]["engagement"]
    assert engagement["is_dormant"] is True and engagement["days_since_last_scan"] == 39
    again = processor.recompute(later.state, RULES, event_time("2024-07-01T06:00:00Z"))
    assert again.emits == []
    assert processor.recompute(later.state, RULES, event_time("2024-07-01T00:00:00Z")).emits == []


def test_power_user_needs_the_configured_scans_in_the_window(scan: EventFactory) -> None:
    processor = LoyaltyProcessor(EngagementThresholds(power_user_min_scans=3, power_user_window_days=7))
    events = [scan(*at_day("T", d)) for d in (1, 2, 3)]
    _, outcomes = run(events, processor=processor)
    snapshots = emitted(outcomes, "user_snapshot")
    flags = [v["data"]["user_snapshot"]["engagement"]["is_power_user"] for v in snapshots]
    assert flags == [False, False, True]


def test_brand_rules_from_config_rows_drive_unlocks(scan: EventFactory) -> None:
    row = {**DEFAULT_ACHIEVEMENT_ROWS[0], "brand_id": 7, "achievement_key": "first_scan",
           "rewards": {"points": 1, "badge": "b"}}
    rules = RuleCatalog([row]).for_brand("7")
    outcome = LoyaltyProcessor().apply(None, scan("01HZX0000000000000000000U1"), rules)
    assert outcome.state.points_balance == 401 and outcome.unlocked == ["first_scan"]


def test_a_batch_of_one_users_events_gives_the_same_state_and_loyalty_outputs_as_one_by_one(
    scan: EventFactory,
) -> None:
    events = [scan(f"01J{n:023d}", f"2024-06-0{1 + n % 7}T10:00:00Z", points_award=300) for n in range(12)]
    events.insert(5, events[2])  # a redelivery inside the batch
    one_by_one, outcomes = run(events)
    batch = LoyaltyProcessor().apply_many(None, events, RULES)

    assert batch.state == one_by_one
    sequential_loyalty = [emit for outcome in outcomes for emit in outcome.loyalty_emits]
    assert batch.loyalty_emits == sequential_loyalty
    assert batch.duplicates == ["product_scanned"] and len(batch.applied) == 12
    [snapshot] = [emit for emit in batch.emits if emit.channel == "snapshot"]
    assert snapshot == outcomes[-1].emits[-1]  # the snapshot one-by-one processing ends with
    # By hand: 300 a scan at bronze, 375 at silver (1,000+), 600 at gold (5,000+); first_scan 100 at the
    # 1st scan, scan_sprint 300 at the 5th, scan_streak_7 500 at the 7th (June 1-7), scans_10 250 at the 10th.
    # 300+100, 700, 1000 (silver), 1375, 1750+300, 2425, 2800+500, 3675, 4050, 4425+250, 5050 (gold), 5650.
    state = batch.state
    assert (state.version, state.points_balance, state.lifetime_points, state.rank_key) == (12, 5650, 5650, "gold")
    assert unlocked_ids([batch]) == ["first_scan", "scan_sprint", "scan_streak_7", "scans_10"]
    assert [v["data"]["new_rank_key"] for v in emitted([batch], "rank_changed")] == ["silver", "gold"]


def test_a_batch_replayed_onto_its_own_result_changes_nothing(scan: EventFactory) -> None:
    events = [scan(f"01K{n:023d}", f"2024-06-0{1 + n}T10:00:00Z") for n in range(5)]
    processor = LoyaltyProcessor()
    first = processor.apply_many(None, events, RULES)
    again = processor.apply_many(first.state, events, RULES)
    assert again.duplicate and again.emits == [] and again.state == first.state
    # 400+100, 900, 1300 (silver), 1800, 2300 + scan_sprint's 300
    assert (first.state.version, first.state.lifetime_points) == (5, 2600)


def test_applying_to_a_stored_state_equals_applying_to_the_state_and_leaves_the_bytes_alone(
    scan: EventFactory,
) -> None:
    processor = LoyaltyProcessor()
    earlier = processor.apply_many(None, [scan(f"01M{n:023d}", f"2024-06-0{1 + n}T10:00:00Z")
                                          for n in range(4)], RULES)
    stored = earlier.state.to_bytes()
    later = [scan(f"01N{n:023d}", f"2024-06-0{5 + n}T10:00:00Z") for n in range(4)]

    from_stored = processor.apply_stored(stored, later, RULES)
    from_state = processor.apply_many(UserState.from_bytes(stored), later, RULES)

    assert from_stored.state == from_state.state and from_stored.emits == from_state.emits
    assert from_stored.state.current_streak() == 8 and from_stored.state.longest_streak == 8
    # 400+100, 900, 1300 (silver: 500 a scan), 1800 | 2300+300 (sprint), 3100, 3600+500 (7-day streak), 4600
    assert (from_stored.state.version, from_stored.state.lifetime_points) == (8, 4600)
    assert set(from_stored.state.achievements) == {"first_scan", "scan_sprint", "scan_streak_7"}
    assert UserState.from_bytes(stored) == earlier.state


def test_an_event_name_outside_the_catalog_counts_under_other(scan: EventFactory) -> None:
    free = [{**scan(f"01P{n:023d}"), "name": f"clicked banner {n}"} for n in range(3)]
    outcome = LoyaltyProcessor().apply_many(None, [*free, scan("01P" + "9" * 23)], RULES)
    assert outcome.state.counts == {"other": 3, "product_scanned": 1}
    assert outcome.applied == ["other", "other", "other", "product_scanned"]


def test_the_dedupe_window_recognises_the_last_n_event_ids_of_a_user(scan: EventFactory) -> None:
    processor = LoyaltyProcessor(applied_ids_kept=3)
    events = [scan(f"01Q{n:023d}", f"2024-06-0{1 + n}T10:00:00Z", points_award=10) for n in range(4)]
    state = processor.apply_many(None, events, RULES).state
    assert state.applied_count == 3
    assert [state.has_applied(event["event_id"]) for event in events] == [False, True, True, True]
    inside = processor.apply_many(state, [events[1]], RULES)
    assert inside.duplicates == ["product_scanned"] and inside.applied == []
    outside = processor.apply_many(state, [events[0]], RULES)  # fell out of the window: applied again
    assert outside.applied == ["product_scanned"] and outside.state.version == 5


def test_a_rule_added_after_a_state_was_judged_is_judged_on_the_next_event_of_any_kind(
    scan: EventFactory, seed_event: Any,
) -> None:
    processor = LoyaltyProcessor()
    state = processor.apply(None, scan("01R" + "0" * 23), RULES).state
    second_scan = {**DEFAULT_ACHIEVEMENT_ROWS[0], "brand_id": 7, "achievement_key": "brand_scan",
                   "rewards": {"points": 7}}
    reloaded = RuleCatalog([*DEFAULT_ACHIEVEMENT_ROWS, second_scan]).for_brand("7")
    # a session moves no scan count, but the state was judged against another rule set
    session = seed_event("000_7_user_session_started.json", "01R" + "0" * 22 + "1")
    outcome = processor.apply(state, session, reloaded)
    assert outcome.unlocked == ["brand_scan"]
    assert outcome.state.points_balance == 400 + 100 + 7
    # judged against the reloaded set now: another session unlocks nothing
    assert processor.apply(outcome.state, {**session, "event_id": "01R" + "0" * 22 + "2"},
                           reloaded).unlocked == []


def test_unlocks_left_when_the_unlock_rounds_ran_out_come_with_the_next_event(seed_event: Any) -> None:
    chain = [{**DEFAULT_ACHIEVEMENT_ROWS[0], "achievement_key": f"a{n}",
              "criteria": {"metric": "achievements_unlocked", "operator": ">=", "value": n}} for n in range(12)]
    rules = RuleCatalog(chain).for_brand("7")
    processor = LoyaltyProcessor()
    session = seed_event("000_7_user_session_started.json", "01S" + "0" * 23)
    first = processor.apply(None, session, rules)
    assert first.unlocked == ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"]  # 10 rounds
    ended = seed_event("000_8_user_session_ended.json", "01S" + "0" * 22 + "1")
    assert processor.apply(first.state, ended, rules).unlocked == ["a10", "a11"]


def test_judging_only_moved_rules_unlocks_as_judging_every_rule_on_every_event(
    scan: EventFactory, seed_event: Any,
) -> None:
    names = ["000_6_reward_redeemed.json", WISHLIST, "000_7_user_session_started.json",
             "000_3_referral_converted.json", "001_3_wishlist_added.json", "000_8_user_session_ended.json"]
    events = []
    for n in range(30):
        if n % 3:
            events.append(scan(f"01T{n:023d}", f"2024-06-{1 + n % 9:02d}T10:00:00Z", points_award=350))
        else:
            events.append(seed_event(names[n // 3 % len(names)], f"01T{n:023d}",
                                     f"2024-06-{1 + n % 9:02d}T11:00:00Z"))
    events[12]["name"] = "wishlist_removed"
    chain = {**DEFAULT_ACHIEVEMENT_ROWS[0], "achievement_key": "big_spender",
             "criteria": {"metric": "lifetime_points", "operator": ">", "value": 3000}}
    rules = RuleCatalog([*DEFAULT_ACHIEVEMENT_ROWS, chain]).for_brand("7")
    processor = LoyaltyProcessor()
    judged, every_rule = None, None
    judged_emits, every_rule_emits = [], []
    for event in events:
        judged_outcome = processor.apply(judged, event, rules)
        if every_rule is not None:
            every_rule.rules_judged = None  # as if every rule were judged on every event
        every_outcome = processor.apply(every_rule, event, rules)
        judged, every_rule = judged_outcome.state, every_outcome.state
        judged_emits += judged_outcome.emits
        every_rule_emits += every_outcome.emits
    assert judged_emits == every_rule_emits
    assert judged.achievements == every_rule.achievements
    # By hand: scan days 2, 3, 5, 6, 8, 9 (no 7-day streak); 350 a scan at bronze, 438 at silver, 700 at
    # gold; first_scan (n=1) 450, sprint at the 5th scan (n=7) 2326, big_spender past 3000 at n=10 3302,
    # scans_10 at n=14 4866; the redemption at n=0 is refused, at n=18 it spends 5000 and unlocks
    # first_redemption and achievement_hunter (the 5th unlock) 6604; 8 more gold scans: 12204.
    assert sorted(judged.achievements) == ["achievement_hunter", "big_spender", "first_redemption",
                                           "first_scan", "scan_sprint", "scans_10"]
    assert (judged.lifetime_points, judged.points_balance) == (12_204, 7_204)
    assert (every_rule.lifetime_points, every_rule.points_balance) == (12_204, 7_204)


def test_a_state_from_an_older_changelog_decodes_unjudged() -> None:
    state = UserState.from_bytes(b'{"brand_id":"7","user_id":"u","version":3,"achievements":{"first_scan":5}}')
    assert (state.version, state.achievements, state.rules_judged) == (3, {"first_scan": 5}, None)
