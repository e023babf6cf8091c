"""Keep one of marketing's consumers running: a processor with its own dead-letter producer, rebuilt
and restarted from the committed offsets whenever Kafka goes away under it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from synergy_common.kafka import durable_producer
from synergy_streaming import StreamProcessor

log = structlog.get_logger()

RESTART_DELAY = 2.0  # seconds


async def run_restarting(name: str, bootstrap_servers: str, dlq_client_id: str,
                         build: Callable[[Any], StreamProcessor]) -> None:
    """Runs until cancelled. `build` makes the processor around the dead-letter producer it is given."""
    while True:
        producer = durable_producer(bootstrap_servers, client_id=dlq_client_id)
        processor = build(producer)
        try:
            await producer.start()
            await processor.consumer.start()
            try:
                await processor.run()
            finally:
                await processor.consumer.stop()
        except asyncio.CancelledError:
            processor.stop()
            raise
        except Exception as exc:
            log.error(f"{name} stopped; restarting", error=repr(exc))
            await asyncio.sleep(RESTART_DELAY)
        finally:
            await producer.stop()
