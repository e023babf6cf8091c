"""Kafka I/O: publishes marketing envelopes (triggers, preference changes) to synergy.marketing.v1."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from synergy_common.kafka import OutgoingMessage, PublishError, durable_producer, publish_all
from synergy_schemas.envelope import Envelope
from synergy_schemas.topics import MARKETING


class MarketingPublisher:
    """Starts its producer lazily, so the service comes up (and answers 503) while Kafka is away."""

    def __init__(self, bootstrap_servers: str, topic: str | None = None, timeout: float = 10.0) -> None:
        self._bootstrap_servers = bootstrap_servers
        self.topic = topic or MARKETING.name
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = durable_producer(self._bootstrap_servers, client_id="synergy-marketing")
                try:
                    async with asyncio.timeout(self._timeout):
                        await producer.start()
                except Exception as exc:
                    await producer.stop()
                    raise PublishError(f"Kafka is unreachable: {exc!r}") from exc
                self._producer = producer
            return self._producer

    async def publish_many(self, envelopes: Sequence[Envelope]) -> None:
        """Every envelope acknowledged by all in-sync replicas, or PublishError."""
        if not envelopes:
            return
        producer = await self._started()
        messages = [
            OutgoingMessage(
                topic=self.topic,
                key=envelope.key,
                value=envelope.to_json_bytes(),
                headers=envelope.kafka_headers(),
            )
            for envelope in envelopes
        ]
        await publish_all(producer, messages, timeout=self._timeout)

    async def publish(self, envelope: Envelope) -> None:
        await self.publish_many([envelope])

    async def ready(self) -> bool:
        producer = await self._started()
        async with asyncio.timeout(2):
            partitions = await producer.partitions_for(self.topic)
        return bool(partitions)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
