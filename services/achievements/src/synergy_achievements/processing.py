"""The loyalty engine: one event in, the user's new state and the messages to publish out. Pure.

Every output's event_id is derived from the triggering event_id, so a replay publishes the same ids.
An event whose id the state has already applied changes nothing and publishes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from synergy_schemas.envelope import SCHEMA_VERSION, derive_event_id
from synergy_schemas.events import CLIENT_EVENTS
from synergy_schemas.keys import partition_key

from synergy_achievements.rules import AchievementRule, BrandRules, Rank
from synergy_achievements.snapshot import (
    EngagementThresholds,
    derived_fields,
    iso,
    user_snapshot,
)
from synergy_achievements.state import APPLIED_IDS_KEPT, UserState, applied_digest, holds_digest

SOURCE = "achievements"
REFERRAL_AWARD = "referral_award"  # the internal message that carries a referrer's points
DEFAULT_REFERRAL_POINTS = 500
EVENT_ALIASES = {"wishlist_added": "wishlist_item_added", "wishlist_removed": "wishlist_item_removed"}
MAX_UNLOCK_ROUNDS = 10
OTHER_EVENTS = "other"  # the one count (and metric label) of every event name outside the catalog
COUNTED_NAMES = CLIENT_EVENTS | {REFERRAL_AWARD}


def counted_name(name: str) -> str:
    """The name an event is counted under: its own if the catalog has it, else `other`, so free-text
    names cannot grow a user's state or the metrics' label sets."""
    return name if name in COUNTED_NAMES else OTHER_EVENTS

Channel = Literal["loyalty", "snapshot", "referral_award"]

# What an applied event can move of what rules read (`Criteria.reads`): its own count (and recent times),
# plus what EconomyRules (or the referral award) changes for it. Keep in step with EconomyRules.apply.
_MOVES_BESIDES_ITS_COUNT: dict[str, frozenset[str]] = {
    "product_scanned": frozenset({"scan_streak_days", "lifetime_points"}),
    "reward_redeemed": frozenset({"reward_redeemed_rejected"}),  # a rejected redemption counts there
    "wishlist_item_added": frozenset({"wishlist_items"}),
    "wishlist_item_removed": frozenset({"wishlist_items"}),
    "order_completed": frozenset({"purchase_amount"}),
    REFERRAL_AWARD: frozenset({"referral_count", "lifetime_points"}),
}
MOVED_BY_AN_UNLOCK = frozenset({"achievements_unlocked", "lifetime_points"})  # the count, and the reward
_MOVED_BY: dict[str, frozenset[str]] = {}


def moved_by(name: str) -> frozenset[str]:
    """What applying an event of this (counted) name can move of what rules read."""
    moved = _MOVED_BY.get(name)
    if moved is None:
        moved = _MOVED_BY[name] = frozenset({name}) | _MOVES_BESIDES_ITS_COUNT.get(name, frozenset())
    return moved


@dataclass(frozen=True, slots=True)
class Emit:
    channel: Channel
    key: str
    name: str
    value: dict[str, Any]


@dataclass(slots=True)
class Outcome:
    state: UserState
    emits: list[Emit] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # names of the events applied
    duplicates: list[str] = field(default_factory=list)  # names of the events already applied before
    unlocked: list[str] = field(default_factory=list)
    rejected_redemptions: int = 0

    @property
    def duplicate(self) -> bool:
        """Nothing applied: every event had been applied already."""
        return not self.applied and bool(self.duplicates)

    @property
    def rejected_redemption(self) -> bool:
        return self.rejected_redemptions > 0

    @property
    def loyalty_emits(self) -> list[Emit]:
        return [emit for emit in self.emits if emit.channel != "snapshot"]


# Each event's time is parsed twice (`envelope_problem` checks it when the batch is read, `_apply_one`
# applies it) and parsing costs ~3.5 us; the cache holds more than a batch's distinct times, so the second
# parse is always a hit. A text that does not parse raises and is not cached.
@lru_cache(maxsize=8192)
def event_time(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


_TEXT_FIELDS = ("event_id", "brand_id", "timestamp")  # required, non-empty strings
_OPTIONAL_TEXT_FIELDS = ("name", "type", "received_at", "correlation_id", "source")


def envelope_problem(envelope: Any) -> str | None:
    """Why the worker cannot apply this parsed events-topic value, or None when it can.

    Ingest validates what it accepts (synergy_schemas.envelope.Envelope), but any producer can write to
    the topic. A field of the wrong type would be written into the user's state (e.g. a numeric
    `brand_id`), which then no longer decodes as a UserState, and every later batch of that user would
    fail: such an event is a poison pill and is dead-lettered instead. Checked are the fields the state,
    the partition key, the outputs and their headers take over; `data` is read defensively by the rules."""
    if not isinstance(envelope, dict):
        return "not a JSON object"
    for name in _TEXT_FIELDS:
        value = envelope.get(name)
        if type(value) is not str or not value:
            return f"{name} must be a non-empty string, got {_shown(value)}"
    for name in _OPTIONAL_TEXT_FIELDS:
        value = envelope.get(name)
        if value is not None and type(value) is not str:
            return f"{name} must be a string, got {_shown(value)}"
    identifiers = envelope.get("identifiers")
    if identifiers is not None:
        if not isinstance(identifiers, dict):
            return f"identifiers must be an object, got {_shown(identifiers)}"
        for name in ("id", "anonymous_id"):
            value = identifiers.get(name)
            if value is not None and type(value) is not str:
                return f"identifiers.{name} must be a string, got {_shown(value)}"
    data = envelope.get("data")
    if data is not None and not isinstance(data, dict):
        return f"data must be an object, got {_shown(data)}"
    try:
        event_time(envelope["timestamp"])
    except (ValueError, OverflowError, OSError):
        return f"timestamp is not an ISO 8601 time: {envelope['timestamp'][:40]!r}"
    return None


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}" if value is not None else "nothing"


def output_envelope(
    trigger: dict[str, Any], suffix: str, name: str, user_id: str, data: dict[str, Any],
    timestamp: str | None = None,
) -> dict[str, Any]:
    brand_id = trigger["brand_id"]
    return {
        "event_id": derive_event_id(brand_id, f"{trigger['event_id']}:{suffix}"),
        "type": "track",
        "name": name,
        "brand_id": brand_id,
        "identifiers": {"id": user_id},
        "data": data,
        "timestamp": timestamp or trigger["timestamp"],
        "received_at": trigger.get("received_at") or trigger["timestamp"],
        "schema_version": SCHEMA_VERSION,
        "source": SOURCE,
        "correlation_id": trigger.get("correlation_id") or trigger["event_id"],
    }


def points_spent_of(data: dict[str, Any]) -> int:
    """Seed 000 puts it in transaction_data, seed 001 at the top of data; else the reward's cost."""
    transaction = data.get("transaction_data") or {}
    for candidate in (
        transaction.get("points_spent"),
        data.get("points_spent"),
        ((data.get("reward_snapshot") or {}).get("economy") or {}).get("points_cost"),
    ):
        if candidate is not None:
            return int(candidate)
    return 0


