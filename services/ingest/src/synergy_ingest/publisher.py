"""Publishes envelopes to the events topic and reports success only once Kafka acknowledged them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from synergy_common.kafka import OutgoingMessage, PublishError, durable_producer, publish_all
from synergy_schemas import topics
from synergy_schemas.envelope import Envelope

from synergy_ingest.metrics import PUBLISH_LATENCY


class KafkaUnavailable(Exception):
    """Nothing can be accepted: the broker is unreachable or did not acknowledge in time."""


class EventPublisher:
    """Owns the producer. Starts it in the background, so the service comes up while Kafka is down."""

    def __init__(self, bootstrap_servers: str, timeout_seconds: float, linger_ms: int = 5) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._timeout = timeout_seconds
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._starter: asyncio.Task[None] | None = None
        self.topic = topics.EVENTS.name

    @property
    def ready(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        self._starter = asyncio.create_task(self._start_until_connected())

    async def _start_until_connected(self) -> None:
        delay = 0.5
        while self._producer is None:
            producer = durable_producer(self._bootstrap_servers, linger_ms=self._linger_ms)
            try:
                await producer.start()
            except (KafkaError, OSError):
                with suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer

    async def wait_started(self, timeout: float) -> bool:
        if self._starter is None:
            return False
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._starter), timeout)
        return self.ready

    async def stop(self) -> None:
        """Flush what is in flight, then close."""
        if self._starter is not None and not self._starter.done():
            self._starter.cancel()
        if self._producer is not None:
            with suppress(KafkaError, OSError):
                await asyncio.wait_for(self._producer.flush(), self._timeout)
            await self._producer.stop()
            self._producer = None

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        if self._producer is None:
            raise KafkaUnavailable("not connected to Kafka")
        messages = [
            OutgoingMessage(self.topic, envelope.key, envelope.to_json_bytes(), envelope.kafka_headers())
            for envelope in envelopes
        ]
        started = time.perf_counter()
        try:
            await publish_all(self._producer, messages, timeout=self._timeout)
        except PublishError as exc:
            raise KafkaUnavailable(str(exc)) from exc
        PUBLISH_LATENCY.observe(time.perf_counter() - started)
