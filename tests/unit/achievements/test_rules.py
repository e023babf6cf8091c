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
