"""Kafka down or frozen mid-test: every answer tells the truth about what reached the topic.

- 202: the event is in the topic.
- 503 without `outcome`: the event is not in the topic.
- 503 with `outcome: "unknown"`: it lists the event ids it used; resending those ids is safe.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from ulid import ULID

from tests.conftest import consume
from tests.support import frozen_process

from .conftest import RunningIngest, read_topic

pytestmark = pytest.mark.integration
SEED = Path(__file__).parents[2] / "fixtures" / "seed_examples" / "000_1_product_scanned.json"


def seed_event(user: str, event_id: str) -> dict[str, Any]:
    return {**json.loads(SEED.read_text()), "identifiers": {"id": user}, "event_id": event_id}


async def test_kafka_outage_answers_503_only_for_what_is_not_in_the_topic(
    ingest: RunningIngest, brand_factory: Any, kafka_control: Any, kafka_bootstrap: str
) -> None:
    brand = await brand_factory()
    headers = ingest.authed(brand.write_key)
    acknowledged: set[str] = set()
    not_written: set[str] = set()
    unknown: set[str] = set()

    async def post(event_id: str) -> int:
        event = seed_event(f"outage-{event_id[-1]}", event_id)
        response = await ingest.client.post("/v1/events", json=event, headers=headers)
        if response.status_code == 202:
            assert response.json()["event_id"] == event_id
            acknowledged.add(event_id)
        else:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            problem = response.json()
            if problem.get("outcome") == "unknown":
                assert problem["event_ids"] == [event_id]
                unknown.add(event_id)
            else:
                assert "outcome" not in problem
                not_written.add(event_id)
        return response.status_code

    before = [await post(str(ULID())) for _ in range(20)]
    assert before == [202] * 20

    await asyncio.to_thread(kafka_control.stop_kafka)
    try:
        during = [await post(str(ULID())) for _ in range(4)]
    finally:
        await asyncio.to_thread(kafka_control.start_kafka)
    assert during == [503] * 4
    assert not_written, "once the producer knows every broker is down, nothing is handed to it"

    recovered = False
    for _ in range(60):
        if await post(str(ULID())) == 202:
            recovered = True
            break
        await asyncio.sleep(0.5)
    assert recovered
    for event_id in sorted(unknown):  # the client resends what it was told may be missing
        assert await post(event_id) == 202

    records = await read_topic(kafka_bootstrap, ingest.topic, len(acknowledged), timeout=30)
    in_topic = {orjson.loads(r.value)["event_id"] for r in records}
    assert acknowledged <= in_topic, f"{len(acknowledged - in_topic)} acknowledged events are not in Kafka"
    assert not (not_written & in_topic), "a 503 without outcome was written after all"


async def test_a_frozen_broker_gives_503_outcome_unknown_and_a_resend_is_accepted(
    ingest: RunningIngest, brand_factory: Any, kafka_control: Any, kafka_bootstrap: str
) -> None:
    """SIGSTOP keeps the connections open: records are sent and never acknowledged. The answer waits
    for the producer to settle them, then says it does not know, with the ids to resend."""
    brand = await brand_factory()
    headers = ingest.authed(brand.write_key)
    warm = await ingest.client.post("/v1/events", json=seed_event("frozen-0", str(ULID())), headers=headers)
    assert warm.status_code == 202
    pid = kafka_control.local.kafka_pid()
    assert pid is not None
    single_id = str(ULID())
    batch_ids = [str(ULID()) for _ in range(3)]
    with frozen_process(pid):
        single, batch = await asyncio.gather(
            ingest.client.post("/v1/events", json=seed_event("frozen-1", single_id), headers=headers),
            ingest.client.post(
                "/v1/events/batch",
                json={"batch": [seed_event(f"frozen-{i}", event_id) for i, event_id in enumerate(batch_ids)]},
                headers=headers,
            ),
        )

    assert single.status_code == 503, single.text
    assert single.json()["outcome"] == "unknown"
    assert single.json()["event_ids"] == [single_id]
    assert batch.status_code == 503, batch.text
    assert batch.json()["outcome"] == "unknown"
    assert sorted(batch.json()["event_ids"]) == sorted(batch_ids)
    assert [(u["index"], u["event_id"], u["outcome"]) for u in batch.json()["unwritten"]] == [
        (0, batch_ids[0], "unknown"),
        (1, batch_ids[1], "unknown"),
        (2, batch_ids[2], "unknown"),
    ]

    for _ in range(60):
        resent = await ingest.client.post(
            "/v1/events", json=seed_event("frozen-1", single_id), headers=headers
        )
        if resent.status_code == 202:
            break
        await asyncio.sleep(0.5)
    assert resent.status_code == 202, resent.text
    assert resent.json()["event_id"] == single_id
    again = await ingest.client.post(
        "/v1/events/batch",
        json={"batch": [seed_event(f"frozen-{i}", event_id) for i, event_id in enumerate(batch_ids)]},
        headers=headers,
    )
    assert again.status_code == 202, again.text
    assert [a["event_id"] for a in again.json()["accepted"]] == batch_ids

    wanted = {single_id, *batch_ids}
    await consume(
        kafka_bootstrap,
        ingest.topic,
        until=lambda records: wanted <= {orjson.loads(r.value)["event_id"] for r in records},
        timeout=30,
    )
