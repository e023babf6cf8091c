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


@dataclass(slots=True, eq=False)
class Source:
    """A consumed record while the runtime holds it; settled once all of its work is settled."""

    record: Record
    generation: int
    chunk: Any = None  # the offsets.Chunk of the poll that brought it
    index: int = 0  # the record's place in its chunk
    pending: int = 0
    held: bool = False  # held back once by the DLQ brake
    payload: Any = None  # the decoded value, once decoded


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
