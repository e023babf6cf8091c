"""The dispatcher service (port 8005): the consumer, plus health, metrics and destination status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Header
from synergy_common.brands import CredentialCipher
from synergy_common.db import create_pool
from synergy_common.http import (
    ProblemError,
    WriteKeyAuthenticator,
    authenticate_brand,
    install_problem_handlers,
    ops_router,
)
from synergy_common.kafka import durable_producer
from synergy_common.logging import configure_logging
from synergy_streaming import DeadLetterWriter, KafkaConsumer, RetryPolicy, StreamProcessor
from synergy_streaming.consumer import AssignmentCallback
from synergy_streaming.message import Partition

from synergy_dispatcher import metrics, store
from synergy_dispatcher.dispatcher import Dispatcher, Registry
from synergy_dispatcher.senders import http_client
from synergy_dispatcher.settings import DispatcherSettings

log = structlog.get_logger()


@dataclass
class Running:
    dispatcher: Dispatcher
    processor: StreamProcessor
    consumer: KafkaConsumer
    pool: asyncpg.Pool


ASSIGNMENT_READ_TIMEOUT = 5.0


class BacklogAwareConsumer(KafkaConsumer):
    """Before partitions are taken over, the backlogs in Postgres are read again: a user whose items
    another replica put in a backlog gets its new items behind them, not past them."""

    before_assigned: Callable[[], Awaitable[None]] | None = None

    def subscribe(self, topics: list[str], on_assigned: AssignmentCallback,
                  on_revoked: AssignmentCallback) -> None:
        async def assigned(partitions: list[Partition]) -> None:
            if self.before_assigned is not None:
                try:  # bounded: the rebalance must not wait on a Postgres that is away
                    await asyncio.wait_for(self.before_assigned(), ASSIGNMENT_READ_TIMEOUT)
                except Exception as exc:
                    log.warning("backlogs not read before the assignment", error=repr(exc))
            await on_assigned(partitions)

        super().subscribe(topics, assigned, on_revoked)


def retry_policy(settings: DispatcherSettings) -> RetryPolicy:
    return RetryPolicy(max_attempts=settings.dispatcher_retry_attempts,
                       max_window=settings.seconds("dispatcher_retry_window"),
                       base=settings.seconds("dispatcher_retry_base"),
                       cap=settings.seconds("dispatcher_retry_cap"))


@contextlib.asynccontextmanager
async def running_dispatcher(settings: DispatcherSettings) -> AsyncIterator[Running]:
    """Pool, producer (dead letters), consumer and HTTP client started; the processor not yet run."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, min_size=1, max_size=8)
        stack.push_async_callback(pool.close)
        producer = durable_producer(settings.kafka_bootstrap_servers, client_id="synergy-dispatcher")
        await producer.start()
        stack.push_async_callback(producer.stop)
        client = http_client()
        stack.push_async_callback(client.close)
        registry = Registry(pool, CredentialCipher(settings.synergy_encryption_key), settings)
        await registry.register_environment()
        await registry.reload()
        retry, dead_letters = retry_policy(settings), DeadLetterWriter(producer, pool)
        dispatcher = Dispatcher(settings, pool, registry, client, retry, dead_letters)
        consumer = BacklogAwareConsumer(settings.kafka_bootstrap_servers,
                                        group_id=settings.dispatcher_group_id, client_id="synergy-dispatcher")
        consumer.before_assigned = dispatcher.adopt_backlogs
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        await dispatcher.adopt_backlogs()
        processor = StreamProcessor(
            dispatcher.stream_config(), consumer, dispatcher.prepare, dispatcher.deliver,
            dead_letters=dead_letters, retry=retry,
            destination_of=dispatcher.destination_of, on_dead_letter=dispatcher.dead_lettered)
        dispatcher.processor = processor
        stack.push_async_callback(dispatcher.close)
        log.info("dispatcher ready", destinations=len(registry.by_id), topics=settings.topic_names)
        yield Running(dispatcher, processor, consumer, pool)


@contextlib.asynccontextmanager
async def serving(settings: DispatcherSettings) -> AsyncIterator[Running]:
    """The dispatcher running: processor and status loop in tasks, stopped (settled, committed) on exit."""
    async with running_dispatcher(settings) as running:
        tasks = [asyncio.create_task(running.processor.run(), name="dispatcher-processor"),
                 asyncio.create_task(running.dispatcher.status_loop(), name="dispatcher-status")]
        try:
            yield running
        finally:
            running.processor.stop()
            tasks[1].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("dispatcher task failed", error=repr(result))


def create_app(settings: DispatcherSettings | None = None, running: Running | None = None) -> FastAPI:
    """The service; given a `running` dispatcher (tests), only its HTTP surface, without a lifespan."""
    settings = settings or DispatcherSettings()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        configure_logging("dispatcher", settings.log_level)
        async with serving(settings) as started:
            state["running"] = started
            state["auth"] = WriteKeyAuthenticator(started.pool, "dispatcher")
            yield

    if running is not None:
        state["running"], state["auth"] = running, WriteKeyAuthenticator(running.pool, "dispatcher")
    app = FastAPI(title="synergy dispatcher", lifespan=None if running is not None else lifespan)
    install_problem_handlers(app, metrics.ANSWERS)

    async def postgres_ready() -> bool:
        return bool(await state["running"].pool.fetchval("SELECT 1"))

    async def kafka_ready() -> bool:
        return bool(await state["running"].consumer.ping())

    async def brake_released() -> bool:
        return all(state["running"].processor.readiness().values())

    app.include_router(ops_router({"postgres": postgres_ready, "kafka": kafka_ready,
                                   "dlq_brake_released": brake_released}))

    @app.get("/v1/destinations/status")
    async def destinations_status(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        """The brand's destinations: state (and why), delivered / failed / dead-lettered, lag."""
        running: Running = state["running"]
        brand_id = await authenticate_brand(state["auth"], authorization)
        try:
            statuses = await store.destination_statuses(running.pool, brand_id)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ProblemError(503, "Status store unavailable", "try again shortly",
                               headers={"Retry-After": "5"}) from exc
        return {"brand_id": brand_id, "destinations": [s.as_json() for s in statuses]}

    return app
