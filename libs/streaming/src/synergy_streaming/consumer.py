"""The consumer the runtime drives: aiokafka's, or the in-memory broker's (tests). One interface."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from synergy_streaming.message import Partition, Record

R = TypeVar("R", bound=Record)
AssignmentCallback = Callable[[list[Partition]], Coroutine[Any, Any, None]]


class Consumer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(self, topics: list[str], on_assigned: AssignmentCallback,
                  on_revoked: AssignmentCallback) -> None: ...
    async def poll(self, timeout: float, max_records: int) -> list[Record]: ...
    # Optional, and what the runtime uses when a consumer has it: one (partition, records) per partition,
    # each record built by make(partition, offset, key, value, headers, timestamp_ms):
    # async def poll_chunks(self, timeout, max_records, make=Record) -> list[tuple[Partition, list[R]]]
    # (make=None: the consumer's own records, with .offset, .key, .value, .headers and .timestamp)
    def pause(self, partitions: Iterable[Partition]) -> None: ...
    def resume(self, partitions: Iterable[Partition]) -> None: ...
    async def commit(self, offsets: dict[Partition, int]) -> None: ...
    def assignment(self) -> set[Partition]: ...
    def partition_count(self, topic: str) -> int: ...
    def highwater(self, partition: Partition) -> int | None: ...
    async def ping(self) -> bool: ...


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_assigned: AssignmentCallback, on_revoked: AssignmentCallback) -> None:
        self._on_assigned, self._on_revoked = on_assigned, on_revoked

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._on_revoked([Partition(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._on_assigned([Partition(tp.topic, tp.partition) for tp in assigned])


def _tp(partition: Partition) -> TopicPartition:
    return TopicPartition(partition.topic, partition.partition)


class KafkaConsumer:
    """aiokafka, with auto-commit off: the runtime commits only the done prefix of each partition.

    The only place in the project (achievements aside, which runs faust) that builds an AIOKafkaConsumer.
    """

    def __init__(self, bootstrap_servers: str, group_id: str, client_id: str, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": 2000,
            "isolation_level": "read_committed",
        }
        settings.update(overrides)
        self._consumer = AIOKafkaConsumer(**settings)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    def subscribe(self, topics: list[str], on_assigned: AssignmentCallback,
                  on_revoked: AssignmentCallback) -> None:
        self._consumer.subscribe(topics, listener=_Listener(on_assigned, on_revoked))

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        chunks: list[tuple[Partition, list[Record]]] = await self.poll_chunks(timeout, max_records, Record)
        return [record for _, records in chunks for record in records]

    async def poll_chunks(self, timeout: float, max_records: int,
                          make: Callable[..., R] | None = Record) -> list[tuple[Partition, list[Any]]]:
        """What one getmany brought, one (partition, records in offset order) per partition; each
        record built by `make(partition, offset, key, value, headers, timestamp_ms)`, or aiokafka's
        own records as they are with `make=None` (`.offset`, `.key`, `.value`, `.headers`, `.timestamp`)."""
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
        chunks: list[tuple[Partition, list[Any]]] = []
        for tp, records in batches.items():
            partition = Partition(tp.topic, tp.partition)
            if make is None:
                chunks.append((partition, records))
                continue
            chunks.append((partition, [
                make(partition, r.offset, r.key, r.value, tuple(r.headers) if r.headers else (), r.timestamp)
                for r in records
            ]))
        return chunks

    def pause(self, partitions: Iterable[Partition]) -> None:
        self._consumer.pause(*[_tp(p) for p in partitions])

    def resume(self, partitions: Iterable[Partition]) -> None:
        self._consumer.resume(*[_tp(p) for p in partitions])

    async def commit(self, offsets: dict[Partition, int]) -> None:
        await self._consumer.commit({_tp(p): offset for p, offset in offsets.items()})

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def partition_count(self, topic: str) -> int:
        partitions = self._consumer.partitions_for_topic(topic)
        return len(partitions) if partitions else 0

    def highwater(self, partition: Partition) -> int | None:
        value = self._consumer.highwater(_tp(partition))
        return int(value) if value is not None else None

    async def ping(self) -> bool:
        await self._consumer.topics()  # a fresh metadata round trip, not the cached view
        return True
