"""The marketing service (port 8002): the trigger consumer and the timer scheduler in the background,
the marketing queue, preference and tracking routes in front."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from synergy_common.db import create_pool
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_common.http import WriteKeyAuthenticator, install_problem_handlers, ops_router
from synergy_common.logging import configure_logging

from synergy_marketing import metrics
from synergy_marketing.consumer import run_consumer
from synergy_marketing.context import MarketingContext
from synergy_marketing.hot_routes import HotRoutes
from synergy_marketing.preferences_api import HOT_ENDPOINTS
from synergy_marketing.preferences_api import router as preferences_router
from synergy_marketing.publisher import MarketingPublisher
from synergy_marketing.queue_api import router as queue_router
from synergy_marketing.scheduler import Scheduler, report_backlog_forever
from synergy_marketing.settings import MarketingSettings

# A background part of the service: started with the app's context, cancelled at shutdown.
BackgroundPart = Callable[[MarketingContext], Coroutine[Any, Any, None]]


def background_parts(
    settings: MarketingSettings,
    events_topic: str | None = None,
    insights_topic: str | None = None,
) -> list[tuple[str, BackgroundPart]]:
    async def consume(context: MarketingContext) -> None:
        await run_consumer(context.pool, settings, events_topic=events_topic, insights_topic=insights_topic)

    async def schedule(context: MarketingContext) -> None:
        await Scheduler(context.pool, context.publisher, settings).run_forever()

    async def report(context: MarketingContext) -> None:
        await report_backlog_forever(context.pool)

    parts: list[tuple[str, BackgroundPart]] = [("backlog", report)]
    if settings.marketing_run_consumer:
        parts.append(("consumer", consume))
    if settings.marketing_run_scheduler:
        parts.append(("scheduler", schedule))
    return parts


def create_app(
    settings: MarketingSettings | None = None,
    publisher: MarketingPublisher | None = None,
    events_topic: str | None = None,
    insights_topic: str | None = None,
) -> FastAPI:
    """The service; the topics default to SYNERGY_TOPIC_EVENTS / SYNERGY_TOPIC_INSIGHTS (tests pass
    their own), and the marketing topic is the publisher's."""
    settings = settings or MarketingSettings()
    logger = configure_logging("marketing", settings.log_level)
    given_publisher = publisher

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the service starts, and answers 503, while Postgres is down.
        pool = await create_pool(
            settings.database_url, min_size=0, max_size=settings.marketing_db_pool_size, command_timeout=10
        )
        publisher = given_publisher or MarketingPublisher(settings.kafka_bootstrap_servers)
        context = MarketingContext(
            settings=settings,
            pool=pool,
            publisher=publisher,
            authenticator=WriteKeyAuthenticator(pool, "marketing"),
        )
        app.state.marketing = context
        tune_garbage_collector()
        tasks = [
            asyncio.create_task(part(context), name=f"marketing-{name}")
            for name, part in background_parts(settings, events_topic, insights_topic)
        ]
        logger.info("marketing_started", topic=publisher.topic, parts=[task.get_name() for task in tasks])
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.stop()
            await pool.close()

    app = FastAPI(title="Synergy marketing", version="1.0.0", lifespan=lifespan)
    app.state.insights_topic = insights_topic  # also read by the preference router's subscription consumer
    # Added before the RequestSafetyNet, so it runs inside it (correlation ids, answers counted).
    app.add_middleware(
        HotRoutes,
        routes=[route for route in preferences_router.routes if isinstance(route, APIRoute)],
        endpoints=HOT_ENDPOINTS,
    )
    install_problem_handlers(app, metrics.ANSWERS)

    async def postgres_ready() -> bool:
        return bool(await app.state.marketing.pool.fetchval("SELECT 1", timeout=2) == 1)

    async def kafka_ready() -> bool:
        return bool(await app.state.marketing.publisher.ready())

    app.include_router(ops_router({"postgres": postgres_ready, "kafka": kafka_ready}))
    # Email preferences, unsubscribe, preference centre, open/click tracking, recommendations (issue 10).
    app.include_router(preferences_router)
    # The marketing queue and KPIs (issue 9).
    app.include_router(queue_router)
    return app
