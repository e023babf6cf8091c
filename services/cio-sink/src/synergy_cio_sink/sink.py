"""The consumer: Kafka in, Customer.io out, offsets committed only once Customer.io accepted.

Three tasks share the state below on one event loop (so no locks): the fetcher maps records and
queues them per user, the dispatcher sends what may go now, the committer commits the offsets
whose messages are all settled (delivered, dead-lettered, superseded or skipped).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from synergy_schemas import topics

from synergy_cio_sink import metrics
from synergy_cio_sink.batching import MAX_ITEM_BYTES, MAX_REQUEST_BYTES, batch_body, pack_batches
from synergy_cio_sink.brands import BrandDelivery, BrandDirectory
from synergy_cio_sink.coalesce import SnapshotCoalescer
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.dlq import DeadLetter, DeadLetterWriter
from synergy_cio_sink.mapping import Delivery, Rejected, Skipped, item_bytes, map_envelope
from synergy_cio_sink.offsets import OffsetTracker
from synergy_cio_sink.ordering import UserQueues
from synergy_cio_sink.rate_limit import AdaptiveRateLimit
from synergy_cio_sink.retry import RetryAt, RetryPolicy
from synergy_cio_sink.transport import Answer, CustomerIoTransport, Workspace

log = structlog.get_logger(service="cio-sink")

SOURCE_TOPICS = (topics.EVENTS, topics.LOYALTY, topics.MARKETING, topics.SNAPSHOTS)
V2_MAX_IN_FLIGHT = 8
V2_MAX_PER_USER = 50


@dataclass
class WorkItem:
    delivery: Delivery
    workspace: Workspace
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    received_at: float | None
    generation: int
    attempts: int = 0
    first_attempt_at: float | None = None
    body: bytes = field(default=b"", repr=False)


def _epoch(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class RateLimits:
    """One adaptive limit per Customer.io workspace, each scaled by this replica's partition share."""

    def __init__(self, fleet_limit: float, minimum: float, clock: Callable[[], float]) -> None:
        self._fleet_limit, self._minimum, self._clock = fleet_limit, minimum, clock
        self._limits: dict[tuple[str, str], AdaptiveRateLimit] = {}
        self._share = 1.0

    def _for(self, workspace: Workspace) -> AdaptiveRateLimit:
        key = (workspace.base_url, workspace.site_id)
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = AdaptiveRateLimit(self._fleet_limit, self._minimum, share=self._share)
        return limit

    def set_share(self, share: float) -> None:
        self._share = share
        for limit in self._limits.values():
            limit.set_share(share)

    async def wait_for_slot(self, workspace: Workspace) -> None:
        limit = self._for(workspace)
        delay = limit.reserve(self._clock()) - self._clock()
        metrics.RATE_LIMIT.labels(workspace.site_id).set(limit.rate)
        if delay > 0:
            await asyncio.sleep(delay)
        while (wait := limit.window_wait(self._clock())) > 0:  # noqa: ASYNC110 - timed, not polling
            await asyncio.sleep(wait)
        limit.sent(self._clock())

    def observe(self, workspace: Workspace, answer: Answer) -> None:
        if answer.status == 429:
            limit = self._for(workspace)
            limit.throttled(self._clock(), answer.retry_after)
            metrics.RATE_LIMIT.labels(workspace.site_id).set(limit.rate)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: CioSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sink.partitions_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._sink.partitions_assigned(list(assigned))


