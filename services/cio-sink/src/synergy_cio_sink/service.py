"""Wiring: settings -> consumer, producer, Postgres, transport -> CioSink, plus the ops server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Iterator

import structlog
import uvicorn
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from synergy_common.db import create_pool
from synergy_common.http import ops_router
from synergy_common.kafka import durable_producer

from synergy_cio_sink.brands import BrandDirectory
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.dlq import DeadLetterWriter
from synergy_cio_sink.sink import CioSink
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
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        client_id="synergy-cio-sink",
    )
    transport = CustomerIoTransport(settings.cio_request_timeout)
    directory = BrandDirectory(pool, settings)
    try:
        await producer.start()
        await consumer.start()
        sink = CioSink(settings, consumer, directory, DeadLetterWriter(producer, pool), transport)
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
        # A fresh metadata round trip (public API), not the client's cached view of the cluster.
        await asyncio.wait_for(sink.consumer.topics(), READINESS_TIMEOUT_SECONDS)
        return True

    async def postgres_ready() -> bool:
        return await asyncio.wait_for(sink.directory.ping(), READINESS_TIMEOUT_SECONDS)

    app = FastAPI(title="synergy cio-sink", docs_url=None, redoc_url=None)
    app.include_router(ops_router({"kafka": kafka_ready, "postgres": postgres_ready}))

    @app.get("/dry-run")
    async def dry_run() -> dict[str, object]:
        """What the sink would have sent, when it runs dry (latest 100)."""
        return {"dry_run": sink.running_dry, "recorded": len(sink.dry_run_log),
                "latest": list(sink.dry_run_log)[-100:]}

    return app


class _OpsServer(uvicorn.Server):
    """The ops endpoints; the sink, not uvicorn, handles SIGINT/SIGTERM (it commits before exiting)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: SinkSettings) -> None:
    async with running_sink(settings) as sink:
        server = _OpsServer(uvicorn.Config(ops_app(sink), host="0.0.0.0", port=settings.ops_port,
                                           log_level="warning", access_log=False))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sink.stop)
        ops = asyncio.create_task(server.serve())
        log.info("cio-sink started", api=settings.cio_api, ops_port=settings.ops_port,
                 rate_limit=settings.cio_rate_limit, topics=sink.source_topics)
        try:
            await sink.run()
        finally:
            server.should_exit = True
            await ops
