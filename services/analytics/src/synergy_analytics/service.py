"""Analytics on the consumer runtime.

    decode: message bytes -> the processed event in one native step (fast_records), else the envelope
    prepare: -> one Work (key brand:user, target the log) holding its COPY row and the processed event
    deliver: one batch -> the month partitions it needs, then one COPY of all its rows and the
             read-model changes of the new ones, in one transaction

A non-retryable Postgres error raised from deliver makes the runtime bisect the batch, so a poison
event is dead-lettered and the rest written. A maintenance loop makes partitions ahead and drops the
ones past the retention.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from synergy_streaming import (
    DELIVERED,
    ItemOutcome,
    Record,
    Reject,
    Skip,
    Source,
    StreamConfig,
    Work,
    decode_envelope,
)

from synergy_analytics import metrics, store
from synergy_analytics.fast_records import processed_from_bytes
from synergy_analytics.records import Processed, Unusable, process_message
from synergy_analytics.settings import AnalyticsSettings

log = structlog.get_logger()

TARGET = "user_action_log"


class Analytics:
    def __init__(self, settings: AnalyticsSettings, pool: asyncpg.Pool, log_pool: asyncpg.Pool) -> None:
        self.settings, self.pool, self.log_pool = settings, pool, log_pool
        self.partitions = store.Partitions()
        self.retention = timedelta(seconds=settings.seconds("analytics_retention"))

    def stream_config(self) -> StreamConfig:
        s = self.settings
        return StreamConfig(
            service="analytics",
            topics=s.topic_names,
            max_buffered=s.analytics_max_buffered,
            max_batch_items=s.analytics_batch_items,
            max_batch_bytes=16_000_000,
            max_run_per_key=s.analytics_batch_items,
            max_in_flight=s.analytics_max_in_flight,
            max_batch_wait=s.seconds("analytics_batch_wait"),
            gc_young_threshold=s.analytics_gc_young_objects,
        )

    def decode(self, record: Record) -> Processed | dict[str, Any]:
        """The message processed in one native step (fast_records), else the runtime's envelope decode
        (which refuses what is not an envelope); prepare then runs process_message on the dict."""
        processed = processed_from_bytes(record.value)
        return processed if processed is not None else decode_envelope(record)

    def prepare(self, source: Source) -> list[Work] | Skip | Reject:
        payload = source.payload
        if type(payload) is Processed:
            processed = payload
        else:
            try:
                processed = process_message(payload)
            except Unusable as exc:
                metrics.SKIPPED.labels("unusable").inc()
                return Reject("unusable_event", str(exc))
        row = processed.row
        if row.occurred_at < datetime.now(UTC) - self.retention:
            metrics.SKIPPED.labels("older_than_retention").inc()
            return Skip("older_than_retention")
        key = f"{row.brand_id}:{row.user_id or 'anon:' + (row.anonymous_id or '')}"
        record = (*row, source.record.partition.topic)
        return [Work(key, TARGET, (record, processed), len(row.action_data) + 200)]

    async def deliver(self, target: Hashable, items: Sequence[Work]) -> list[ItemOutcome]:
        batch: list[tuple[store.LogRecord, Processed]] = [w.payload for w in items]
        started = time.perf_counter()
        months = {(p.row.occurred_at.year, p.row.occurred_at.month) for _, p in batch}  # UTC times
        made = await self.partitions.ensure(self.pool, {datetime(y, m, 1, tzinfo=UTC) for y, m in months})
        if made:
            metrics.PARTITIONS_CREATED.inc(made)
        try:
            written = await store.write_batch(self.log_pool, batch)
        except Exception as exc:
            # The runtime retries (connection, deadlock) or bisects (data Postgres refuses); say which batch.
            log.warning("action log batch failed", rows=len(batch), error=repr(exc)[:500])
            raise
        metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_ROWS.observe(len(batch))
        logged: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        for record, processed in batch:
            (logged if processed.row.event_id in written else duplicates)[str(record[-1])] += 1
        for topic, count in logged.items():
            metrics.LOGGED.labels(topic).inc(count)
        for topic, count in duplicates.items():
            metrics.DUPLICATES.labels(topic).inc(count)
        return [DELIVERED] * len(items)

    def destination_of(self, target: Hashable) -> str:
        return str(target)

    async def maintain(self) -> None:
        """Partitions ahead of now, and those past the retention dropped, a partition at a time."""
        now = datetime.now(UTC)
        made = await self.partitions.premake(self.pool, now, self.settings.analytics_partitions_ahead)
        if made:
            metrics.PARTITIONS_CREATED.inc(made)
        dropped = await self.partitions.drop_before(self.pool, now - self.retention)
        if dropped:
            metrics.PARTITIONS_DROPPED.inc(len(dropped))
            log.info("partitions dropped past the retention", partitions=dropped)
        count = await self.pool.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'user_action_log'::regclass"
        )
        metrics.PARTITIONS.set(int(count))

    async def maintenance_loop(self) -> None:
        interval = self.settings.seconds("analytics_maintenance_interval")
        while True:
            try:
                await self.maintain()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("partition maintenance failed; retrying", error=repr(exc))
                interval_now = min(interval, 30.0)
            else:
                interval_now = interval
            await asyncio.sleep(interval_now)
