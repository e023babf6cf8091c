from __future__ import annotations

from pathlib import Path

import pytest
from synergy_achievements.rules import (
    DEFAULT_ACHIEVEMENT_ROWS,
    AchievementRule,
    Criteria,
    RankLadder,
    RuleCatalog,
    default_rules,
)


def test_default_ladder_gives_each_lifetime_total_its_rank() -> None:
    ladder = RankLadder()
    assert ladder.rank_for(0).key == "bronze"
    assert ladder.rank_for(999).key == "bronze"
    assert ladder.rank_for(1000).key == "silver"
    assert ladder.rank_for(6100).key == "gold"


def test_default_set_covers_the_issue_list() -> None:
    keys = {row["achievement_key"] for row in DEFAULT_ACHIEVEMENT_ROWS}
    assert {"first_scan", "scans_10", "first_referral", "wishlist_5", "first_redemption",
            "scan_streak_7", "achievement_hunter", "scan_sprint"} <= keys
    first_scan = default_rules().by_key("first_scan")
    assert first_scan is not None
    assert (first_scan.name, first_scan.description, first_scan.points, first_scan.badge,
            first_scan.rarity, first_scan.category) == (
        "First Scan", "Complete your first product scan", 100, "first-scan-badge", "common", "milestone")


def test_brand_rows_override_global_rows_and_can_switch_them_off() -> None:
    brand_row = {**DEFAULT_ACHIEVEMENT_ROWS[0], "brand_id": 5, "rewards": {"points": 7}}
    off_row = {**DEFAULT_ACHIEVEMENT_ROWS[1], "brand_id": 5, "is_active": False}
    global_rows = [{**row, "brand_id": None} for row in DEFAULT_ACHIEVEMENT_ROWS]
    catalog = RuleCatalog([*global_rows, brand_row, off_row],
                          [{"brand_id": 5, "key": "fan", "name": "Fan", "points_required": 0,
                            "point_multiplier": 1.5}])
    brand = catalog.for_brand("5")
    other = catalog.for_brand("6")
    assert brand.by_key("first_scan").points == 7  # type: ignore[union-attr]
    assert brand.by_key("scans_10") is None
    assert other.by_key("first_scan").points == 100  # type: ignore[union-attr]
    assert brand.ladder.rank_for(0).key == "fan"
    assert other.ladder.rank_for(0).key == "bronze"


def test_invalid_rows_are_reported_not_applied() -> None:
    bad = {**DEFAULT_ACHIEVEMENT_ROWS[0], "achievement_key": "bad", "brand_id": None,
           "criteria": {"metric": "nonsense", "operator": ">=", "value": 1}}
    catalog = RuleCatalog([bad])
    assert catalog.for_brand("1").achievements == ()
    assert catalog.errors and "nonsense" in catalog.errors[0]


def test_timeframe_needs_a_counted_metric() -> None:
    with pytest.raises(ValueError):
        Criteria.from_json({"metric": "wishlist_items", "operator": ">=", "value": 2, "timeframe": "7d"})
    assert Criteria.from_json({"metric": "scan_count", "value": 5, "timeframe": "7d"}).timeframe is not None
    rule = AchievementRule.from_row({**DEFAULT_ACHIEVEMENT_ROWS[0], "id": 3})
    assert rule.config_id == 3


def test_the_migration_seeds_exactly_the_default_set_the_worker_falls_back_to() -> None:
    """Migration 0002 keeps a literal copy (a migration must not change when service code does); the
    worker uses DEFAULT_ACHIEVEMENT_ROWS only until it has read the seeded rows from Postgres."""
    import importlib.util

    import synergy_common

    path = Path(synergy_common.__file__).parent / "migrations" / "versions" / "0002_achievements.py"
    spec = importlib.util.spec_from_file_location("migration_0002", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert migration.seeded_achievements() == list(DEFAULT_ACHIEVEMENT_ROWS)


def test_a_brand_rule_book_judges_per_event_only_the_rules_its_metrics_read() -> None:
    from synergy_achievements.processing import MOVED_BY_AN_UNLOCK, REFERRAL_AWARD, moved_by

    book = default_rules().book

    def keys(name: str) -> list[str]:
        return [rule.key for rule in book.reading(moved_by(name))]

    assert moved_by("product_scanned") == {"product_scanned", "scan_streak_days", "lifetime_points"}
    assert keys("product_scanned") == ["first_scan", "scans_10", "scans_50", "scan_sprint", "scan_streak_7"]
    assert keys("reward_redeemed") == ["first_redemption"]
    assert keys("wishlist_item_added") == ["wishlist_5"] and keys("wishlist_item_removed") == ["wishlist_5"]
    assert keys(REFERRAL_AWARD) == ["first_referral"]
    assert keys("user_session_started") == [] and keys("other") == []
    assert [rule.key for rule in book.reading(MOVED_BY_AN_UNLOCK)] == ["achievement_hunter"]
    assert [rule.key for rule in book.rules] == [row["achievement_key"] for row in DEFAULT_ACHIEVEMENT_ROWS]


def test_compiled_rules_read_compare_and_report_progress_like_their_criteria() -> None:
    from synergy_achievements.rules import RuleBook
    from synergy_achievements.state import UserState

    def rule(key: str, **criteria: object) -> AchievementRule:
        return AchievementRule.from_row({**DEFAULT_ACHIEVEMENT_ROWS[0], "achievement_key": key,
                                         "criteria": criteria})

    book = RuleBook((
        rule("few_scans", metric="scan_count", operator="<", value=3),
        rule("spender", metric="purchase_amount", operator="gte", value=100),
        rule("sprint", metric="event_count:product_scanned", operator=">=", value=3, timeframe="2d"),
        rule("exactly_two", metric="wishlist_items", operator="eq", value=2),
        rule("other_events", metric="event_count:other", operator=">", value=0),
    ))
    day = 86400
    state = UserState(brand_id="1", user_id="u", counts={"product_scanned": 3, "other": 1},
                      recent={"product_scanned": [0, 3 * day, 4 * day]}, purchase_total=99.5, wishlist_size=2)
    assert [(r.key, r.reads) for r in book.rules] == [
        ("few_scans", "product_scanned"), ("spender", "purchase_amount"), ("sprint", "product_scanned"),
        ("exactly_two", "wishlist_items"), ("other_events", "other")]
    assert [r.met(state) for r in book.rules] == [False, False, False, True, True]
    assert [r.progress(state) for r in book.rules[:3]] == [
        {"current": 3, "target": 3.0, "percent": 100.0},
        {"current": 99.5, "target": 100.0, "percent": 99.5},
        {"current": 2, "target": 3.0, "percent": 66.7},  # two scans fall within 2 days (days 3 and 4)
    ]


def test_the_rule_set_fingerprint_changes_with_what_decides_an_unlock_only() -> None:
    from synergy_achievements.rules import RuleBook

    rows = [dict(row) for row in DEFAULT_ACHIEVEMENT_ROWS]
    same = RuleCatalog(rows).for_brand("1").book.fingerprint
    assert same == default_rules().book.fingerprint and len(same) == 16
    richer = [{**rows[0], "rewards": {"points": 999}}, *rows[1:]]  # a reward decides no unlock
    assert RuleCatalog(richer).for_brand("1").book.fingerprint == same
    harder = [{**rows[0], "criteria": {"metric": "scan_count", "value": 2}}, *rows[1:]]
    assert RuleCatalog(harder).for_brand("1").book.fingerprint != same
    assert RuleCatalog(rows[1:]).for_brand("1").book.fingerprint != same
    assert RuleBook(()).fingerprint != same
