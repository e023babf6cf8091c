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
from synergy_common.consumer_service import consumer_service_app, open_pool_and_producer, processing
from synergy_common.http import ProblemError, authenticate_brand
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
        pool, producer = await open_pool_and_producer(stack, settings.database_url,
                                                      settings.kafka_bootstrap_servers, "synergy-dispatcher")
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
    async with (running_dispatcher(settings) as running,
                processing("dispatcher", running.processor, running.dispatcher.status_loop(), "status")):
        yield running


def create_app(settings: DispatcherSettings | None = None, running: Running | None = None) -> FastAPI:
    """The service; given a `running` dispatcher (tests), only its HTTP surface, without a lifespan."""
    settings = settings or DispatcherSettings()
    app, state = consumer_service_app("dispatcher", settings.log_level, lambda: serving(settings),
                                      metrics.ANSWERS, running)

    @app.get("/v1/destinations/status")
    async def destinations_status(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        """The brand's destinations: state (and why), delivered / failed / dead-lettered, lag."""
        brand_id = await authenticate_brand(state.auth, authorization)
        try:
            statuses = await store.destination_statuses(state.running.pool, brand_id)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ProblemError(503, "Status store unavailable", "try again shortly",
                               headers={"Retry-After": "5"}) from exc
        return {"brand_id": brand_id, "destinations": [s.as_json() for s in statuses]}

    return app
