"""Segment-compatible routes take what Segment's and RudderStack's servers take: any Content-Type, gzip.

Size limits hold after decompression, and the compressed body is bounded too.
"""

from __future__ import annotations

import base64
import gzip
import os
from typing import Any

import orjson
import pytest
from ulid import ULID

from .conftest import RunningIngest, read_topic

pytestmark = pytest.mark.integration


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def track(message_id: str) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "sdk-user",
        "event": "product_viewed",
        "messageId": message_id,
        "properties": {"product_id": "prod_001"},
    }


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", None, "application/x-www-form-urlencoded", "application/json; charset=utf-8"],
)
async def test_gzip_batch_with_any_content_type_is_accepted(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str, content_type: str | None
) -> None:
    brand = await brand_factory()
    ids = [str(ULID()), str(ULID())]
    headers = {"Authorization": basic(brand.write_key), "Content-Encoding": "gzip"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = gzip.compress(orjson.dumps({"batch": [track(i) for i in ids], "sentAt": "2026-12-01T08:00:00Z"}))
    answer = await ingest.client.post("/v1/batch", content=body, headers=headers)
    if content_type is None:
        assert "content-type" not in {k.lower() for k in answer.request.headers}
    assert answer.status_code == 200, answer.text
    assert [a["event_id"] for a in answer.json()["accepted"]] == ids

    records = await read_topic(kafka_bootstrap, ingest.topic, 1)
    landed = [orjson.loads(r.value)["event_id"] for r in records]
    assert all(landed.count(i) == 1 for i in ids), "each event reaches the topic once"


async def test_gzip_track_with_text_plain_is_accepted(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    message_id = str(ULID())
    answer = await ingest.client.post(
        "/v1/track",
        content=gzip.compress(orjson.dumps(track(message_id))),
        headers={
            "Authorization": basic(brand.write_key),
            "Content-Encoding": "gzip",
            "Content-Type": "text/plain",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["event_id"] == message_id


async def test_a_gzip_bomb_gets_413(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    inflates_to_20_mb = gzip.compress(b'{"batch": [' + b" " * 20_000_000 + b"]}")
    assert len(inflates_to_20_mb) < 100_000
    answer = await ingest.client.post(
        "/v1/batch",
        content=inflates_to_20_mb,
        headers={"Authorization": basic(brand.write_key), "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["field"] == "body"


async def test_a_compressed_body_over_the_limit_gets_413(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    incompressible = gzip.compress(os.urandom(600_000))
    answer = await ingest.client.post(
        "/v1/batch",
        content=incompressible,
        headers={"Authorization": basic(brand.write_key), "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 413, answer.text


async def test_a_truncated_gzip_body_gets_400(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    truncated = gzip.compress(orjson.dumps({"batch": [track(str(ULID()))]}))[:-12]
    answer = await ingest.client.post(
        "/v1/batch",
        content=truncated,
        headers={"Authorization": basic(brand.write_key), "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "body"


async def test_native_routes_still_want_json(ingest: RunningIngest, brand_factory: Any) -> None:
    brand = await brand_factory()
    answer = await ingest.client.post(
        "/v1/events",
        content=b'{"identifiers": {"id": "u"}, "type": "identify"}',
        headers={**ingest.authed(brand.write_key), "Content-Type": "text/plain"},
    )
    assert answer.status_code == 415
    assert answer.json()["field"] == "Content-Type"


async def test_every_member_of_a_multi_member_gzip_body_is_read(
    ingest: RunningIngest, brand_factory: Any
) -> None:
    brand = await brand_factory()
    message_id = str(ULID())
    document = orjson.dumps({"batch": [track(message_id)]})
    two_members = gzip.compress(document[:20]) + gzip.compress(document[20:])
    answer = await ingest.client.post(
        "/v1/batch",
        content=two_members,
        headers={"Authorization": basic(brand.write_key), "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 200, answer.text
    assert [a["event_id"] for a in answer.json()["accepted"]] == [message_id]
