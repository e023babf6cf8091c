"""build_envelope: the pure path from a client's JSON to the envelope ingest publishes."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from synergy_ingest.client_events import EventRejected, build_envelope
from synergy_ingest.request_context import RequestContext
from synergy_schemas.envelope import is_ulid

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"
SEED_EVENTS = sorted(p for p in SEEDS.glob("00[01]_*.json") if "webhook" not in p.name)
CLIENT_SEED_EVENTS = [p for p in SEED_EVENTS if "achievement_unlocked" not in p.name]
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"
)


def context(brand_id: str = "7", **overrides: Any) -> RequestContext:
    values: dict[str, Any] = {
        "brand_id": brand_id,
        "received_at": datetime(2024, 5, 22, 18, 40, tzinfo=UTC),
        "correlation_id": "corr-1",
        "user_agent": IPHONE,
        "client_ip": "203.0.113.9",
    }
    values.update(overrides)
    return RequestContext(**values)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", CLIENT_SEED_EVENTS, ids=lambda p: p.stem)
def test_every_client_seed_event_becomes_an_envelope(path: Path) -> None:
    raw = load(path)
    envelope = build_envelope(raw, context(), 32 * 1024)
    aliases = {"wishlist_added": "wishlist_item_added", "wishlist_removed": "wishlist_item_removed"}
    assert envelope.name == aliases.get(raw["name"], raw["name"])
    assert envelope.brand_id == "7"
    assert envelope.key == f"7:{raw['identifiers']['id']}"
    assert envelope.timestamp.isoformat().replace("+00:00", "Z") == raw["timestamp"]
    assert is_ulid(envelope.event_id)
    sent = {k: v for k, v in raw["data"].items() if k != "event_context"}
    kept = {k: v for k, v in envelope.model_dump(mode="json")["data"].items() if k != "event_context"}
    assert json.loads(json.dumps(kept)) == sent


def test_reserved_events_are_refused() -> None:
    raw = load(SEEDS / "000_5_achievement_unlocked.json")
    with pytest.raises(EventRejected) as caught:
        build_envelope(raw, context(), 32 * 1024)
    assert caught.value.field == "name"
    assert caught.value.reason == "reserved_event"


def test_unknown_event_name_lists_known_ones() -> None:
    raw = {"name": "product_scammed", "identifiers": {"id": "u1"}, "data": {}}
    with pytest.raises(EventRejected) as caught:
        build_envelope(raw, context(), 32 * 1024)
    assert caught.value.field == "name"
    assert "product_scanned" in caught.value.message


def test_same_client_id_gives_same_event_id_and_brands_do_not_collide() -> None:
    raw = {**load(CLIENT_SEED_EVENTS[0]), "event_id": "client-retry-42"}
    first = build_envelope(raw, context(), 32 * 1024)
    again = build_envelope(copy.deepcopy(raw), context(received_at=datetime.now(UTC)), 32 * 1024)
    other_brand = build_envelope(raw, context(brand_id="8"), 32 * 1024)
    assert first.event_id == again.event_id
    assert first.event_id != other_brand.event_id


def test_a_ulid_event_id_is_kept() -> None:
    ulid = "01HZX3N2Q8W5Y7K9M1P3R5T7V9"
    raw = {**load(CLIENT_SEED_EVENTS[0]), "event_id": ulid}
    assert build_envelope(raw, context(), 32 * 1024).event_id == ulid


def test_device_and_ip_are_filled_only_where_missing() -> None:
    raw = {
        "name": "product_viewed",
        "identifiers": {"anonymous_id": "a-1"},
        "data": {"product_id": "prod_001", "product_name": "Guide"},
    }
    envelope = build_envelope(raw, context(), 32 * 1024)
    event_context = envelope.data["event_context"]
    assert event_context["device"]["device_type"] == "mobile"
    assert event_context["device"]["os"] == "iOS"
    assert event_context["location"]["ip_address"] == "203.0.113.9"
    assert envelope.key == "7:anon:a-1"

    seeded = load(SEEDS / "000_1_product_scanned.json")
    kept = build_envelope(seeded, context(), 32 * 1024).data["event_context"]
    assert kept == seeded["data"]["event_context"]


def test_naive_timestamp_is_refused_with_its_field() -> None:
    raw = {**load(CLIENT_SEED_EVENTS[0]), "timestamp": "2024-05-22T18:35:12"}
    with pytest.raises(EventRejected) as caught:
        build_envelope(raw, context(), 32 * 1024)
    assert caught.value.field == "timestamp"


def test_another_brand_in_the_body_is_forbidden() -> None:
    raw = {**load(CLIENT_SEED_EVENTS[0]), "brand_id": "99"}
    with pytest.raises(EventRejected) as caught:
        build_envelope(raw, context(), 32 * 1024)
    assert caught.value.status == 403


def test_oversized_event_is_refused() -> None:
    raw = {"type": "identify", "identifiers": {"id": "u"}, "data": {"blob": "x" * 40_000}}
    with pytest.raises(EventRejected) as caught:
        build_envelope(raw, context(), 32 * 1024)
    assert caught.value.reason == "too_large"


def test_building_twice_gives_the_same_envelope() -> None:
    raw = {**load(CLIENT_SEED_EVENTS[0]), "event_id": "abc"}
    assert build_envelope(raw, context(), 32 * 1024) == build_envelope(raw, context(), 32 * 1024)
