"""The Customer.io fake keeps the documented rules (CUSTOMERIO.md) and injects faults."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from synergy_cio_sink.fake import CustomerIoFake, serve_fake

ULID_1 = "01HZ0000000000000000000001"
ULID_2 = "01HZ0000000000000000000002"


@pytest.fixture
def fake() -> CustomerIoFake:
    return CustomerIoFake({"site": "key"})


@pytest.fixture
async def client(fake: CustomerIoFake) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cio", auth=("site", "key")) as c:
        yield c


def event(event_id: str, name: str = "product_scanned", person: str = "u1", **extra: object) -> dict:
    return {"type": "person", "identifiers": {"id": person}, "action": "event", "name": name,
            "attributes": {"k": 1}, "timestamp": 1716402912, "id": event_id, **extra}


async def test_wrong_credentials_get_401(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    answer = await client.post("/api/v2/batch", json={"batch": [event(ULID_1)]}, auth=("site", "nope"))
    assert answer.status_code == 401
    assert fake.events == {}


async def test_v1_calls_are_recorded(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    identify = await client.put("/api/v1/customers/u1", json={"email": "a@b.co", "plan": "gold"})
    assert identify.status_code == 200
    body = {"name": "product_scanned", "data": {"x": 1}, "timestamp": 1, "id": ULID_1}
    assert (await client.post("/api/v1/customers/u1/events", json=body)).status_code == 200
    anon = {"name": "page_viewed", "anonymous_id": "a1", "id": ULID_2, "type": "page"}
    assert (await client.post("/api/v1/events", json=anon)).status_code == 200

    assert fake.people[("site", "u1")] == {"email": "a@b.co", "plan": "gold"}
    assert [(e.person, e.name, e.type, e.data) for e in fake.event_order] == [
        ("id:u1", "product_scanned", "event", {"x": 1}), ("anon:a1", "page_viewed", "page", {}),
    ]


async def test_redelivered_event_id_is_counted_once(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    for _ in range(3):
        assert (await client.post("/api/v2/batch", json={"batch": [event(ULID_1)]})).status_code == 200
    assert len(fake.events) == 1
    assert fake.duplicates[ULID_1] == 2


async def test_v2_answers_207_per_index(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    batch = [event(ULID_1), event(ULID_2, name="n" * 101), {"type": "person", "action": "identify",
                                                            "identifiers": {"id": "u1"},
                                                            "attributes": {"bio": "x" * 1001}}]
    answer = await client.post("/api/v2/batch", json={"batch": batch})

    assert answer.status_code == 207
    errors = [(e["batch_index"], e["field"]) for e in answer.json()["errors"]]
    assert errors == [(1, "name"), (2, "attributes.bio")]
    assert list(fake.events) == [ULID_1]


async def test_v2_limits(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    big_item = event(ULID_1, attributes={"blob": "x" * 33_000})
    answer = await client.post("/api/v2/batch", json={"batch": [big_item]})
    assert answer.status_code == 207 and answer.json()["errors"][0]["reason"] == "too_large"

    huge = {"batch": [event(ULID_2, attributes={"b": "x" * 30_000}) for _ in range(20)]}
    assert (await client.post("/api/v2/batch", json=huge)).status_code == 400
    assert (await client.post("/api/v2/batch", content=b"{not json")).status_code == 400
    too_many = {f"a{i}": i for i in range(301)}
    answer = await client.put("/api/v1/customers/u2", json=too_many)
    assert answer.status_code == 400
    assert fake.events == {}


async def test_event_data_limit(client: httpx.AsyncClient) -> None:
    body = {"name": "x", "data": {"blob": "x" * 100_001}, "id": ULID_1}
    assert (await client.post("/api/v1/customers/u1/events", json=body)).status_code == 400


async def test_forced_429_has_retry_after(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    fake.force(429, times=2, retry_after=3)
    answers = [await client.post("/api/v2/batch", json={"batch": [event(ULID_1)]}) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "3"
    assert list(fake.events) == [ULID_1]


async def test_outage_answers_503_records_nothing(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    fake.faults.outage = True
    assert (await client.post("/api/v2/batch", json={"batch": [event(ULID_1)]})).status_code == 503
    assert fake.events == {}


async def test_rate_cap_answers_429_over_the_cap(client: httpx.AsyncClient, fake: CustomerIoFake) -> None:
    fake.faults.rate_cap = 5
    statuses = [(await client.post("/api/v2/batch", json={"batch": []})).status_code for _ in range(8)]
    assert statuses.count(429) == 3
    assert fake.max_requests_per_second == 8


async def test_control_api_and_inspection_over_http(fake: CustomerIoFake) -> None:
    async with serve_fake(fake) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post("/_fake/faults", json={"latency": 0.05})
        started = time.monotonic()
        answer = await client.post("/api/v2/batch", json={"batch": [event(ULID_1)]}, auth=("site", "key"))
        assert answer.status_code == 200 and time.monotonic() - started >= 0.05
        received = (await client.get("/_fake/received")).json()
        assert received["unique_events"] == 1
        assert received["events"][0]["event_id"] == ULID_1
        await client.post("/_fake/reset")
        assert (await client.get("/_fake/received")).json()["unique_events"] == 0


async def test_a_malformed_request_is_refused_whole_and_nothing_of_it_stored(
    client: httpx.AsyncClient, fake: CustomerIoFake,
) -> None:
    fake.faults.malformed_marker = "spoiled"
    spoiled = await client.post("/api/v2/batch", json={"batch": [event(ULID_1), event(ULID_2, note="spoiled")]})
    clean = await client.post("/api/v2/batch", json={"batch": [event(ULID_1)]})
    fake.faults.malformed_all = True
    misconfigured = await client.post("/api/v1/customers/u2/events", json={"name": "x", "id": ULID_2})

    assert spoiled.status_code == 400
    assert spoiled.json()["errors"][0]["field"] == "body"
    assert clean.status_code == 200
    assert misconfigured.status_code == 400
    assert set(fake.events) == {ULID_1}