class CioSink:
    def __init__(
        self,
        settings: SinkSettings,
        consumer: AIOKafkaConsumer,
        directory: BrandDirectory,
        dead_letters: DeadLetterWriter,
        transport: CustomerIoTransport,
        retry_policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.directory = directory
        self.dead_letters = dead_letters
        self.transport = transport
        self.clock = clock
        self.retry = retry_policy or RetryPolicy(
            settings.cio_max_attempts, settings.cio_max_retry_window, settings.cio_backoff_base,
            settings.cio_backoff_max,
        )
        self.rate_limits = RateLimits(settings.cio_rate_limit, settings.cio_rate_limit_min, clock)
        self.offsets = OffsetTracker()
        self.queues: UserQueues[WorkItem] = UserQueues(settings.cio_max_pending_per_user)
        self.coalescer: SnapshotCoalescer[WorkItem] = SnapshotCoalescer(settings.cio_snapshot_interval)
        self.dry_run_log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.running_dry = False  # no credentials anywhere at start (service.running_sink)
        self.generation = 0
        self.snapshots_topic = topics.SNAPSHOTS.name
        self.assigned: set[TopicPartition] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._running = False
        self._paused = False

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def source_topics(self) -> list[str]:
        return [topic.name for topic in SOURCE_TOPICS]

    async def run(self) -> None:
        """Until stop(): consume, deliver, commit."""
        self._running = True
        self.consumer.subscribe(self.source_topics, listener=_Rebalance(self))
        loops = (self._fetch(), self._dispatch(), self._commit_loop())
        workers = [asyncio.create_task(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self._running = False
            self._wake.set()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._settle_in_flight(timeout=5.0)
            await self._commit()

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    async def _settle_in_flight(self, timeout: float) -> None:
        pending = self._in_flight | self._tasks
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._settle_in_flight(timeout=10.0)
        await self._commit()
        # Everything buffered is re-read by whoever owns the partitions next (maybe us again):
        # drop it and ignore late answers from this generation.
        self.generation += 1
        self.queues.drain()
        self.coalescer.drain()
        self.offsets.forget([(tp.topic, tp.partition) for tp in revoked])
        self.assigned -= set(revoked)

    async def partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned = set(assigned)
        total = 0
        for topic in self.source_topics:
            partitions = self.consumer.partitions_for_topic(topic)
            total += len(partitions) if partitions else 0
        share = len(assigned) / total if total else 1.0
        self.rate_limits.set_share(share)
        self._paused = False
        log.info("partitions assigned", partitions=len(assigned), of_total=total, rate_share=round(share, 3))

    # --- fetch ---------------------------------------------------------------------------------

    async def _fetch(self) -> None:
        while self._running:
            buffered = self.offsets.outstanding
            metrics.BUFFERED.set(buffered)
            if buffered >= self.settings.cio_max_buffered and not self._paused:
                self.consumer.pause(*self.consumer.assignment())
                self._paused = True
            elif buffered < self.settings.cio_max_buffered // 2 and self._paused:
                self.consumer.resume(*self.consumer.assignment())
                self._paused = False
            batches = await self.consumer.getmany(timeout_ms=100, max_records=2000)
            generation = self.generation
            for tp, records in batches.items():
                for record in records:
                    await self._ingest(tp, record, generation)
            if batches:
                self._wake.set()

    async def _ingest(self, tp: TopicPartition, record: Any, generation: int) -> None:
        self.offsets.track(tp.topic, tp.partition, record.offset)
        headers = list(record.headers or ())
        try:
            envelope = orjson.loads(record.value)
            brand_id = str(envelope["brand_id"])
            brand = await self._brand(brand_id)
            result = map_envelope(envelope, brand.privacy, from_snapshots=tp.topic == self.snapshots_topic)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self._dead_letter_raw(tp, record, headers, "malformed_message", repr(exc)[:300], 0)
            return
        if isinstance(result, Skipped):
            metrics.SKIPPED.labels(result.reason).inc()
            self.offsets.complete(tp.topic, tp.partition, record.offset)
            return
        if isinstance(result, Rejected):
            self._dead_letter_raw(tp, record, headers, result.reason, result.detail, 0, brand_id,
                                  str(envelope.get("event_id")))
            return
        if brand.workspace is None:
            self.dry_run_log.append({"brand_id": brand_id, "would_send": result.v2_item})
            metrics.DRY_RUN.inc()
            self.offsets.complete(tp.topic, tp.partition, record.offset)
            return
        item = WorkItem(result, brand.workspace, tp.topic, tp.partition, record.offset, record.key,
                        record.value, headers, _epoch(envelope.get("received_at")), generation)
        if tp.topic == self.snapshots_topic:
            offer = self.coalescer.offer(result.person_key, item, self.clock())
            if offer.superseded is not None:
                metrics.COALESCED.inc()
                self._complete(offer.superseded)
            if offer.release is not None:
                self._enqueue(offer.release)
        else:
            self._enqueue(item)

    async def _brand(self, brand_id: str) -> BrandDelivery:
        delay = 0.5
        while True:
            try:
                return await self.directory.delivery_for(brand_id)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Postgres briefly away: wait rather than lose or misroute the message.
                log.warning("brand lookup failed; retrying", brand_id=brand_id, error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)

    def _enqueue(self, item: WorkItem) -> None:
        parked = self.queues.push(item.delivery.person_key, item)
        if parked:
            self._dead_letter(parked, "hot_user_parked", "the user's earlier event is still being retried")

    # --- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        v1 = self.settings.cio_api == "v1"
        max_in_flight = self.settings.cio_v1_concurrency if v1 else V2_MAX_IN_FLIGHT
        while self._running:
            now = self.clock()
            for released in self.coalescer.due(now):
                self._enqueue(released)
            free = max_in_flight - len(self._in_flight)
            if free > 0:
                if v1:
                    taken = self.queues.take_ready(now, limit=free, per_user=1)
                    for key, items in taken:
                        self._send(self._send_call(key, items[0]))
                else:
                    taken = self.queues.take_ready(
                        now, limit=self.settings.cio_batch_max_items, per_user=V2_MAX_PER_USER
                    )
                    self._send_batches(taken)
                if taken:
                    continue
            self._wake.clear()
            timeout = 0.5
            for at in (self.queues.next_wakeup(), self.coalescer.next_due()):
                if at is not None:
                    timeout = min(timeout, max(0.001, at - self.clock()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _send(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._in_flight.add(task)

        def finished(t: asyncio.Task[Any]) -> None:
            self._in_flight.discard(t)
            self._wake.set()
            if not t.cancelled() and t.exception() is not None:
                log.error("delivery task failed", error=repr(t.exception()))

        task.add_done_callback(finished)

    def _send_batches(self, taken: list[tuple[str, list[WorkItem]]]) -> None:
        """Pack users' runs into v2 requests; a run never spans two requests, so it retries whole."""
        by_workspace: dict[Workspace, list[tuple[tuple[str, list[WorkItem]], bytes]]] = {}
        room = MAX_REQUEST_BYTES - len(batch_body([]))
        for key, items in taken:
            run: list[WorkItem] = []
            sendable: list[WorkItem] = []
            size = 0
            for item in items:
                if not item.body:
                    item.body = item_bytes(item.delivery)
                if len(item.body) > MAX_ITEM_BYTES:
                    run.append(item)
                    self._dead_letter([item], "item_too_large",
                                      f"the v2 item is {len(item.body)} bytes, over {MAX_ITEM_BYTES}")
                    continue
                if size + len(item.body) + 1 > room:
                    break  # the rest of the user's run waits for the next request
                size += len(item.body) + 1
                run.append(item)
                sendable.append(item)
            if not sendable:
                self.queues.done(key, len(run))
                continue
            joined = b",".join(item.body for item in sendable)
            by_workspace.setdefault(sendable[0].workspace, []).append(((key, run), joined))
        for workspace, groups in by_workspace.items():
            packed = pack_batches(groups, MAX_REQUEST_BYTES, max_item_bytes=room, max_items=10**9)
            for batch in packed.batches:
                self._send(self._send_batch(workspace, [group for group, _ in batch], batch_body(batch)))

    async def _send_batch(self, workspace: Workspace, groups: list[tuple[str, list[WorkItem]]],
                          body: bytes) -> None:
        generation = self.generation
        await self.rate_limits.wait_for_slot(workspace)
        sent = [(key, [i for i in items if len(i.body) <= MAX_ITEM_BYTES]) for key, items in groups]
        count = sum(len(items) for _, items in sent)
        metrics.BATCH_SIZE.observe(count)
        self._started([item for _, items in sent for item in items])
        answer = await self.transport.send_batch(workspace, body)
        metrics.REQUESTS.labels("v2", str(answer.status or answer.reason)).inc()
        self.rate_limits.observe(workspace, answer)
        if generation != self.generation:
            return
        index = 0
        for (key, items), (_, all_items) in zip(sent, groups, strict=True):
            if answer.accepted:
                rejected = []
                for item in items:
                    if index in answer.item_errors:
                        rejected.append((item, answer.item_errors[index]))
                    else:
                        self._delivered(item)
                    index += 1
                for item, message in rejected:
                    self._dead_letter([item], "invalid_item", message)
                self.queues.done(key, len(all_items))
            else:
                index += len(items)
                self._failed(key, items, answer, len(all_items))

    async def _send_call(self, key: str, item: WorkItem) -> None:
        generation = self.generation
        await self.rate_limits.wait_for_slot(item.workspace)
        self._started([item])
        answer = await self.transport.send_call(item.workspace, item.delivery.v1_call)
        metrics.REQUESTS.labels("v1", str(answer.status or answer.reason)).inc()
        self.rate_limits.observe(item.workspace, answer)
        if generation != self.generation:
            return
        if answer.accepted:
            self._delivered(item)
            self.queues.done(key)
        else:
            self._failed(key, [item], answer, 1)

    # --- settling ------------------------------------------------------------------------------

    def _started(self, items: list[WorkItem]) -> None:
        now = self.clock()
        for item in items:
            item.attempts += 1
            if item.first_attempt_at is None:
                item.first_attempt_at = now

    def _delivered(self, item: WorkItem) -> None:
        metrics.DELIVERED.labels(item.delivery.kind).inc()
        if item.received_at is not None:
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - item.received_at))
        self._complete(item)

    def _failed(self, key: str, items: list[WorkItem], answer: Answer, run_length: int) -> None:
        reason = answer.reason.split(":", 1)[0]
        metrics.FAILED.labels(reason).inc(len(items))
        if not answer.retryable:
            self._dead_letter(items, f"rejected_{reason}", answer.reason)
            self.queues.done(key, run_length)
            return
        head = items[0]
        decision = self.retry.after_failure(
            head.attempts, head.first_attempt_at or self.clock(), self.clock(), answer.retry_after, reason
        )
        if isinstance(decision, RetryAt):
            metrics.RETRIED.inc(len(items))
            self.queues.retry_later(key, decision.at)
            self._wake.set()
        else:
            self._dead_letter(items, decision.reason, answer.reason)
            self.queues.done(key, run_length)

    def _complete(self, item: WorkItem) -> None:
        if item.generation == self.generation:
            self.offsets.complete(item.topic, item.partition, item.offset)

    def _dead_letter(self, items: list[WorkItem], reason: str, detail: str) -> None:
        letters = [
            DeadLetter(reason, detail, i.topic, i.partition, i.offset, i.key, i.value, i.headers, i.attempts,
                       i.delivery.brand_id, i.delivery.event_id)
            for i in items
        ]
        self._spawn(self._write_dead_letters(letters, items))

    def _dead_letter_raw(self, tp: TopicPartition, record: Any, headers: list[tuple[str, bytes]], reason: str,
                         detail: str, attempts: int, brand_id: str | None = None,
                         event_id: str | None = None) -> None:
        letter = DeadLetter(reason, detail, tp.topic, tp.partition, record.offset, record.key, record.value,
                            headers, attempts, brand_id, event_id)
        generation = self.generation

        async def write() -> None:
            await self._write_until_durable([letter])
            if generation == self.generation:
                self.offsets.complete(tp.topic, tp.partition, record.offset)

        self._spawn(write())

    async def _write_dead_letters(self, letters: list[DeadLetter], items: list[WorkItem]) -> None:
        await self._write_until_durable(letters)
        for item in items:
            self._complete(item)

    async def _write_until_durable(self, letters: list[DeadLetter]) -> None:
        delay = 0.5
        while True:
            try:
                await self.dead_letters.write(letters)
                break
            except Exception as exc:
                log.error("dead-letter write failed; retrying", error=repr(exc), count=len(letters))
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
        for letter in letters:
            metrics.DEAD_LETTERED.labels(letter.reason.split(":", 1)[0]).inc()
        log.warning("dead-lettered", reason=letters[0].reason, count=len(letters),
                    event_ids=[letter.event_id for letter in letters[:10]])

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- commit --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while self._running:
            await asyncio.sleep(self.settings.commit_interval)
            await self._commit()
            self._record_lag()

    async def _commit(self) -> None:
        moves = {tp: offset for tp, offset in self.offsets.to_commit().items()
                 if TopicPartition(*tp) in self.assigned}
        if not moves:
            return
        try:
            await self.consumer.commit({TopicPartition(*tp): offset for tp, offset in moves.items()})
        except KafkaError as exc:
            log.warning("offset commit failed; will retry", error=repr(exc))
            return
        self.offsets.committed(moves)

    def _record_lag(self) -> None:
        lag: dict[str, int] = {}
        for tp in list(self.assigned):
            highwater = self.consumer.highwater(tp)
            committed = self.offsets.last_committed((tp.topic, tp.partition))
            if highwater is None or committed is None:
                continue
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, highwater - committed)
        for topic, value in lag.items():
            metrics.CONSUMER_LAG.labels(topic).set(value)
