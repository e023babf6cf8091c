"""Seed 002's webhook envelope and PostHog's batch items, from seed 000's own examples."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
from synergy_dispatcher.mapping import (
    event_uuid,
    order_key,
    posthog_batch_body,
    posthog_item,
    posthog_request_chunks,
    webhook_payload,
)
from synergy_dispatcher.model import Destination, destinations_for

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"


def envelope_of(example: str, **overrides: Any) -> dict[str, Any]:
    event = json.loads((SEEDS / example).read_text())
    envelope = {
        "event_id": "01HYB2K5J4X8Q6V9M3N7P1R2S4", "type": "track", "name": event["name"], "brand_id": "7",
        "identifiers": event["identifiers"], "data": event["data"], "timestamp": event["timestamp"],
        "received_at": "2024-05-22T18:35:13Z", "schema_version": 1, "source": "ingest",
        "correlation_id": "corr-1",
    }
    envelope.update(overrides)
    return envelope


def test_the_webhook_gets_seed_002s_envelope() -> None:
    envelope = envelope_of("000_1_product_scanned.json")
    payload = webhook_payload(envelope)
    assert list(payload) == ["event_id", "event_name", "occurred_at", "organization_id", "user_id",
                             "entity_type", "entity_id", "correlation_id", "source", "schema_version",
                             "properties"]
    data = json.loads((SEEDS / "000_1_product_scanned.json").read_text())["data"]
    assert payload == {
        "event_id": "01HYB2K5J4X8Q6V9M3N7P1R2S4", "event_name": "product_scanned",
        "occurred_at": "2024-05-22T18:35:12Z", "organization_id": "7", "user_id": "user-123",
        "entity_type": "product", "entity_id": "45", "correlation_id": "corr-1", "source": "ingest",
        "schema_version": 1, "properties": data,
    }


def test_an_achievement_is_its_own_entity_and_an_anonymous_user_is_named_by_its_id() -> None:
    envelope = envelope_of("000_5_achievement_unlocked.json", identifiers={"anonymous_id": "a-9"},
                           source="achievements")
    payload = webhook_payload(envelope)
    assert (payload["entity_type"], payload["entity_id"], payload["user_id"], payload["source"]) == (
        "achievement", "first_scan", "a-9", "achievements")


def test_the_posthog_item() -> None:
    envelope = envelope_of("000_7_user_session_started.json")
    item = posthog_item(envelope)
    data = json.loads((SEEDS / "000_7_user_session_started.json").read_text())["data"]
    assert item == {
        "event": "user_session_started", "distinct_id": "user-123",
        "properties": {**data, "$groups": {"brand": "7"}, "synergy_event_id": "01HYB2K5J4X8Q6V9M3N7P1R2S4",
                       "correlation_id": "corr-1"},
        "timestamp": "2024-05-22T18:35:12Z",
        "uuid": "5e342cbe-9e96-5b3d-afdd-37971640a260",  # UUIDv5 of the event id: a redelivery dedupes
    }


def test_the_uuid_depends_on_the_event_id_only() -> None:
    first = posthog_item(envelope_of("000_1_product_scanned.json"))
    again = posthog_item(envelope_of("000_1_product_scanned.json", received_at="2030-01-01T00:00:00Z"))
    other = posthog_item(envelope_of("000_1_product_scanned.json", event_id="01HYB2K5J4X8Q6V9M3N7P1R2S5"))
    assert first["uuid"] == again["uuid"] == "5e342cbe-9e96-5b3d-afdd-37971640a260"
    assert other["uuid"] != first["uuid"]
    assert first["uuid"][14] == "5"  # version 5


def test_identify_becomes_identify_with_set() -> None:
    envelope = envelope_of("000_1_product_scanned.json", type="identify", name=None,
                           data={"email": "jane@example.com", "plan": "gold"})
    item = posthog_item(envelope)
    assert item["event"] == "$identify"
    assert item["properties"] == {"$set": {"email": "jane@example.com", "plan": "gold"},
                                  "$groups": {"brand": "7"}, "synergy_event_id": "01HYB2K5J4X8Q6V9M3N7P1R2S4"}


def test_mapping_twice_gives_the_same_result_and_leaves_the_envelope_alone() -> None:
    envelope = envelope_of("000_2_referral_initiated.json")
    before = copy.deepcopy(envelope)
    assert webhook_payload(envelope) == webhook_payload(envelope)
    assert posthog_item(envelope) == posthog_item(envelope)
    assert envelope == before


def test_order_keys_keep_each_destination_and_anonymous_ids_apart() -> None:
    known = envelope_of("000_1_product_scanned.json")
    anonymous = envelope_of("000_1_product_scanned.json", identifiers={"anonymous_id": "user-123"})
    assert order_key("3", known) == "3:7:user-123"
    assert order_key("4", known) == "4:7:user-123"
    assert order_key("3", anonymous) == "3:7:anon:user-123"


def test_requests_stay_within_the_size_limit_and_keep_item_order() -> None:
    items = [b"x" * 450, b"y" * 450, b"z" * 450, b"w" * 100]  # + 128 bytes of envelope
    assert posthog_request_chunks(items, 1000) == [[0], [1], [2, 3]]
    body = posthog_batch_body("phc_key", [b'{"event":"a"}', b'{"event":"b"}'])
    assert orjson.loads(body) == {"api_key": "phc_key", "batch": [{"event": "a"}, {"event": "b"}]}


def test_a_brand_gets_its_own_and_the_deployments_destinations_but_not_disabled_ones() -> None:
    mine = Destination("1", "7", "hook", "webhook")
    theirs = Destination("2", "8", "hook", "webhook")
    deployment = Destination("3", None, "deployment-posthog", "posthog")
    gone = Destination("4", "7", "old", "webhook", state="disabled", disabled_reason="HTTP 410")
    paused = Destination("5", "7", "ph", "posthog", state="paused")
    assert [d.id for d in destinations_for("7", [mine, theirs, deployment, gone, paused])] == ["1", "3", "5"]
    assert [d.id for d in destinations_for("8", [mine, theirs, deployment, gone, paused])] == ["2", "3"]


def test_the_uuid_is_the_standard_uuid5_of_the_event_id() -> None:
    namespace = uuid.UUID("6f1c2b1e-3d4a-5b6c-9d7e-8f9a0b1c2d3e")
    for event_id in ("01J9ZX4T7Q8N6F5R3W2Y1V0B9C", "", "é-ünïcode", "x" * 300):
        assert event_uuid(event_id) == str(uuid.uuid5(namespace, event_id))
