"""synergy_common.consumer_service: the processor's lifecycle while serving, and the ops routes over a
started consumer service (its Postgres pool, Kafka consumer and processor stand-ins here; the services'
integration tests run them against real Kafka and Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import structlog
from synergy_common.consumer_service import consumer_service_app, processing
from synergy_common.http import answers_counter

ANSWERS = answers_counter("synergy_unittest_consumer_service_requests_total")


class Processor:
    def __init__(self, fails: Exception | None = None) -> None:
        self.fails = fails
        self.stopped = asyncio.Event()
        self.brake_engaged = False

    async def run(self) -> None:
        await self.stopped.wait()
        if self.fails is not None:
            raise self.fails

    def stop(self) -> None:
        self.stopped.set()

    def readiness(self) -> dict[str, bool]:
        return {"dlq_brake_released": not self.brake_engaged}


class Pool:
    def __init__(self) -> None:
        self.away = False

    async def fetchval(self, query: str) -> int:
        if self.away:
            raise OSError("connection refused")
        return 1


class Consumer:
    def __init__(self) -> None:
        self.reachable = True

    async def ping(self) -> bool:
        return self.reachable


@dataclass
class Running:
    pool: Pool = field(default_factory=Pool)
    consumer: Consumer = field(default_factory=Consumer)
    processor: Processor = field(default_factory=Processor)


async def test_on_exit_the_processor_is_stopped_and_the_side_loop_cancelled() -> None:
    processor = Processor()
    side_loop_cancelled = asyncio.Event()

    async def side_loop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            side_loop_cancelled.set()
            raise

    async with processing("svc", processor, side_loop(), "status"):
        await asyncio.sleep(0.01)
        names = sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("svc-"))
        assert not processor.stopped.is_set()
    assert names == ["svc-processor", "svc-status"]
    assert processor.stopped.is_set() and side_loop_cancelled.is_set()


async def test_a_processor_that_failed_is_logged_and_the_exit_still_completes() -> None:
    processor = Processor(fails=RuntimeError("commit failed"))

    async def side_loop() -> None:
        await asyncio.sleep(3600)

    with structlog.testing.capture_logs() as logs:
        async with processing("svc", processor, side_loop(), "status"):
            pass
    assert [(e["event"], e["error"]) for e in logs if e["log_level"] == "error"] == [
        ("svc task failed", "RuntimeError('commit failed')")]


async def _ops(running: Running) -> dict[str, httpx.Response]:
    app, _ = consumer_service_app("svc", "INFO", _never_started, ANSWERS, running)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        return {path: await client.get(path) for path in ("/healthz", "/readyz", "/metrics")}


@contextlib.asynccontextmanager
async def _never_started() -> AsyncIterator[Running]:
    raise AssertionError("given a running service, the app has no lifespan")
    yield Running()


async def test_a_started_service_is_alive_ready_and_serves_its_metrics() -> None:
    answers = await _ops(Running())
    assert answers["/healthz"].status_code == 200 and answers["/healthz"].json() == {"status": "ok"}
    assert answers["/readyz"].status_code == 200
    assert answers["/readyz"].json() == {
        "status": "ready", "checks": {"postgres": True, "kafka": True, "dlq_brake_released": True}}
    assert answers["/metrics"].status_code == 200
    assert answers["/metrics"].headers["content-type"].startswith("text/plain")
    assert 'synergy_unittest_consumer_service_requests_total{route="/readyz",status="200"}' in (
        answers["/metrics"].text)


@pytest.mark.parametrize(("fault", "checks"), [
    ("postgres away", {"postgres": False, "kafka": True, "dlq_brake_released": True}),
    ("kafka away", {"postgres": True, "kafka": False, "dlq_brake_released": True}),
    ("brake engaged", {"postgres": True, "kafka": True, "dlq_brake_released": False}),
])
async def test_readiness_names_the_dependency_that_is_not_ready(fault: str, checks: dict[str, bool]) -> None:
    running = Running()
    running.pool.away = fault == "postgres away"
    running.consumer.reachable = fault != "kafka away"
    running.processor.brake_engaged = fault == "brake engaged"
    answers = await _ops(running)
    assert answers["/healthz"].status_code == 200
    assert answers["/readyz"].status_code == 503
    assert answers["/readyz"].json() == {"status": "unavailable", "checks": checks}


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """The lifespan configures structlog for the process; the tests after this one get the defaults."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("logging_restored")
async def test_the_lifespan_starts_the_service_then_the_hook_and_serves_it_until_shutdown() -> None:
    events: list[str] = []
    running = Running()

    @contextlib.asynccontextmanager
    async def serving() -> AsyncIterator[Running]:
        events.append("started")
        yield running
        events.append("stopped")

    app, state = consumer_service_app("svc", "INFO", serving, ANSWERS, on_started=lambda: events.append("hook"))
    async with app.router.lifespan_context(app):
        assert state.running is running
        assert state.auth.service == "svc"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert events == ["started", "hook", "stopped"]
