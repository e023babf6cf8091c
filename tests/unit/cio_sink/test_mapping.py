from __future__ import annotations

import copy
from typing import Any

from synergy_cio_sink.mapping import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    Delivery,
    PrivacySettings,
    Rejected,
    Skipped,
    flatten_attributes,
    hash_email,
    map_envelope,
    truncate_ip,
)

NO_PRIVACY = PrivacySettings()


def test_track_event_keeps_the_seed_name_and_data_exactly(product_scanned: dict[str, Any]) -> None:
    result = map_envelope(product_scanned, NO_PRIVACY)

    assert isinstance(result, Delivery)
    assert result.v2_item == {
        "type": "person",
        "identifiers": {"id": "user-123"},
        "action": "event",
        "name": "product_scanned",
        "attributes": product_scanned["data"],
        "timestamp": 1716402912,
        "id": product_scanned["event_id"],
    }
    assert result.v1_call.method == "POST"
    assert result.v1_call.path == "/api/v1/customers/user-123/events"
    assert result.v1_call.body == {
        "name": "product_scanned", "data": product_scanned["data"], "timestamp": 1716402912,
        "id": product_scanned["event_id"],
    }
    assert result.person_key == "7:user-123"


def test_mapping_the_same_envelope_twice_gives_the_same_operation(product_scanned: dict[str, Any]) -> None:
    privacy = PrivacySettings(hash_emails=True, truncate_ips=True)
    assert map_envelope(copy.deepcopy(product_scanned), privacy) == map_envelope(product_scanned, privacy)


def test_anonymous_event_goes_by_anonymous_id(product_scanned: dict[str, Any]) -> None:
    product_scanned["identifiers"] = {"anonymous_id": "anon-9"}
    result = map_envelope(product_scanned, NO_PRIVACY)

    assert isinstance(result, Delivery)
    assert result.v2_item["anonymous_id"] == "anon-9"
    assert "identifiers" not in result.v2_item
    assert result.v1_call.path == "/api/v1/events"
    assert result.v1_call.body["anonymous_id"] == "anon-9"
    assert result.person_key == "7:anon:anon-9"


def test_page_and_screen_are_sent_as_such(product_scanned: dict[str, Any]) -> None:
    for kind in ("page", "screen"):
        envelope = {**product_scanned, "type": kind, "name": "/rewards", "data": {"title": "Rewards"}}
        result = map_envelope(envelope, NO_PRIVACY)
        assert isinstance(result, Delivery)
        assert result.v2_item["action"] == kind
        assert result.v2_item["name"] == "/rewards"
        assert result.v1_call.body["type"] == kind


def test_snapshot_becomes_flat_identify_attributes(product_scanned: dict[str, Any]) -> None:
    snapshot = {**product_scanned, "type": "identify", "name": None,
                "data": {"user_snapshot": product_scanned["data"]["user_snapshot"]}}
    result = map_envelope(snapshot, NO_PRIVACY, from_snapshots=True)

    assert isinstance(result, Delivery)
    attributes = result.v2_item["attributes"]
    assert result.v2_item["action"] == "identify"
    assert attributes["email"] == "jane.doe@example.com"
    assert attributes["created_at"] == 1716285600
    assert attributes["points_balance"] == 1850
    assert attributes["rank_key"] == "gold"
    assert attributes["is_power_user"] is True
    assert all(not isinstance(value, dict | list) for value in attributes.values())
    assert result.v1_call.method == "PUT"
    assert result.v1_call.path == "/api/v1/customers/user-123"
    assert result.v1_call.body == attributes


def test_flattening_keeps_customer_io_limits() -> None:
    snapshot = {"identity": {"bio": "x" * 5000}, "many": {f"field_{i}": i for i in range(400)},
                "long": {"n" * 200: 1}, "tags": {"list": ["a", "b"]}}
    flat = flatten_attributes(snapshot)

    assert len(flat.attributes) == MAX_ATTRIBUTES
    assert len(str(flat.attributes["bio"]).encode()) == MAX_ATTRIBUTE_VALUE_BYTES
    assert all(len(name.encode()) <= 150 for name in flat.attributes)
    assert flat.dropped == (1 + 400 + 1 + 1) - MAX_ATTRIBUTES


def test_flattening_joins_deeper_paths_and_lists() -> None:
    snapshot = {"profile_data": {"custom": {"color": "red"}}, "taxonomy": {"tags": ["a", "b"]}}
    flat = flatten_attributes(snapshot)
    assert flat.attributes == {"custom_color": "red", "tags": "a,b"}


def test_identify_without_user_id_is_skipped(product_scanned: dict[str, Any]) -> None:
    envelope = {**product_scanned, "type": "identify", "identifiers": {"anonymous_id": "a"}}
    assert isinstance(map_envelope(envelope, NO_PRIVACY), Skipped)


def test_privacy_hashes_emails_and_truncates_ips_on_opt_in(product_scanned: dict[str, Any]) -> None:
    privacy = PrivacySettings.from_brand_settings({"privacy": {"hash_emails": True, "truncate_ips": True}})
    result = map_envelope(product_scanned, privacy)

    assert isinstance(result, Delivery)
    data = result.v2_item["attributes"]
    assert data["user_snapshot"]["identity"]["email"] == hash_email("jane.doe@example.com")
    assert data["event_context"]["location"]["ip_address"] == "216.3.128.0"
    assert "jane.doe@example.com" not in str(result.v1_call.body)
    assert result.v2_item["name"] == "product_scanned"


def test_privacy_is_off_by_default(product_scanned: dict[str, Any]) -> None:
    result = map_envelope(product_scanned, PrivacySettings.from_brand_settings({}))
    assert isinstance(result, Delivery)
    assert result.v2_item["attributes"]["event_context"]["location"]["ip_address"] == "216.3.128.12"


def test_ip_truncation() -> None:
    assert truncate_ip("10.1.2.3") == "10.1.2.0"
    assert truncate_ip("2001:db8:abcd:12::1") == "2001:db8:abcd::"


def test_unsendable_events_are_rejected_with_a_reason(product_scanned: dict[str, Any]) -> None:
    cases = {
        "event_name_too_long": {"name": "x" * 101},
        "pii_in_event_name": {"name": "welcome jane@example.com"},
        "event_data_too_large": {"data": {"blob": "x" * 100_001}},
        "person_id_too_long": {"identifiers": {"id": "u" * 151}},
    }
    for reason, change in cases.items():
        result = map_envelope({**product_scanned, **change}, NO_PRIVACY)
        assert isinstance(result, Rejected), reason
        assert result.reason == reason
