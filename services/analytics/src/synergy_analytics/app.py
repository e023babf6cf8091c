"""The analytics service (port 8006): the consumer, plus health, metrics and the KPI read API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Header, Query
from synergy_common.consumer_service import consumer_service_app, open_pool_and_producer, processing
from synergy_common.durations import parse_duration
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_common.http import ProblemError, authenticate_brand
from synergy_streaming import DeadLetterWriter, KafkaConsumer, RetryPolicy, StreamProcessor

from synergy_analytics import metrics, queries, store
from synergy_analytics.kpis import DEFAULT_WINDOW
from synergy_analytics.service import Analytics
from synergy_analytics.settings import AnalyticsSettings

log = structlog.get_logger()
DEFAULT_RANGE = timedelta(days=30)
MAX_NAME = 100


@dataclass
class Running:
    analytics: Analytics
    processor: StreamProcessor
    consumer: KafkaConsumer
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def running_analytics(settings: AnalyticsSettings) -> AsyncIterator[Running]:
    """Pools, producer (dead letters) and consumer started, partitions made ahead; not yet running."""
    async with contextlib.AsyncExitStack() as stack:
        pool, producer = await open_pool_and_producer(stack, settings.database_url,
                                                      settings.kafka_bootstrap_servers, "synergy-analytics")
        log_pool = await store.create_log_pool(
            settings.database_url, max_size=settings.analytics_max_in_flight + 1
        )
        stack.push_async_callback(log_pool.close)
        analytics = Analytics(settings, pool, log_pool)
        await analytics.maintain()
        consumer = KafkaConsumer(
            settings.kafka_bootstrap_servers,
            group_id=settings.analytics_group_id,
            client_id="synergy-analytics",
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        processor = StreamProcessor(
            analytics.stream_config(),
            consumer,
            analytics.prepare,
            analytics.deliver,
            dead_letters=DeadLetterWriter(producer, pool),
            retry=RetryPolicy(max_attempts=1000, max_window=7 * 24 * 3600,
                              base=settings.seconds("analytics_retry_base"),
                              cap=settings.seconds("analytics_retry_cap")),
            decode=analytics.decode,
            destination_of=analytics.destination_of,
        )
        log.info("analytics ready", topics=settings.topic_names)
        yield Running(analytics, processor, consumer, pool)


@contextlib.asynccontextmanager
async def serving(settings: AnalyticsSettings) -> AsyncIterator[Running]:
    """Analytics running: processor and maintenance loop in tasks, stopped (settled, committed) on exit."""
    async with (running_analytics(settings) as running,
                processing("analytics", running.processor, running.analytics.maintenance_loop(),
                           "maintenance")):
        yield running


def parse_time(name: str, value: str | None, default: datetime) -> datetime:
    if value is None or value == "":
        return default
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProblemError(
            422, "Invalid time", f"{name}: expected ISO 8601, got {value[:40]!r}", field=name
        ) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def time_range(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    end = parse_time("until", until, datetime.now(UTC))
    start = parse_time("since", since, end - DEFAULT_RANGE)
    if start >= end:
        raise ProblemError(422, "Invalid range", "since must be before until", field="since")
    return start, end


def event_name(field: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_NAME:
        raise ProblemError(422, "Invalid event name", f"{field}: 1 to {MAX_NAME} characters", field=field)
    return value


def create_app(settings: AnalyticsSettings | None = None, running: Running | None = None) -> FastAPI:
    """The service; given a `running` analytics (tests), only its HTTP surface, without a lifespan."""
    settings = settings or AnalyticsSettings()
    young_objects = settings.analytics_gc_young_objects  # the runtime's gc_young_threshold too
    app, state = consumer_service_app("analytics", settings.log_level, lambda: serving(settings),
                                      metrics.REQUESTS, running,
                                      on_started=lambda: tune_garbage_collector(young_objects))

    async def brand_of(authorization: str | None) -> int:
        return int(await authenticate_brand(state.auth, authorization))

    async def measured(kpi: str, query: Awaitable[Any]) -> Any:
        with metrics.QUERY_SECONDS.labels(kpi).time():
            try:
                return queries.as_json(await query)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("KPI query failed", kpi=kpi, error=repr(exc))
                raise ProblemError(
                    503, "KPI store unavailable", "try again shortly", headers={"Retry-After": "5"}
                ) from exc

    @app.get("/v1/kpis/funnel")
    async def funnel(
        steps: str = Query(..., description="comma-separated event names, 2 to 10"),
        window: str = "14d",
        order: str = "ordered",
        since: str | None = None,
        until: str | None = None,
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        brand_id = await brand_of(authorization)
        names = [event_name("steps", s) for s in steps.split(",")]
        if not 2 <= len(names) <= queries.MAX_STEPS:
            raise ProblemError(422, "Invalid steps", f"2 to {queries.MAX_STEPS} steps", field="steps")
        if order not in ("ordered", "strict"):
            raise ProblemError(422, "Invalid order", "ordered or strict", field="order")
        try:
            conversion_window = parse_duration(window) if window else DEFAULT_WINDOW
        except ValueError as exc:
            raise ProblemError(422, "Invalid window", str(exc), field="window") from exc
        if not timedelta(0) < conversion_window <= timedelta(days=365):
            raise ProblemError(422, "Invalid window", "between 1s and 365d", field="window")
        start, end = time_range(since, until)
        result: dict[str, Any] = await measured(
            "funnel",
            queries.funnel(
                state.running.pool,
                brand_id,
                names,
                start,
                end,
                conversion_window,
                "strict" if order == "strict" else "ordered",
            ),
        )
        return result

    @app.get("/v1/kpis/time-to-first")
    async def time_to_first(
        action: str,
        from_: str = Query(..., alias="from"),
        since: str | None = None,
        until: str | None = None,
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        brand_id = await brand_of(authorization)
        start, end = time_range(since, until)
        result: dict[str, Any] = await measured(
            "time_to_first",
            queries.time_to_first(
                state.running.pool,
                brand_id,
                event_name("action", action),
                event_name("from", from_),
                start,
                end,
            ),
        )
        return result

    @app.get("/v1/kpis/retention")
    async def retention(
        start: str,
        return_: str = Query(..., alias="return"),
        week: int = 1,
        since: str | None = None,
        until: str | None = None,
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        brand_id = await brand_of(authorization)
        if not 0 <= week <= 52:
            raise ProblemError(422, "Invalid week", "0 to 52", field="week")
        begin, end = time_range(since, until)
        result: dict[str, Any] = await measured(
            "retention",
            queries.retention(
                state.running.pool,
                brand_id,
                event_name("start", start),
                [event_name("return", r) for r in return_.split(",")],
                begin,
                end,
                week,
            ),
        )
        return result

    @app.get("/v1/users/{user_id}/analytics")
    async def user_analytics(
        user_id: str, authorization: str | None = Header(default=None)
    ) -> dict[str, Any]:
        """The user's read models (wishlist, goals, referrals) and action counts; 404 outside the brand."""
        brand_id = await brand_of(authorization)
        try:
            found = await user_read_models(state.running.pool, brand_id, user_id)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ProblemError(
                503, "Store unavailable", "try again shortly", headers={"Retry-After": "5"}
            ) from exc
        if found is None:
            raise ProblemError(404, "Unknown user", f"no user {user_id[:150]!r} in this brand")
        return found

    return app