def referrer_of(user_id: str, referral: dict[str, Any]) -> str | None:
    """The referrer's external id. Seed 000 sends numeric ids (referrer 123, referred 456) while the
    event's own id is "user-456": the referrer then gets the same prefix ("user-123")."""
    referrer = referral.get("referrer_user_id")
    if referrer is None or referrer == "":
        return None
    if isinstance(referrer, str):
        return referrer
    referred = referral.get("referred_user_id")
    if referred is not None and user_id != str(referred) and user_id.endswith(str(referred)):
        return user_id[: -len(str(referred))] + str(referrer)
    return str(referrer)


def scan_points(points_award: int, rank: Rank, bonus_multiplier: float) -> int:
    return int(points_award * rank.point_multiplier * bonus_multiplier + 0.5)


def achievement_data(rule: AchievementRule) -> dict[str, Any]:
    data: dict[str, Any] = {
        "achievement_id": rule.key,
        "achievement_name": rule.name,
        "achievement_description": rule.description,
        "points_reward": rule.points,
    }
    if rule.badge:
        data["badge_id"] = rule.badge
    if rule.rarity:
        data["achievement_rarity"] = rule.rarity
    if rule.category:
        data["achievement_category"] = rule.category
    return data


class ProfileKeeper:
    """Keeps the user_snapshot blocks the engine does not own (identity, profile, consent, referral code)."""

    OWN_BLOCKS = ("identity", "profile_data", "compliance_and_contact", "referral_data")

    def apply(self, state: UserState, data: dict[str, Any]) -> None:
        snapshot = data.get("user_snapshot") or {}
        for block in self.OWN_BLOCKS:
            if snapshot.get(block):
                state.profile[block] = {**state.profile.get(block, {}), **snapshot[block]}
        for block, name in (("economy", "currency_name"), ("status", "status_name")):
            value = (snapshot.get(block) or {}).get(name)
            if value:
                state.profile[name] = value
        created_at = (snapshot.get("identity") or {}).get("created_at")
        if created_at and state.signup_at is None:
            try:
                state.signup_at = event_time(created_at)
            except ValueError:
                pass


