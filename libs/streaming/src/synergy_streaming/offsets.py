"""Which offset of each partition is safe to commit: the one after the longest settled prefix. Pure.

The runtime tracks what one poll brought of a partition as one chunk: its offsets, a done flag per
record and a count of records not yet settled. Settling costs one store and one decrement; the
committable offset inside a chunk that is still partly in flight is found by a scan of its flags,
only when a commit is due. A record in flight holds back every later offset of its partition.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Chunk:
    offsets: list[int]
    done: list[bool]
    pending: int

    @property
    def end(self) -> int:
        """The offset after the chunk's last record: what a commit of all of it writes."""
        return self.offsets[-1] + 1

    def done_prefix_end(self) -> int | None:
        """The offset after the chunk's longest settled prefix, or None when its first is in flight."""
        end = None
        for offset, done in zip(self.offsets, self.done, strict=True):
            if not done:
                break
            end = offset + 1
        return end


@dataclass
class PartitionProgress:
    chunks: deque[Chunk] = field(default_factory=deque)
    settled_end: int | None = None  # the end of the chunks settled whole and dropped

    def settle(self, chunk: Chunk, index: int) -> bool:
        if chunk.done[index]:
            return False
        chunk.done[index] = True
        chunk.pending -= 1
        if chunk.pending <= 0 and self.chunks and self.chunks[0] is chunk:
            while self.chunks and self.chunks[0].pending <= 0:
                self.settled_end = self.chunks.popleft().end
        return True

    @property
    def committable(self) -> int | None:
        if self.chunks:
            inside = self.chunks[0].done_prefix_end()
            if inside is not None:
                return inside
        return self.settled_end


@dataclass
class OffsetTracker:
    """Per (topic, partition): records are settled in any order; commits only move forward."""

    partitions: dict[tuple[str, int], PartitionProgress] = field(default_factory=dict)
    outstanding: int = 0  # records tracked and not yet settled, over all partitions
    _committed: dict[tuple[str, int], int] = field(default_factory=dict)
    _singles: dict[tuple[str, int, int], Chunk] = field(default_factory=dict)

    def track_chunk(self, topic: str, partition: int, offsets: list[int]) -> Chunk:
        """Records of one partition, in offset order; settle each by its index in `offsets`."""
        progress = self.partitions.get((topic, partition))
        if progress is None:
            progress = self.partitions[(topic, partition)] = PartitionProgress()
        chunk = Chunk(offsets, [False] * len(offsets), len(offsets))
        progress.chunks.append(chunk)
        self.outstanding += len(offsets)
        return chunk

    def settle(self, topic: str, partition: int, chunk: Chunk, index: int) -> None:
        progress = self.partitions.get((topic, partition))
        # the runtime never settles a chunk of a generation it revoked; a second settle is a no-op
        if progress is not None and progress.settle(chunk, index):
            self.outstanding -= 1

    def track(self, topic: str, partition: int, offset: int) -> None:
        """One record as a chunk of its own (tools and tests; the runtime tracks whole polls)."""
        self._singles[(topic, partition, offset)] = self.track_chunk(topic, partition, [offset])

    def complete(self, topic: str, partition: int, offset: int) -> None:
        chunk = self._singles.pop((topic, partition, offset), None)
        if chunk is not None:
            self.settle(topic, partition, chunk, 0)

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
