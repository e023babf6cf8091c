"""The processing steps, each small and named for what it does; the runtime composes them.

    Kafka -> DecodeEnvelope -> Prepare (the service's function) -> OrderByKey -> BatchByTarget
          -> Deliver (the service's function) -> DeadLetterPolicy -> CommitOffsets

Everything here runs on one event loop, so no locks. Nothing in a step waits on I/O inside the poll
loop: a step that waits (Prepare retrying a database, Deliver calling a target) does it in a task of
its own, and a full step pauses consumption instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeAlias

import orjson
import structlog

from synergy_streaming import metrics
from synergy_streaming.brake import DlqBrake
from synergy_streaming.clock import Clock
from synergy_streaming.dlq import DeadLetter, DeadLetterWriter, epoch_to_datetime, event_fields
from synergy_streaming.message import (
    DELIVERED,
    BatchOutcome,
    Delivered,
    Failed,
    ItemOutcome,
    Partition,
    Record,
    Reject,
    RejectRecord,
    Retry,
    Run,
    Skip,
    Source,
    Span,
    SplitBatch,
    Work,
    key_text,
)
from synergy_streaming.offsets import OffsetTracker
from synergy_streaming.ordering import KeyedQueues
from synergy_streaming.rate_limit import RateLimits
from synergy_streaming.retry import RetryPolicy

log = structlog.get_logger()

PrepareResult: TypeAlias = Sequence[Work] | Skip | Reject
PrepareFn = Callable[[Source], Awaitable[PrepareResult] | PrepareResult]
DeliverFn = Callable[[Hashable, Sequence[Work]], Awaitable[BatchOutcome]]
ErrorClassifier = Callable[[BaseException], bool]
Runs = list[tuple[str, list[Work]]]  # (key, that key's run of work items, oldest first)


class Undecodable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


_ID_TYPES = (str, int)
_HEADERS = attrgetter("headers")


def decode_envelope(record: Record) -> dict[str, Any]:
    """The envelope as a dict, or Undecodable: not JSON, not an object, no event_id or brand_id."""
    try:
        envelope = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise Undecodable("malformed_message", f"not JSON: {exc}") from exc
    if type(envelope) is not dict:
        raise Undecodable("malformed_message", f"not a JSON object but {type(envelope).__name__}")
    for name in ("event_id", "brand_id"):
        value = envelope.get(name)
        if not value or type(value) not in _ID_TYPES:
            raise Undecodable("malformed_message", f"no {name}")
    return envelope


@dataclass
class DeadLetterPolicy:
    """Dead letters through the brake, written in the one format, durable before the offset commits."""

    service: str
    writer: DeadLetterWriter | None
    brake: DlqBrake
    destination_of: Callable[[Hashable], str] = lambda target: ""

    def letter(self, record: Record, reason: str, detail: str, work: Work | None = None) -> DeadLetter:
        brand_id, event_id = event_fields(record.value)
        return DeadLetter(
            reason=reason, detail=detail, service=self.service, source_topic=record.partition.topic,
            source_partition=record.partition.partition, source_offset=record.offset, key=record.key,
            value=record.value, headers=record.headers, attempts=work.attempts if work else 0,
            first_attempt_at=epoch_to_datetime(work.first_attempt_wall) if work else None,
            destination=self.destination_of(work.target) if work else "", brand_id=brand_id,
            event_id=event_id,
        )

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        if self.writer is not None:
            await self.writer.write_until_durable(letters)
        else:
            log.warning("dead-lettered (no writer)", reason=letters[0].reason, count=len(letters))


YIELD_EVERY = 256  # records prepared one by one between two turns given to the other tasks of the loop

PrepareManyFn = Callable[[list[Source]], Awaitable[Sequence[Any]] | Sequence[Any]]
_JSON_ERROR = orjson.JSONDecodeError


def decode_chunk(sources: list[Source], decode: Callable[[Record], Any]) -> list[tuple[Source, Undecodable]]:
    """Decode every source's value in one pass (`source.payload`); the undecodable ones, with why.

    The default decoder's checks are inlined: one orjson call and three type checks a record.
    """
    rejected: list[tuple[Source, Undecodable]] = []
    if decode is not decode_envelope:
        for source in sources:
            try:
                source.payload = decode(source.record)
            except Undecodable as exc:
                rejected.append((source, exc))
        return rejected
    loads, id_types = orjson.loads, _ID_TYPES
    for source in sources:
        try:
            envelope = loads(source.value)  # a Source is its own record
        except _JSON_ERROR:
            envelope = None
        if (type(envelope) is dict and (event_id := envelope.get("event_id"))
                and type(event_id) in id_types and (brand_id := envelope.get("brand_id"))
                and type(brand_id) in id_types):
            source.payload = envelope
            continue
        try:
            source.payload = decode_envelope(source.record)  # says why it is not an envelope
        except Undecodable as exc:
            rejected.append((source, exc))
    return rejected


def to_record(partition: Partition, raw: Any) -> Record:
    """A Record of a consumer's record (aiokafka's ConsumerRecord, or a Record already)."""
    if isinstance(raw, Record):
        return raw
    headers = tuple(raw.headers) if raw.headers else ()
    return Record(partition, raw.offset, raw.key, raw.value, headers, raw.timestamp)


class PolledChunk:
    """What `prepare_runs` is given: one partition's records of one poll.

    `records` are the consumer's own (`.key`, `.value`, `.offset`, `.headers`), `payloads[i]` the
    decoded envelope of `records[i]`, decoded as it is read (`ChunkPayloads`: read each once), None for
    a record that is not an envelope (the runtime dead-letters it and takes it out of any run); and
    `indices` the records to prepare (the others were replays for another service, or are handled
    already); `None`: all of them.
    """

    __slots__ = ("indices", "partition", "payloads", "records")

    def __init__(self, partition: Partition, records: list[Any], payloads: Sequence[Any],
                 indices: list[int] | None = None) -> None:
        self.partition, self.records, self.payloads, self.indices = partition, records, payloads, indices

    def by_key(self) -> dict[bytes | None, list[int]]:
        """The indices to prepare grouped by Kafka record key, each group in offset order."""
        groups: dict[bytes | None, list[int]] = {}
        records = self.records
        if self.indices is None:
            for index, record in enumerate(records):
                groups.setdefault(record.key, []).append(index)
        else:
            for index in self.indices:
                groups.setdefault(records[index].key, []).append(index)
        return groups

    def runs(self, target: Hashable) -> list[Run]:
        """One Run for `target` per Kafka record key (`by_key`), keyed by the key as text (not UTF-8:
        decoded with surrogateescape, so two keys never become one); a record without a key: ""."""
        groups = self.by_key()
        try:
            return [Run(key.decode() if key else "", target, indices) for key, indices in groups.items()]
        except UnicodeDecodeError:
            return [Run(key_text(key), target, indices) for key, indices in groups.items()]

    def span(self, target: Hashable, items: list[Any] | None = None, size: int | None = None) -> Span:
        """The records to prepare, of every key, in offset order, as one unit for `target` (see Span):
        `items[i]` what deliver needs of the i-th of them, `size` their bytes (default: one a record)."""
        indices = list(range(len(self.records))) if self.indices is None else list(self.indices)
        return Span(target, indices, items, size)


RunsResult: TypeAlias = Sequence[Run | RejectRecord]  # a Span is a Run


def without_records(results: Sequence[Any], bad: set[int]) -> list[Any]:
    """prepare_runs' answers with the records at `bad` taken out: of each run (its items and size in
    step; a run left empty dropped), and any RejectRecord of theirs."""
    kept: list[Any] = []
    for result in results:
        if type(result) is RejectRecord:
            if result.index not in bad:
                kept.append(result)
            continue
        if bad.isdisjoint(result.indices):
            kept.append(result)
            continue
        places = [place for place, index in enumerate(result.indices) if index not in bad]
        if not places:
            continue
        result.size = result.size_of(len(places))
        result.indices = [result.indices[place] for place in places]
        if result.items is not None:
            result.items = [result.items[place] for place in places]
        result.count = len(places)
        kept.append(result)
    return kept
PrepareRunsFn = Callable[[PolledChunk], Awaitable[RunsResult] | RunsResult]


class ChunkPayloads(Sequence[Any]):
    """A poll chunk's decoded values, each decoded when read (`payloads[i]`), not a whole poll's worth
    held at once: a service that reads each record once while it builds its runs keeps the decoded
    envelope in the CPU's caches, and one that needs none never holds any. A record that is not an
    envelope reads as None, and is dead-lettered whatever prepare answers (`finish`)."""

    __slots__ = ("_decode", "_partition", "_records", "_reported", "_values", "read", "rejected")

    def __init__(self, partition: Partition, records: list[Any], values: list[Any] | None,
                 decode: Callable[[Record], Any]) -> None:
        self._partition, self._records, self._decode = partition, records, decode
        self._values = values if values is not None else [record.value for record in records]
        self.read = bytearray(len(records))  # 1: decoded (or refused) once
        self.rejected: dict[int, Undecodable] = {}
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]  # one record at a time, no slices
        self.read[index] = 1
        if self._decode is decode_envelope:
            try:
                envelope = orjson.loads(self._values[index])
            except (_JSON_ERROR, TypeError):
                envelope = None
            if (type(envelope) is dict and (event_id := envelope.get("event_id"))
                    and type(event_id) in _ID_TYPES and (brand_id := envelope.get("brand_id"))
                    and type(brand_id) in _ID_TYPES):
                return envelope
        try:
            return self._decode(to_record(self._partition, self._records[index]))
        except Undecodable as exc:  # says why it is not an envelope
            self.rejected[index] = exc
        except TypeError:  # a record without a value (a tombstone)
            self.rejected[index] = Undecodable("malformed_message", "no value")
        return None

    def finish(self, indices: list[int] | None) -> list[tuple[int, Undecodable]]:
        """Every record of `indices` (None: all) checked: those prepare did not read are decoded now,
        one at a time and dropped. The records found not to be envelopes since the last call, with why."""
        self._check_unread(indices)
        if len(self._reported) == len(self.rejected):
            return []
        fresh = [(index, exc) for index, exc in self.rejected.items() if index not in self._reported]
        self._reported.update([index for index, _ in fresh])
        return fresh

    def _check_unread(self, indices: list[int] | None) -> None:
        read = self.read
        if read.count(0) == 0:
            return
        if indices is None and self._decode is decode_envelope and not any(read):
            try:  # the common case of a prepare that reads no value: in one pass, nothing kept
                ids = _ID_TYPES
                bad = [index for index, envelope in enumerate(map(orjson.loads, self._values))
                       if not (type(envelope) is dict and (event_id := envelope.get("event_id"))
                               and type(event_id) in ids and (brand_id := envelope.get("brand_id"))
                               and type(brand_id) in ids)]
            except (_JSON_ERROR, TypeError):
                bad = list(range(len(read)))  # one is not JSON: each of them looked at below
            if not bad:
                return
            unread = bad
        else:
            wanted = range(len(read)) if indices is None else indices
            unread = [index for index in wanted if not read[index]]
        for index in unread:
            self.__getitem__(index)  # records why, when it is not an envelope


class _QueuedRuns:
    """A chunk to be prepared in runs (`prepare_runs`); `indices`: only these records (None: all)."""

    __slots__ = ("chunk", "generation", "held", "indices", "next", "one_by_one", "partition", "payloads")

    def __init__(self, partition: Partition, chunk: Any, generation: int, indices: list[int] | None,
                 held: bool) -> None:
        self.partition, self.chunk, self.generation, self.indices = partition, chunk, generation, indices
        self.held, self.next, self.one_by_one = held, 0, False
        self.payloads: ChunkPayloads | None = None


AcceptRuns = Callable[[Any, int, "list[int] | None", Sequence[Any], bool], None]


class _Queued:
    """A chunk of sources waiting to be prepared, in consumption order; `next` is the first not done."""

    __slots__ = ("decoded", "next", "one_by_one", "sources")

    def __init__(self, sources: list[Source]) -> None:
        self.sources, self.next, self.decoded, self.one_by_one = sources, 0, False, False


Accept = Callable[[list[Source], Sequence[Any]], None]


class Prepare:
    """Runs the service's prepare function over each record, in consumption order, off the poll loop.

    Works a chunk (one partition's records of one poll) at a time: its values are decoded in one pass,
    then `prepare_many(sources)` (when the service has one) is called once for the chunk, or
    `prepare(source)` once a record. A retryable failure (the database away) is retried with backoff at
    the head of the line, so order holds and nothing is lost; the poll loop meanwhile keeps the group
    membership. A non-retryable failure of `prepare_many` has the chunk prepared record by record, so
    only the record that fails is dead-lettered (`prepare_failed`).
    """

    def __init__(self, service: str, decode: Callable[[Record], Any], prepare: PrepareFn,
                 is_retryable: ErrorClassifier, retry: RetryPolicy, clock: Clock,
                 prepare_many: PrepareManyFn | None = None,
                 skip: Callable[[Source], Skip | None] | None = None,
                 prepare_runs: PrepareRunsFn | None = None) -> None:
        self.service = service
        self._decode, self._prepare, self._is_retryable = decode, prepare, is_retryable
        self._prepare_many, self._skip, self._prepare_runs = prepare_many, skip, prepare_runs
        self._retry, self._clock = retry, clock
        self.queue: deque[Any] = deque()  # _Queued, or _QueuedRuns when the service prepares runs
        self.accept_runs: AcceptRuns | None = None  # set by the runtime when the service prepares runs
        self._wake = asyncio.Event()
        self._failures = 0

    def submit(self, source: Source) -> None:
        self.queue.append(_Queued([source]))
        self._wake.set()

    def submit_many(self, sources: list[Source]) -> None:
        """One chunk: sources of one partition and one generation, in offset order."""
        if sources:
            self.queue.append(_Queued(sources))
            self._wake.set()

    def submit_runs(self, partition: Partition, chunk: Any, generation: int, indices: list[int] | None = None,
                    held: bool = False) -> None:
        """A chunk (its records in `chunk.records`) to be prepared by `prepare_runs`."""
        self.queue.append(_QueuedRuns(partition, chunk, generation, indices, held))
        self._wake.set()

    def __len__(self) -> int:
        return sum(len(queued.sources) - queued.next if type(queued) is _Queued
                   else len(queued.indices if queued.indices is not None else queued.chunk.records)
                   for queued in self.queue)

    def drain(self) -> None:
        self.queue.clear()

    async def run(self, current_generation: Callable[[], int], accept_many: Accept,
                  reject: Callable[[Source, str, str], None],
                  settle_skipped: Callable[[Source, Skip], None]) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            queued = self.queue[0]
            if type(queued) is _QueuedRuns:
                if queued.generation != current_generation():
                    self.queue.popleft()
                    continue
                if not await self._prepare_in_runs(queued, current_generation, reject, settle_skipped):
                    continue
                if self.queue and self.queue[0] is queued:
                    self.queue.popleft()
                await asyncio.sleep(0)
                continue
            if queued.sources[0].generation != current_generation():
                self.queue.popleft()
                continue
            if not queued.decoded:
                queued.sources = self._decoded_and_own(queued.sources, reject, settle_skipped)
                queued.decoded = True
            if queued.next < len(queued.sources):
                if self._prepare_many is not None and not queued.one_by_one:
                    finished = await self._prepare_chunk(queued, current_generation, accept_many)
                else:
                    finished = await self._prepare_one_by_one(queued, current_generation, accept_many, reject)
                if not finished:
                    continue
            if self.queue and self.queue[0] is queued:
                self.queue.popleft()
            await asyncio.sleep(0)  # a turn for the poll loop and the dispatcher between chunks

    def _decoded_and_own(self, sources: list[Source], reject: Callable[[Source, str, str], None],
                         settle_skipped: Callable[[Source, Skip], None]) -> list[Source]:
        """The chunk's sources that decode and are this service's; the others rejected or skipped."""
        dropped: set[int] = set()
        for source, exc in decode_chunk(sources, self._decode):
            dropped.add(id(source))
            reject(source, exc.reason, exc.detail)
        if self._skip is not None:
            for source in sources:
                if source.headers and id(source) not in dropped:
                    skip = self._skip(source)
                    if skip is not None:
                        dropped.add(id(source))
                        settle_skipped(source, skip)
        if not dropped:
            return sources
        return [source for source in sources if id(source) not in dropped]

    def source_at(self, queued: _QueuedRuns, index: int) -> Source:
        """A Source of one record of a chunk in runs (for the rare paths: reject, skip, dead letter)."""
        return Source(to_record(queued.partition, queued.chunk.records[index]), queued.generation,
                      queued.chunk, index, 1, queued.held)

    async def _prepare_in_runs(self, queued: _QueuedRuns, current_generation: Callable[[], int],
                               reject: Callable[[Source, str, str], None],
                               settle_skipped: Callable[[Source, Skip], None]) -> bool:
        """prepare_runs over the chunk (or, after a non-retryable failure, record by record). True
        when the chunk is done; False while a retryable failure waits at its head."""
        assert self._prepare_runs is not None and self.accept_runs is not None
        records = queued.chunk.records
        payloads = queued.payloads
        if payloads is None:
            payloads = self._payloads_of(queued, settle_skipped)
        if queued.indices is not None and not queued.indices:
            return True
        if not queued.one_by_one:
            try:
                results = await self._call_prepare_runs(
                    PolledChunk(queued.partition, records, payloads, queued.indices))
            except Exception as exc:
                await self._failed_whole(queued, exc, "prepare_runs")
                return False
            undecodable = payloads.finish(queued.indices)
            if undecodable:
                results = self._reject_undecodable(queued, undecodable, results, current_generation(), reject)
            self._accept_prepared(queued, results, current_generation())
            return True
        wanted = list(range(len(records))) if queued.indices is None else queued.indices
        since_yield = 0
        while queued.next < len(wanted):
            index = wanted[queued.next]
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                if queued.generation != current_generation():
                    return True
            try:
                results = await self._call_prepare_runs(
                    PolledChunk(queued.partition, records, payloads, [index]))
            except Exception as exc:
                if self._is_retryable(exc):
                    await self._back_off(exc)
                    return False
                queued.next += 1
                if queued.generation == current_generation():
                    reject(self.source_at(queued, index), "prepare_failed", repr(exc)[:500])
                continue
            self._failures = 0
            queued.next += 1
            undecodable = payloads.finish([index])
            if undecodable:
                results = self._reject_undecodable(queued, undecodable, results, current_generation(), reject)
                if any(bad == index for bad, _ in undecodable):
                    continue
            if queued.generation == current_generation():
                self.accept_runs(queued, 1, [index], results, queued.held)
        return True

    async def _call_prepare_runs(self, polled: PolledChunk) -> Sequence[Any]:
        assert self._prepare_runs is not None
        results = self._prepare_runs(polled)
        if inspect.isawaitable(results):
            results = await results
        return results

    def _payloads_of(self, queued: _QueuedRuns,
                     settle_skipped: Callable[[Source, Skip], None]) -> ChunkPayloads:
        """The chunk's values, to be decoded as prepare reads them (`queued.payloads`, answered too);
        replays for another service skipped, and left out of `queued.indices`."""
        records = queued.chunk.records
        values = queued.chunk.values if queued.indices is None else None
        payloads = ChunkPayloads(queued.partition, records, values, self._decode)
        queued.chunk.values = None
        if self._skip is not None and any(map(_HEADERS, records)):  # in C: most chunks have none
            with_headers = ([index for index, record in enumerate(records) if record.headers]
                            if queued.indices is None else
                            [index for index in queued.indices if records[index].headers])
            dropped: set[int] = set()
            for index in with_headers:
                source = self.source_at(queued, index)
                skip = self._skip(source)
                if skip is not None:
                    dropped.add(index)
                    settle_skipped(source, skip)
            if dropped:
                wanted = range(len(records)) if queued.indices is None else queued.indices
                queued.indices = [index for index in wanted if index not in dropped]
        queued.payloads = payloads
        return payloads

    def _reject_undecodable(self, queued: _QueuedRuns, undecodable: list[tuple[int, Undecodable]],
                            results: Sequence[Any], generation: int,
                            reject: Callable[[Source, str, str], None]) -> list[Any]:
        """Records that are not envelopes dead-lettered, left out of `queued.indices`, and taken out of
        the runs prepare answered (whatever it answered for them)."""
        bad = {index for index, _ in undecodable}
        if queued.generation == generation:
            for index, exc in undecodable:
                reject(self.source_at(queued, index), exc.reason, exc.detail)
        wanted = range(len(queued.chunk.records)) if queued.indices is None else queued.indices
        queued.indices = [index for index in wanted if index not in bad]
        return without_records(results, bad)

    def _accept_prepared(self, queued: _QueuedRuns, results: Sequence[Any], generation: int) -> None:
        assert self.accept_runs is not None
        self._failures = 0
        if queued.generation == generation:
            eligible = len(queued.chunk.records) if queued.indices is None else len(queued.indices)
            self.accept_runs(queued, eligible, queued.indices, results, queued.held)

    async def _failed_whole(self, queued: _Queued | _QueuedRuns, exc: Exception, what: str) -> None:
        """A chunk's prepare call failed: a retryable error backs off (the chunk stays at the head,
        tried again); any other has the chunk prepared record by record, so only the failing record
        is dead-lettered."""
        if self._is_retryable(exc):
            await self._back_off(exc)
            return
        log.warning(f"{what} failed; preparing the chunk record by record", service=self.service,
                    error=repr(exc))
        queued.one_by_one = True

    async def _back_off(self, exc: BaseException) -> None:
        self._failures += 1
        metrics.PREPARE_RETRIES.labels(self.service).inc()
        delay = self._retry.backoff(self._failures)
        log.warning("prepare failed; retrying", service=self.service, error=repr(exc),
                    retry_in=round(delay, 2))
        await self._clock.sleep(delay)

    async def _prepare_chunk(self, queued: _Queued, current_generation: Callable[[], int],
                             accept_many: Accept) -> bool:
        """prepare_many over the rest of the chunk. True when the chunk is done."""
        assert self._prepare_many is not None
        sources = queued.sources[queued.next:] if queued.next else queued.sources
        generation = sources[0].generation
        try:
            results = self._prepare_many(sources)
            if inspect.isawaitable(results):
                results = await results
            if len(results) != len(sources):
                raise ValueError(f"prepare_many answered {len(results)} results for {len(sources)} records")
        except Exception as exc:
            await self._failed_whole(queued, exc, "prepare_many")
            return False
        self._failures = 0
        queued.next = len(queued.sources)
        if generation == current_generation():
            accept_many(sources, results)
        return True

    async def _prepare_one_by_one(self, queued: _Queued, current_generation: Callable[[], int],
                                  accept_many: Accept, reject: Callable[[Source, str, str], None]) -> bool:
        """prepare(source) over the rest of the chunk. True when the chunk is done (or its generation
        ended); False while a retryable failure waits at its head (`queued.next` is where it stands)."""
        prepare, sources = self._prepare, queued.sources
        generation = sources[0].generation
        done: list[Source] = []
        results: list[Any] = []

        def flush() -> None:
            if done and generation == current_generation():
                accept_many(list(done), list(results))
            done.clear()
            results.clear()

        since_yield = 0
        while queued.next < len(sources):
            source = sources[queued.next]
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                # A prepare that never really suspends (cached lookups) would otherwise run a long
                # queue in one go and starve the poll loop and the heartbeat: the group would evict us.
                since_yield = 0
                flush()
                await asyncio.sleep(0)
                if generation != current_generation():
                    return True
            try:
                result: Any = prepare(source)
                waited = type(result) is not list and inspect.isawaitable(result)
                if waited:
                    result = await result
            except Exception as exc:
                flush()
                if self._is_retryable(exc):
                    await self._back_off(exc)
                    return False
                queued.next += 1
                if generation == current_generation():
                    reject(source, "prepare_failed", repr(exc)[:500])
                continue
            self._failures = 0
            queued.next += 1
            done.append(source)
            results.append(result)
            if waited:  # it took its time: hand it on now, not with the next 255
                flush()
        flush()
        return True


class OrderByKey:
    """Per-key order with the hot-key escape (see ordering.KeyedQueues)."""

    def __init__(self, max_pending_per_key: int) -> None:
        self.queues: KeyedQueues[Work] = KeyedQueues(max_pending_per_key)

    def push(self, work: Work) -> list[Work]:
        return self.queues.push(work.key, work)


@dataclass
class BatchByTarget:
    """Packs ready runs into batches by target, within a count and a byte budget; lingers for more."""

    max_items: int = 500
    max_bytes: int = 1_000_000
    max_wait: float = 0.05
    max_run_per_key: int = 50
    counted: bool = False  # items are runs of `item.count` records: the count budget counts records

    def pack(self, taken: list[tuple[str, list[Work]]]) -> list[tuple[Hashable, Runs]]:
        """Batches of (key, run); a run never spans two batches, and may be cut to fit."""
        targets = {run[0].target for _, run in taken}
        if len(targets) == 1:  # the common case: one target, no grouping
            by_target: dict[Hashable, Runs] = {targets.pop(): taken}
        else:
            by_target = {}
            for key, run in taken:
                by_target.setdefault(run[0].target, []).append((key, run))
        batches: list[tuple[Hashable, Runs]] = []
        max_items, max_bytes, counted = self.max_items, self.max_bytes, self.counted
        for target, runs in by_target.items():
            current: Runs = []
            count = size = 0
            for key, run in runs:
                length = len(run)
                if length == 1:
                    run_size = run[0].size
                    if counted:
                        length = run[0].count
                else:
                    run_size = sum([work.size for work in run])
                    if counted:
                        length = sum([work.count for work in run])
                if current and (count + length > max_items or size + run_size > max_bytes):
                    batches.append((target, current))
                    current, count, size = [], 0, 0
                if count + length <= max_items and size + run_size <= max_bytes:
                    current.append((key, run))  # the common case: the whole run fits
                    count += length
                    size += run_size
                    continue
                cut: list[Work] = []
                for work in run:
                    if cut and (count >= max_items or size + work.size > max_bytes):
                        break
                    cut.append(work)
                    size += work.size
                    count += work.count if counted else 1
                current.append((key, cut))
            if current:
                batches.append((target, current))
        return batches


class Deliver:
    """Calls the service's deliver function for one batch: rate-limited per target, split on a 400."""

    def __init__(self, service: str, deliver: DeliverFn, is_retryable: ErrorClassifier,
                 rate_limits: RateLimits | None, clock: Clock) -> None:
        self.service = service
        self._deliver, self._is_retryable = deliver, is_retryable
        self.rate_limits, self._clock = rate_limits, clock
        self._deliver_seconds = metrics.DELIVER_SECONDS.labels(service)

    async def _wait_for_slot(self, target: Hashable) -> None:
        if self.rate_limits is None:
            return
        limit = self.rate_limits.for_target(target)
        delay = limit.reserve(self._clock.now()) - self._clock.now()
        if delay > 0:
            await self._clock.sleep(delay)
        while (wait := limit.window_wait(self._clock.now())) > 0:
            await self._clock.sleep(wait)
        limit.sent(self._clock.now())

    async def call(self, target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        """The deliver function's own answer for the batch (rate-limited; an exception classified)."""
        return await self._call(target, items)

    async def _call(self, target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        await self._wait_for_slot(target)
        started = self._clock.now()
        try:
            outcome = await self._deliver(target, items)
        except Exception as exc:
            if self._is_retryable(exc):
                outcome = Retry(f"error:{type(exc).__name__}")
            else:
                outcome = SplitBatch(f"error:{type(exc).__name__}", repr(exc)[:500])
        self._deliver_seconds.observe(max(0.0, self._clock.now() - started))
        return outcome

    async def batch_outcome(self, target: Hashable, items: Sequence[Work]) -> Delivered | list[ItemOutcome]:
        """DELIVERED when the whole batch is delivered (the common case, answered without a list);
        otherwise one outcome per item, as `outcomes`."""
        result = await self._call(target, items)
        if type(result) is Delivered:
            return result
        if type(result) is list and len(result) == len(items) and all(type(o) is Delivered for o in result):
            return DELIVERED
        return await self.outcomes(target, items, result)

    async def outcomes(self, target: Hashable, items: Sequence[Work],
                       answered: BatchOutcome | None = None) -> list[ItemOutcome]:
        """One outcome per item, in order; a whole-batch refusal is bisected to the offending items."""
        result = await self._call(target, items) if answered is None else answered
        if isinstance(result, list):
            if len(result) != len(items):
                raise ValueError(f"deliver answered {len(result)} outcomes for {len(items)} items")
            outcomes = result
        elif isinstance(result, SplitBatch):
            if len(items) == 1:
                return [Failed(result.reason, result.detail)]
            middle = len(items) // 2
            first = await self.outcomes(target, items[:middle])
            held = {work.key: outcome for work, outcome in zip(items[:middle], first, strict=True)
                    if isinstance(outcome, Retry)}
            rest = [work for work in items[middle:] if work.key not in held]
            second = iter(await self.outcomes(target, rest) if rest else [])
            return first + [held[work.key] if work.key in held else next(second) for work in items[middle:]]
        else:
            outcomes = [result] * len(items)
        if self.rate_limits is not None:
            throttled = [o for o in outcomes if isinstance(o, Retry) and o.throttled]
            if throttled:
                self.rate_limits.for_target(target).throttled(self._clock.now(), throttled[0].retry_after)
        return outcomes


@dataclass
class CommitOffsets:
    """Commits, per partition, the offset after the longest prefix of settled records; nothing later."""

    tracker: OffsetTracker

    def settled(self, source: Source) -> None:
        partition = source.partition
        self.tracker.settle(partition.topic, partition.partition, source.chunk, source.index)
