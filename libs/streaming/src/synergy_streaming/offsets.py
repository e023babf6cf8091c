"""Which offset of each partition is safe to commit: the one after the longest settled prefix. Pure.

The runtime tracks what one poll brought of a partition as one chunk, with a count of records not
yet settled; a chunk still holding a record in flight holds back every later offset of its
partition, however many later chunks are done. Counting per chunk rather than per offset keeps the
cost per record to one decrement.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Chunk:
    end: int  # the offset after the chunk's last record: what a commit of it writes
    pending: int


@dataclass
class PartitionProgress:
    chunks: deque[Chunk] = field(default_factory=deque)
    committable: int | None = None

    def settle(self, chunk: Chunk, count: int) -> None:
        chunk.pending -= count
        if chunk.pending <= 0 and self.chunks and self.chunks[0] is chunk:
            while self.chunks and self.chunks[0].pending <= 0:
                self.committable = self.chunks.popleft().end


@dataclass
class OffsetTracker:
    """Per (topic, partition): records are settled in any order; commits only move forward."""

    partitions: dict[tuple[str, int], PartitionProgress] = field(default_factory=dict)
    outstanding: int = 0  # records tracked and not yet settled, over all partitions
    _committed: dict[tuple[str, int], int] = field(default_factory=dict)
    _singles: dict[tuple[str, int, int], Chunk] = field(default_factory=dict)

    def track_chunk(self, topic: str, partition: int, last_offset: int, count: int) -> Chunk:
        progress = self.partitions.get((topic, partition))
        if progress is None:
            progress = self.partitions[(topic, partition)] = PartitionProgress()
        chunk = Chunk(last_offset + 1, count)
        progress.chunks.append(chunk)
        self.outstanding += count
        return chunk

    def settle(self, topic: str, partition: int, chunk: Chunk, count: int = 1) -> None:
        progress = self.partitions.get((topic, partition))
        if progress is not None:  # the runtime never settles a chunk of a generation it revoked
            self.outstanding -= count
            progress.settle(chunk, count)

    def track(self, topic: str, partition: int, offset: int) -> None:
        """One record as a chunk of its own (tools and tests; the runtime tracks whole polls)."""
        self._singles[(topic, partition, offset)] = self.track_chunk(topic, partition, offset, 1)

    def complete(self, topic: str, partition: int, offset: int) -> None:
        chunk = self._singles.pop((topic, partition, offset), None)
        if chunk is not None:
            self.settle(topic, partition, chunk)

    def to_commit(self) -> dict[tuple[str, int], int]:
        """Offsets that moved since the last `committed()` call."""
        moves = {}
        for tp, progress in self.partitions.items():
            offset = progress.committable
            if offset is not None and offset > self._committed.get(tp, -1):
                moves[tp] = offset
        return moves

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        self._committed.update(offsets)

    def last_committed(self, tp: tuple[str, int]) -> int | None:
        return self._committed.get(tp)

    def forget(self, tps: list[tuple[str, int]]) -> None:
        for tp in tps:
            progress = self.partitions.pop(tp, None)
            if progress is not None:
                self.outstanding -= sum(max(0, chunk.pending) for chunk in progress.chunks)
            self._committed.pop(tp, None)
        forgotten = set(tps)
        self._singles = {k: v for k, v in self._singles.items() if (k[0], k[1]) not in forgotten}
