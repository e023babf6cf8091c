"""Which offset of each partition is safe to commit: the one after the longest done prefix. Pure.

A message still in flight holds back every later offset of its partition, however many are done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class PartitionProgress:
    _pending: deque[int] = field(default_factory=deque)
    _done: set[int] = field(default_factory=set)
    _committable: int | None = None

    def track(self, offset: int) -> None:
        self._pending.append(offset)

    def complete(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            self._committable = head + 1

    def committable(self) -> int | None:
        """The offset to commit (next to read), or None while nothing new is done."""
        return self._committable

    @property
    def outstanding(self) -> int:
        return len(self._pending)


@dataclass
class OffsetTracker:
    """Per (topic, partition): messages are completed in any order; commits only move forward."""

    partitions: dict[tuple[str, int], PartitionProgress] = field(default_factory=dict)
    _committed: dict[tuple[str, int], int] = field(default_factory=dict)

    def track(self, topic: str, partition: int, offset: int) -> None:
        self.partitions.setdefault((topic, partition), PartitionProgress()).track(offset)

    def complete(self, topic: str, partition: int, offset: int) -> None:
        progress = self.partitions.get((topic, partition))
        if progress is not None:
            progress.complete(offset)

    def to_commit(self) -> dict[tuple[str, int], int]:
        """Offsets that moved since the last `committed()` call."""
        moves = {}
        for tp, progress in self.partitions.items():
            offset = progress.committable()
            if offset is not None and offset > self._committed.get(tp, -1):
                moves[tp] = offset
        return moves

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        self._committed.update(offsets)

    def last_committed(self, tp: tuple[str, int]) -> int | None:
        return self._committed.get(tp)

    def forget(self, tps: list[tuple[str, int]]) -> None:
        for tp in tps:
            self.partitions.pop(tp, None)
            self._committed.pop(tp, None)

    @property
    def outstanding(self) -> int:
        return sum(p.outstanding for p in self.partitions.values())
