"""The faust-streaming worker: events in, user state in a changelog-backed table, loyalty + snapshots out.

Per batch and input partition, one Kafka transaction holds the partition's outputs (unlocks, rank
changes, referral awards, rejections, snapshots), dead letters, changelog records and input offsets
(publisher.PartitionTransactions): a crash anywhere leaves none of it visible to read_committed readers,
and the batch is read again. A new owner of a partition fences the old one before it restores the table,
so a worker paused past its session timeout can write nothing more that counts. faust's own consumer
reads read_committed (its table recovery, the referral awards, the read model's input).

A batch's transactions commit while faust fills and the worker applies the next one (CommitPipeline);
only the transactions commit the offsets of the topics the batches read, never faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

import asyncpg
import faust
import orjson
import structlog
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.tables.recovery import Recovery
from faust.types import TP
from synergy_common.db import create_pool
from synergy_common.db_errors import is_retryable_db_error
from synergy_common.localinfra import topic_durability
from synergy_schemas.topics import DLQ, EVENTS, LOYALTY, SNAPSHOTS
from synergy_streaming.dlq import REPLAY_FOR, DeadLetter, DeadLetterWriter, event_fields

from synergy_achievements import metrics
from synergy_achievements.api import create_api
from synergy_achievements.batch_body import (
    ApplyInChildProcesses,
    ApplyInProcess,
    BatchBody,
    BatchCounts,
    InputEvent,
)
from synergy_achievements.faust_pipeline import faust_app_options
from synergy_achievements.persistence import LoyaltyWriter, RuleStore, is_data_rejected
from synergy_achievements.publisher import BatchPublisher, PartitionTransactions, Record, key_partition
from synergy_achievements.settings import AchievementsSettings, referral_awards_topic
from synergy_achievements.state import UserState

log = structlog.get_logger("synergy_achievements")
PERSIST_BATCH = 500
RECOMPUTE_CHUNK = 500
# A batch that failed (or was cancelled) half-way ends the process with this code, before faust can ack
# it: the supervisor (honcho's restart loop locally, Kubernetes in production) starts a new worker, which
# reads the batch again from the last committed offsets.
EXIT_BATCH_UNFINISHED = 70
TOPIC_ALREADY_EXISTS = 36
SERVICE = "achievements"  # the dead letters' service, and what a replay for this worker is marked with


def durability() -> tuple[int, dict[str, str]]:
    """Replication factor and configs of every topic the worker (or faust for it) creates, from
    SYNERGY_TOPIC_REPLICATION / SYNERGY_TOPIC_MIN_INSYNC, as `synergy topics create` reads them."""
    replication, min_insync = topic_durability()
    return replication, {"min.insync.replicas": str(min_insync)}


async def ensure_topics(bootstrap: str, events_topic: str) -> int:
    """Create the topics this worker writes when missing, with the configured replication factor and
    min.insync.replicas; returns the events topic's partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        for _ in range(60):
            described = await admin.describe_topics([events_topic])
            partitions = described[0].get("partitions") if described else None
            if described and described[0].get("error_code", 0) == 0 and partitions:
                break
            await asyncio.sleep(1.0)
        else:
            raise RuntimeError(f"topic {events_topic} does not exist")
        count = len(partitions)
        existing = set(await admin.list_topics())
        replication, configs = durability()
        wanted = [
            NewTopic(referral_awards_topic(), count, replication, topic_configs=configs),
            NewTopic(LOYALTY.name, count, replication, topic_configs=configs),
            NewTopic(SNAPSHOTS.name, count, replication,
                     topic_configs={**configs, "cleanup.policy": "compact"}),
            NewTopic(DLQ.name, count, replication, topic_configs=configs),
        ]
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, *message in response.topic_errors:
                if code not in (0, TOPIC_ALREADY_EXISTS):  # exists: another worker created it meanwhile
                    raise RuntimeError(f"cannot create topic {topic}: error {code}: {message}")
        return count
    finally:
        await admin.close()


