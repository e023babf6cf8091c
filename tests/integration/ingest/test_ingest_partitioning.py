"""librdkafka's murmur2_random puts every key where aiokafka's DefaultPartitioner (and Java) puts it.

Achievements keeps per-user state by partition, so ingest's producer must agree with the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiokafka.partitioner import DefaultPartitioner
from synergy_ingest.publish_outcome import OutgoingRecord
from synergy_ingest.publisher import EventPublisher

from tests.conftest import consume

pytestmark = pytest.mark.integration
PARTITIONS = 12


async def test_same_key_lands_in_the_partition_aiokafka_would_choose(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=PARTITIONS)
    keys = [f"7:user-{i}".encode() for i in range(200)] + [b"7:anon:a-1", "7:ünïcode".encode(), b"12:"]
    publisher = EventPublisher(kafka_bootstrap, timeout_seconds=10)
    publisher.topic = topic
    publisher.start()
    try:
        assert await publisher.wait_started(20)
        outcome = await publisher.publish([OutgoingRecord(key, key, []) for key in keys])
    finally:
        await publisher.stop()
    assert len(outcome.written) == len(keys)

    records = await consume(kafka_bootstrap, topic, len(keys))
    aiokafka_choice = DefaultPartitioner()
    everything = list(range(PARTITIONS))
    landed = {record.key: record.partition for record in records}
    assert landed == {key: aiokafka_choice(key, everything, everything) for key in keys}
    assert len(set(landed.values())) == PARTITIONS
