"""Wiring: settings -> consumer, producer, Postgres, transport -> CioSink, plus the ops server."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
import sys
from collections.abc import AsyncIterator, Iterator

import structlog
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from synergy_common.db import create_pool
from synergy_common.http import install_problem_handlers, ops_router
from synergy_common.kafka import durable_producer
from synergy_streaming import KafkaConsumer

from synergy_cio_sink import metrics
from synergy_cio_sink.brands import BrandDirectory
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.sink import CioSink, CountingDeadLetterWriter
from synergy_cio_sink.transport import CustomerIoTransport

log = structlog.get_logger(service="cio-sink")

DRY_RUN_BANNER = """
************************************************************************************
*  cio-sink is running DRY: no CIO_SITE_ID/CIO_API_KEY and no brand credentials.   *
*  Nothing is sent to Customer.io; every operation is only recorded (dry_run).     *
************************************************************************************"""


@contextlib.asynccontextmanager
async def running_sink(settings: SinkSettings) -> AsyncIterator[CioSink]:
    """A started sink (not yet consuming: call `run()`), closed on exit."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    producer = durable_producer(settings.kafka_bootstrap_servers, client_id="synergy-cio-sink")
    consumer = KafkaConsumer(settings.kafka_bootstrap_servers, group_id=settings.consumer_group,
                             client_id="synergy-cio-sink")
    transport = CustomerIoTransport(settings.cio_request_timeout)
    directory = BrandDirectory(pool, settings)
    try:
        await producer.start()
        await consumer.start()
        sink = CioSink(settings, consumer, directory, CountingDeadLetterWriter(producer, pool), transport)
        if directory.default_workspace is None and not await directory.any_brand_has_credentials():
            sink.running_dry = True
            print(DRY_RUN_BANNER, file=sys.stderr, flush=True)
            log.warning("dry run: no Customer.io credentials anywhere; recording what would be sent")
        yield sink
    finally:
        await consumer.stop()
        await producer.stop()
        await transport.close()
        await pool.close()


READINESS_TIMEOUT_SECONDS = 2.0


def ops_app(sink: CioSink) -> FastAPI:
    async def kafka_ready() -> bool:
        # A fresh metadata round trip, not the client's cached view of the cluster.
        return await asyncio.wait_for(sink.consumer.ping(), READINESS_TIMEOUT_SECONDS)

    async def postgres_ready() -> bool:
        return await asyncio.wait_for(sink.directory.ping(), READINESS_TIMEOUT_SECONDS)

    async def dlq_brake_released() -> bool:
        return sink.readiness()["dlq_brake_released"]

    app = FastAPI(title="synergy cio-sink", docs_url=None, redoc_url=None)
    install_problem_handlers(app, metrics.ANSWERS)
    app.include_router(ops_router({"kafka": kafka_ready, "postgres": postgres_ready,
                                   "dlq_brake_released": dlq_brake_released}))
    return app


def dry_run_app(sink: CioSink, operator_token: str) -> FastAPI:
    """`GET /dry-run`: what the sink would have sent (latest 100), to a Bearer of the operator token.

    It shows every brand's payloads, so it is served only when the sink runs dry, and only on
    127.0.0.1 (see `serve`), never beside /metrics on the ops port.
    """
    app = FastAPI(title="synergy cio-sink dry run", docs_url=None, redoc_url=None, openapi_url=None)
    install_problem_handlers(app, metrics.ANSWERS)
    expected = f"Bearer {operator_token}".encode()

    @app.get("/dry-run")
    async def dry_run(authorization: str = Header(default="")) -> dict[str, object]:
        if not operator_token or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(401, "the operator token (CIO_SINK_OPERATOR_TOKEN) is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return {"dry_run": sink.running_dry, "recorded": len(sink.dry_run_log),
                "latest": list(sink.dry_run_log)[-100:]}

    return app


class _OpsServer(uvicorn.Server):
    """The ops endpoints; the sink, not uvicorn, handles SIGINT/SIGTERM (it commits before exiting)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def ops_servers(sink: CioSink, settings: SinkSettings) -> list[uvicorn.Config]:
    """The ops port for everyone; /dry-run, when running dry with an operator token, on 127.0.0.1 only."""
    configs = [uvicorn.Config(ops_app(sink), host="0.0.0.0", port=settings.ops_port, log_level="warning",
                              access_log=False)]
    if sink.running_dry and settings.cio_sink_operator_token:
        configs.append(uvicorn.Config(dry_run_app(sink, settings.cio_sink_operator_token), host="127.0.0.1",
                                      port=settings.cio_sink_dry_run_port, log_level="warning",
                                      access_log=False))
        log.warning("dry run: /dry-run on 127.0.0.1 only, for the operator token",
                    port=settings.cio_sink_dry_run_port)
    elif sink.running_dry:
        log.warning("dry run: /dry-run is off (set CIO_SINK_OPERATOR_TOKEN to read it on 127.0.0.1)")
    return configs


async def serve(settings: SinkSettings) -> None:
    async with running_sink(settings) as sink:
        servers = [_OpsServer(config) for config in ops_servers(sink, settings)]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sink.stop)
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        log.info("cio-sink started", api=settings.cio_api, ops_port=settings.ops_port,
                 rate_limit=settings.cio_rate_limit, topics=sink.source_topics)
        try:
            await sink.run()
        finally:
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
