"""Acknowledged, batched writes to Kafka (aiokafka's batch API), and the transactions that fence a zombie.

The worker publishes a whole step's records as a few record batches per partition instead of one `send`
per record: per record that is an append to a batch, not a future, a metadata lookup and an accumulator
insert.

`PartitionTransactions` holds one transactional producer per input partition this worker owns, with the
transactional id `<app id>-<partition>` (every topic the worker reads and writes has the same partition
count, and faust's assignor gives partition p of all of them to one worker, so a partition number names
one unit of ownership). Starting that producer (InitProducerId) bumps the id's epoch: the previous owner's
open transaction is aborted and its producer is fenced, so a worker that lost the partition while paused
can write nothing more that a `read_committed` reader sees. A batch's outputs, changelog records, dead
letters and input offsets of one partition are one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import aiokafka.codec
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.partitioner import murmur2
from synergy_common.kafka import durable_producer

log = structlog.get_logger("synergy_achievements.publisher")
FAST_LZ4_LEVEL = 1


def _lz4_fast(payload: Any, level: int = FAST_LZ4_LEVEL) -> bytes:
    return aiokafka.codec.lz4_encode(payload, FAST_LZ4_LEVEL)


# The modules whose record-batch builders compress lz4 through a module-level `lz4_encode` (aiokafka 0.14:
# `from aiokafka.codec import lz4_encode` in each, looked up when a batch is closed). Private to aiokafka:
# tests/unit/achievements/test_publisher_lz4.py fails if a new aiokafka drops the name or stops using it.
LZ4_BUILDER_MODULES = ("aiokafka.record.default_records", "aiokafka.record._crecords.default_records")


def compress_lz4_fast() -> set[str]:
    """aiokafka 0.14 compresses every lz4 record batch at level 9 (lz4's slow high-compression mode,
    hard-coded in `aiokafka.codec.lz4_encode`'s default, which its C and Python batch builders call
    without a level). Measured on 250 snapshot-sized JSON records: 5 us a record at level 9, 1.5 us at
    level 1, for 3% more bytes; in the worker level 9 was ~5% of all its CPU. Point both builders at
    level 1 (the frames are the same lz4 format; readers see no difference). Idempotent; process-wide,
    so call it wherever a producer of this service is made (the bench's loops call it too).

    The attribute is aiokafka's private detail: a builder module that no longer has it is left alone
    (its batches are compressed at aiokafka's default level, slower but the same frames) and a warning
    is logged, so a new aiokafka costs speed, never a crash. Returns the modules patched."""
    patched: set[str] = set()
    for name in LZ4_BUILDER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # the C extension is absent when aiokafka was built without it
            continue
        if getattr(module, "lz4_encode", None) is None:
            if name not in _lz4_warned:
                _lz4_warned.add(name)
                log.warning("lz4_level_not_patched", module=name,
                            reason="aiokafka no longer has a module-level lz4_encode there")
            continue
        module.lz4_encode = _lz4_fast  # type: ignore[attr-defined]
        patched.add(name)
    return patched


_lz4_warned: set[str] = set()


# The bench's bare consume-and-produce loop uses these too, so both sides produce alike.
PRODUCER_SETTINGS: dict[str, Any] = {"linger_ms": 5, "max_batch_size": 512 * 1024}
# Every record this worker writes names the process that wrote it (which worker wrote what, e.g. after a
# rebalance); an added header, the envelope's headers are unchanged.
WRITER_HEADER = "synergy_writer"
WRITER = f"{socket.gethostname()}:{os.getpid()}".encode()
# A transaction left open by a crashed worker blocks read_committed readers of its partitions until the
# next owner's InitProducerId or this timeout aborts it; the next owner normally starts within seconds.
TRANSACTION_TIMEOUT_MS = 60_000


class Record(NamedTuple):  # a tuple: made ~2 times per event, and a frozen dataclass's init is slow
    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None  # None: the key's partition, as Kafka's default partitioner picks it


@lru_cache(maxsize=1 << 16)  # aiokafka's murmur2 is pure Python (~5 us); a key recurs ~3 times a batch
def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client and aiokafka's default partitioner give a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def send_records(
    producer: AIOKafkaProducer, records: Sequence[Record], partitions_of: Callable[[str], Awaitable[int]],
) -> list[int]:
    """Send every record as record batches and return once Kafka has acknowledged all of them (raises if
    any failed): the offset each record got, in the order given. Records of one partition keep their
    order."""
    by_partition: dict[tuple[str, int], list[int]] = {}
    for index, record in enumerate(records):
        partition = record.partition
        if partition is None:
            partition = key_partition(record.key, await partitions_of(record.topic))
        by_partition.setdefault((record.topic, partition), []).append(index)
    sent: list[tuple[list[int], Any]] = []
    for (topic, partition), indices in by_partition.items():
        batch = producer.create_batch()
        in_batch: list[int] = []
        for index in indices:
            record = records[index]
            headers = [*record.headers, (WRITER_HEADER, WRITER)]
            while batch.append(key=record.key, value=record.value, timestamp=None,
                               headers=headers) is None:  # full: send it, start another
                batch.close()
                acknowledgement = await producer.send_batch(batch, topic, partition=partition)
                sent.append((in_batch, acknowledgement))
                batch, in_batch = producer.create_batch(), []
            in_batch.append(index)
        batch.close()  # a closed batch is sent at once; an open one would wait out linger_ms first
        sent.append((in_batch, await producer.send_batch(batch, topic, partition=partition)))
    offsets = [0] * len(records)
    for indices, acknowledgement in sent:
        base = (await acknowledgement).offset
        for position, index in enumerate(indices):
            offsets[index] = base + position
    return offsets


class PartitionCounts:
    """Partition counts of the topics written, looked up once through a producer."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def of(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._counts.get(topic)
        if count is None:
            count = self._counts[topic] = len(await producer.partitions_for(topic))
        return count


class BatchPublisher:
    """One idempotent producer, outside any transaction: the read model's dead letters (persist-loyalty
    reads committed outputs and writes Postgres idempotently, so it needs no fencing)."""

    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._started: asyncio.Future[None] | None = None
        self._counts = PartitionCounts()

    async def start(self) -> AIOKafkaProducer:
        """Idempotent (publish calls it too); the producer is made in the running loop."""
        if self._producer is None:
            compress_lz4_fast()
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

    async def publish(self, records: Sequence[Record]) -> list[int]:
        producer = await self.start()
        return await send_records(producer, records, lambda topic: self._counts.of(producer, topic))


class NotOwned(Exception):
    """A batch holds records of a partition this worker does not (or no longer) own."""


class PartitionTransactions:
    """One transactional producer per owned input partition; see the module docstring."""

    def __init__(self, bootstrap_servers: str, app_id: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._app_id = app_id  # also the consumer group the offsets are committed for
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._counts = PartitionCounts()

    def transactional_id(self, partition: int) -> str:
        return f"{self._app_id}-{partition}"

    @property
    def owned(self) -> set[int]:
        return set(self._producers)

    async def take_over(self, partitions: Iterable[int]) -> None:
        """Called on every assignment, before faust restores the tables or fetches: drops every producer
        held (a partition kept across a rebalance may have been owned by another worker meanwhile, if this
        one was paused past its session timeout) and starts one per assigned partition. Each start fences
        the partition's previous owner and aborts its open transaction, so the changelog read next is
        final."""
        await self.release()
        compress_lz4_fast()
        wanted = sorted(set(partitions))
        producers = {
            partition: durable_producer(
                self._bootstrap_servers, client_id=self.transactional_id(partition),
                transactional_id=self.transactional_id(partition),
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, **PRODUCER_SETTINGS,
            )
            for partition in wanted
        }
        started = await asyncio.gather(*(producer.start() for producer in producers.values()),
                                       return_exceptions=True)
        failures = [result for result in started if isinstance(result, BaseException)]
        if failures:
            await asyncio.gather(*(producer.stop() for producer in producers.values()),
                                 return_exceptions=True)
            raise failures[0]
        self._producers = producers
        log.info("partitions_fenced", partitions=wanted)

    async def release(self) -> None:
        producers, self._producers = self._producers, {}
        await asyncio.gather(*(producer.stop() for producer in producers.values()), return_exceptions=True)

    async def commit(
        self, partition: int, records: Sequence[Record], input_offsets: Mapping[tuple[str, int], int],
    ) -> list[int]:
        """Writes the records and commits the input offsets (the next offset to read, per input
        partition) for the consumer group, as one transaction: all of it becomes visible to
        read_committed readers, or none. Returns the offsets the records got. Raises ProducerFenced
        when another worker has taken the partition over."""
        producer = self._producers.get(partition)
        if producer is None:
            raise NotOwned(f"partition {partition} is not owned by this worker (owned: {sorted(self.owned)})")
        await producer.begin_transaction()
        try:
            offsets = await send_records(producer, records, lambda topic: self._counts.of(producer, topic))
            if input_offsets:
                await producer.send_offsets_to_transaction(
                    {TopicPartition(topic, p): offset for (topic, p), offset in input_offsets.items()},
                    self._app_id,
                )
            await producer.commit_transaction()
        except BaseException as exc:
            if not isinstance(exc, ProducerFenced):  # fenced: the new owner has aborted it already
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await producer.abort_transaction()
            raise
        return offsets
