"""The timer scheduler: claims due deadlines (FOR UPDATE SKIP LOCKED, so replicas share them),
re-checks and decides them (decisions.py), publishes what is sent to synergy.marketing.v1, and only
then records the queue items and marks the timers fired, in the same transaction. A crash before the
commit leaves the timers due: they fire again with the same queue ids and event ids (Customer.io
deduplicates on the event id; the queue keeps one row per queue id)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from synergy_marketing import metrics, store, tokens
from synergy_marketing.decisions import Links, SuppressionConfig, decide, recheck, trigger_envelope
from synergy_marketing.publisher import MarketingPublisher
from synergy_marketing.settings import MarketingSettings
from synergy_marketing.state import WINDOW_TRIGGERS, WindowConfig

log = structlog.get_logger()


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: MarketingPublisher,
        settings: MarketingSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.settings = settings
        self.clock = clock
        self.windows = WindowConfig(
            cart_abandon_after=timedelta(seconds=settings.seconds("marketing_cart_abandon_after")),
            browse_abandon_after=timedelta(seconds=settings.seconds("marketing_browse_abandon_after")),
            browse_min_views=settings.marketing_browse_min_views,
        )
        self.suppression = SuppressionConfig(
            frequency_cap=timedelta(seconds=settings.seconds("marketing_frequency_cap")),
            smart_sending=timedelta(seconds=settings.seconds("marketing_smart_sending")),
            stale_after=timedelta(seconds=settings.seconds("marketing_stale_after")),
        )
        self.batch = settings.marketing_scheduler_batch

    def links(self, brand_id: str, user_id: str) -> Links:
        issued_at = self.clock().timestamp()
        # The List-Unsubscribe header starts with <the one-click URL>: signed once, used for both.
        header = tokens.list_unsubscribe(self.settings, brand_id, user_id, issued_at)
        return Links(
            unsubscribe_url=header[1 : header.index(">")],
            preferences_url=tokens.preferences_url(self.settings, brand_id, user_id, issued_at),
            list_unsubscribe=header,
        )

    async def fire_due(self) -> int:
        """One transaction: up to `batch` due timers decided, published and recorded. Answers how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            await store.keyed_access_only(conn)
            due = await store.claim_due_timers(conn, self.batch)
            if not due:
                return 0
            # One decision at a time per person, across workers and replicas, so the frequency cap and
            # Smart Sending see every earlier send; timers of a person locked elsewhere wait a round.
            locked = await store.try_lock_persons(conn, {(d.timer.brand_id, d.timer.person) for d in due})
            due = [d for d in due if (d.timer.brand_id, d.timer.person) in locked]
            if not due:
                return 0
            now = self.clock()
            timers = [d.timer for d in due]
            persons = {(t.brand_id, t.person) for t in timers if t.trigger in WINDOW_TRIGGERS}
            watch_keys = {
                (t.brand_id, t.person, t.subject) for t in timers if t.trigger not in WINDOW_TRIGGERS
            }
            loaded = await store.load_persons(conn, persons)
            watches = await store.load_watches(conn, watch_keys, ())
            candidates = []
            for timer in timers:
                candidate = recheck(
                    timer,
                    loaded.get((timer.brand_id, timer.person)),
                    watches.get((timer.brand_id, timer.person, timer.subject)),
                    self.windows,
                )
                if candidate is None:
                    metrics.TRIGGERS.labels(timer.brand_id, timer.trigger, "exited").inc()
                else:
                    candidates.append(candidate)
            users = sorted({(c.timer.brand_id, c.timer.person) for c in candidates})
            preferences = await store.load_preferences(conn, users)
            longest = max(self.suppression.frequency_cap, self.suppression.smart_sending)
            histories = await store.load_histories(conn, users, now - longest)
            brands = await store.load_brands(conn, {c.timer.brand_id for c in candidates})
            decisions = decide(candidates, preferences, histories, brands, self.links, now, self.suppression)
            sent = [d for d in decisions if d.sent]
            await self.publisher.publish_many([trigger_envelope(d, now) for d in sent])
            await store.save_decisions(conn, decisions, [d.timer_id for d in due], now)
        fired_at = time.time()
        for d in due:
            metrics.TIMER_LATENESS.observe(max(0.0, fired_at - d.timer.due_at.timestamp()))
            metrics.TIMERS_FIRED.labels(d.timer.trigger).inc()
        for decision in decisions:
            outcome = "sent" if decision.sent else f"suppressed_{decision.reason}"
            metrics.TRIGGERS.labels(decision.brand_id, decision.trigger, outcome).inc()
        return len(due)

    async def run_forever(self) -> None:
        """`marketing_scheduler_workers` concurrent firing loops (SKIP LOCKED keeps them apart)."""
        workers = max(1, self.settings.marketing_scheduler_workers)
        await asyncio.gather(*(self._fire_forever() for _ in range(workers)))

    async def _fire_forever(self) -> None:
        interval = self.settings.seconds("marketing_scheduler_interval")
        failures = 0
        while True:
            try:
                fired = await self.fire_due()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("timer firing failed; will retry", error=repr(exc), failures=failures)
                await asyncio.sleep(min(30.0, interval * 2**failures))
                continue
            if fired < self.batch:
                await asyncio.sleep(interval)


def publish_kpis(rows: list[Any]) -> None:
    for row in rows:
        brand, trigger, sent = str(row["brand_id"]), row["event_name"], int(row["sent"])
        for state in ("sent", "opened", "clicked", "converted"):
            metrics.KPI_MESSAGES.labels(brand, trigger, state).set(int(row[state]))
        for kpi, state in (("open", "opened"), ("click", "clicked"), ("conversion", "converted")):
            metrics.KPI_RATE.labels(brand, trigger, kpi).set(int(row[state]) / sent if sent else 0.0)
        metrics.KPI_RECOVERED_REVENUE.labels(brand, trigger).set(float(row["revenue"]))


async def report_backlog_forever(pool: asyncpg.Pool, interval: float = 5.0) -> None:
    """Timers pending, the oldest due timer's lateness and the KPIs, for /metrics; statistics of grown
    tables refreshed; old rows purged hourly."""
    last_purge = 0.0
    while True:
        try:
            pending, lateness = await store.timer_backlog(pool)
            metrics.TIMERS_PENDING.set(pending)
            metrics.OLDEST_DUE_TIMER_LATENESS.set(lateness)
            publish_kpis(await store.kpis(pool))
            await store.analyze_grown_tables(pool)
            if time.monotonic() - last_purge > 3600:
                await store.purge_expired(pool)
                last_purge = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("timer backlog report failed", error=repr(exc))
        await asyncio.sleep(interval)
