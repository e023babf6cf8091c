"""Acknowledged, batched writes to Kafka through one idempotent producer (aiokafka's batch API).

The worker publishes a whole step's outputs, then its changelog records, as a few record batches per
partition instead of one `send` per record: per record that is an append to a batch, not a future, a
metadata lookup and an accumulator insert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from synergy_common.kafka import durable_producer

# The bench's bare consume-and-produce loop uses these too, so both sides produce alike.
PRODUCER_SETTINGS: dict[str, Any] = {"linger_ms": 5, "max_batch_size": 512 * 1024}


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]] = field(default=())
    partition: int | None = None  # None: the key's partition, as Kafka's default partitioner picks it


@lru_cache(maxsize=1 << 16)  # aiokafka's murmur2 is pure Python (~5 us); a key recurs ~3 times a batch
def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client and aiokafka's default partitioner give a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class BatchPublisher:
    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._started: asyncio.Future[None] | None = None
        self._partitions: dict[str, int] = {}

    async def start(self) -> AIOKafkaProducer:
        """Idempotent (publish calls it too); the producer is made in the running loop."""
        if self._producer is None:
            self._producer = durable_producer(
                self._bootstrap_servers, client_id=self._client_id, **PRODUCER_SETTINGS
            )
            self._started = asyncio.ensure_future(self._producer.start())
        assert self._started is not None
        await asyncio.shield(self._started)
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def partitions_of(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            producer = await self.start()
            count = self._partitions[topic] = len(await producer.partitions_for(topic))
        return count

    async def publish(self, records: Sequence[Record]) -> list[int]:
        """Send every record and return once Kafka has acknowledged all of them (raises if any failed):
        the offset each record got, in the order given. Records of one partition keep their order."""
        producer = await self.start()
        by_partition: dict[tuple[str, int], list[int]] = {}
        for index, record in enumerate(records):
            partition = record.partition
            if partition is None:
                partition = key_partition(record.key, await self.partitions_of(record.topic))
            by_partition.setdefault((record.topic, partition), []).append(index)
        sent: list[tuple[list[int], Any]] = []
        for (topic, partition), indices in by_partition.items():
            batch = producer.create_batch()
            in_batch: list[int] = []
            for index in indices:
                record = records[index]
                while batch.append(key=record.key, value=record.value, timestamp=None,
                                   headers=list(record.headers)) is None:  # full: send it, start another
                    acknowledgement = await producer.send_batch(batch, topic, partition=partition)
                    sent.append((in_batch, acknowledgement))
                    batch, in_batch = producer.create_batch(), []
                in_batch.append(index)
            sent.append((in_batch, await producer.send_batch(batch, topic, partition=partition)))
        offsets = [0] * len(records)
        for indices, acknowledgement in sent:
            base = (await acknowledgement).offset
            for position, index in enumerate(indices):
                offsets[index] = base + position
        return offsets
