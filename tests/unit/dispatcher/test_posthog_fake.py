"""The PostHog fake keeps the capture API's rules (the dispatcher's tests lean on them)."""

from __future__ import annotations

import orjson

from tests.fakes.http_server import Request
from tests.fakes.posthog import PostHogFake, item_problem

ITEM = {"event": "e", "distinct_id": "u1", "properties": {}, "timestamp": "2024-05-22T18:35:12Z",
        "uuid": "5e342cbe-9e96-5b3d-afdd-37971640a260"}


async def post(fake: PostHogFake, body: bytes, path: str = "/batch/") -> int:
    return (await fake._handle(Request("POST", path, {}, body))).status


async def test_status_codes_and_dedupe_by_uuid() -> None:
    fake = PostHogFake({"phc_ok"})
    good = orjson.dumps({"api_key": "phc_ok", "batch": [ITEM]})
    assert await post(fake, b"{nope") == 400
    assert await post(fake, orjson.dumps({"api_key": "phc_revoked", "batch": [ITEM]})) == 401
    assert await post(fake, orjson.dumps({"api_key": "phc_ok", "batch": [{**ITEM, "event": ""}]})) == 400
    assert await post(fake, orjson.dumps({"api_key": "phc_ok", "batch": [{**ITEM, "uuid": "x"}]})) == 400
    assert await post(fake, orjson.dumps({"api_key": "phc_ok", "batch": [
        {**ITEM, "properties": {"blob": "x" * 1_000_001}}]})) == 413
    assert await post(fake, b" " * 5_000_001) == 413
    assert len(fake.order) == 0  # a refused request ingests nothing
    assert await post(fake, good) == 200
    assert await post(fake, good) == 200
    assert (len(fake.order), fake.received_items, fake.duplicates) == (1, 2, 1)


async def test_injected_faults_answer_before_anything_is_ingested() -> None:
    fake = PostHogFake({"phc_ok"})
    fake.fail_next(2, 429, retry_after="3")
    good = orjson.dumps({"api_key": "phc_ok", "batch": [ITEM]})
    answer = await fake._handle(Request("POST", "/batch/", {}, good))
    assert (answer.status, answer.headers) == (429, {"retry-after": "3"})
    assert await post(fake, good) == 429
    assert await post(fake, good) == 200
    assert len(fake.order) == 1


def test_item_rules() -> None:
    assert item_problem(ITEM) is None
    assert item_problem({**ITEM, "distinct_id": None}) == "an item has no distinct_id"
    assert item_problem({**ITEM, "properties": []}) == "properties must be an object"
    assert item_problem({**ITEM, "timestamp": "yesterday"}) == "timestamp is not ISO 8601"
