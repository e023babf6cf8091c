"""Which offset of each partition is safe to commit: the one after the longest settled prefix. Pure.

The runtime tracks what one poll brought of a partition as one chunk: its offsets, a done flag per
record, a count of records not yet settled, and the bytes of its values. Settling a record costs one
store and one decrement (`settle_many` does a whole delivered batch in one pass); a chunk settled
whole is dropped from the head of its partition, so the committable offset of a partition is the end
of its settled chunks, or, inside the oldest chunk still partly in flight, the end of the prefix of
its flags that are set (scanned only when a commit is due). A record in flight holds back every later
offset of its partition; records settle in any order, across chunks too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any


class RecordOffsets(Sequence[int]):
    """The offsets of a consumer's records (`.offset`), read when asked: a commit reads two or three
    of a chunk's, so a list of all of them is never built."""

    __slots__ = ("records",)

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [record.offset for record in self.records[index]]
        offset: int = self.records[index].offset
        return offset


@dataclass(slots=True, eq=False)
class Chunk:
    offsets: Sequence[int]
    done: list[bool]
    pending: int
    size: int = 0  # bytes of the records' values: what the chunk holds in memory
    progress: PartitionProgress | None = None  # None once its partition is forgotten (revoked)
    records: list[Any] | None = None  # the consumer's records, when the runtime works in runs
    values: list[Any] | None = None  # and their values (read while the records are in the caches)
    # runs settled by settle_fresh whose done flags are not set yet: set only when something reads
    # them (a commit inside the chunk, another settle), so a chunk settled whole never sets them
    fresh: list[Sequence[Any]] | None = None

    @property
    def end(self) -> int:
        """The offset after the chunk's last record: what a commit of all of it writes."""
        return self.offsets[-1] + 1

    def flag_fresh(self) -> None:
        """Set the done flags of the runs settle_fresh settled: each index once, in C."""
        fresh, self.fresh = self.fresh, None
        if fresh:
            indices = list(chain.from_iterable([run.indices for runs in fresh for run in runs]))
            deque(map(self.done.__setitem__, indices, repeat(True)), 0)

    def done_prefix_end(self) -> int | None:
        """The offset after the chunk's longest settled prefix, or None when its first is in flight."""
        if self.fresh is not None:
            self.flag_fresh()
        done = self.done
        if done[0] is False:
            return None
        try:
            first_open = done.index(False)
        except ValueError:
            return self.offsets[-1] + 1
        return self.offsets[first_open - 1] + 1


@dataclass
class PartitionProgress:
    chunks: deque[Chunk] = field(default_factory=deque)
    settled_end: int | None = None  # the end of the chunks settled whole and dropped

    def settle(self, chunk: Chunk, index: int) -> bool:
        if chunk.fresh is not None:
            chunk.flag_fresh()
        if chunk.done[index]:
            return False
        chunk.done[index] = True
        chunk.pending -= 1
        if chunk.pending <= 0:
            self.drop_settled()
        return True

    def drop_settled(self) -> int:
        """Drop the chunks settled whole from the head; the bytes they held."""
        freed = 0
        chunks = self.chunks
        while chunks and chunks[0].pending <= 0:
            chunk = chunks.popleft()
            chunk.fresh = None  # its runs point back at it: a cycle the collector would have to find
            self.settled_end = chunk.offsets[-1] + 1
            freed += chunk.size
        return freed

    def committable(self) -> int | None:
        """The offset to commit (next to read), or None while nothing is settled."""
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
    outstanding_bytes: int = 0  # bytes of the chunks not yet settled whole
    _committed: dict[tuple[str, int], int] = field(default_factory=dict)
    _singles: dict[tuple[str, int, int], Chunk] = field(default_factory=dict)

    def track_chunk(self, topic: str, partition: int, offsets: Sequence[int], size: int = 0) -> Chunk:
        """Records of one partition, in offset order; settle each by its index in `offsets`."""
        progress = self.partitions.get((topic, partition))
        if progress is None:
            progress = self.partitions[(topic, partition)] = PartitionProgress()
        chunk = Chunk(offsets, [False] * len(offsets), len(offsets), size, progress)
        progress.chunks.append(chunk)
        self.outstanding += len(offsets)
        self.outstanding_bytes += size
        return chunk

    def settle(self, topic: str, partition: int, chunk: Chunk, index: int) -> None:
        # the runtime never settles a chunk of a generation it revoked; a second settle is a no-op
        self.settle_many(((chunk, index),))

    def settle_many(self, settled: Iterable[Any]) -> int:
        """Settle each (chunk, index), or each object with `.chunk` and `.index` (a Source), in one
        pass. Returns how many were newly settled; settling twice, or a forgotten chunk, is a no-op."""
        count = 0
        finished: list[Chunk] = []
        for item in settled:
            if type(item) is tuple:
                chunk, index = item
            else:
                chunk, index = item.chunk, item.index
            if chunk.fresh is not None:
                chunk.flag_fresh()
            done = chunk.done
            if done[index] or chunk.progress is None:
                continue
            done[index] = True
            count += 1
            chunk.pending -= 1
            if chunk.pending <= 0:
                finished.append(chunk)
        return self._settled(count, finished)

    def settle_runs(self, runs: Iterable[Any]) -> int:
        """Settle every record of each run (an object with `.chunk` and `.indices`: a message.Run) in
        one pass. Returns how many were newly settled; as settle_many, settling twice is a no-op."""
        count = 0
        finished: list[Chunk] = []
        for run in runs:
            chunk = run.chunk
            if chunk.progress is None:
                continue
            if chunk.fresh is not None:
                chunk.flag_fresh()
            done = chunk.done
            newly = 0
            for index in run.indices:
                if not done[index]:
                    done[index] = True
                    newly += 1
            if newly:
                count += newly
                chunk.pending -= newly
                if chunk.pending <= 0:
                    finished.append(chunk)
        return self._settled(count, finished)

    def settle_fresh(self, chunk: Chunk, runs: Sequence[Any], count: int) -> int:
        """Settle the `count` records of `runs` (objects with `.indices`), all of `chunk` and none
        settled before (a slice of a chunk delivered whole the first time). Their done flags are set
        only when read (`Chunk.flag_fresh`): a chunk that settles whole is dropped without them."""
        if chunk.progress is None:
            return 0
        if chunk.fresh is None:
            chunk.fresh = [runs]
        else:
            chunk.fresh.append(runs)
        chunk.pending -= count
        return self._settled(count, [chunk] if chunk.pending <= 0 else [])

    def _settled(self, count: int, finished: list[Chunk]) -> int:
        """Account for `count` newly settled records, and drop the settled prefix of finished chunks."""
        self.outstanding -= count
        for chunk in finished:
            if chunk.progress is not None:
                self.outstanding_bytes -= chunk.progress.drop_settled()
        return count

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
            progress = self.partitions.pop(tp, None)
            if progress is not None:
                for chunk in progress.chunks:
                    self.outstanding -= max(0, chunk.pending)
                    self.outstanding_bytes -= chunk.size
                    chunk.progress = None
                    chunk.fresh = None
            self._committed.pop(tp, None)
        forgotten = set(tps)
        self._singles = {k: v for k, v in self._singles.items() if (k[0], k[1]) not in forgotten}
