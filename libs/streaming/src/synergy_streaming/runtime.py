"""The consumer runtime: poll, hand records through the steps, settle, commit the done prefix.

Three loops share the state on one event loop: the poll loop (never awaits anything but the broker),
the prepare loop, and the dispatch loop that packs ready runs into batches and starts deliveries.
A commit loop commits what is settled. A rebalance (eager, as aiokafka's) waits a bounded time for
deliveries in flight, commits, and drops everything buffered: the next owner re-reads it from the
committed offsets, and late answers of the old generation are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import attrgetter
from typing import Any

import structlog
from synergy_common.db_errors import is_retryable_db_error
from synergy_common.gc_tuning import YOUNG_THRESHOLD, tune_garbage_collector

from synergy_streaming import metrics
from synergy_streaming.brake import DlqBrake
from synergy_streaming.clock import Clock, MonotonicClock
from synergy_streaming.consumer import Consumer
from synergy_streaming.dlq import REPLAY_FOR, DeadLetter, DeadLetterWriter
from synergy_streaming.message import (
    DELIVERED,
    Delivered,
    Failed,
    ItemOutcome,
    Partition,
    PolledSource,
    Record,
    Reject,
    RejectRecord,
    Retry,
    Run,
    Skip,
    Source,
    Span,
    Work,
    key_text,
)
from synergy_streaming.offsets import OffsetTracker, RecordOffsets
from synergy_streaming.rate_limit import RateLimits
from synergy_streaming.retry import GiveUp, RetryPolicy
from synergy_streaming.steps import (
    BatchByTarget,
    CommitOffsets,
    DeadLetterPolicy,
    Deliver,
    DeliverFn,
    ErrorClassifier,
    OrderByKey,
    Prepare,
    PrepareFn,
    PrepareManyFn,
    PrepareRunsFn,
    decode_envelope,
    to_record,
)

log = structlog.get_logger()

PARKED_DETAIL = "the key's earlier message is still being retried"


def is_retryable_error(exc: BaseException) -> bool:
    """Connection-level trouble (and Postgres saying "try again") is retried; anything else is data."""
    return is_retryable_db_error(exc)


@dataclass
class StreamConfig:
    service: str
    topics: Sequence[str]
    # Backpressure. Records consumed and not yet settled, and the bytes of their values: at either
    # limit the poll loop stops taking records (aiokafka keeps what it prefetched, bounded by its fetch
    # sizes); still full after `pause_after` seconds (a target down, say), the partitions are paused,
    # and resumed as soon as a poll fits again. Pausing at once would make aiokafka drop its prefetched
    # records of those partitions and fetch them again, a stall each time the buffer fills.
    max_buffered: int = 20_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    pause_after: float = 1.0
    # While no key is waiting for a retry, the poll loop reads ahead only this many records beyond those
    # in deliveries (None: max_in_flight * max_batch_items, enough to fill every delivery slot once
    # more): records polled long before they are handled have left the CPU's caches, and cost a quarter
    # more to handle. A key retrying lifts it, so that other keys flow past it up to max_buffered.
    read_ahead: int | None = None
    # In runs: a chunk none of whose keys is queued, in flight, retrying or parked skips the per-key
    # queues (see StreamProcessor._to_lane). Off: every chunk goes by key.
    chunk_lane: bool = True
    max_batch_items: int = 500
    max_batch_bytes: int = 1_000_000  # in Work.size units
    max_batch_wait: float = 0.05
    max_run_per_key: int = 50
    max_in_flight: int = 8
    max_pending_per_key: int = 1_000
    commit_interval: float = 1.0
    poll_timeout: float = 0.1
    max_poll_records: int = 2_000
    revoke_grace: float = 10.0
    brake: DlqBrake = field(default_factory=DlqBrake)
    # The records in flight (tens of thousands, each a few objects) outlive CPython's default young
    # generation (700 allocations): they were promoted and swept by full collections over and over, half
    # of the runtime's CPU. run() sets the young threshold to this (synergy_common.gc_tuning, the one
    # place the collector is tuned; None: leave it as the service set it).
    gc_young_threshold: int | None = YOUNG_THRESHOLD


class StreamProcessor:
    """One consumer group member running `prepare` then `deliver` over its partitions."""

    def __init__(
        self,
        config: StreamConfig,
        consumer: Consumer,
        prepare: PrepareFn,
        deliver: DeliverFn,
        *,
        dead_letters: DeadLetterWriter | None = None,
        retry: RetryPolicy | None = None,
        rate_limits: RateLimits | None = None,
        decode: Callable[[Record], Any] = decode_envelope,
        is_retryable: ErrorClassifier = is_retryable_error,
        destination_of: Callable[[Hashable], str] = lambda target: "",
        on_dead_letter: Callable[[Work | None, DeadLetter], None] | None = None,
        clock: Clock | None = None,
        prepare_many: PrepareManyFn | None = None,
        prepare_runs: PrepareRunsFn | None = None,
    ) -> None:
        self.config = config
        self.service = config.service
        self.consumer = consumer
        self.clock = clock or MonotonicClock()
        self.retry = retry or RetryPolicy()
        self.brake = config.brake
        self.dead_letters = DeadLetterPolicy(self.service, dead_letters, self.brake, destination_of)
        self._on_dead_letter = on_dead_letter
        self.prepare = Prepare(self.service, decode, prepare, is_retryable, self.retry, self.clock,
                               prepare_many=prepare_many, skip=self._foreign_replay,
                               prepare_runs=prepare_runs)
        self.order = OrderByKey(config.max_pending_per_key)
        self.batching = BatchByTarget(config.max_batch_items, config.max_batch_bytes, config.max_batch_wait,
                                      config.max_run_per_key)
        # In runs (the service passes prepare_runs): the unit of work is a key's run of a poll chunk.
        self.in_runs = prepare_runs is not None
        if self.in_runs:
            self.order.queues.counted = self.batching.counted = True
            self.prepare.accept_runs = self._accept_runs
        self.deliver = Deliver(self.service, deliver, is_retryable, rate_limits, self.clock)
        self.commits = CommitOffsets(OffsetTracker())
        self.generation = 0
        self.assignments = 0  # rebalances this member went through (1 = none since it joined)
        self.lag: dict[Partition, int] = {}  # committed offset behind the high watermark, per partition
        self.assigned: set[Partition] = set()
        self.paused = False
        self.held: list[Source] = []  # rejected while the brake is engaged
        self._held_retry_at: float | None = None
        self._linger_since: float | None = None
        self._brake_reported = False
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        self._running = False
        self._stopped = asyncio.Event()
        self._settled_counters: dict[str, Any] = {}
        self._consumed_counters: dict[str, Any] = {}
        self._room = asyncio.Event()  # set when records settle while the poll loop waits for room
        self._waiting_for_room = False
        self._in_flight_items = 0  # work items in deliveries now
        # The chunk lane (in runs): a chunk none of whose keys is queued, in flight, retrying or parked
        # elsewhere goes as batch-sized slices of its runs, without per-key queueing. A partition's lane
        # chunks go one at a time, in order (their slices in parallel: one run a key in a chunk); the
        # head chunk's keys are held in the key queues while it is out.
        self._lanes: dict[Partition, deque[_LaneChunk]] = {}
        self._lane_ready: deque[tuple[_LaneChunk, list[Run], int]] = deque()  # slices of head chunks
        self._lane_held: set[str] = set()  # keys held in the key queues for a head chunk's run
        self._read_ahead = config.read_ahead or config.max_in_flight * config.max_batch_items
        if self.in_runs and not config.read_ahead:
            # in runs the records are the consumer's own, and polls come whole: reading ahead only two
            # polls' worth left the loop waiting on fetches (CPU 91-93 %); four keep it busy.
            self._read_ahead = max(self._read_ahead, 4 * config.max_poll_records)
        self._buffered_gauge = metrics.BUFFERED.labels(self.service)
        self._paused_gauge = metrics.PAUSED.labels(self.service)
        self._batch_size = metrics.BATCH_SIZE.labels(self.service)

    def _foreign_replay(self, source: Source) -> Skip | None:
        """A dead letter replayed for another service (header dlq_replay_for) is not ours: skipped."""
        replay_for = source.record.header(REPLAY_FOR)
        if replay_for is not None and replay_for.decode(errors="replace") != self.service:
            return Skip("replay_for_another_service")
        return None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until stop(): consume, deliver, commit. Commits what is settled before returning."""
        self._running = True
        if self.config.gc_young_threshold is not None:
            tune_garbage_collector(self.config.gc_young_threshold, freeze=False)
        self.consumer.subscribe(list(self.config.topics), self._on_assigned, self._on_revoked)
        loops = [
            asyncio.create_task(self._poll_loop(), name=f"{self.service}-poll"),
            asyncio.create_task(self.prepare.run(lambda: self.generation, self._accept_many, self._reject,
                                                 self._skip_source), name=f"{self.service}-prepare"),
            asyncio.create_task(self._dispatch_loop(), name=f"{self.service}-dispatch"),
            asyncio.create_task(self._commit_loop(), name=f"{self.service}-commit"),
        ]
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            done, _ = await asyncio.wait([*loops, stopped], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped:
                    task.result()
        finally:
            self._running = False
            for task in [*loops, stopped]:
                task.cancel()
            await asyncio.gather(*loops, stopped, return_exceptions=True)
            await self._settle_in_flight(self.config.revoke_grace)
            await self.commit()
            # What is still in flight after the grace must not settle (or be dead-lettered because the
            # service closed its clients behind us): it stays uncommitted, and the next owner re-reads it.
            self.generation += 1
            leftover = self._in_flight | self._writes
            for task in leftover:
                task.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)

    def stop(self) -> None:
        self._running = False
        self._stopped.set()
        self._wake.set()

    def readiness(self) -> dict[str, bool]:
        return {"dlq_brake_released": not self.brake.engaged}

    async def _settle_in_flight(self, timeout: float) -> None:
        pending = self._in_flight | self._writes
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _on_revoked(self, revoked: list[Partition]) -> None:
        await self._settle_in_flight(self.config.revoke_grace)
        await self.commit()
        self.generation += 1
        self.prepare.drain()
        self.order.queues.drain()
        self._lanes.clear()
        self._lane_ready.clear()
        self._lane_held.clear()
        self.held.clear()
        self.commits.tracker.forget(list(self.commits.tracker.partitions))
        self.assigned -= set(revoked)
        log.info("partitions revoked", service=self.service, partitions=len(revoked))

    async def _on_assigned(self, assigned: list[Partition]) -> None:
        self.assignments += 1
        self.assigned = set(assigned)
        self.lag = {p: lag for p, lag in self.lag.items() if p in self.assigned}
        total = sum(self.consumer.partition_count(topic) for topic in self.config.topics)
        share = len(assigned) / total if total else 1.0
        if self.deliver.rate_limits is not None:
            self.deliver.rate_limits.set_share(share)
        self.paused = False
        self._paused_gauge.set(0)
        log.info("partitions assigned", service=self.service, partitions=len(assigned), of_total=total,
                 rate_share=round(share, 3))

    # --- poll ------------------------------------------------------------------------------------

    def _full(self) -> bool:
        tracker = self.commits.tracker
        return (tracker.outstanding >= self.config.max_buffered
                or tracker.outstanding_bytes >= self.config.max_buffered_bytes or self.brake.engaged)

    def _pause(self) -> None:
        if not self.paused:
            self.consumer.pause(self.consumer.assignment())
            self.paused = True
            self._paused_gauge.set(1)

    def _resume(self) -> None:
        if self.paused:
            self.consumer.resume(self.consumer.assignment())
            self.paused = False
            self._paused_gauge.set(0)

    def _read_enough(self) -> bool:
        """Enough records wait to fill the deliveries, and none waits behind a retrying key."""
        return (self.commits.tracker.outstanding - self._in_flight_items >= self._read_ahead
                and not self.order.queues.any_blocked())

    def _made_room(self) -> None:
        if self._waiting_for_room and not self._full() and not self._read_enough():
            self._room.set()

    async def _wait_for_room(self) -> None:
        """Until records settle (`_made_room`) or a poll timeout passes."""
        self._room.clear()
        self._waiting_for_room = True
        try:
            await self.clock.wait(self._room, self.config.poll_timeout)
        finally:
            self._waiting_for_room = False

    async def _poll_loop(self) -> None:
        config, clock = self.config, self.clock
        poll_chunks = getattr(self.consumer, "poll_chunks", None)
        full_since: float | None = None
        while self._running:
            self._buffered_gauge.set(self.commits.tracker.outstanding)
            if self._full():
                now = clock.now()
                if full_since is None:
                    full_since = now
                if self.brake.engaged or now - full_since >= config.pause_after:
                    self._pause()
                if not self.paused:
                    await self._wait_for_room()
                    continue
            else:
                full_since = None
                self._resume()
                if self._read_enough():
                    await self._wait_for_room()
                    if self._read_enough():
                        continue
            if poll_chunks is not None:
                chunks = await poll_chunks(config.poll_timeout, config.max_poll_records,
                                           None if self.in_runs else PolledSource)
            else:
                chunks = _by_partition(await self.consumer.poll(config.poll_timeout, config.max_poll_records))
            if chunks:
                if self.in_runs:
                    self._track_runs(chunks)
                else:
                    self._track(chunks)
            elif self.paused:
                await clock.sleep(config.poll_timeout)

    def _track(self, chunks: list[tuple[Partition, list[Any]]]) -> None:
        """One chunk per partition of the poll: tracked as one range of offsets, then prepared."""
        generation, tracker, prepare = self.generation, self.commits.tracker, self.prepare
        for partition, records in chunks:
            if not records:
                continue
            if type(records[0]) is not PolledSource:  # a consumer that gives plain records
                records = [Source(record) for record in records]
            sources: list[Source] = records
            size = sum([len(s.value) if s.value is not None else 0 for s in sources])
            offsets = [s.offset for s in sources]
            chunk = tracker.track_chunk(partition.topic, partition.partition, offsets, size)
            for index, source in enumerate(sources):
                source.generation, source.chunk, source.index = generation, chunk, index
            prepare.submit_many(sources)
            counter = self._consumed_counters.get(partition.topic)
            if counter is None:
                counter = self._consumed_counters[partition.topic] = metrics.CONSUMED.labels(
                    self.service, partition.topic)
            counter.inc(len(records))

    def _track_runs(self, chunks: list[tuple[Partition, list[Any]]]) -> None:
        """In runs: the consumer's records as they are, one chunk a partition; nothing per record but
        their offsets and sizes."""
        generation, tracker, prepare = self.generation, self.commits.tracker, self.prepare
        for partition, records in chunks:
            if not records:
                continue
            values = [record.value for record in records]
            try:
                size = sum(map(len, values))
            except TypeError:  # a record without a value (a tombstone)
                size = sum(map(len, [value or b"" for value in values]))
            chunk = tracker.track_chunk(partition.topic, partition.partition, RecordOffsets(records), size)
            chunk.records, chunk.values = records, values
            prepare.submit_runs(partition, chunk, generation)
            counter = self._consumed_counters.get(partition.topic)
            if counter is None:
                counter = self._consumed_counters[partition.topic] = metrics.CONSUMED.labels(
                    self.service, partition.topic)
            counter.inc(len(records))

    # --- prepare outcomes ------------------------------------------------------------------------

    def _accept_many(self, sources: list[Source], results: Sequence[Any]) -> None:
        """What prepare answered for each source of a chunk, in order: its work is queued by key in one
        pass (a Work or a one-item list: the common case), a Skip settles it, a Reject dead-letters it."""
        keys: list[str] = []
        works: list[Work] = []
        for source, result in zip(sources, results, strict=True):
            # source.payload stays: a deliver function may read it (the dispatcher's backlog reads the
            # event id of the work it moves); dropping it here broke that with a TypeError per item.
            kind = type(result)
            if kind is list and len(result) == 1:
                work = result[0]
            elif kind is Work:
                work = result
            else:
                items = self._other_result(source, result)
                if items:
                    source.pending = len(items)
                    for work in items:
                        work.source = source
                        keys.append(work.key)
                        works.append(work)
                continue
            work.source = source
            source.pending = 1
            keys.append(work.key)
            works.append(work)
        if works:
            for item in self.order.queues.push_many(keys, works):
                self._dead_letter_work(item, "hot_key_parked", PARKED_DETAIL)
            self._wake.set()

    def _accept_runs(self, queued: Any, eligible: int, indices: list[int] | None, results: Sequence[Any],
                     held: bool) -> None:
        """What prepare_runs answered for a chunk: its runs queued by key in one pass; a RejectRecord
        dead-lettered; the records in no run settled as skipped."""
        chunk, generation, max_items = queued.chunk, queued.generation, self.config.max_batch_items
        if not held and {type(run) for run in results} == {Run}:  # the common case, in one pass each
            counts = [run.count for run in results]
            if max(counts) <= max_items:
                for run in results:
                    run.chunk, run.generation = chunk, generation
                if sum(counts) < eligible:
                    self._settle_uncovered(chunk, generation, indices, results, False)
                whole: list[Run] = results if type(results) is list else list(results)
                run_keys = [run.key for run in whole]
                if self.config.chunk_lane:
                    key_set = set(run_keys)
                    if (len(key_set) == len(run_keys) and len({run.target for run in whole}) == 1
                            and self._to_lane(queued.partition, key_set, whole, counts)):
                        self._wake.set()
                        return
                self._queue_by_key(run_keys, whole)
                self._wake.set()
                return
        keys: list[str] = []
        runs: list[Run] = []
        covered = 0
        for run in self._spans_laned_or_by_key(queued, results, held):
            if type(run) is Span:  # laned whole
                covered += run.count
                continue
            if type(run) is not Run:
                if isinstance(run, RejectRecord):
                    covered += 1
                    self._reject(self.prepare.source_at(queued, run.index), run.reason, run.detail)
                    continue
                raise TypeError(f"prepare_runs answered {run!r}, not a Run or a RejectRecord")
            count = run.count
            if not count:
                continue
            covered += count
            run.chunk, run.generation = chunk, generation
            if held:
                run.held = True
            if count > max_items:  # a batch holds max_batch_items records at most: the run goes in parts
                for start in range(0, count, max_items):
                    part = Run(run.key, run.target, run.indices[start:start + max_items],
                               None if run.items is None else run.items[start:start + max_items],
                               run.size_of(min(max_items, count - start)))
                    part.chunk, part.generation, part.held = chunk, generation, run.held
                    keys.append(part.key)
                    runs.append(part)
                continue
            keys.append(run.key)
            runs.append(run)
        if covered < eligible:
            self._settle_uncovered(chunk, generation, indices, results, held)
        if runs:
            self._queue_by_key(keys, runs)
            self._wake.set()

    def _spans_laned_or_by_key(self, queued: Any, results: Sequence[Any], held: bool) -> Sequence[Any]:
        """The answers with each Span either sent to the lane (kept, as done) or cut into one Run a key."""
        if not any([type(result) is Span for result in results]):
            return results
        lane_ok = (not held and self.config.chunk_lane
                   and [type(result) for result in results if type(result) is not RejectRecord] == [Span])
        expanded: list[Any] = []
        for result in results:
            if type(result) is not Span:
                expanded.append(result)
                continue
            result.chunk, result.generation = queued.chunk, queued.generation
            if held:
                result.held = True
            if not result.count:
                continue
            if lane_ok and self._span_to_lane(queued.partition, result):
                self._wake.set()
                expanded.append(result)
            else:
                expanded.extend(result.by_key())
        return expanded

    def _span_to_lane(self, partition: Partition, span: Span) -> bool:
        """A span into the partition's lane, if none of its keys is anywhere else: as consecutive
        batch-sized slices that go one after the other (a key may have records in several)."""
        raw = _raw_keys_of(span.chunk.records, span.indices)  # decoded only when a key queue compares
        queues = self.order.queues
        keys = None if queues.idle() else _decoded(raw)
        if keys is not None and not queues.untouched(keys):
            return False
        if self._in_another_lane(partition, keys, raw):
            return False
        per_slice = self.config.max_batch_items
        if span.size != span.count:  # sizes in bytes: as many records as the byte budget holds
            per_slice = max(1, min(per_slice, self.config.max_batch_bytes * span.count // max(1, span.size)))
        pieces = [span] if span.count <= per_slice else [
            span.cut(start, start + per_slice) for start in range(0, span.count, per_slice)]
        slices: list[tuple[list[Run], int]] = [([piece], piece.count) for piece in pieces]
        self._lane_append(_LaneChunk(partition, keys, [span], slices, sequential=True, raw=raw))
        return True

    def _lane_append(self, lane: _LaneChunk) -> None:
        """A chunk at the end of its partition's lane (at its head, slices ready, if it was empty)."""
        fifo = self._lanes.get(lane.partition)
        if fifo is None:
            self._lanes[lane.partition] = deque((lane,))
            self._lane_ready.extend(lane.slices_ready())
        else:
            fifo.append(lane)

    def _in_another_lane(self, partition: Partition, keys: set[str] | None,
                         raw: set[bytes] | None = None) -> bool:
        """Whether a lane chunk of another partition has one of the keys (a key in two partitions: the
        topic grew, or a producer chose the partition): `keys` as text, or `raw` as the records have them."""
        for other, fifo in self._lanes.items():
            if other == partition:
                continue
            for lane in fifo:
                if raw is not None and lane.raw is not None:
                    if not raw.isdisjoint(lane.raw):
                        return True
                    continue
                if keys is None:
                    keys = _decoded(raw or set())
                if not keys.isdisjoint(lane.keys):
                    return True
        return False

    def _queue_by_key(self, keys: list[str], runs: list[Any]) -> None:
        """Runs queued by key. A lane's chunks behind its head that share a key go first (they came
        earlier), and a key the head chunk has out is held until it settles."""
        if self._lanes:
            key_set = set(keys)
            hits = [p for p, fifo in self._lanes.items()
                    if any([not key_set.isdisjoint(lane.keys) for lane in fifo])]
            for partition in hits:
                self._flush_lane(partition)
            for partition in hits:
                held = key_set & self._lanes[partition][0].keys
                if held:
                    self.order.queues.hold(held)
                    self._lane_held |= held
        for item in self.order.queues.push_many(keys, runs):
            self._dead_letter_work(item, "hot_key_parked", PARKED_DETAIL)

    def _to_lane(self, partition: Partition, key_set: set[str], runs: list[Run], counts: list[int]) -> bool:
        """The chunk's runs (one a key) into the partition's lane, if none of its keys is anywhere else."""
        if not self.order.queues.untouched(key_set):
            return False
        if self._in_another_lane(partition, key_set):
            return False
        # batch-sized slices, cut as BatchByTarget.pack cuts (whole runs, within both budgets)
        max_items, max_bytes = self.config.max_batch_items, self.config.max_batch_bytes
        counts = list(accumulate(counts))
        sizes = counts if all([run.size == run.count for run in runs]) else list(
            accumulate([run.size for run in runs]))
        slices: list[tuple[list[Run], int]] = []
        start, total = 0, len(runs)
        while start < total:
            base_count = counts[start - 1] if start else 0
            base_size = sizes[start - 1] if start else 0
            end = min(bisect_right(counts, base_count + max_items, start),
                      bisect_right(sizes, base_size + max_bytes, start))
            end = max(end, start + 1)  # a run over the byte budget goes alone
            slices.append((runs[start:end], counts[end - 1] - base_count))
            start = end
        self._lane_append(_LaneChunk(partition, key_set, runs, slices))
        return True

    def _flush_lane(self, partition: Partition) -> None:
        """The partition's lane chunks behind its head go to the key queues, in order."""
        fifo = self._lanes[partition]
        if len(fifo) == 1:
            return
        waiting = list(fifo)[1:]
        head = fifo[0]
        self._lanes[partition] = deque((head,))
        queues, head_keys = self.order.queues, head.keys
        for lane in waiting:
            held = lane.keys & head_keys
            if held:
                queues.hold(held)
                self._lane_held |= held
            runs = _by_key(lane.runs)
            for item in queues.push_many([run.key for run in runs], runs):
                self._dead_letter_work(item, "hot_key_parked", PARKED_DETAIL)

    def _lane_slice_out(self, lane: _LaneChunk) -> None:
        """One slice of a head chunk settled (or handed to the key queues); the chunk's last frees its
        keys and lets the partition's next chunk go."""
        lane.outstanding -= 1
        if lane.generation != self.generation:
            return
        if lane.outstanding > 0:
            if lane.sequential:
                self._lane_ready.extend(lane.slices_ready())
            return
        fifo = self._lanes[lane.partition]
        fifo.popleft()
        if self._lane_held:
            released = lane.keys & self._lane_held
            if released:
                self._lane_held -= released
                self.order.queues.release(released)
        if fifo:
            self._lane_ready.extend(fifo[0].slices_ready())
        else:
            del self._lanes[lane.partition]
        self._wake.set()

    def _lane_to_keys(self, lane: _LaneChunk, runs: list[Run]) -> list[tuple[str, list[Work]]]:
        """A head chunk's slice not delivered whole: its runs become the taken heads of their keys'
        queues (and the partition's later lane chunks queue behind them), to be answered run by run."""
        runs = _by_key(runs)
        keys = {run.key for run in runs}
        if lane.sequential:  # its slices not sent yet go to the key queues, after this one's runs
            unsent = [piece for part, _ in lane.slices[lane.sent:] for piece in part]
            lane.outstanding -= len(lane.slices) - lane.sent
            lane.keys = set()  # what this one has out is the taken runs' now, held by the key queues
            if unsent:
                later = _by_key(unsent)
                for item in self.order.queues.push_many([run.key for run in later], later):
                    self._dead_letter_work(item, "hot_key_parked", PARKED_DETAIL)
        self._flush_lane(lane.partition)
        lane.keys = lane.keys - keys
        self._lane_held -= keys
        self.order.queues.put_taken(runs)
        self._lane_slice_out(lane)
        return [(run.key, [run]) for run in runs]

    def _settle_uncovered(self, chunk: Any, generation: int, indices: list[int] | None,
                          results: Sequence[Any],
                          held: bool) -> None:
        """The records of a chunk prepared in runs that no run (nor RejectRecord) covers: skipped."""
        covered = {index for run in results if isinstance(run, Run) for index in run.indices}
        covered.update(run.index for run in results if isinstance(run, RejectRecord))
        wanted = range(len(chunk.records)) if indices is None else indices
        skipped = [(chunk, index) for index in wanted if index not in covered]
        if not skipped:
            return
        self._settled_counter("skipped").inc(len(skipped))
        self.brake.succeeded(len(skipped), was_held=held)
        if generation == self.generation:
            self.commits.tracker.settle_many(skipped)
            self._made_room()

    def _accept(self, source: Source, result: Any) -> None:
        self._accept_many([source], [result])

    def _other_result(self, source: Source, result: Any) -> Sequence[Work]:
        """Work of a result that is not a single Work; Skip and Reject (and no work) handled here."""
        if isinstance(result, Skip):
            self._settle_source(source, "skipped")
            return ()
        if isinstance(result, Reject):
            self._reject(source, result.reason, result.detail)
            return ()
        if not result:
            self._settle_source(source, "skipped")
            return ()
        items: Sequence[Work] = result
        return items

    def _skip_source(self, source: Source, skip: Skip) -> None:
        self._settle_source(source, "skipped")

    def _reject(self, source: Source, reason: str, detail: str) -> None:
        if not self.dead_letters.brake.may_dead_letter():
            source.held = True
            self.held.append(source)
            self._note_brake()
            return
        letter = self.dead_letters.letter(source.record, reason, detail)
        generation = self.generation

        async def write() -> None:
            await self.dead_letters.write([letter])
            if self._on_dead_letter is not None:
                self._on_dead_letter(None, letter)
            if generation == self.generation:
                self._settle_source(source, "dead_lettered")

        self._spawn_write(write())

    def _settled_counter(self, outcome: str) -> Any:
        counter = self._settled_counters.get(outcome)
        if counter is None:
            counter = self._settled_counters[outcome] = metrics.SETTLED.labels(self.service, outcome)
        return counter

    def _settle_source(self, source: Source, outcome: str) -> None:
        self._settled_counter(outcome).inc()
        if outcome != "dead_lettered":
            self.brake.succeeded(was_held=source.held)
        if source.generation == self.generation:
            self.commits.settled(source)
            self._made_room()

    def _settle_work(self, work: Work, outcome: str) -> None:
        if type(work) is Run:
            self._settled_counter(outcome).inc(work.count)
            if outcome != "dead_lettered":
                self.brake.succeeded(work.count, was_held=work.held)
            if work.generation == self.generation:
                self.commits.tracker.settle_runs((work,))
                self._made_room()
            return
        self._settled_counter(outcome).inc()
        if outcome != "dead_lettered":
            self.brake.succeeded(was_held=work.held)
        source = work.source
        if source is None or source.generation != self.generation:
            return
        source.pending -= 1
        if source.pending <= 0:
            self.commits.settled(source)
            self._made_room()

    def _settle_delivered(self, items: list[Work], count: int) -> None:
        """The common case, a whole batch (of `count` records) delivered: settled in one pass."""
        brake, generation = self.brake, self.generation
        if self.in_runs:
            runs: list[Any] = items
            self._settled_counter("delivered").inc(count)
            brake.succeeded(count, was_held=brake.engaged and any(run.held for run in runs))
            self.commits.tracker.settle_runs(runs)  # of this generation: the caller checked
            return
        self._settled_counter("delivered").inc(len(items))
        brake.succeeded(len(items), was_held=brake.engaged and any(work.held for work in items))
        finished: list[Source] = []
        for work in items:
            source = work.source
            if source is not None and source.generation == generation:
                source.pending -= 1
                if source.pending <= 0:
                    finished.append(source)
        self.commits.tracker.settle_many(finished)

    def _dead_letter_work(self, work: Work, reason: str, detail: str) -> None:
        if type(work) is Run:  # one letter a record of the run
            records, partition = work.chunk.records, self._partition_of(work)
            letters = [self.dead_letters.letter(to_record(partition, records[index]), reason, detail, work)
                       for index in work.indices]
        else:
            assert work.source is not None
            letters = [self.dead_letters.letter(work.source.record, reason, detail, work)]
        generation = self.generation

        async def write() -> None:
            await self.dead_letters.write(letters)
            if self._on_dead_letter is not None:
                for letter in letters:
                    self._on_dead_letter(work, letter)
            if generation == self.generation:
                self._settle_work(work, "dead_lettered")

        self._spawn_write(write())

    @staticmethod
    def _partition_of(run: Run) -> Partition:
        record = run.chunk.records[run.indices[0]]
        if isinstance(record, Record):
            return record.partition
        return Partition(record.topic, record.partition)

    def _note_brake(self) -> None:
        if not self.brake.engaged:
            return
        metrics.DLQ_BRAKE.labels(self.service).set(1)
        self._brake_reported = True
        self._pause()
        if self._held_retry_at is None:
            self._held_retry_at = self.clock.now() + self.brake.retry_interval
            log.error("DLQ brake engaged: not dead-lettering, consumption paused", service=self.service)
            self._wake.set()

    def _spawn_write(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # --- dispatch --------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while self._running:
            now = self.clock.now()
            self._retry_held(now)
            if self._brake_reported and not self.brake.engaged:
                self._brake_reported = False
                self._held_retry_at = None
                metrics.DLQ_BRAKE.labels(self.service).set(0)
                log.warning("DLQ brake released", service=self.service)
            free = self.config.max_in_flight - len(self._in_flight)
            timeout = 0.5
            if free > 0:
                if self._lane_ready:  # slices are as full as their chunk allows: no lingering
                    self._start_lane_batches(free)
                    free = self.config.max_in_flight - len(self._in_flight)
            if free > 0:
                ready = self.order.queues.ready_at_least(now, self.config.max_batch_items)
                if ready:
                    if self._linger_since is None:
                        self._linger_since = now
                    lingered = now - self._linger_since
                    if ready >= self.config.max_batch_items or lingered >= self.config.max_batch_wait - 1e-6:
                        self._linger_since = None
                        self._start_batches(now, free)
                        continue
                    timeout = max(0.001, self.config.max_batch_wait - lingered)
            for at in (self.order.queues.next_wakeup(), self._held_retry_at):
                if at is not None:
                    timeout = min(timeout, max(0.001, at - now))
            self._wake.clear()
            await self.clock.wait(self._wake, timeout)

    def _retry_held(self, now: float) -> None:
        if self._held_retry_at is None or now < self._held_retry_at:
            return
        held, self.held = self.held, []
        self._held_retry_at = None
        self.brake.reset_streak()
        for source in held:
            if self.in_runs:
                self.prepare.submit_runs(source.partition, source.chunk, source.generation, [source.index],
                                         held=True)
            else:
                self.prepare.submit(source)
        if self.brake.engaged:
            self._held_retry_at = now + self.brake.retry_interval

    def _start_batches(self, now: float, free: int) -> None:
        taken = self.order.queues.take_ready(now, limit=free * self.config.max_batch_items,
                                             per_key=self.config.max_run_per_key)
        batches = self.batching.pack(taken)
        for target, groups in batches[:free]:
            self._spawn_delivery(target, groups)
        for _, groups in batches[free:]:  # a key's run is in one batch only: these keys were not sent
            for key, _ in groups:
                self.order.queues.give_back(key)

    def _start_lane_batches(self, free: int) -> None:
        ready = self._lane_ready
        while free > 0 and ready:
            lane, runs, count = ready.popleft()
            self._track_delivery(self._deliver_lane(lane, runs, count), count)
            free -= 1

    def _spawn_delivery(self, target: Hashable, groups: list[tuple[str, list[Work]]]) -> None:
        items = groups[0][1] if len(groups) == 1 else [work for _, run in groups for work in run]
        count = sum([work.count for work in items]) if self.in_runs else len(items)  # records
        self._track_delivery(self._deliver_batch(target, groups, items, count), count)

    def _track_delivery(self, coro: Any, count: int) -> None:
        task = asyncio.ensure_future(coro)
        self._in_flight.add(task)
        self._in_flight_items += count

        def finished(t: asyncio.Task[Any]) -> None:
            self._in_flight.discard(t)
            self._in_flight_items -= count
            self._wake.set()
            self._made_room()
            if not t.cancelled() and t.exception() is not None:
                log.error("delivery task failed", service=self.service, error=repr(t.exception()))

        task.add_done_callback(finished)

    async def _deliver_batch(self, target: Hashable, groups: list[tuple[str, list[Work]]], items: list[Work],
                             count: int) -> None:
        generation = self.generation
        now, wall = self.clock.now(), time.time()
        self._batch_size.observe(count)
        if self.in_runs:
            first = await self.deliver.call(target, items)
            if generation != self.generation:
                return
            if _delivered_whole(first, len(items)):
                self._settle_or_apply(groups, items, DELIVERED, count, now, wall)
            else:
                await self._answer_split(target, groups, first, count, generation, now, wall)
            return
        answered = await self.deliver.batch_outcome(target, items)
        if generation != self.generation:
            return
        self._settle_or_apply(groups, items, answered, count, now, wall)

    async def _answer_split(self, target: Hashable, groups: list[tuple[str, list[Work]]], first: Any,
                            count: int, generation: int, now: float, wall: float) -> None:
        """A batch of runs not delivered whole: each run is split into runs of one record, in its place
        in its key's queue, and the answer is applied to those (a refused batch bisected down to the bad
        record; a retry holding back the rest of the key, in order)."""
        groups, first = self._split_runs(groups, first)
        items = [work for _, run in groups for work in run]
        answered = await self.deliver.outcomes(target, items, first)
        if generation != self.generation:
            return
        self._settle_or_apply(groups, items, answered, count, now, wall)

    def _settle_or_apply(self, groups: list[tuple[str, list[Work]]], items: list[Work], answered: Any,
                         count: int, now: float, wall: float) -> None:
        if type(answered) is Delivered:
            self._settle_delivered(items, count)
            self.order.queues.done_many(groups)
            self._made_room()
            return
        self._apply_answer(groups, items, answered, now, wall)

    async def _deliver_lane(self, lane: _LaneChunk, runs: list[Run], count: int) -> None:
        generation = self.generation
        now, wall = self.clock.now(), time.time()
        self._batch_size.observe(count)
        target = runs[0].target
        first = await self.deliver.call(target, runs)
        if generation != self.generation:
            return
        if _delivered_whole(first, len(runs)):
            self._settled_counter("delivered").inc(count)
            brake = self.brake
            brake.succeeded(count, was_held=False)  # a lane never carries held records
            self.commits.tracker.settle_fresh(runs[0].chunk, runs, count)
            self._lane_slice_out(lane)
            self._made_room()
            return
        if type(runs[0]) is Span and type(first) is list and len(first) == 1:
            first = first[0]  # the span's one answer: for each of its records, once cut by key
        await self._answer_split(target, self._lane_to_keys(lane, runs), first, count, generation, now, wall)

    def _apply_answer(self, groups: list[tuple[str, list[Work]]], items: list[Work], answered: Any,
                      now: float, wall: float) -> None:
        # An attempt counts for the retry policy and the dead letter; a delivered item never reads it.
        for work in items:
            work.attempts += 1
            if work.first_attempt_at is None:
                work.first_attempt_at, work.first_attempt_wall = now, wall
        outcomes = iter(answered)
        for key, run in groups:
            self._apply_run(key, run, [next(outcomes) for _ in run])

    def _split_runs(self, groups: list[tuple[str, list[Work]]], answer: Any) -> tuple[
            list[tuple[str, list[Work]]], Any]:
        """Each run of the batch split into runs of one record, in the key queues too; a per-run
        answer (a list) repeated for each record of its run."""
        split_groups: list[tuple[str, list[Work]]] = []
        per_run = iter(answer) if type(answer) is list else None
        per_record: list[ItemOutcome] = []
        for key, runs in groups:
            pieces: list[Work] = []
            parts_of_runs: list[list[Work]] = []
            for run in runs:
                parts: list[Work] = list(run.split()) if type(run) is Run and run.count > 1 else [run]
                parts_of_runs.append(parts)
                pieces.extend(parts)
                if per_run is not None:
                    per_record.extend([next(per_run)] * len(parts))
            if len(pieces) != len(runs):
                self.order.queues.replace_head(key, runs, parts_of_runs)
            split_groups.append((key, pieces))
        return split_groups, per_record if per_run is not None else answer

    def _apply_run(self, key: str, run: list[Work], outcomes: list[ItemOutcome]) -> None:
        """Settle the run's done prefix; from its first retry on, the key waits, in order."""
        settled = 0
        for work, outcome in zip(run, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                self._settle_work(work, "delivered")
            elif isinstance(outcome, Failed):
                if outcome.counts_for_brake and not self.brake.may_dead_letter():
                    self._note_brake()
                    self._hold_key(key, settled, run[settled])
                    return
                self._dead_letter_work(work, outcome.reason, outcome.detail)
            else:
                self._retry_key(key, settled, work, outcome)
                return
            settled += 1
        self.order.queues.done(key, settled)

    def _hold_key(self, key: str, settled: int, head: Work) -> None:
        head.attempts -= 1
        head.held = True
        self.order.queues.retry_later(key, self.clock.now() + self.brake.retry_interval, park=False,
                                      settled=settled)

    def _retry_key(self, key: str, settled: int, head: Work, outcome: Retry) -> None:
        now = self.clock.now()
        metrics.RETRIED.labels(self.service, outcome.reason.split(":", 1)[0]).inc()
        if not outcome.counts_attempt:
            head.attempts -= 1
            delay = outcome.retry_after if outcome.retry_after is not None else self.retry.backoff(1)
            self.order.queues.retry_later(key, now + delay, park=False, settled=settled)
            return
        decision = self.retry.after_failure(head.attempts, head.first_attempt_at or now, now,
                                            outcome.retry_after, outcome.reason)
        if isinstance(decision, GiveUp):
            if not self.brake.may_dead_letter():
                self._note_brake()
                self._hold_key(key, settled, head)
                return
            self._dead_letter_work(head, decision.reason, outcome.reason)
            self.order.queues.retry_later(key, now, settled=settled + 1)
            return
        self.order.queues.retry_later(key, decision.at, settled=settled)

    # --- commit ----------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while self._running:
            await self.clock.sleep(self.config.commit_interval)
            await self.commit()
            self._record_lag()

    async def commit(self) -> None:
        tracker = self.commits.tracker
        moves = {tp: offset for tp, offset in tracker.to_commit().items() if Partition(*tp) in self.assigned}
        if not moves:
            return
        try:
            await self.consumer.commit({Partition(*tp): offset for tp, offset in moves.items()})
        except Exception as exc:
            metrics.COMMITS.labels(self.service, "failed").inc()
            log.warning("offset commit failed; will retry", service=self.service, error=repr(exc))
            return
        metrics.COMMITS.labels(self.service, "ok").inc()
        tracker.committed(moves)

    def _record_lag(self) -> None:
        for partition in list(self.assigned):
            highwater = self.consumer.highwater(partition)
            committed = self.commits.tracker.last_committed((partition.topic, partition.partition))
            if highwater is None or committed is None:
                continue
            self.lag[partition] = max(0, highwater - committed)
            metrics.CONSUMER_LAG.labels(self.service, partition.topic, str(partition.partition)).set(
                self.lag[partition])


class _LaneChunk:
    """A chunk's runs in the lane: its keys, and its batch-sized slices (runs, records) not yet settled.
    `sequential` (a span's): one slice out at a time, in order; otherwise all at once (one run a key).
    A span's keys are kept as the records have them (`raw`), and decoded only when a key queue asks."""

    __slots__ = ("_keys", "generation", "outstanding", "partition", "raw", "runs", "sent", "sequential",
                 "slices")

    def __init__(self, partition: Partition, keys: set[str] | None, runs: list[Run],
                 slices: list[tuple[list[Run], int]], sequential: bool = False,
                 raw: set[bytes] | None = None) -> None:
        self.partition, self._keys, self.runs, self.slices, self.raw = partition, keys, runs, slices, raw
        self.outstanding = len(slices)
        self.generation = runs[0].generation
        self.sequential, self.sent = sequential, 0

    @property
    def keys(self) -> set[str]:
        if self._keys is None:
            self._keys = _decoded(self.raw or set())
        return self._keys

    @keys.setter
    def keys(self, keys: set[str]) -> None:
        self._keys, self.raw = keys, None

    def slices_ready(self) -> list[tuple[_LaneChunk, list[Run], int]]:
        """The slices to send now (and counted as sent)."""
        if self.sequential:
            if self.sent >= len(self.slices):
                return []
            part, part_count = self.slices[self.sent]
            self.sent += 1
            return [(self, part, part_count)]
        self.sent = len(self.slices)
        return [(self, part, part_count) for part, part_count in self.slices]


_KEY = attrgetter("key")


def _raw_keys_of(records: list[Any], indices: list[int]) -> set[bytes]:
    """The record keys of the records at `indices`, as the records have them."""
    picked = records if len(indices) == len(records) else map(records.__getitem__, indices)
    return set(map(_KEY, picked))


def _decoded(raw: set[bytes]) -> set[str]:
    """Record keys as the key queues' keys (`key_text`), each decoded once."""
    try:
        return set(map(bytes.decode, raw))
    except (UnicodeDecodeError, TypeError):  # a key that is not UTF-8, or no key
        return {key_text(key) for key in raw}


def _by_key(runs: list[Run]) -> list[Run]:
    """Runs with every Span among them cut into one Run a key."""
    if not any([type(run) is Span for run in runs]):
        return runs
    return [piece for run in runs for piece in (run.by_key() if type(run) is Span else (run,))]


def _delivered_whole(first: Any, count: int) -> bool:
    """Whether a first delivery answer says every one of `count` items was delivered."""
    return type(first) is Delivered or (
        type(first) is list and len(first) == count and all(type(o) is Delivered for o in first)
    )


def _by_partition(records: list[Record]) -> list[tuple[Partition, list[Record]]]:
    """A flat poll (records grouped by partition, as consumers give them) cut into chunks."""
    chunks: list[tuple[Partition, list[Record]]] = []
    start = 0
    for end in range(1, len(records) + 1):
        if end < len(records) and records[end].partition == records[start].partition:
            continue
        chunks.append((records[start].partition, records[start:end]))
        start = end
    return chunks


@contextlib.asynccontextmanager
async def started(consumer: Consumer) -> Any:
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