class ChangelogEntry(NamedTuple):
    """A state record Kafka has acknowledged on the table's changelog, in the shape of the changelog
    events faust applies to a table's store on recovery (`Table.apply_changelog_batch`)."""

    key: bytes
    value: bytes
    tp: TP
    offset: int

    @property
    def message(self) -> ChangelogEntry:
        return self

    @property
    def partition(self) -> int:
        return self.tp.partition


@dataclass
class PartitionStep:
    """What one batch writes for one input partition, as one transaction."""

    input_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to read
    letters: list[DeadLetter] = field(default_factory=list)
    outputs: list[Record] = field(default_factory=list)
    states: list[tuple[bytes, bytes]] = field(default_factory=list)  # key, serialised state

    @property
    def has_records(self) -> bool:
        return bool(self.letters or self.outputs or self.states)


def publish_counts(counts: BatchCounts) -> None:
    """A batch's outcome counts, added to the Prometheus counters (one `inc` per name)."""
    for name, count in counts.applied.items():
        metrics.events_processed(name, "applied").inc(count)
    for name, count in counts.duplicates.items():
        metrics.events_processed(name, "duplicate").inc(count)
    for name, count in counts.anonymous_skipped.items():
        metrics.events_processed(name, "anonymous_skipped").inc(count)
    for achievement, count in counts.unlocked.items():
        metrics.unlocks(achievement).inc(count)
    if counts.rejected_redemptions:
        metrics.REDEMPTIONS_REJECTED.inc(counts.rejected_redemptions)


class CommitPipeline:
    """Batch N's transactions commit while faust fills batch N+1 and the worker applies it.

    `submit` waits for the previous batch's transactions, then starts this batch's and returns: at most
    one batch is in flight (the backpressure), and a partition's transactions commit in batch order
    (the partition's producer runs one at a time). The states a batch wrote are `pending` until its
    transaction has committed; the next batch applies its events on them. If a commit fails, the process
    ends at once (70): the next batch's transactions never start, its pending states die with the
    process, and the new worker reads both batches again from the offsets the last committed
    transactions stored. faust's own offset commits leave these topics alone (`FencingApp`), so faust's
    ack of a batch whose transactions are still open commits nothing."""

    def __init__(self, commit: Callable[[Mapping[int, PartitionStep]], Awaitable[None]]) -> None:
        self._commit = commit
        self._in_flight: asyncio.Future[None] | None = None
        self.pending: dict[bytes, bytes] = {}  # key -> newest serialised state, not yet committed

    async def submit(self, steps: Mapping[int, PartitionStep], events: list[Any]) -> None:
        await self.drain()
        self._in_flight = asyncio.ensure_future(self._run(steps, events))

    async def drain(self) -> None:
        """Until the batch in flight, if any, has committed (or ended the process)."""
        in_flight = self._in_flight
        if in_flight is not None:
            await asyncio.shield(in_flight)  # a cancelled waiter must not cancel the commit itself
            if self._in_flight is in_flight:
                self._in_flight = None

    def committed(self, states: list[tuple[bytes, bytes]]) -> None:
        """These states are in the store now; a key a later batch wrote again stays pending."""
        pending = self.pending
        for key, value in states:
            if pending.get(key) is value:
                del pending[key]

    async def _run(self, steps: Mapping[int, PartitionStep], events: list[Any]) -> None:
        try:
            await self._commit(steps)
        except BaseException as exc:  # fenced, Kafka gone, a bug, or cancelled: the batch is not committed
            exit_unacked("commit", events, exc)