class EconomyRules:
    """What each event does to counts, times and points."""

    def apply(
        self, state: UserState, name: str, event: dict[str, Any], at: int, rules: BrandRules,
        outcome: Outcome, timed_events: frozenset[str],
    ) -> None:
        data = event.get("data") or {}
        if name == "reward_redeemed":
            spent = points_spent_of(data)
            if spent > state.points_balance:
                state.rejected_redemptions += 1
                state.record_count("reward_redeemed_rejected")
                outcome.rejected_redemptions += 1
                outcome.emits.append(self._rejection(state, event, spent, rules))
                return
            state.points_balance -= spent
            state.points_spent += spent
            state.record_time("redemption", at)
        state.record_count(name)
        if name in timed_events:
            state.record_recent(name, at)
        if name == "product_scanned":
            award = int(((data.get("product_snapshot") or {}).get("economy") or {}).get("points_award") or 0)
            rank = rules.ladder.rank_for(state.lifetime_points)
            self.add_points(state, scan_points(award, rank, state.bonus_multiplier))
            state.record_time("scan", at)
            state.record_scan_day(iso(at)[:10])
        elif name == "user_session_started" or name == "user_session_ended":
            state.record_time("session", at)
        elif name == "wishlist_item_added":
            state.wishlist_size += 1
        elif name == "wishlist_item_removed":
            state.wishlist_size = max(0, state.wishlist_size - 1)
        elif name == "order_completed":
            state.purchase_total += float(data.get("order_total") or 0)
        elif name == "referral_converted":
            referral_award = self._referral_award(state, event)
            if referral_award is not None:
                outcome.emits.append(referral_award)

    @staticmethod
    def add_points(state: UserState, points: int) -> None:
        state.points_balance += points
        state.lifetime_points += points

    @staticmethod
    def _referral_award(state: UserState, event: dict[str, Any]) -> Emit | None:
        referral = (event.get("data") or {}).get("referral_data") or {}
        referrer = referrer_of(state.user_id, referral)
        if referrer is None or referrer == state.user_id:
            return None
        points = referral.get("points_awarded_to_referrer")
        award = {
            "points": DEFAULT_REFERRAL_POINTS if points is None else int(points),
            "referred_user_id": state.user_id,
            "event_context": (event.get("data") or {}).get("event_context") or {},
        }
        value = output_envelope(event, REFERRAL_AWARD, REFERRAL_AWARD, referrer, award)
        return Emit("referral_award", partition_key(event["brand_id"], referrer), REFERRAL_AWARD, value)

    @staticmethod
    def _rejection(state: UserState, event: dict[str, Any], spent: int, rules: BrandRules) -> Emit:
        data = event.get("data") or {}
        body = {
            "reason": "insufficient_points",
            "points_requested": spent,
            "points_balance": state.points_balance,
            "rejected_event_id": event["event_id"],
            **{k: data[k] for k in ("transaction_data", "reward_snapshot") if data.get(k)},
            "event_context": data.get("event_context") or {},
        }
        value = output_envelope(event, "redemption_rejected", "redemption_rejected", state.user_id, body)
        return Emit("loyalty", partition_key(event["brand_id"], state.user_id), "redemption_rejected", value)


class RankKeeper:
    """Moves the user to the rank their lifetime points earn and announces the move."""

    def apply(
        self, state: UserState, event: dict[str, Any], rules: BrandRules, snapshot_of: Any, outcome: Outcome
    ) -> None:
        ladder = rules.ladder
        old = ladder.by_key(state.rank_key) or ladder.ranks[0]
        new = ladder.rank_for(state.lifetime_points)
        state.rank_key = new.key
        if new.key == old.key:
            return
        data = {
            "old_rank_key": old.key, "old_rank_name": old.name,
            "new_rank_key": new.key, "new_rank_name": new.name, "new_rank_multiplier": new.point_multiplier,
            "points_required": new.points_required, "lifetime_points": state.lifetime_points,
            "direction": "up" if new.points_required > old.points_required else "down",
            "user_snapshot": snapshot_of(state),
            "event_context": (event.get("data") or {}).get("event_context") or {},
        }
        value = output_envelope(event, f"rank_changed:{new.key}", "rank_changed", state.user_id, data)
        outcome.emits.append(
            Emit("loyalty", partition_key(event["brand_id"], state.user_id), "rank_changed", value)
        )


