"""EventPublisher hands the records of every request that reached it within one loop iteration to
librdkafka in one burst. Against real Kafka: concurrent requests each get the outcome of exactly
their own records, every record lands once, and a request abandoned before the hand-over writes
nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from synergy_ingest.publish_outcome import OutgoingRecord
from synergy_ingest.publisher import EventPublisher

from tests.conftest import consume

pytestmark = pytest.mark.integration


def request_records(request: int, count: int) -> list[OutgoingRecord]:
    return [
        OutgoingRecord(f"7:user-{request}".encode(), f"r{request}-e{index}".encode(), [("event_name", b"x")])
        for index in range(count)
    ]


@asynccontextmanager
async def running_publisher(kafka_bootstrap: str, topic: str) -> AsyncIterator[EventPublisher]:
    """A started publisher on `topic`, stopped (flushed) on the way out."""
    publisher = EventPublisher(kafka_bootstrap, timeout_seconds=10)
    publisher.topic = topic
    publisher.start()
    try:
        assert await publisher.wait_started(20)
        yield publisher
    finally:
        await publisher.stop()


async def test_concurrent_requests_each_get_their_own_records_settled_and_every_record_lands_once(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=6)
    sizes = [1, 3, 100, 1, 7, 1, 50, 2] * 5  # 40 requests, 660 records
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        outcomes = await asyncio.gather(
            *(publisher.publish(request_records(request, size)) for request, size in enumerate(sizes))
        )

    for size, outcome in zip(sizes, outcomes, strict=True):
        assert outcome.written == list(range(size))
        assert outcome.refused == [] and outcome.unknown == []
    records = await consume(kafka_bootstrap, topic, sum(sizes))
    landed = Counter(record.value for record in records)
    expected = {
        f"r{request}-e{index}".encode() for request, size in enumerate(sizes) for index in range(size)
    }
    assert set(landed) == expected
    assert set(landed.values()) == {1}


async def test_a_request_abandoned_before_the_hand_over_writes_nothing(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=1)
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        abandoned = asyncio.create_task(publisher.publish([OutgoingRecord(b"7:u", b"abandoned", [])]))
        await asyncio.sleep(0)  # the request reached publish(): its records wait for the hand-over
        abandoned.cancel()  # the client went away before any of them was handed over
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        outcome = await publisher.publish([OutgoingRecord(b"7:u", b"kept", [])])
        assert outcome.written == [0]

    records = await consume(kafka_bootstrap, topic)
    assert [record.value for record in records] == [b"kept"]
