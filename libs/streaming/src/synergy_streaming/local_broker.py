"""An in-memory broker for unit tests of the runtime (like arroyo's LocalBroker).

Topics with partitions, consumer groups with eager rebalances (every member's partitions revoked,
then reassigned round-robin), committed offsets per group, pause and resume. Rebalance callbacks run
inside poll(), as aiokafka's do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from synergy_streaming.consumer import AssignmentCallback
from synergy_streaming.message import Partition, Record

R = TypeVar("R", bound=Record)


@dataclass
class _Group:
    members: list[LocalConsumer] = field(default_factory=list)
    generation: int = 0
    committed: dict[Partition, int] = field(default_factory=dict)
    commits: list[dict[Partition, int]] = field(default_factory=list)  # every commit, in order


class LocalBroker:
    def __init__(self) -> None:
        self.topics: dict[str, list[list[Record]]] = {}
        self.groups: dict[str, _Group] = {}
        self._appended = asyncio.Event()
        self.foreign_commits: list[dict[Partition, int]] = []  # commits by a member that lost the partition

    def create_topic(self, name: str, partitions: int) -> None:
        self.topics[name] = [[] for _ in range(partitions)]

    def produce(self, topic: str, partition: int, value: bytes, key: bytes | None = None,
                headers: Iterable[tuple[str, bytes]] = ()) -> Record:
        log = self.topics[topic][partition]
        record = Record(Partition(topic, partition), len(log), key, value, tuple(headers))
        log.append(record)
        self._appended.set()
        return record

    def consumer(self, group_id: str) -> LocalConsumer:
        return LocalConsumer(self, group_id)

    def committed(self, group_id: str) -> dict[Partition, int]:
        return dict(self.groups.setdefault(group_id, _Group()).committed)

    def commit_log(self, group_id: str) -> list[dict[Partition, int]]:
        return list(self.groups.setdefault(group_id, _Group()).commits)

    def rebalance(self, group_id: str) -> None:
        """Start a new generation: members are revoked and reassigned on their next poll."""
        group = self.groups.setdefault(group_id, _Group())
        group.generation += 1
        partitions = sorted(
            (Partition(topic, i) for member in group.members for topic in member.topics
             for i in range(len(self.topics.get(topic, [])))),
        )
        unique = sorted(set(partitions))
        for member in group.members:
            member._pending_assignment = set()
        for i, partition in enumerate(unique):
            if group.members:
                group.members[i % len(group.members)]._pending_assignment.add(partition)  # type: ignore[union-attr]
        self._appended.set()

    async def wait_for_data(self, timeout: float) -> None:
        self._appended.clear()
        try:
            await asyncio.wait_for(self._appended.wait(), timeout)
        except TimeoutError:
            pass


class LocalConsumer:
    def __init__(self, broker: LocalBroker, group_id: str) -> None:
        self.broker, self.group_id = broker, group_id
        self.topics: list[str] = []
        self._assigned: set[Partition] = set()
        self._pending_assignment: set[Partition] | None = None
        self._positions: dict[Partition, int] = {}
        self._paused: set[Partition] = set()
        self._on_assigned: AssignmentCallback | None = None
        self._on_revoked: AssignmentCallback | None = None
        self.fail_commits = 0  # the next N commits raise, as a broker going away would

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        group = self.broker.groups.setdefault(self.group_id, _Group())
        if self in group.members:
            if self._on_revoked is not None and self._assigned:
                await self._on_revoked(sorted(self._assigned))
            group.members.remove(self)
            self._assigned = set()
            self.broker.rebalance(self.group_id)

    def subscribe(self, topics: list[str], on_assigned: AssignmentCallback,
                  on_revoked: AssignmentCallback) -> None:
        self.topics = list(topics)
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self.broker.groups.setdefault(self.group_id, _Group()).members.append(self)
        self.broker.rebalance(self.group_id)

    async def _maybe_rebalance(self) -> None:
        if self._pending_assignment is None:
            return
        new, self._pending_assignment = self._pending_assignment, None
        if self._assigned and self._on_revoked is not None:
            await self._on_revoked(sorted(self._assigned))
        self._assigned = new
        self._paused = set()
        committed = self.broker.groups[self.group_id].committed
        self._positions = {p: committed.get(p, 0) for p in new}
        if self._on_assigned is not None:
            await self._on_assigned(sorted(new))

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        await self._maybe_rebalance()
        records = self._fetch(max_records)
        if not records:
            await self.broker.wait_for_data(timeout)
            await self._maybe_rebalance()
            records = self._fetch(max_records)
        return records

    async def poll_chunks(self, timeout: float, max_records: int,
                          make: Callable[..., R] | None = Record) -> list[tuple[Partition, list[Any]]]:
        """As KafkaConsumer's: every record a new object (the log's own are shared by all groups);
        `make=None`: Record copies (what the runtime works on in runs)."""
        chunks: dict[Partition, list[Any]] = {}
        if make is None:
            make = Record
        for r in await self.poll(timeout, max_records):
            chunks.setdefault(r.partition, []).append(
                make(r.partition, r.offset, r.key, r.value, r.headers, r.timestamp_ms))
        return list(chunks.items())

    def _fetch(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        for partition in sorted(self._assigned - self._paused):
            log = self.broker.topics[partition.topic][partition.partition]
            position = self._positions[partition]
            chunk = log[position:position + max_records - len(out)]
            out.extend(chunk)
            self._positions[partition] = position + len(chunk)
            if len(out) >= max_records:
                break
        return out

    def pause(self, partitions: Iterable[Partition]) -> None:
        self._paused |= set(partitions)

    def resume(self, partitions: Iterable[Partition]) -> None:
        self._paused -= set(partitions)

    @property
    def paused(self) -> set[Partition]:
        return set(self._paused)

    async def commit(self, offsets: dict[Partition, int]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise ConnectionError("commit failed (injected)")
        group = self.broker.groups[self.group_id]
        foreign = set(offsets) - self._assigned
        if foreign:
            self.broker.foreign_commits.append(dict(offsets))
            raise RuntimeError(f"commit for partitions not assigned: {sorted(foreign)}")
        group.committed.update(offsets)
        group.commits.append(dict(offsets))

    def assignment(self) -> set[Partition]:
        return set(self._assigned)

    def partition_count(self, topic: str) -> int:
        return len(self.broker.topics.get(topic, []))

    def highwater(self, partition: Partition) -> int | None:
        return len(self.broker.topics[partition.topic][partition.partition])

    async def ping(self) -> bool:
        return True