class AchievementJudge:
    """Unlocks every rule the state now meets, once per user, and pays its reward.

    Judges only the rules whose metric the event moved (`moved`): once a state has been judged against
    every rule of a rule set (`UserState.rules_judged` holds that set's fingerprint) a rule it does not
    meet can only come to be met when its metric moves. A state judged against no or another rule set
    (new, older changelog, rules reloaded) is judged against every rule first. The unlocks are the
    same, in the same order, as judging every rule on every event."""

    def apply(
        self, state: UserState, event: dict[str, Any], at: int, rules: BrandRules, snapshot_of: Any,
        ranks: RankKeeper, outcome: Outcome, moved: frozenset[str],
    ) -> None:
        book = rules.book
        candidates = book.reading(moved) if state.rules_judged == book.fingerprint else book.rules
        achievements = state.achievements
        for _ in range(MAX_UNLOCK_ROUNDS):  # a reward can unlock a meta-achievement
            met = [rule.rule for rule in candidates if rule.key not in achievements and rule.met(state)]
            if not met:
                state.rules_judged = book.fingerprint
                return
            candidates = book.reading(MOVED_BY_AN_UNLOCK)  # all else was judged on this state already
            for rule in met:
                state.achievements[rule.key] = at
                EconomyRules.add_points(state, rule.points)
                state.bonus_multiplier *= rule.multiplier
                ranks.apply(state, event, rules, snapshot_of, outcome)
                outcome.unlocked.append(rule.key)
                data = {
                    "achievement_data": achievement_data(rule),
                    "user_snapshot": snapshot_of(state),
                    "event_context": (event.get("data") or {}).get("event_context") or {},
                }
                value = output_envelope(
                    event, f"achievement_unlocked:{rule.key}", "achievement_unlocked", state.user_id, data
                )
                outcome.emits.append(
                    Emit("loyalty", partition_key(event["brand_id"], state.user_id), "achievement_unlocked",
                         value)
                )
        state.rules_judged = None  # out of rounds, a rule may still be met: judge every rule next time


class SnapshotPublisher:
    """The user's latest snapshot for the compacted snapshots topic, with what the read API needs."""

    def __init__(self, thresholds: EngagementThresholds) -> None:
        self.thresholds = thresholds

    def build(
        self, state: UserState, rules: BrandRules, as_of: int, trigger: dict[str, Any], suffix: str,
        timestamp: str | None = None,
    ) -> Emit:
        snapshot = user_snapshot(state, rules.ladder, as_of, self.thresholds)
        state.derived = derived_fields(snapshot["engagement"])
        data = {
            "user_snapshot": snapshot,
            "loyalty": {
                "state_version": state.version,
                "achievements": {key: iso(at) for key, at in sorted(state.achievements.items())},
                "progress": {
                    rule.key: rule.progress(state) for rule in rules.book.shown
                    if rule.key not in state.achievements
                },
                "current_streak_days": state.current_streak(),
                "longest_streak_days": state.longest_streak,
                "wishlist_size": state.wishlist_size,
                "rejected_redemptions": state.rejected_redemptions,
                "as_of": iso(as_of),
            },
        }
        value = output_envelope(trigger, suffix, "user_snapshot", state.user_id, data, timestamp)
        return Emit("snapshot", partition_key(state.brand_id, state.user_id), "user_snapshot", value)


