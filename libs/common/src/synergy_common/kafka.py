"""Kafka plumbing shared by the services: producer settings and batched, acknowledged sends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from synergy_schemas.envelope import Envelope


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: str
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


def durable_producer(bootstrap_servers: str, **overrides: object) -> AIOKafkaProducer:
    """An idempotent producer that only reports success once every in-sync replica has the write."""
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers,
        "enable_idempotence": True,
        "acks": "all",
        "compression_type": "lz4",
        "linger_ms": 5,
        "max_batch_size": 1024 * 1024,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
        "client_id": "synergy",
    }
    settings.update(overrides)
    return AIOKafkaProducer(**settings)


class PublishError(Exception):
    """Kafka did not acknowledge every message of a publish."""


async def publish_all(
    producer: AIOKafkaProducer, messages: Iterable[OutgoingMessage], timeout: float = 10.0
) -> None:
    """Send all messages in one go and wait until the broker has acknowledged every one, `timeout` at most.

    The sends are enqueued together so the producer batches them; no per-message round trip. The timeout
    covers the enqueueing too: while a partition has no leader (a broker just died), `send` itself waits
    for metadata, for up to the producer's request timeout.
    """
    futures = []
    try:
        async with asyncio.timeout(timeout):
            for message in messages:
                futures.append(
                    await producer.send(
                        message.topic,
                        value=message.value,
                        key=message.key.encode(),
                        headers=list(message.headers),
                    )
                )
            await asyncio.gather(*futures)
    except (KafkaError, TimeoutError) as exc:
        for future in futures:
            if not future.done():
                future.cancel()
        raise PublishError(f"Kafka did not acknowledge the write: {exc!r}") from exc


class EnvelopePublisher:
    """Publishes envelopes to one topic. Starts its producer lazily, so a service comes up (and answers
    503, or keeps what it received) while Kafka is away."""

    def __init__(self, bootstrap_servers: str, topic: str, client_id: str, timeout: float = 10.0) -> None:
        self._bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._client_id = client_id
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = durable_producer(self._bootstrap_servers, client_id=self._client_id)
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
            OutgoingMessage(self.topic, envelope.key, envelope.to_json_bytes(), envelope.kafka_headers())
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
