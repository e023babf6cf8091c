"""Snapshots as the achievements service publishes them on synergy.snapshots.v1 -> Customer.io identify."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from synergy_cio_sink.mapping import Delivery, PrivacySettings, Rejected, flatten_attributes, map_envelope

NO_PRIVACY = PrivacySettings()

# The `loyalty` block of achievements' SnapshotPublisher.build (services/achievements processing.py).
LOYALTY = {
    "state_version": 42,
    "achievements": {"first_scan": "2024-05-21T10:05:00Z", "gold_member": "2024-05-22T18:35:12Z"},
    "progress": {"scan_streak_7": {"current": 3, "target": 7}},
    "current_streak_days": 3,
    "longest_streak_days": 9,
    "wishlist_size": 4,
    "rejected_redemptions": 1,
    "as_of": "2024-05-22T18:35:12Z",
}


@pytest.fixture
def published_snapshot(product_scanned: dict[str, Any]) -> dict[str, Any]:
    """An envelope exactly as achievements publishes it: a track named user_snapshot."""
    return {
        **product_scanned,
        "event_id": "01HZ0000000000000000000002",
        "type": "track",
        "name": "user_snapshot",
        "source": "achievements",
        "data": {"user_snapshot": copy.deepcopy(product_scanned["data"]["user_snapshot"]),
                 "loyalty": copy.deepcopy(LOYALTY)},
    }


def test_only_the_user_snapshot_becomes_flat_attributes(published_snapshot: dict[str, Any]) -> None:
    result = map_envelope(published_snapshot, NO_PRIVACY, from_snapshots=True)

    assert isinstance(result, Delivery)
    expected = flatten_attributes(published_snapshot["data"]["user_snapshot"]).attributes
    assert result.kind == "identify"
    assert result.v2_item == {
        "type": "person", "identifiers": {"id": "user-123"}, "action": "identify",
        "attributes": expected, "timestamp": 1716402912, "id": "01HZ0000000000000000000002",
    }
    assert (result.v1_call.method, result.v1_call.path) == ("PUT", "/api/v1/customers/user-123")
    assert result.v1_call.body == expected
    attributes = result.v2_item["attributes"]
    # seed 000's user_snapshot, flattened to scalars
    assert attributes["email"] == "jane.doe@example.com"
    assert attributes["created_at"] == 1716285600
    assert attributes["points_balance"] == 1850
    assert attributes["rank_name"] == "Gold"
    assert attributes["days_since_last_scan"] == 5
    assert attributes["referral_code"] == "JANE1A2B"
    assert all(not isinstance(value, dict | list) for value in attributes.values())
    # nothing of the loyalty bookkeeping, and no attribute named after the events' blocks
    for name in ("state_version", "achievements", "first_scan", "achievements_first_scan", "progress",
                 "current_streak_days", "wishlist_size", "rejected_redemptions", "as_of", "loyalty",
                 "user_snapshot"):
        assert not any(attribute == name or attribute.startswith(f"{name}_") for attribute in attributes), name


def test_the_snapshot_name_is_not_sent_as_an_event(published_snapshot: dict[str, Any]) -> None:
    result = map_envelope(published_snapshot, NO_PRIVACY, from_snapshots=True)
    assert isinstance(result, Delivery)
    assert "name" not in result.v2_item
    assert result.v2_item["action"] == "identify"


def test_mapping_the_same_snapshot_twice_gives_the_same_identify(published_snapshot: dict[str, Any]) -> None:
    privacy = PrivacySettings(hash_emails=True, truncate_ips=True)
    first = map_envelope(copy.deepcopy(published_snapshot), privacy, from_snapshots=True)
    assert first == map_envelope(published_snapshot, privacy, from_snapshots=True)
    assert isinstance(first, Delivery)
    assert first.v2_item["attributes"]["email"] != "jane.doe@example.com"


def test_a_snapshot_without_its_user_snapshot_is_rejected_not_sent_as_loyalty(
    published_snapshot: dict[str, Any],
) -> None:
    published_snapshot["data"] = {"loyalty": LOYALTY}
    result = map_envelope(published_snapshot, NO_PRIVACY, from_snapshots=True)
    assert isinstance(result, Rejected)
    assert result.reason == "snapshot_without_user_snapshot"


def test_a_client_identify_still_sends_its_traits(product_scanned: dict[str, Any]) -> None:
    envelope = {**product_scanned, "type": "identify", "name": None, "data": {"plan": "gold", "age": 31}}
    result = map_envelope(envelope, NO_PRIVACY)
    assert isinstance(result, Delivery)
    assert result.v2_item["attributes"] == {"plan": "gold", "age": 31}
