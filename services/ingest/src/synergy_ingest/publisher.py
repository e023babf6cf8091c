"""Publishes a request's records to the events topic and reports, per record, what Kafka did with it.

The producer is librdkafka's (confluent-kafka): each record costs one C call instead of aiokafka's
Python batching, and `message.timeout.ms` makes librdkafka settle every record, acknowledged or failed,
within the publish timeout. The answer waits for that, so a 503 never hides a write
(see publish_outcome). `partitioner=murmur2_random` puts a key where the Java client and aiokafka's
DefaultPartitioner put it, which the consumers' per-user order relies on.

While every broker is down (librdkafka's _ALL_BROKERS_DOWN), requests are refused before anything is
handed to the producer, so those 503s are certainly not written; a probe marks Kafka up again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from synergy_schemas import topics

from synergy_ingest.metrics import PUBLISH_LATENCY
from synergy_ingest.publish_outcome import OutgoingRecord, PublishOutcome, settle

# The loop polls librdkafka for delivery reports: every 2 ms while records are in flight (1 ms cost
# a third more CPU per single-event request, 5 ms added latency for nothing),
# every 100 ms (for client errors) otherwise. Polling on the loop, not a thread, keeps the GIL
# uncontended and the callbacks on the loop's own thread.
BUSY_POLL_SECONDS = 0.002
IDLE_POLL_SECONDS = 0.1
SETTLE_GRACE_SECONDS = 2.0


class KafkaUnavailable(Exception):
    """Nothing was handed to the producer: Kafka is known to be unreachable."""


def producer_config(bootstrap_servers: str, timeout_seconds: float, linger_ms: int = 5) -> dict[str, Any]:
    """Idempotent, acks=all, lz4; every record settles within `timeout_seconds`."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": "synergy-ingest",
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": linger_ms,
        "batch.size": 1024 * 1024,
        "message.timeout.ms": int(timeout_seconds * 1000),
        "request.timeout.ms": max(1000, min(10_000, int(timeout_seconds * 1000))),
        "retry.backoff.ms": 100,
        "partitioner": "murmur2_random",
        "socket.nagle.disable": True,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1024 * 1024,
    }


class _RequestDeliveries:
    """Delivery reports of one request's records, filled while the loop polls the producer."""

    __slots__ = ("done", "errors", "expected")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.errors: dict[int, int | None] = {}
        self.expected = -1
        self.done: asyncio.Future[None] = loop.create_future()

    def report(self, index: int, error: KafkaError | None, _message: Message) -> None:
        if self.done.done():
            return
        self.errors[index] = None if error is None else error.code()
        if len(self.errors) == self.expected:
            self.done.set_result(None)

    def all_handed_over(self, count: int) -> None:
        self.expected = count
        if len(self.errors) == count and not self.done.done():
            self.done.set_result(None)

    def snapshot(self) -> dict[int, int | None]:
        if not self.done.done():
            self.done.cancel()  # reports arriving later no longer change the answer
        return dict(self.errors)