async def user_read_models(pool: asyncpg.Pool, brand_id: int, external_id: str) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        user = await conn.fetchval(
            "SELECT id FROM users WHERE brand_id = $1 AND external_id = $2", brand_id, external_id
        )
        counts = await conn.fetch(
            """SELECT action_type, count(*) AS n FROM user_action_log WHERE brand_id = $1 AND user_id = $2
               GROUP BY action_type ORDER BY action_type""",
            brand_id,
            external_id,
        )
        if user is None and not counts:
            return None
        wishlist = await conn.fetch(
            """SELECT wishlist_item_id, product_ref, points_needed, referrals_needed, added_at FROM wishlists
               WHERE user_id = $1 ORDER BY added_at, wishlist_item_id""",
            user,
        )
        goals = await conn.fetch(
            """SELECT wishlist_item_id, goal_type, target_points, target_referrals, current_points,
                      current_referrals, is_active, completed_at FROM user_goals
               WHERE user_id = $1 ORDER BY started_at, id""",
            user,
        )
        referrals = await conn.fetch(
            """SELECT r.referral_code, r.status, r.points_awarded_to_referrer, r.converted_at,
                      e.external_id AS referee
               FROM referrals r LEFT JOIN users e ON e.id = r.referee_user_id
               WHERE r.referrer_user_id = $1 ORDER BY r.created_at, r.id""",
            user,
        )
        codes = await conn.fetch("SELECT code FROM referral_codes WHERE user_id = $1 ORDER BY code", user)
    return {
        "user_id": external_id,
        "actions": {r["action_type"]: r["n"] for r in counts},
        "wishlist": [_plain(r) for r in wishlist],
        "goals": [_plain(r) for r in goals],
        "referral_codes": [r["code"] for r in codes],
        "referrals": [_plain(r) for r in referrals],
    }


def _plain(row: asyncpg.Record) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
