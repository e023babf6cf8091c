"""Per-brand quotas: a brand over its quota gets 429 with Retry-After, other brands are unaffected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from ulid import ULID

from tests.support import ingest_in_process

from .conftest import Brand, read_topic

pytestmark = pytest.mark.integration
SEED = Path(__file__).parents[2] / "fixtures" / "seed_examples" / "000_1_product_scanned.json"


def event(event_id: str) -> dict[str, Any]:
    return {**json.loads(SEED.read_text()), "identifiers": {"id": "quota-user"}, "event_id": event_id}


def throttled_total(metrics: str, brand_id: str) -> float:
    prefix = f'synergy_ingest_events_throttled_total{{brand_id="{brand_id}"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


@pytest.fixture(scope="module")
async def limited_ingest(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[..., Awaitable[str]]
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    topic = await topic_factory(partitions=3)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("INGEST_RATE_LIMIT_PER_BRAND", "5")
    monkeypatch.setenv("INGEST_RATE_LIMIT_BURST", "10")
    try:
        async with ingest_in_process(kafka_bootstrap, database_url, topic, publish_timeout=5) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield client, topic
    finally:
        monkeypatch.undo()


async def brand_with(database_url: str, settings: dict[str, object] | None = None) -> Brand:
    pool = await create_pool(database_url)
    try:
        created = await create_brand(
            pool, "Quota Brand", CredentialCipher(CredentialCipher.generate_key()), settings=settings
        )
    finally:
        await pool.close()
    return Brand(created.brand_id, created.write_key)


async def test_a_brand_over_its_quota_gets_429_and_other_brands_pass(
    limited_ingest: tuple[httpx.AsyncClient, str], database_url: str, kafka_bootstrap: str
) -> None:
    client, topic = limited_ingest
    noisy, quiet = await brand_with(database_url), await brand_with(database_url)
    noisy_auth = {"Authorization": f"Bearer {noisy.write_key}"}
    quiet_auth = {"Authorization": f"Bearer {quiet.write_key}"}
    before = throttled_total((await client.get("/metrics")).text, noisy.brand_id)

    burst_ids = [str(ULID()) for _ in range(10)]
    burst = await client.post(
        "/v1/events/batch", json={"batch": [event(i) for i in burst_ids]}, headers=noisy_auth
    )
    assert burst.status_code == 202, burst.text

    over_ids = [str(ULID()) for _ in range(3)]
    over = await client.post(
        "/v1/events/batch", json={"batch": [event(i) for i in over_ids]}, headers=noisy_auth
    )
    assert over.status_code == 429, over.text
    assert over.headers["content-type"].startswith("application/problem+json")
    assert int(over.headers["retry-after"]) >= 1
    single_id = str(ULID())
    single = await client.post("/v1/events", json=event(single_id), headers=noisy_auth)
    assert single.status_code == 429
    segment = await client.post(
        "/v1/track",
        json={"userId": "quota-user", "event": "product_scanned", "messageId": str(ULID())},
        headers=noisy_auth,
    )
    assert segment.status_code == 429

    quiet_ids = [str(ULID()) for _ in range(10)]
    quiet_answer = await client.post(
        "/v1/events/batch", json={"batch": [event(i) for i in quiet_ids]}, headers=quiet_auth
    )
    assert quiet_answer.status_code == 202, "another brand's quota is its own"

    after = throttled_total((await client.get("/metrics")).text, noisy.brand_id)
    assert after - before == 5  # 3 in the batch, 1 single, 1 Segment track

    await asyncio.sleep(int(over.headers["retry-after"]))
    retried = await client.post("/v1/events", json=event(single_id), headers=noisy_auth)
    assert retried.status_code == 202, retried.text

    records = await read_topic(kafka_bootstrap, topic, 21)
    in_topic = {orjson.loads(r.value)["event_id"] for r in records}
    assert set(burst_ids) | set(quiet_ids) | {single_id} <= in_topic
    assert not set(over_ids) & in_topic, "throttled events must not be written"


async def test_a_brands_own_settings_override_the_default_quota(
    limited_ingest: tuple[httpx.AsyncClient, str], database_url: str
) -> None:
    client, _ = limited_ingest
    generous = await brand_with(
        database_url, {"ingest_rate_limit_per_second": 1000, "ingest_rate_limit_burst": 200}
    )
    unlimited = await brand_with(database_url, {"ingest_rate_limit_per_second": 0})
    strict = await brand_with(database_url, {"ingest_rate_limit_per_second": 1, "ingest_rate_limit_burst": 2})

    for brand, sizes, expected in (
        (generous, [100, 100], [202, 202]),
        (unlimited, [100, 100, 100], [202, 202, 202]),
        (strict, [2, 1], [202, 429]),
    ):
        statuses = []
        for size in sizes:
            answer = await client.post(
                "/v1/events/batch",
                json={"batch": [event(str(ULID())) for _ in range(size)]},
                headers={"Authorization": f"Bearer {brand.write_key}"},
            )
            statuses.append(answer.status_code)
        assert statuses == expected, (brand, statuses)
