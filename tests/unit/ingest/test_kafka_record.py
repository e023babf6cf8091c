"""The record ingest writes is byte for byte the envelope's own serialisation, key and headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from synergy_ingest.client_events import accept_event, parse_client_event
from synergy_ingest.request_context import RequestContext

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"
CLIENT_SEED_EVENTS = sorted(
    p for p in SEEDS.glob("00[01]_*.json") if "webhook" not in p.name and "achievement_unlocked" not in p.name
)
CONTEXT = RequestContext("7", datetime(2024, 5, 22, 18, 40, tzinfo=UTC), "corr-1", "curl/8", "203.0.113.9")


@pytest.mark.parametrize("path", CLIENT_SEED_EVENTS, ids=lambda p: p.stem)
def test_record_is_the_envelopes_own_bytes(path: Path) -> None:
    accepted = accept_event(parse_client_event(json.loads(path.read_text())), CONTEXT, 32 * 1024)
    envelope = accepted.envelope
    assert accepted.record.value == envelope.to_json_bytes()
    assert accepted.record.key == envelope.key.encode()
    assert accepted.record.headers == envelope.kafka_headers()
    assert accepted.event_id == envelope.event_id


def test_an_anonymous_identify_without_a_name() -> None:
    raw = {
        "type": "identify",
        "identifiers": {"anonymous_id": "a-1"},
        "data": {"plan": "gold"},
        "event_id": "x",
    }
    accepted = accept_event(parse_client_event(raw), CONTEXT, 32 * 1024)
    assert accepted.record.key == b"7:anon:a-1"
    assert json.loads(accepted.record.value) == {
        "event_id": "3DDY8GW3ATDAD5A4M6T7RCGXN1",  # from brand 7 and client id "x", as it always was
        "type": "identify",
        "brand_id": "7",
        "identifiers": {"anonymous_id": "a-1"},
        "data": {"plan": "gold"},
        "timestamp": "2024-05-22T18:40:00Z",
        "received_at": "2024-05-22T18:40:00Z",
        "schema_version": 1,
        "source": "ingest",
        "correlation_id": "corr-1",
    }
    assert accepted.record.value == accepted.envelope.to_json_bytes()
    assert accepted.record.headers == [
        ("event_name", b"identify"),
        ("schema_version", b"1"),
        ("correlation_id", b"corr-1"),
    ]


def test_accepting_twice_gives_the_same_record() -> None:
    raw = json.loads(CLIENT_SEED_EVENTS[0].read_text()) | {"event_id": "client-7"}
    first = accept_event(parse_client_event(raw), CONTEXT, 32 * 1024)
    again = accept_event(parse_client_event(raw), CONTEXT, 32 * 1024)
    assert first.record == again.record