class EventPublisher:
    """Owns the producer and the loop task that polls it; tracks whether any broker is reachable."""

    def __init__(self, bootstrap_servers: str, timeout_seconds: float, linger_ms: int = 5) -> None:
        self._config = producer_config(bootstrap_servers, timeout_seconds, linger_ms)
        self._timeout = timeout_seconds
        self._producer: Producer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._work = asyncio.Event()
        self._running = False
        self._brokers_up = False
        self._up: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prober: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self.topic = topics.EVENTS.name

    @property
    def ready(self) -> bool:
        return self._producer is not None and self._brokers_up

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._up = asyncio.Event()
        self._producer = Producer({**self._config, "error_cb": self._on_client_error})
        self._running = True
        self._poller = asyncio.create_task(self._poll())
        self._probe_until_up()

    async def _poll(self) -> None:
        while self._running and self._producer is not None:
            self._producer.poll(0)
            if self._in_flight:
                await asyncio.sleep(BUSY_POLL_SECONDS)
            else:
                self._work.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), IDLE_POLL_SECONDS)

    def _on_client_error(self, error: KafkaError) -> None:
        # Served by poll() on the loop's thread.
        if self._loop is None:
            return
        with suppress(RuntimeError):
            if error.fatal():
                self._loop.call_soon_threadsafe(self._replace_producer)
            elif error.code() == KafkaError._ALL_BROKERS_DOWN:
                self._loop.call_soon_threadsafe(self._mark_down)

    def _replace_producer(self) -> None:
        """A fatal error (the idempotent producer lost its sequence) leaves the producer unusable. Its
        records get failed delivery reports (answered as unknown); a new producer takes over."""
        old = self._producer
        if old is None or not self._running:
            return
        self._producer = Producer({**self._config, "error_cb": self._on_client_error})
        self._mark_down()
        drain = asyncio.create_task(self._drain(old))
        self._retired.add(drain)
        drain.add_done_callback(self._retired.discard)

    async def _drain(self, producer: Producer) -> None:
        deadline = time.monotonic() + self._timeout + SETTLE_GRACE_SECONDS
        while len(producer) and time.monotonic() < deadline:
            producer.poll(0)
            await asyncio.sleep(0.01)

    def _mark_down(self) -> None:
        self._brokers_up = False
        if self._up is not None:
            self._up.clear()
        self._probe_until_up()

    def _probe_until_up(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe())

    async def _probe(self) -> None:
        while self._running and not self._brokers_up:
            producer = self._producer
            if producer is None:
                return
            try:
                await asyncio.to_thread(producer.list_topics, None, 2.0)
            except KafkaException:
                await asyncio.sleep(0.5)
                continue
            self._brokers_up = True
            if self._up is not None:
                self._up.set()

    async def wait_started(self, timeout: float) -> bool:
        if self._up is None:
            return False
        with suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.ready

    async def stop(self) -> None:
        """Flush what is in flight, then close."""
        if self._prober is not None:
            self._prober.cancel()
        producer = self._producer
        if producer is not None:
            deadline = time.monotonic() + self._timeout
            while len(producer) and time.monotonic() < deadline:
                producer.poll(0)
                await asyncio.sleep(0.01)
        self._running = False
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
        self._producer = None

    async def publish(self, records: Sequence[OutgoingRecord]) -> PublishOutcome:
        """Hands every record to the producer and waits until each is settled (or the bound passed)."""
        producer = self._producer
        if producer is None or not self._brokers_up:
            raise KafkaUnavailable("not connected to Kafka")
        deliveries = _RequestDeliveries(asyncio.get_running_loop())
        started = time.perf_counter()
        reason = None
        handed = 0
        produce = producer.produce
        topic = self.topic
        report = deliveries.report
        for index, record in enumerate(records):
            callback = partial(report, index)
            try:
                try:
                    produce(topic, record.value, record.key, headers=record.headers, on_delivery=callback)
                except BufferError:
                    # The local queue is full: let delivery reports drain it, then try again.
                    producer.poll(0)
                    await asyncio.sleep(0.05)
                    produce(topic, record.value, record.key, headers=record.headers, on_delivery=callback)
            except BufferError:
                reason = "the producer's queue is full"
                break
            except KafkaException as exc:
                reason = str(exc)
                break
            handed += 1
        if handed == 0:
            raise KafkaUnavailable(reason or "nothing could be handed to the producer")
        deliveries.all_handed_over(handed)
        self._in_flight += 1
        self._work.set()
        try:
            await asyncio.wait((deliveries.done,), timeout=self._timeout + SETTLE_GRACE_SECONDS)
        finally:
            self._in_flight -= 1
        errors = deliveries.snapshot()
        for index in range(handed, len(records)):
            errors[index] = KafkaError._QUEUE_FULL
        outcome = settle(len(records), errors, reason)
        if outcome.all_written:
            PUBLISH_LATENCY.observe(time.perf_counter() - started)
        elif outcome.reason is None:
            outcome.reason = "Kafka did not acknowledge every record in time"
        return outcome
