"""Kafka stopped mid-test: 503 while it is down, never a 202 without a durable write, back after restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from .conftest import RunningIngest, read_topic

pytestmark = pytest.mark.integration
SEED = Path(__file__).parents[2] / "fixtures" / "seed_examples" / "000_1_product_scanned.json"


async def test_kafka_outage_gives_503_and_every_acknowledged_event_is_in_the_topic(
    ingest: RunningIngest, brand_factory: Any, kafka_control: Any, kafka_bootstrap: str
) -> None:
    infra = kafka_control
    brand = await brand_factory()
    raw = json.loads(SEED.read_text())
    acknowledged: list[str] = []
    statuses: list[int] = []

    async def post(i: int) -> None:
        event = {**raw, "identifiers": {"id": f"outage-{i % 7}"}, "event_id": f"outage-{brand.brand_id}-{i}"}
        response = await ingest.client.post("/v1/events", json=event, headers=ingest.authed(brand.write_key))
        statuses.append(response.status_code)
        if response.status_code == 202:
            acknowledged.append(response.json()["event_id"])
        else:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()

    for i in range(20):
        await post(i)
    assert statuses.count(202) == 20

    await asyncio.to_thread(infra.stop_kafka)
    during: list[int] = []
    try:
        for i in range(20, 23):
            await post(i)
            during.append(statuses[-1])
    finally:
        await asyncio.to_thread(infra.start_kafka)
    assert during == [503, 503, 503]

    recovered = False
    for i in range(23, 60):
        await post(i)
        if statuses[-1] == 202:
            recovered = True
        if recovered and statuses[-3:] == [202, 202, 202]:
            break
        await asyncio.sleep(0.5)
    assert recovered, statuses

    records = await read_topic(kafka_bootstrap, ingest.topic, len(acknowledged), timeout=30)
    in_topic = {orjson.loads(r.value)["event_id"] for r in records}
    missing = set(acknowledged) - in_topic
    assert not missing, f"{len(missing)} acknowledged events are not in Kafka"
