"""Ingest against real Kafka and Postgres: what clients are answered and what reaches the topic."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from synergy_schemas.envelope import is_ulid

from .conftest import RunningIngest, read_topic

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"
CLIENT_SEED_EVENTS = sorted(
    p for p in SEEDS.glob("00[01]_*.json") if "webhook" not in p.name and "achievement_unlocked" not in p.name
)
ALIASES = {"wishlist_added": "wishlist_item_added", "wishlist_removed": "wishlist_item_removed"}
pytestmark = pytest.mark.integration


def headers_of(record: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in record.raw_headers}


async def test_each_seed_event_is_consumed_back_from_kafka(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    brand = await brand_factory()
    sent: dict[str, dict[str, Any]] = {}
    for path in CLIENT_SEED_EVENTS:
        raw = json.loads(path.read_text())
        raw["identifiers"] = {"id": f"{brand.brand_id}-{path.stem}"}
        response = await ingest.client.post(
            "/v1/events", json=raw, headers={**ingest.authed(brand.write_key), "X-Correlation-ID": path.stem}
        )
        assert response.status_code == 202, response.text
        sent[response.json()["event_id"]] = raw

    records = await read_topic(kafka_bootstrap, ingest.topic, len(sent))
    mine = {
        orjson.loads(r.value)["event_id"]: r
        for r in records
        if orjson.loads(r.value)["brand_id"] == brand.brand_id
    }
    assert set(mine) == set(sent)
    for event_id, raw in sent.items():
        record = mine[event_id]
        envelope = orjson.loads(record.value)
        assert record.key.decode() == f"{brand.brand_id}:{raw['identifiers']['id']}"
        assert envelope["name"] == ALIASES.get(raw["name"], raw["name"])
        assert envelope["identifiers"] == raw["identifiers"]
        assert envelope["timestamp"].replace("+00:00", "Z") == raw["timestamp"]
        assert envelope["source"] == "ingest" and envelope["schema_version"] == 1
        without_context = {k: v for k, v in envelope["data"].items() if k != "event_context"}
        assert without_context == {k: v for k, v in raw["data"].items() if k != "event_context"}
        sent_location = (raw["data"].get("event_context") or {}).get("location") or {}
        expected_ip = sent_location.get("ip_address", "127.0.0.1")
        assert envelope["data"]["event_context"]["location"]["ip_address"] == expected_ip
        headers = headers_of(record)
        assert headers["event_name"] == envelope["name"]
        assert headers["schema_version"] == "1"
        assert headers["correlation_id"] == envelope["correlation_id"]
        assert envelope["correlation_id"].startswith(("000_", "001_"))


async def test_batch_accepts_the_valid_and_reports_the_invalid_by_index(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    brand = await brand_factory()
    good = json.loads((SEEDS / "000_1_product_scanned.json").read_text())
    good["identifiers"] = {"id": f"batch-{brand.brand_id}"}
    batch = [
        good,
        {**good, "name": "no_such_event"},
        {**good, "timestamp": "yesterday"},
        {**good, "event_id": "client-7"},
        "not an object",
    ]
    response = await ingest.client.post(
        "/v1/events/batch", json={"batch": batch}, headers=ingest.authed(brand.write_key)
    )
    assert response.status_code == 207
    body = response.json()
    assert [a["index"] for a in body["accepted"]] == [0, 3]
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "name"), (2, "timestamp"), (4, "body")]

    records = await read_topic(kafka_bootstrap, ingest.topic, 2)
    landed = [
        orjson.loads(r.value)["event_id"]
        for r in records
        if orjson.loads(r.value)["brand_id"] == brand.brand_id
    ]
    assert sorted(landed) == sorted(a["event_id"] for a in body["accepted"])

    none_valid = await ingest.client.post(
        "/v1/events/batch", json={"batch": batch[1:3]}, headers=ingest.authed(brand.write_key)
    )
    assert none_valid.status_code == 422
    assert none_valid.headers["content-type"].startswith("application/problem+json")
    assert none_valid.json()["accepted"] == []


async def test_retried_client_event_id_keeps_its_event_id(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    raw = json.loads((SEEDS / "001_1_product_scanned.json").read_text())
    raw["event_id"] = "order-123-scan"
    first = await ingest.client.post("/v1/events", json=raw, headers=ingest.authed(brand.write_key))
    again = await ingest.client.post("/v1/events", json=raw, headers=ingest.authed(brand.write_key))
    assert first.status_code == again.status_code == 202
    assert first.json()["event_id"] == again.json()["event_id"]
    assert is_ulid(first.json()["event_id"])


async def test_auth_missing_wrong_and_other_brands_key(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    brand_a = await brand_factory("Brand A")
    brand_b = await brand_factory("Brand B")
    raw = json.loads((SEEDS / "001_1_product_scanned.json").read_text())

    missing = await ingest.client.post("/v1/events", json=raw)
    assert missing.status_code == 401
    assert missing.json()["field"] == "Authorization"
    wrong = await ingest.client.post("/v1/events", json=raw, headers=ingest.authed("swk_not-a-key"))
    assert wrong.status_code == 401

    as_a_with_b_key = await ingest.client.post(
        "/v1/events", json={**raw, "brand_id": brand_a.brand_id}, headers=ingest.authed(brand_b.write_key)
    )
    assert as_a_with_b_key.status_code == 403
    assert as_a_with_b_key.json()["field"] == "brand_id"

    raw["identifiers"] = {"id": f"shared-user-{brand_a.brand_id}"}
    with_b_key = await ingest.client.post("/v1/events", json=raw, headers=ingest.authed(brand_b.write_key))
    assert with_b_key.status_code == 202
    records = await read_topic(kafka_bootstrap, ingest.topic, 1)
    landed = [
        orjson.loads(r.value)
        for r in records
        if orjson.loads(r.value)["event_id"] == with_b_key.json()["event_id"]
    ]
    assert [e["brand_id"] for e in landed] == [brand_b.brand_id]
    assert not [r for r in records if orjson.loads(r.value)["brand_id"] == brand_a.brand_id]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"{not json", "application/json", 400, "body"),
        (b"", "application/json", 400, "body"),
        (b'{"name": "product_scanned"}', "text/xml", 415, "Content-Type"),
        (
            b'{"identifiers": {"id": "u"}, "name": "product_scanned", "data": []}',
            "application/json",
            422,
            "data",
        ),
        (b'{"identifiers": {}, "name": "product_scanned"}', "application/json", 422, "identifiers"),
        (b"[1, 2]", "application/json", 422, "body"),
        (b'{"a": "' + b"x" * 40_000 + b'"}', "application/json", 413, "body"),
    ],
)
async def test_malformed_input_gets_a_problem_naming_the_field(
    ingest: RunningIngest, brand_factory: Any, body: bytes, content_type: str, status: int, field: str
) -> None:
    brand = await brand_factory()
    response = await ingest.client.post(
        "/v1/events", content=body, headers={**ingest.authed(brand.write_key), "Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"].startswith(field)


async def test_batch_over_the_limits_is_413(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    event = {"type": "identify", "identifiers": {"id": "u"}, "data": {"k": "v"}}
    too_many = await ingest.client.post(
        "/v1/events/batch", json={"batch": [event] * 501}, headers=ingest.authed(brand.write_key)
    )
    assert too_many.status_code == 413
    big = {"type": "identify", "identifiers": {"id": "u"}, "data": {"k": "v" * 20_000}}
    too_big = await ingest.client.post(
        "/v1/events/batch", json={"batch": [big] * 30}, headers=ingest.authed(brand.write_key)
    )
    assert too_big.status_code == 413


async def test_segment_routes_take_basic_auth_and_body_write_key(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    brand = await brand_factory()
    basic = base64.b64encode(f"{brand.write_key}:".encode()).decode()
    track = await ingest.client.post(
        "/v1/track",
        json={
            "userId": "seg-1",
            "event": "product_viewed",
            "messageId": "seg-m-1",
            "properties": {"product_id": "prod_001", "product_price": 1999},
            "timestamp": "2025-01-15T14:30:00Z",
        },
        headers={"Authorization": f"Basic {basic}"},
    )
    assert track.status_code == 200, track.text
    identify = await ingest.client.post(
        "/v1/identify",
        json={"userId": "seg-1", "traits": {"email": "a@example.com"}, "writeKey": brand.write_key},
    )
    assert identify.status_code == 200, identify.text
    ids = {track.json()["event_id"], identify.json()["event_id"]}
    records = await read_topic(kafka_bootstrap, ingest.topic, 2)
    landed = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in records}
    assert ids <= set(landed)
    assert landed[identify.json()["event_id"]]["data"] == {"email": "a@example.com"}
    assert landed[track.json()["event_id"]]["source"] == "segment"


async def test_segment_python_client_events_arrive_in_kafka(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str
) -> None:
    import asyncio

    from segment.analytics import Client

    brand = await brand_factory()
    errors: list[Any] = []
    client = Client(
        write_key=brand.write_key,
        host=ingest.url,
        on_error=lambda e, batch: errors.append(e),
        sync_mode=False,
        max_retries=1,
    )
    user = f"segment-user-{brand.brand_id}"
    client.identify(user, {"email": "jane@example.com", "plan": "gold"})
    client.track(
        user, "product_viewed", {"product_id": "prod_001", "product_name": "Guide", "product_price": 1999}
    )
    client.track(user, "wishlist_added", {"product_snapshot": {"identity": {"product_id": 45}}})
    client.page(user, name="Home", properties={"path": "/"})
    client.screen(user, name="Cart")
    await asyncio.to_thread(client.flush)
    await asyncio.to_thread(client.join)
    assert errors == []

    records = await read_topic(kafka_bootstrap, ingest.topic, 5)
    mine = [orjson.loads(r.value) for r in records if r.key.decode() == f"{brand.brand_id}:{user}"]
    assert sorted((e["type"], e.get("name")) for e in mine) == sorted(
        [
            ("identify", None),
            ("track", "product_viewed"),
            ("track", "wishlist_item_added"),
            ("page", "Home"),
            ("screen", "Cart"),
        ]
    )
