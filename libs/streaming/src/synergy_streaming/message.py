"""What flows through the runtime: records from Kafka, the work derived from them, and outcomes."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Partition(NamedTuple):
    topic: str
    partition: int


@dataclass(slots=True)
class Record:
    """One consumed message, as the broker gave it."""

    partition: Partition
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Source(Record):
    """A consumed record while the runtime holds it; settled once all of its work is settled.

    It is its record too (`source.record is source`): one object per consumed record, not two.
    `Source(record, generation)` copies a record; the runtime's consumers build `PolledSource`s
    straight from the broker's records.
    """

    __slots__ = ("chunk", "generation", "held", "index", "payload", "pending")

    def __init__(self, record: Record, generation: int = 0, chunk: Any = None, index: int = 0,
                 pending: int = 0, held: bool = False, payload: Any = None) -> None:
        self.partition = record.partition
        self.offset = record.offset
        self.key = record.key
        self.value = record.value
        self.headers = record.headers
        self.timestamp_ms = record.timestamp_ms
        self.generation = generation
        self.chunk = chunk  # the offsets.Chunk of the poll that brought it
        self.index = index  # the record's place in its chunk
        self.pending = pending  # its work items not yet settled
        self.held = held  # held back once by the DLQ brake
        self.payload = payload  # the decoded value, once decoded

    @property
    def record(self) -> Record:
        return self

    # one per consumed record: compared and hashed by identity, as the runtime tracks each one
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (f"Source({self.partition.topic}[{self.partition.partition}]@{self.offset}, "
                f"generation={self.generation}, pending={self.pending})")


class PolledSource(Source):
    """A Source built from the broker's record fields (Record's signature), as a consumer polls."""

    __slots__ = ()

    def __init__(self, partition: Partition, offset: int, key: bytes | None, value: bytes,
                 headers: Sequence[tuple[str, bytes]] = (), timestamp_ms: int | None = None) -> None:
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self.generation = 0
        self.chunk = None
        self.index = 0
        self.pending = 0
        self.held = False
        self.payload = None


@dataclass(slots=True, eq=False)
class Work:
    """A unit of delivery derived from a record: one key's message for one target.

    A record may fan out into several (one per destination, say); its offset is done when all are.
    """

    key: str
    target: Hashable
    payload: Any
    size: int = 1
    source: Source | None = field(default=None, repr=False)
    attempts: int = 0
    first_attempt_at: float | None = None  # on the runtime's clock
    first_attempt_wall: float | None = None  # epoch seconds, for the dead letter
    held: bool = False  # held back once by the DLQ brake

    @property
    def count(self) -> int:
        """Records this work settles: one (a Run: its records)."""
        return 1


class Run(Work):
    """One key's records of one poll chunk, delivered, retried and settled as one unit of work.

    What `prepare_runs` answers (see `StreamProcessor`): `indices` are the records' places in the
    chunk (`PolledChunk.records`), in offset order; `items` (optional) what deliver needs of each, in
    the same order; `size` the run's bytes for `max_batch_bytes` (default: one unit a record). A record
    belongs to one run at most; a record in none is settled as skipped. Delivered whole, a run settles
    all its records in one step. When its batch is not delivered whole, the runtime splits it into runs
    of one record each, in its place in the key's queue, so a refused batch is bisected down to the bad
    record, a retry holds back the rest of the key in order, and a dead letter names one record.
    """

    __slots__ = ("chunk", "count", "generation", "indices", "items")

    def __init__(self, key: str, target: Hashable, indices: list[int], items: list[Any] | None = None,
                 size: int | None = None) -> None:
        self.key = key
        self.target = target
        self.indices = indices
        self.items = items
        self.count = len(indices)  # type: ignore[misc]  # a slot here, a property of Work
        self.size = self.count if size is None else size
        self.payload = None
        self.source = None
        self.attempts = 0
        self.first_attempt_at = None
        self.first_attempt_wall = None
        self.held = False
        self.chunk: Any = None  # set by the runtime: the offsets.Chunk of the poll
        self.generation = 0  # set by the runtime

    def split(self) -> list[Run]:
        """Runs of one record each, in order, with this run's attempts so far."""
        items = self.items
        size = self.size_of(1)
        pieces = []
        for position, index in enumerate(self.indices):
            piece = Run(self.key, self.target, [index], None if items is None else [items[position]], size)
            piece.attempts, piece.first_attempt_at = self.attempts, self.first_attempt_at
            piece.first_attempt_wall, piece.held = self.first_attempt_wall, self.held
            piece.chunk, piece.generation = self.chunk, self.generation
            pieces.append(piece)
        return pieces

    def size_of(self, records: int) -> int:
        """The size of `records` of the run's records, in proportion (one unit a record by default)."""
        return max(1, self.size * records // self.count) if self.count else 1

    def __repr__(self) -> str:
        return f"Run({self.key!r}, {self.target!r}, indices={self.indices}, attempts={self.attempts})"


def key_text(key: bytes | None) -> str:
    """A Kafka record key as the text the key queues use: UTF-8, or (not UTF-8) decoded with
    surrogateescape, so two keys never become one; no key: ""."""
    if not key:
        return ""
    try:
        return key.decode()
    except UnicodeDecodeError:
        return key.decode("utf-8", "surrogateescape")


class Span(Run):
    """A chunk's records of any keys, in offset order, delivered as one unit: what `prepare_runs`
    answers (`PolledChunk.span`) when deliver needs no grouping by key, only the order.

    Per-key order still holds: a partition's spans go one at a time, in order, while none of their
    keys has anything queued, in flight or retrying elsewhere; otherwise (and whenever a span is not
    delivered whole) the runtime cuts it into one Run a key (`by_key`) and queues those by key. A
    span longer than `max_batch_items` goes as consecutive slices, one after the other.
    """

    __slots__ = ()

    def __init__(self, target: Hashable, indices: list[int], items: list[Any] | None = None,
                 size: int | None = None) -> None:
        super().__init__("", target, indices, items, size)

    def cut(self, start: int, end: int) -> Span:
        """The span's records [start:end) (positions in the span) as a span of their own."""
        items = None if self.items is None else self.items[start:end]
        piece = Span(self.target, self.indices[start:end], items, self.size_of(end - start))
        piece.chunk, piece.generation, piece.held = self.chunk, self.generation, self.held
        return piece

    def by_key(self) -> list[Run]:
        """One Run a record key, each in offset order, with the span's items, attempts and place."""
        records = self.chunk.records
        positions: dict[bytes | None, list[int]] = {}
        for position, index in enumerate(self.indices):
            positions.setdefault(records[index].key, []).append(position)
        indices, items = self.indices, self.items
        runs: list[Run] = []
        for key, places in positions.items():
            run = Run(key_text(key), self.target, [indices[p] for p in places],
                      None if items is None else [items[p] for p in places],
                      self.size_of(len(places)))
            run.chunk, run.generation, run.held = self.chunk, self.generation, self.held
            run.attempts, run.first_attempt_at = self.attempts, self.first_attempt_at
            run.first_attempt_wall = self.first_attempt_wall
            runs.append(run)
        return runs

    def __repr__(self) -> str:
        return f"Span({self.target!r}, indices={self.indices}, attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class RejectRecord:
    """A prepare_runs answer: the record at `index` of the chunk can never be delivered (dead letter)."""

    index: int
    reason: str
    detail: str = ""


# --- what a prepare function answers for a record -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to deliver; the record is done."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """The record can never be delivered; it goes to the dead-letter policy."""

    reason: str
    detail: str = ""


# --- what a deliver function answers, per work item ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    pass


DELIVERED = Delivered()


@dataclass(frozen=True, slots=True)
class Failed:
    """Final: this item is dead-lettered with the reason, subject to the DLQ brake unless
    `counts_for_brake` is False (a destination the operator disabled: its backlog is expected)."""

    reason: str
    detail: str = ""
    counts_for_brake: bool = True


@dataclass(frozen=True, slots=True)
class Retry:
    """Try this item (and the rest of its key's run) again later.

    `retry_after`: the target's own hint (Retry-After). `throttled`: the target rate-limited us (the
    target's rate adapts). `counts_attempt=False`: the fault is not the message's (revoked credentials,
    say); it never exhausts the retry budget and never parks the key.
    """

    reason: str
    retry_after: float | None = None
    throttled: bool = False
    counts_attempt: bool = True


@dataclass(frozen=True, slots=True)
class SplitBatch:
    """The target refused the batch as a whole (a 400): bisect it until the offending items are found."""

    reason: str
    detail: str = ""


ItemOutcome = Delivered | Failed | Retry
BatchOutcome = ItemOutcome | SplitBatch | list[ItemOutcome]
