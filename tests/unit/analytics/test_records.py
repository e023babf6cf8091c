"""process_message on the seed payloads: the log row and read-model changes each event carries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from synergy_analytics.records import (
    BalanceSeen,
    ReferralConverted,
    ReferralInitiated,
    Unusable,
    WishlistAdded,
    WishlistRemoved,
    process_message,
)

SEEDS = Path(__file__).resolve().parents[2] / "fixtures" / "seed_examples"


def envelope(example: str, **overrides: object) -> dict:
    body = json.loads((SEEDS / example).read_text())
    return {"event_id": "01JEVENT000000000000000000", "type": "track", "brand_id": "42", "source": "ingest",
            **body, **overrides}


def test_a_scan_becomes_a_row_on_event_time_with_its_brand_and_user() -> None:
    processed = process_message(envelope("000_1_product_scanned.json"))
    row = processed.row
    assert (row.event_id, row.brand_id, row.user_id, row.action_type) == (
        "01JEVENT000000000000000000", 42, "user-123", "product_scanned")
    assert row.occurred_at == datetime(2024, 5, 22, 18, 35, 12, tzinfo=UTC)
    assert row.engine_event is False
    assert json.loads(row.action_data)["product_snapshot"] is not None


def test_processing_twice_gives_the_same_result() -> None:
    message = envelope("000_3_referral_converted.json")
    assert process_message(message) == process_message(json.loads(json.dumps(message)))


def test_the_wishlist_event_and_its_alias_add_an_item_with_its_goal() -> None:
    for example in ("000_4_wishlist_item_added.json", "001_3_wishlist_added.json"):
        processed = process_message(envelope(example))
        assert processed.row.action_type == "wishlist_item_added"
        added = [c for c in processed.changes if isinstance(c, WishlistAdded)]
        assert len(added) == 1
    seed000 = process_message(envelope("000_4_wishlist_item_added.json"))
    assert seed000.changes[0] == WishlistAdded("user-123", "wishlist-item-789", None, 4500, 2)


def test_referrals_resolve_seed_000s_numeric_referrer_to_the_users_prefix() -> None:
    initiated = process_message(envelope("000_2_referral_initiated.json")).changes
    assert initiated[0] == ReferralInitiated("user-123", "JANE1A2B", None)
    converted = process_message(envelope("000_3_referral_converted.json")).changes
    assert converted[0] == ReferralConverted("user-456", "user-123", "JANE1A2B", None, 500)
    assert process_message(envelope("000_3_referral_converted.json")).row.points_awarded == 500


def test_a_snapshot_balance_is_seen_and_a_removal_names_its_item() -> None:
    message = {"event_id": "e1", "brand_id": "3", "name": "wishlist_removed", "timestamp": "2026-10-05T00:00:00Z",
               "identifiers": {"id": "u"},
               "data": {"wishlist_data": {"wishlist_item_id": "w1"},
                        "user_snapshot": {"economy": {"points_balance": 900},
                                          "referral_data": {"total_referrals_completed": 1}}}}
    assert process_message(message).changes == (WishlistRemoved("u", "w1", None), BalanceSeen("u", 900, 1))


def test_every_name_is_kept_engine_events_are_flagged_and_nul_survives_as_text() -> None:
    row = process_message({"event_id": "e2", "brand_id": 3, "name": "some_new_event_of_the_catalog",
                           "timestamp": "2026-10-05T01:00:00+02:00", "identifiers": {"anonymous_id": "a1"},
                           "data": {"note": "a\x00b"}}).row
    assert (row.action_type, row.user_id, row.anonymous_id) == ("some_new_event_of_the_catalog", None, "a1")
    assert row.occurred_at == datetime(2026, 10, 4, 23, 0, tzinfo=UTC)
    assert json.loads(row.action_data) == {"note": "a\\u0000b"}
    engine = process_message({"event_id": "e3", "brand_id": "3", "name": "achievement_unlocked",
                              "timestamp": "2026-10-05T00:00:00Z", "identifiers": {"id": "u"}}).row
    assert engine.engine_event is True
    identify = process_message({"event_id": "e4", "brand_id": "3", "type": "identify",
                                "timestamp": "2026-10-05T00:00:00Z", "identifiers": {"id": "u"}}).row
    assert identify.action_type == "identify"


@pytest.mark.parametrize(("message", "why"), [
    ([], "not a JSON object"),
    ({"brand_id": "3", "timestamp": "2026-10-05T00:00:00Z"}, "event_id missing"),
    ({"event_id": "e", "brand_id": "acme", "timestamp": "2026-10-05T00:00:00Z"}, "is not a brand id"),
    ({"event_id": "e", "brand_id": "3"}, "timestamp missing"),
    ({"event_id": "e", "brand_id": "3", "timestamp": "yesterday"}, "not ISO 8601"),
])
def test_what_cannot_be_logged_says_why(message: object, why: str) -> None:
    with pytest.raises(Unusable, match=why):
        process_message(message)
