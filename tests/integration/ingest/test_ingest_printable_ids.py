"""A NUL or another control character in an id or a name is refused on every route, naming the field."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from ulid import ULID

from .conftest import RunningIngest, read_topic

pytestmark = pytest.mark.integration


def native(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "name": "product_scanned",
        "identifiers": {"id": "user-1"},
        "data": {},
    }
    event.update(overrides)
    return event


NATIVE_CASES = [
    (native(identifiers={"id": "user\x001"}), "identifiers.id"),
    (native(identifiers={"anonymous_id": "anon\x1f"}), "identifiers.anonymous_id"),
    (native(event_id="retry\x00-1"), "event_id"),
    (native(type="page", name="Home\x07"), "name"),
    (native(brand_id="1\x00"), "brand_id"),
    (native(identifiers={"id": "line\u2028break"}), "identifiers.id"),
    (native(identifiers={"id": "del\x7f"}), "identifiers.id"),
]


@pytest.mark.parametrize(("event", "field"), NATIVE_CASES, ids=[f for _, f in NATIVE_CASES])
async def test_native_routes_refuse_control_characters(
    ingest: RunningIngest, brand_factory: Any, event: dict[str, Any], field: str
) -> None:
    brand = await brand_factory()
    single = await ingest.client.post("/v1/events", json=event, headers=ingest.authed(brand.write_key))
    assert single.status_code == 422, single.text
    assert single.json()["field"] == field

    good = native(event_id=str(ULID()))
    batch = await ingest.client.post(
        "/v1/events/batch", json={"batch": [good, event]}, headers=ingest.authed(brand.write_key)
    )
    assert batch.status_code == 207, batch.text
    assert [(e["index"], e["field"]) for e in batch.json()["errors"]] == [(1, field)]
    assert [a["event_id"] for a in batch.json()["accepted"]] == [good["event_id"]]


SEGMENT_CASES = [
    ({"userId": "user\x00"}, "userId"),
    ({"anonymousId": "anon\x01", "userId": None}, "anonymousId"),
    ({"messageId": "m\x00"}, "messageId"),
    ({"event": "product_scanned\x00"}, "event"),
]


@pytest.mark.parametrize(("change", "field"), SEGMENT_CASES, ids=[f for _, f in SEGMENT_CASES])
async def test_segment_routes_refuse_control_characters(
    ingest: RunningIngest, brand_factory: Any, change: dict[str, Any], field: str
) -> None:
    brand = await brand_factory()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{brand.write_key}:".encode()).decode()}
    message = {
        "type": "track",
        "userId": "user-1",
        "event": "product_scanned",
        "messageId": str(ULID()),
        **change,
    }
    single = await ingest.client.post("/v1/track", json=message, headers=auth)
    assert single.status_code == 422, single.text
    assert single.json()["field"] == field
    batch = await ingest.client.post("/v1/batch", json={"batch": [message]}, headers=auth)
    assert batch.status_code == 422, batch.text
    assert [(e["index"], e["field"]) for e in batch.json()["errors"]] == [(0, field)]


async def test_no_control_character_reaches_the_topic(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    brand = await brand_factory()
    for event, _ in NATIVE_CASES:
        await ingest.client.post("/v1/events", json=event, headers=ingest.authed(brand.write_key))
    marker = native(event_id=str(ULID()), identifiers={"id": "after-the-bad-ones"})
    assert (
        await ingest.client.post("/v1/events", json=marker, headers=ingest.authed(brand.write_key))
    ).status_code == 202
    records = await read_topic(kafka_bootstrap, ingest.topic, 1)
    mine = [orjson.loads(r.value) for r in records if orjson.loads(r.value)["brand_id"] == brand.brand_id]
    assert [e["event_id"] for e in mine] == [marker["event_id"]]