class LoyaltyProcessor:
    def __init__(
        self, thresholds: EngagementThresholds | None = None, applied_ids_kept: int = APPLIED_IDS_KEPT
    ) -> None:
        self.thresholds = thresholds or EngagementThresholds()
        self.applied_ids_kept = applied_ids_kept
        self.profiles = ProfileKeeper()
        self.economy = EconomyRules()
        self.ranks = RankKeeper()
        self.judge = AchievementJudge()
        self.snapshots = SnapshotPublisher(self.thresholds)

    def apply(self, state: UserState | None, event: dict[str, Any], rules: BrandRules) -> Outcome:
        """Apply one events-topic envelope (or an internal referral_award) to the user's state.

        The state passed in is not modified; the outcome holds the new state.
        """
        return self.apply_many(state, [event], rules)

    def apply_many(
        self, state: UserState | None, events: Sequence[dict[str, Any]], rules: BrandRules
    ) -> Outcome:
        """Apply one user's events, in partition order, as one step: the same state and loyalty outputs
        as applying them one by one, but a single snapshot (that of the last event applied).

        The state passed in is not modified; the outcome holds the new state.
        """
        return self._apply_to_own(None if state is None else state.copy(), events, rules)

    def apply_stored(
        self, stored: bytes | None, events: Sequence[dict[str, Any]], rules: BrandRules
    ) -> Outcome:
        """`apply_many` on a state as the table stores it (serialised): decoding makes a fresh state, so
        it is not copied first."""
        return self._apply_to_own(UserState.from_bytes(stored) if stored else None, events, rules)

    def apply_each_alone(
        self, stored: bytes | None, events: Sequence[dict[str, Any]], rules: BrandRules
    ) -> tuple[Outcome | None, list[tuple[dict[str, Any], Exception]]]:
        """For a user's events `apply_stored` raised on: each applied alone, in order, on the state the
        ones before it left; an event that raises is refused and leaves the state as it was (a poison
        pill must not stop the user's other events, nor anyone else's). Returns the outcome of those
        applied (None if none was) and the refused events with what they raised."""
        combined: Outcome | None = None
        refused: list[tuple[dict[str, Any], Exception]] = []
        current = stored
        for event in events:
            try:
                outcome = self.apply_stored(current, [event], rules)
                encoded = outcome.state.to_bytes()
            except Exception as exc:
                refused.append((event, exc))
                continue
            current = encoded
            if combined is None:
                combined = outcome
                continue
            combined.state = outcome.state
            combined.emits.extend(outcome.emits)
            combined.applied.extend(outcome.applied)
            combined.duplicates.extend(outcome.duplicates)
            combined.unlocked.extend(outcome.unlocked)
            combined.rejected_redemptions += outcome.rejected_redemptions
        return combined, refused

    def _apply_to_own(
        self, state: UserState | None, events: Sequence[dict[str, Any]], rules: BrandRules
    ) -> Outcome:
        """Applies the events to `state` itself (a state no one else holds)."""
        if state is None:
            first = events[0]
            state = UserState(brand_id=first["brand_id"], user_id=(first.get("identifiers") or {})["id"])
        outcome = Outcome(state)
        last: tuple[dict[str, Any], int] | None = None
        # A set of the window's digests costs ~45 searches of it (~130 ns a digest against ~3.4 ns a digest
        # searched), whatever its size: for fewer events, each is searched for instead.
        seen = state.applied_digests() if len(events) > 40 else None
        for event in events:
            raw_name = event.get("name") or event.get("type") or ""
            name = counted_name(EVENT_ALIASES.get(raw_name, raw_name))
            digest = applied_digest(event["event_id"])
            if digest in seen if seen is not None else holds_digest(state.applied, digest):
                outcome.duplicates.append(name)
                continue
            last = (event, self._apply_one(state, name, event, rules, outcome))
            if seen is not None:
                seen.add(digest)
            outcome.applied.append(name)
        if last is not None:
            event, at = last
            outcome.emits.append(self.snapshots.build(state, rules, at, event, "snapshot"))
        return outcome

    def _apply_one(
        self, state: UserState, name: str, event: dict[str, Any], rules: BrandRules, outcome: Outcome
    ) -> int:
        at = event_time(event["timestamp"])
        if state.first_seen is None or at < state.first_seen:
            state.first_seen = at
        self.profiles.apply(state, event.get("data") or {})

        def snapshot_of(current: UserState) -> dict[str, Any]:
            return user_snapshot(current, rules.ladder, at, self.thresholds)

        if name == REFERRAL_AWARD:
            state.referrals_completed += 1
            EconomyRules.add_points(state, int(event["data"].get("points") or 0))
        else:
            self.economy.apply(state, name, event, at, rules, outcome, rules.timed_events)
        self.ranks.apply(state, event, rules, snapshot_of, outcome)
        self.judge.apply(state, event, at, rules, snapshot_of, self.ranks, outcome, moved_by(name))
        state.mark_applied(event["event_id"], self.applied_ids_kept)
        return at

    def recompute(self, state: UserState, rules: BrandRules, now: int) -> Outcome:
        """The daily pass: a new snapshot when time alone changed a derived field (days since, dormancy)."""
        snapshot = user_snapshot(state, rules.ladder, now, self.thresholds)
        if derived_fields(snapshot["engagement"]) == state.derived:
            return Outcome(state)
        state = state.copy()
        day = iso(now)[:10]
        trigger = {
            "event_id": f"{state.user_id}:{state.version}", "brand_id": state.brand_id,
            "timestamp": iso(now), "received_at": iso(now),
            "correlation_id": f"recompute:{day}",
        }
        return Outcome(state, [self.snapshots.build(state, rules, now, trigger, f"recompute:{day}")])
