"""The wiring a Kafka consumer service with an HTTP surface shares: its Postgres pool and dead-letter
producer opened, its processor and side loop run in tasks while it serves, and the FastAPI app whose
lifespan starts them, with /healthz, /readyz (Postgres, Kafka, the DLQ brake) and /metrics.

Typed by what it uses (protocols), so it needs nothing of synergy_streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import Counter

from synergy_common.db import create_pool
from synergy_common.http import ReadinessCheck, WriteKeyAuthenticator, install_problem_handlers, ops_router
from synergy_common.kafka import durable_producer
from synergy_common.logging import configure_logging


class Processor(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...

    def readiness(self) -> Mapping[str, bool]: ...


class Pingable(Protocol):
    async def ping(self) -> bool: ...


class RunningConsumer(Protocol):
    """A started consumer service, as its HTTP surface sees it."""

    @property
    def pool(self) -> asyncpg.Pool: ...

    @property
    def consumer(self) -> Pingable: ...

    @property
    def processor(self) -> Processor: ...


R = TypeVar("R", bound=RunningConsumer)


async def open_pool_and_producer(stack: contextlib.AsyncExitStack, database_url: str,
                                 kafka_bootstrap_servers: str, client_id: str,
                                 ) -> tuple[asyncpg.Pool, AIOKafkaProducer]:
    """The service's pool and its durable producer (dead letters), closed when `stack` closes."""
    pool = await create_pool(database_url, min_size=1, max_size=8)
    stack.push_async_callback(pool.close)
    producer = durable_producer(kafka_bootstrap_servers, client_id=client_id)
    await producer.start()
    stack.push_async_callback(producer.stop)
    return pool, producer


@contextlib.asynccontextmanager
async def processing(service: str, processor: Processor, side_loop: Coroutine[Any, Any, None],
                     side_loop_name: str) -> AsyncIterator[None]:
    """The processor and the service's side loop (status, maintenance) run in tasks. On exit the
    processor is stopped (it settles and commits what it holds), the side loop cancelled, and a task
    that failed is logged."""
    tasks = [asyncio.create_task(processor.run(), name=f"{service}-processor"),
             asyncio.create_task(side_loop, name=f"{service}-{side_loop_name}")]
    try:
        yield
    finally:
        processor.stop()
        tasks[1].cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                # looked up here, so the logging configuration in force at shutdown applies
                structlog.get_logger().error(f"{service} task failed", error=repr(result))


def consumer_readiness(running: Callable[[], RunningConsumer]) -> dict[str, ReadinessCheck]:
    """/readyz's checks: Postgres answers, Kafka answers, the processor's DLQ brake is released."""

    async def postgres_ready() -> bool:
        return bool(await running().pool.fetchval("SELECT 1"))

    async def kafka_ready() -> bool:
        return bool(await running().consumer.ping())

    async def brake_released() -> bool:
        return all(running().processor.readiness().values())

    return {"postgres": postgres_ready, "kafka": kafka_ready, "dlq_brake_released": brake_released}


class ServiceState(Generic[R]):
    """What the routes read: the running service and its write-key authenticator, set once started."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._running: R | None = None
        self._auth: WriteKeyAuthenticator | None = None

    def started(self, running: R) -> None:
        self._running, self._auth = running, WriteKeyAuthenticator(running.pool, self.service)

    @property
    def running(self) -> R:
        if self._running is None:
            raise RuntimeError(f"the {self.service} service is not started")
        return self._running

    @property
    def auth(self) -> WriteKeyAuthenticator:
        if self._auth is None:
            raise RuntimeError(f"the {self.service} service is not started")
        return self._auth


def consumer_service_app(service: str, log_level: str,
                         serving: Callable[[], contextlib.AbstractAsyncContextManager[R]],
                         answers: Counter, running: R | None = None,
                         on_started: Callable[[], None] | None = None) -> tuple[FastAPI, ServiceState[R]]:
    """`synergy <service>`'s app with problem+json answers (counted in `answers`) and the ops routes.
    Its lifespan configures logging and runs `serving()` (then `on_started`); given a `running`
    service (tests), the app has only the HTTP surface over it, without a lifespan. The caller adds
    its own routes, reading the service through the returned state."""
    state: ServiceState[R] = ServiceState(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        configure_logging(service, log_level)
        async with serving() as started:
            if on_started is not None:
                on_started()
            state.started(started)
            yield

    if running is not None:
        state.started(running)
    app = FastAPI(title=f"synergy {service}", lifespan=None if running is not None else lifespan)
    install_problem_handlers(app, answers)
    app.include_router(ops_router(consumer_readiness(lambda: state.running)))
    return app, state