class BatchHandOff:
    """Batches taken by faust's agent, applied in order by one task of their own: faust takes batch N+1
    (its per-event pipeline is most of a take's time) while batch N is applied. One batch waits at most
    (the backpressure: the agent's `put` blocks). faust acks a batch once it is handed off, and an ack
    commits nothing here; a batch that fails ends the process unacked, as in the agent itself."""

    def __init__(self, apply: Callable[[list[Any]], Awaitable[None]]) -> None:
        self._apply = apply
        self._queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=1)
        self._task: asyncio.Future[None] | None = None

    async def put(self, events: list[Any]) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        await self._queue.put(events)

    async def drain(self) -> None:
        """Until every batch handed off has been applied (and handed to the commit pipeline)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            events = await self._queue.get()
            try:
                await self._apply(events)
            except BaseException as exc:  # a cancelled batch is unfinished too
                exit_unacked("apply-events", events, exc)
            self._queue.task_done()


class RejectedByPostgres(Exception):
    """Postgres refused the data itself (it will refuse it on every retry)."""


def exit_unacked(step: str, events: list[Any], exc: BaseException) -> NoReturn:
    """Ends the process at once: the unfinished batch's offsets are never committed (only its own
    transactions commit them), and no restarted agent can skip it."""
    offsets = sorted({(e.message.topic, e.message.partition, e.message.offset) for e in events})[:1]
    log.critical("batch_unfinished_exiting", step=step, events=len(events), first=offsets,
                 error=repr(exc), exc_info=exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_BATCH_UNFINISHED)


class QuietServer(uvicorn.Server):
    """uvicorn inside the faust worker: faust owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def recovery_waits_for_the_last_committed_record() -> None:
    """faust's recovery (faust/tables/recovery.py `_build_highwaters`) waits until it has read the record at
    the changelog's end offset minus one. Read committed, the end offset is the last stable offset, and
    the record before it is a transaction marker no consumer ever receives: recovery would never end. This
    replaces that target, per changelog partition, with the offset of the last committed record (the app's
    `last_committed_offsets`)."""
    original = Recovery._build_highwaters
    if getattr(original, "read_committed", False):
        return

    async def build(self: Recovery, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(self, consumer, tps, destination, title)
        find = getattr(self.app, "last_committed_offsets", None)
        if find is not None and tps:
            found = await find({tp: destination[tp] for tp in tps})
            log.info("changelog_recovery_targets", title=title,
                     targets={f"{tp.topic}:{tp.partition}": offset for tp, offset in found.items()})
            for tp, offset in found.items():  # a Counter: `update` would add
                destination[tp] = offset

    build.read_committed = True  # type: ignore[attr-defined]
    Recovery._build_highwaters = build  # type: ignore[method-assign]


class FencingApp(faust.App):
    """faust's App, taking partitions over (fencing their previous owner) before anything else on
    assignment: faust restores the tables and fetches input only after `take_over` returns; and leaving
    the offsets of `committed_by_transactions` topics to the worker's transactions.

    faust commits the offsets its streams acked (every `broker_commit_interval`, on a rebalance, at
    stop). For the topics the batches read, the batch's transactions commit the same offsets
    (`send_offsets_to_transaction`), and faust's ack comes when the batch is handed to the commit
    pipeline, before its transactions have committed: a commit by faust then could store the offsets
    of a batch that is lost. So faust's commit skips those topics (its bookkeeping of acked offsets goes
    on as if it had committed them); it still commits the others (the read model's inputs)."""

    take_over: Callable[[set[TP]], Awaitable[None]] | None = None
    last_committed_offsets: Callable[[dict[TP, int]], Awaitable[dict[TP, int]]] | None = None
    committed_by_transactions: frozenset[str] = frozenset()

    async def _on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        if self.take_over is not None and not self.should_stop:
            await self.take_over(assigned)
        await super()._on_partitions_assigned(assigned, generation_id)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        commit_to_kafka = consumer._commit  # type: ignore[attr-defined]

        async def commit_others(offsets: Mapping[TP, int]) -> bool:
            own = self.committed_by_transactions
            others = {tp: offset for tp, offset in offsets.items() if tp.topic not in own}
            return await commit_to_kafka(others) if others else True

        consumer._commit = commit_others  # type: ignore[attr-defined]
        return consumer


async def last_committed_offsets(
    bootstrap: str, highwaters: Mapping[TP, int], window: int = 64, timeout: float = 30.0,
) -> dict[TP, int]:
    """Per partition, the offset of the last committed record before `highwater + 1` (faust's highwater is
    the end offset minus one), -1 if there is none: the tail is read back, read_committed, in windows
    that grow until one holds a committed record (aborted batches and markers are skipped)."""
    found: dict[TP, int] = {}
    wanted = {tp: end + 1 for tp, end in highwaters.items() if end >= 0}
    found.update({tp: -1 for tp in highwaters if tp not in wanted})
    if not wanted:
        return found
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = {tp: TopicPartition(tp.topic, tp.partition) for tp in wanted}
            consumer.assign(list(partitions.values()))
            beginnings = await consumer.beginning_offsets(list(partitions.values()))
            for tp, end in wanted.items():
                partition = partitions[tp]
                last, size, start = -1, window, end
                while last < 0 and start > beginnings[partition]:
                    start = max(beginnings[partition], end - size)
                    consumer.seek(partition, start)
                    while await consumer.position(partition) < end:
                        batches = await consumer.getmany(partition, timeout_ms=500)
                        for record in batches.get(partition, []):
                            if record.offset < end:
                                last = max(last, record.offset)
                    end, size = start, size * 4  # the next window ends where this one started
                found[tp] = last
    finally:
        await consumer.stop()
    return found


class AchievementsWorker:
    def __init__(self, settings: AchievementsSettings, partitions: int) -> None:
        self.settings = settings
        self.partitions = partitions
        replication, topic_configs = durability()
        self.rules = RuleStore(settings.seconds(settings.achievements_rules_poll_interval))
        self.pool: asyncpg.Pool | None = None
        self.pool_ready = asyncio.Event()
        self._rules_watch: asyncio.Future[None] | None = None
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.events_topic = EVENTS.name
        self.awards_topic = referral_awards_topic()
        hosts = settings.kafka_bootstrap_servers.split(",")
        recovery_waits_for_the_last_committed_record()
        app = FencingApp(
            settings.achievements_app_id,
            broker=";".join(f"kafka://{host.strip()}" for host in hosts),
            store=settings.achievements_store,
            datadir=settings.achievements_data_dir,
            topic_partitions=partitions,
            topic_replication_factor=replication,
            table_standby_replicas=settings.achievements_standby_replicas,
            producer_acks=-1,
            broker_session_timeout=settings.seconds(settings.achievements_session_timeout),
            broker_heartbeat_interval=min(3.0, settings.seconds(settings.achievements_session_timeout) / 3),
            **faust_app_options(settings),
        )
        self.app = app
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = app.topic(self.events_topic, self.awards_topic, **raw)  # type: ignore[arg-type]
        self.own_outputs = app.topic(LOYALTY.name, SNAPSHOTS.name, **raw)  # type: ignore[arg-type]
        self.table = app.Table(
            "user-state", partitions=partitions, key_type=bytes, value_type=bytes,
            use_partitioner=True, extra_topic_configs=topic_configs,
        )
        self.changelog_topic = self.table.changelog_topic.get_topic_name()
        self.publisher = BatchPublisher(settings.kafka_bootstrap_servers,
                                        client_id=f"{settings.achievements_app_id}-read-model")
        self.transactions = PartitionTransactions(
            settings.kafka_bootstrap_servers, settings.achievements_app_id)
        app.take_over = self._take_over
        app.last_committed_offsets = self._last_committed_offsets
        app.committed_by_transactions = frozenset({self.events_topic, self.awards_topic})
        self.pipeline = CommitPipeline(self._commit_steps)
        self.batches = BatchHandOff(self.apply_and_submit)
        self.state_lock = asyncio.Lock()  # one writer of user states at a time: batches or the recompute
        app.on_before_shutdown.connect(self._stop_publisher)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(self._commit_before_revoking)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(self._hold_deliveries_until_streams_resume)  # type: ignore[arg-type]
        self.output_topics = {"loyalty": LOYALTY.name, "snapshot": SNAPSHOTS.name,
                              "referral_award": self.awards_topic}
        # In the worker's process: the recompute's, and the batches' when no child applies them.
        self.batch_body = BatchBody(settings.thresholds, settings.applied_ids_kept, partitions,
                                    self.output_topics)
        self.body: ApplyInProcess | ApplyInChildProcesses = ApplyInProcess(self.batch_body)
        if settings.achievements_apply_processes:
            self.body = ApplyInChildProcesses(settings.achievements_apply_processes, settings.thresholds,
                                              settings.applied_ids_kept, partitions, self.output_topics)
        app.agent(self.source, name="apply-events")(self.apply_events)
        if settings.achievements_persist:
            app.agent(self.own_outputs, name="persist-loyalty")(self.persist_loyalty)
        app.task(self.start_side_services)
        app.timer(settings.seconds(settings.achievements_recompute_interval))(self.recompute_snapshots)
        app.timer(5.0)(self.export_lag)
        metrics.ASSIGNED_PARTITIONS.set_function(self._held_partitions)

    # --- the event loop of the state -------------------------------------------------------------------

    async def apply_events(self, stream: Any) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.seconds(self.settings.achievements_rules_wait)):
                await self.rules.loaded.wait()
        # faust's take_events acks a batch in a `finally` when the loop body leaves it, whether the body
        # finished or raised, and its default supervisor restarts the agent. An ack commits nothing here
        # (the events' offsets are committed only by the batch's transactions, `FencingApp`), but a batch
        # the body did not finish must not be skipped by a restarted agent: it ends the process instead.
        # The agent hands each batch to `self.batches`, which applies it while faust takes the next, and
        # hands its transactions to `self.pipeline`, which commits them while the next is applied.
        async for events in stream.take_events(self.settings.achievements_batch_size,
                                               within=self.settings.achievements_batch_wait_seconds):
            try:
                await self.batches.put(events)
            except BaseException as exc:
                exit_unacked("apply-events", events, exc)

    async def apply_and_submit(self, events: list[Any]) -> None:
        started = time.perf_counter()
        async with self.state_lock:
            steps = await self.apply_batch(events)
            await self.pipeline.submit(steps, events)
        metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)

    async def apply_batch(self, events: list[Any]) -> dict[int, PartitionStep]:
        """One step per batch (`BatchBody`): each user's events applied together, on the newest state (the
        store's, or one the previous batch wrote and has not committed yet); per input partition, what its
        transaction writes: the partition's dead letters, outputs, changed states (for the changelog)
        and input offsets. The new states are pending until their transaction has committed."""
        steps: dict[int, PartitionStep] = {}
        inputs: list[InputEvent] = []
        keys: set[bytes] = set()  # input topics are keyed by user: the states the body will ask for
        for index, event in enumerate(events):
            message = event.message
            partition = message.partition
            step = steps.get(partition)
            if step is None:
                step = steps[partition] = PartitionStep()
            step.input_offsets[(message.topic, partition)] = message.offset + 1
            if message.headers and not self._is_for_this_service(message):
                continue
            key = message.key if type(message.key) is bytes else None
            inputs.append(InputEvent(index, partition, message.value, key))
            if key is not None:
                keys.add(key)
        for (topic, partition), offset in ((tp, offset - 1) for step in steps.values()
                                           for tp, offset in step.input_offsets.items()):
            self.last_offsets[(topic, partition)] = offset
        if not inputs:
            return steps
        stored = self._stored_states(keys)
        result = await self.body.apply(inputs, stored, self.rules.catalog)
        if result.missing:  # a user keyed otherwise than by the partitioner's key
            stored.update(self._stored_states(result.missing))
            result = await self.body.apply(inputs, stored, self.rules.catalog)
        for index, reason, detail in result.letters:
            message = events[index].message
            steps[message.partition].letters.append(self._dead_letter(message, reason, detail))
        for key, event_id, error in result.refusals:
            log.error("event_unprocessable", key=key.decode(errors="replace"), event_id=event_id, error=error)
        pending = self.pipeline.pending
        for partition, key, value in result.states:
            pending[key] = value
            steps[partition].states.append((key, value))
        for partition, record in result.outputs:
            steps[partition].outputs.append(record)
        publish_counts(result.counts)
        return steps

    def _stored_states(self, keys: Iterable[bytes]) -> dict[bytes, bytes | None]:
        pending = self.pipeline.pending
        store_get = self.table.data.get  # the store itself: Table.get adds faust's per-key sensor hook
        stored: dict[bytes, bytes | None] = {}
        for key in keys:
            value = pending.get(key)
            stored[key] = store_get(key) if value is None else value
        return stored

    async def _commit_steps(self, steps: Mapping[int, PartitionStep]) -> None:
        """The partitions' transactions, concurrently (one producer each). Every partition of the batch
        commits its input offsets, even one whose events were all skipped: faust commits none of them."""
        letters = [letter for step in steps.values() for letter in step.letters]
        if letters:  # Postgres first (`synergy dlq list`); the records go into the transactions
            if self.settings.achievements_persist:
                await self.pool_ready.wait()
            await DeadLetterWriter(None, self.pool).write_until_durable(letters)
        await asyncio.gather(*(self._commit_partition(partition, step) for partition, step in steps.items()
                               if step.has_records or step.input_offsets))

    async def _commit_partition(self, partition: int, step: PartitionStep) -> None:
        """Each state to the changelog partition of its key (the partition of the user's events: input
        topics are keyed and partitioned by user) in the partition's transaction and, once committed, to
        the table's store, as faust's changelog recovery would put it there (this replaces a
        `table[key] = value` per user, whose per-key changelog machinery cost 3/4 of the throughput)."""
        changelog = [
            Record(self.changelog_topic, key, value, partition=key_partition(key, self.partitions))
            for key, value in step.states
        ]
        letters = [Record(DLQ.name, letter.key or b"", letter.value, letter.kafka_headers())
                   for letter in step.letters]
        records = [*letters, *step.outputs, *changelog]
        offsets = await self.transactions.commit(partition, records, step.input_offsets)
        entries: list[Any] = [
            ChangelogEntry(record.key, record.value, TP(record.topic, record.partition or 0), offset)
            for record, offset in zip(changelog, offsets[len(records) - len(changelog):], strict=True)
        ]
        if entries:
            self.table.apply_changelog_batch(entries)
        self.pipeline.committed(step.states)

    async def _take_over(self, assigned: set[TP]) -> None:
        """On every assignment, before faust restores the table: one transactional producer per assigned
        events partition, each fencing that partition's previous owner. A failure ends the worker (the
        supervisor restarts it): without its producers it could commit nothing."""
        partitions = {tp.partition for tp in assigned if tp.topic == self.events_topic}
        await self._finish_batches()  # normally done on revocation already
        try:
            await self.transactions.take_over(partitions)
        except BaseException as exc:
            log.critical("partition_take_over_failed", partitions=sorted(partitions), error=repr(exc),
                         exc_info=exc)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_BATCH_UNFINISHED)

    async def _last_committed_offsets(self, highwaters: dict[TP, int]) -> dict[TP, int]:
        return await last_committed_offsets(self.settings.kafka_bootstrap_servers, highwaters)

    async def _commit_before_revoking(self, app: Any, *_: Any, **__: Any) -> None:
        """faust sends on_partitions_revoked once every agent has finished (acked) its batch: the last
        batch's transactions commit before the partitions move, so a worker that gives up a partition in
        an ordinary rebalance is not fenced with a transaction open."""
        await self._finish_batches()

    async def _finish_batches(self) -> None:
        """Until every batch handed off has been applied and its transactions have committed."""
        await self.batches.drain()
        await self.pipeline.drain()

    async def _stop_publisher(self, app: Any, *_: Any, **__: Any) -> None:
        await self._finish_batches()
        await self.transactions.release()
        await self.publisher.stop()
        self.body.close()

    async def _hold_deliveries_until_streams_resume(self, app: Any, *_: Any, **__: Any) -> None:
        """Works around a faust-streaming 0.15.3 race that can leave a restarted worker idle for good.

        After a changelog recovery faust's fetcher is already running with the flow active when it resumes
        the input partitions and awaits the seek to committed offsets; records fetched in that await go into
        the agents' channel queues and advance faust's read offsets, then `flow_control.resume()` clears
        those queues. The records are dropped unprocessed, never acked, and never fetched again by this
        worker (seen: all 240 queued events of the SIGKILL test). faust sends `on_rebalance_complete` right
        before that sequence and calls `consumer.resume_flow()` right after the clearing, so stopping the
        flow here keeps every record in Kafka until the queues are clean. If a new rebalance starts first,
        faust's own rebalance handling stops and later resumes the flow. Not every path that sends the
        signal resumes the flow afterwards, so a watcher resumes it once faust's flow control is active
        again (the queues are clean by then) and no rebalance is under way."""
        self.app.consumer.stop_flow()
        self._flow_watcher = asyncio.ensure_future(self._resume_flow_once_queues_are_clean())

    async def _resume_flow_once_queues_are_clean(self, poll_seconds: float = 0.1) -> None:
        while not (self.app.flow_control.is_active() and not self.app.rebalancing):  # noqa: ASYNC110 - faust exposes flags
            await asyncio.sleep(poll_seconds)
        if not getattr(self.app.consumer, "flow_active", True):
            self.app.consumer.resume_flow()

    def partition_of(self, key: bytes) -> int:
        return key_partition(key, self.partitions)

    @staticmethod
    def _parse(raw: bytes | None) -> dict[str, Any] | None:
        try:
            envelope = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            return None
        required = ("event_id", "brand_id", "timestamp")
        if not isinstance(envelope, dict) or any(not envelope.get(field) for field in required):
            return None
        return envelope

    @staticmethod
    def _headers(message: Any) -> list[tuple[str, bytes]]:
        headers = message.headers or ()
        return list(headers.items() if isinstance(headers, Mapping) else headers)

    def _is_for_this_service(self, message: Any) -> bool:
        """False for a dead letter another service replayed onto a topic this worker reads."""
        for name, value in self._headers(message):
            if name == REPLAY_FOR:
                return bytes(value).decode(errors="replace") == SERVICE
        return True

    def _dead_letter(
        self, message: Any, reason: str, detail: str, *, attempts: int = 0,
        first_attempt_at: datetime | None = None, destination: str = "",
    ) -> DeadLetter:
        """The system's one dead-letter format (synergy_streaming.dlq): Postgres dlq_messages, then the DLQ
        topic, so `synergy dlq list` shows it and `synergy dlq replay` brings it back to this worker."""
        if reason == "invalid_envelope":
            metrics.INVALID_EVENTS.inc()
        metrics.DEAD_LETTERS.labels(reason).inc()
        value = message.value or b""
        brand_id, event_id = event_fields(value)
        return DeadLetter(
            reason=reason, detail=detail, service=SERVICE, source_topic=message.topic,
            source_partition=message.partition, source_offset=message.offset, key=message.key, value=value,
            headers=self._headers(message), attempts=attempts, first_attempt_at=first_attempt_at,
            destination=destination, brand_id=brand_id, event_id=event_id,
        )

    async def _write_read_model_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Durable (retried until both writes succeed) before the read model's batch may be acked; outside
        any transaction (the read model reads committed outputs and its writes are idempotent)."""
        if letters:
            if self.settings.achievements_persist:  # Postgres first: wait for the connection
                await self.pool_ready.wait()
            producer = await self.publisher.start()
            await DeadLetterWriter(producer, self.pool).write_until_durable(letters)

    # --- Postgres read model -------------------------------------------------------------------------

    async def persist_loyalty(self, stream: Any) -> None:
        # As in apply_events: a batch not written (or dead-lettered) in full must never be acked.
        async for events in stream.take_events(PERSIST_BATCH, within=0.5):
            try:
                await self.persist_batch(events)
            except BaseException as exc:  # a cancelled batch is unfinished too
                exit_unacked("persist-loyalty", events, exc)

    async def persist_batch(self, events: list[Any]) -> None:
        """Writes the batch; when Postgres refuses it for good, writes it record by record and sends
        each record Postgres will never accept to the DLQ, so one bad record cannot wedge the rest."""
        first_attempt_at = datetime.now(UTC)
        items = [(event.message, envelope) for event in events if self._is_for_this_service(event.message)
                 and (envelope := self._parse(event.message.value)) is not None]
        try:
            await self._write_retrying([envelope for _, envelope in items])
            return
        except RejectedByPostgres:
            pass
        rejected: list[DeadLetter] = []
        for message, envelope in items:
            try:
                await self._write_retrying([envelope])
            except RejectedByPostgres as exc:
                rejected.append(self._dead_letter(
                    message, "postgres_rejected", str(exc), attempts=2, first_attempt_at=first_attempt_at,
                    destination="postgres"))
        await self._write_read_model_dead_letters(rejected)

    async def _write_retrying(self, envelopes: list[dict[str, Any]]) -> None:
        """Retries what can succeed later (connection lost, serialization failure, deadlock) with
        backoff, raises RejectedByPostgres for data Postgres will never accept, and lets anything
        else (a bug) propagate."""
        delay = 0.5
        while True:
            try:
                if self.pool is None:
                    raise OSError("no Postgres pool yet")
                await LoyaltyWriter(self.pool).write(envelopes)
                return
            except Exception as exc:
                if is_data_rejected(exc):
                    raise RejectedByPostgres(str(exc)) from exc
                if not is_retryable_db_error(exc):
                    raise
                log.warning("persist_failed", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # --- periodic work -------------------------------------------------------------------------------

    def _active_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.events_topic}

    def _held_partitions(self) -> int:
        """For the assigned-partitions gauge: none while a rebalance is under way."""
        if self.app.rebalancing:
            return 0
        return len(self._active_partitions())

    async def recompute_snapshots(self) -> None:
        """Daily: a fresh snapshot for each local user whose time-derived fields changed (one transaction
        per partition and chunk, without input offsets)."""
        active = self._active_partitions()
        now = int(time.time())
        keys = [key for key in list(self.table.keys()) if self.partition_of(key) in active]
        for start in range(0, len(keys), RECOMPUTE_CHUNK):
            async with self.state_lock:  # states read and written here are not being changed by a batch
                await self.pipeline.drain()  # and the last batch's states are in the store
                steps: dict[int, PartitionStep] = {}
                for key in keys[start:start + RECOMPUTE_CHUNK]:
                    stored = self.table.get(key)
                    if stored is None:
                        continue
                    state = UserState.from_bytes(stored)
                    rules = self.rules.catalog.for_brand(state.brand_id)
                    outcome = self.batch_body.processor.recompute(state, rules, now)
                    if outcome.emits:
                        step = steps.setdefault(self.partition_of(key), PartitionStep())
                        step.outputs.extend(self.batch_body.output(emit) for emit in outcome.emits)
                        step.states.append((key, outcome.state.to_bytes()))
                await self._commit_steps(steps)
                metrics.SNAPSHOTS_RECOMPUTED.inc(sum(len(step.states) for step in steps.values()))

    async def export_lag(self) -> None:
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic not in (self.events_topic, self.awards_topic):
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            last = self.last_offsets.get((tp.topic, tp.partition), -1)
            committed = max(last + 1, 0)
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - committed))

    # --- Postgres, rules and HTTP alongside the worker ---------------------------------------------------

    async def start_side_services(self) -> None:
        while self.pool is None:
            try:
                self.pool = await create_pool(self.settings.database_url, min_size=1, max_size=5)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("postgres_unavailable", error=repr(exc))
                await asyncio.sleep(2.0)
        pool = self.pool
        self.pool_ready.set()
        self._rules_watch = asyncio.ensure_future(self.rules.watch(pool))

        async def kafka_ready() -> bool:
            return bool(self.app.consumer.assignment()) and not self.app.rebalancing

        async def postgres_ready() -> bool:
            return await pool.fetchval("SELECT 1") == 1

        api = create_api(pool, lambda brand: self.rules.catalog.for_brand(brand),
                         {"kafka": kafka_ready, "postgres": postgres_ready})
        server = QuietServer(uvicorn.Config(
            api, host=self.settings.achievements_http_host, port=self.settings.achievements_http_port,
            log_level="warning", lifespan="off",
        ))
        log.info("http_listening", port=self.settings.achievements_http_port)
        await server.serve()
