"""Publishes a request's records to the events topic and reports, per record, what Kafka did with it.

The producer is librdkafka's (confluent-kafka): each record costs one C call instead of aiokafka's
Python batching, and `message.timeout.ms` makes librdkafka settle every record, acknowledged or failed,
within the publish timeout. The answer waits for that, so a 503 never hides a write
(see publish_outcome). `partitioner=murmur2_random` puts a key where the Java client and aiokafka's
DefaultPartitioner put it, which the consumers' per-user order relies on.

Delivery reports are served on the event loop as soon as they arrive: librdkafka writes to a pipe
when its report queue goes from empty to not empty (report_wakeups), the loop reads it and calls
`poll(0)`, which runs every report there is, with the GIL the loop already holds. Where that pipe
cannot be attached, a thread of the publisher's own serves them, blocked in `poll()`, and completes a
request's future on the loop (call_soon_threadsafe): each report then needs the GIL on that thread, a
hand-off with the loop. Polling from the loop every 2 ms made every answer wait for the next poll
(p50 9 to 15 ms on a loaded machine against the bare handler's 3).

While every broker is down (librdkafka's _ALL_BROKERS_DOWN), requests are refused before anything is
handed to the producer, so those 503s are certainly not written; a probe marks Kafka up again.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from functools import partial
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from synergy_schemas import topics

from synergy_ingest.metrics import PUBLISH_LATENCY
from synergy_ingest.publish_outcome import OutgoingRecord, PublishOutcome, settle
from synergy_ingest.report_wakeups import ReportWakeups

_log = structlog.get_logger("synergy_ingest.publisher")

# The report thread's longest wait in poll(); a report ends the wait at once. It bounds how long
# stop() waits for the thread.
REPORT_WAIT_SECONDS = 0.1
SETTLE_GRACE_SECONDS = 2.0
# How often the loop looks for requests past their bound (one timer for all of them).
EXPIRY_SWEEP_SECONDS = 0.1
# The report thread (only where the pipe cannot be attached) needs the GIL for each delivery report;
# while the loop validates a batch it would wait out CPython's default switch interval (5 ms) per
# hand-off. At 0.5 ms the batch path did 24,000 to 27,000 events/s against 17,000 to 19,000.
GIL_SWITCH_INTERVAL_SECONDS = 0.0005
CLIENT_ID = "synergy-ingest"
QUEUE_FULL_RETRY_SECONDS = 0.05
# Records waiting for the iteration's hand-over that are produced at once instead: a batch goes to
# librdkafka as soon as it is validated, so Kafka writes it while the loop validates the next one
# (batch path, alternating: 30,300 to 31,600 events/s against 28,000 to 28,500 when every request
# waited for the end of the iteration). Single-event requests still go in one burst per iteration
# (handing each over at once, or every 4, cost more CPU and did not serve more).
HAND_OVER_AT_RECORDS = 64


class KafkaUnavailable(Exception):
    """Nothing was handed to the producer: Kafka is known to be unreachable."""


def producer_config(bootstrap_servers: str, timeout_seconds: float, linger_ms: int = 0) -> dict[str, Any]:
    """Idempotent, acks=all, lz4; every record settles within `timeout_seconds`."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": CLIENT_ID,
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
    """One request's records: handed to the producer by the next hand-over on the loop, then their
    delivery reports, filled on the report thread."""

    __slots__ = (
        "done",
        "errors",
        "expected",
        "failed",
        "handed",
        "loop",
        "on_loop",
        "reason",
        "records",
        "retried",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, records: Sequence[OutgoingRecord], on_loop: bool
    ) -> None:
        self.loop = loop
        self.on_loop = on_loop  # reports are served on the loop (else on the report thread)
        self.records = records
        self.handed = 0
        self.reason: str | None = None
        self.retried = False
        self.errors: dict[int, int | None] = {}
        self.failed = 0  # reports with an error
        self.expected = -1
        self.done: asyncio.Future[None] = loop.create_future()

    def report(self, index: int, error: KafkaError | None, _message: Message) -> None:
        # Runs where poll() runs: on the loop, or on the report thread (the future is the loop's).
        if self.done.done():
            return
        if error is None:
            self.errors[index] = None
        else:
            self.errors[index] = error.code()
            self.failed += 1
        if len(self.errors) == self.expected:
            if self.on_loop:
                self.done.set_result(None)
                return
            with suppress(RuntimeError):  # the loop is closed: nobody waits for the answer any more
                self.loop.call_soon_threadsafe(_finish, self.done)

    def all_handed_over(self) -> None:
        self.expected = self.handed
        if len(self.errors) == self.handed:
            _finish(self.done)

    def snapshot(self) -> dict[int, int | None]:
        if not self.done.done():
            self.done.cancel()  # reports arriving later no longer change the answer
        return dict(self.errors)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class EventPublisher:
    """Owns the producer and the thread that serves its delivery reports; tracks whether any broker
    is reachable."""

    def __init__(self, bootstrap_servers: str, timeout_seconds: float, linger_ms: int = 0) -> None:
        self._config = producer_config(bootstrap_servers, timeout_seconds, linger_ms)
        self._timeout = timeout_seconds
        self._producer: Producer | None = None
        self._reporter: threading.Thread | None = None
        self._wakeups: ReportWakeups | None = None
        # (deadline, a request's future) in publish order: every request has the same bound, so the
        # earliest deadline is always first
        self._deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._running = False
        self._brokers_up = False
        self._up: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prober: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._pending: list[_RequestDeliveries] = []
        self._hand_over_handle: asyncio.Handle | None = None
        self._pending_records = 0
        self._retry_scheduled = False
        self.topic = topics.EVENTS.name

    @property
    def ready(self) -> bool:
        return self._producer is not None and self._brokers_up

    @property
    def reports_on_loop(self) -> bool:
        """Whether the loop serves delivery reports itself (else the report thread does)."""
        return self._wakeups is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._up = asyncio.Event()
        self._producer = Producer({**self._config, "error_cb": self._on_client_error})
        self._running = True
        self._attach_wakeups(self._producer)
        if self._wakeups is None:
            self._start_report_thread()
        self._sweeper = self._loop.call_later(EXPIRY_SWEEP_SECONDS, self._expire_overdue)
        self._probe_until_up()

    def _start_report_thread(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_SECONDS))
        self._reporter = threading.Thread(
            target=self._serve_reports, name="ingest-delivery-reports", daemon=True
        )
        self._reporter.start()

    def _attach_wakeups(self, producer: Producer) -> None:
        wakeups = ReportWakeups.attach(producer, CLIENT_ID)
        if wakeups is None:
            _log.info("delivery_reports_on_a_thread")
            return
        self._wakeups = wakeups
        assert self._loop is not None
        self._loop.add_reader(wakeups.fd, self._serve_reports_now)

    def _detach_wakeups(self) -> None:
        wakeups, self._wakeups = self._wakeups, None
        if wakeups is not None and self._loop is not None:
            self._loop.remove_reader(wakeups.fd)
            wakeups.close()

    def _serve_reports_now(self) -> None:
        """On the loop, when librdkafka signalled reports: every report there is, in one poll."""
        if self._wakeups is not None:
            self._wakeups.drain()
        producer = self._producer
        if producer is None:
            return
        try:
            producer.poll(0)
        except Exception as exc:  # the others' reports must still be served
            self._poll_failed(exc)

    def _serve_reports(self) -> None:
        """The report thread: delivery reports and client errors, served as soon as they arrive."""
        while self._running:
            producer = self._producer
            if producer is None:
                return
            try:
                producer.poll(REPORT_WAIT_SECONDS)
            except Exception as exc:  # the thread must go on serving everyone's reports
                self._poll_failed(exc)

    def _poll_failed(self, exc: Exception) -> None:
        """confluent-kafka raises a fatal error from poll() (once) instead of passing it to error_cb;
        anything else is a callback that raised."""
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if isinstance(error, KafkaError) and error.fatal():
            _log.warning("producer_fatal_error", error=str(error))
            self._on_client_error(error)
        else:
            _log.exception("delivery_report_failed")

    def _expire_overdue(self) -> None:
        """Answers the requests past their bound with what has been reported (later reports are
        ignored); drops the settled ones from the front of the line."""
        if self._wakeups is not None:
            self._serve_reports_now()  # a safety net: a report never waits more than a sweep
        deadlines = self._deadlines
        now = time.monotonic()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _finish(deadlines.popleft()[1])
        if self._running and self._loop is not None:
            self._sweeper = self._loop.call_later(EXPIRY_SWEEP_SECONDS, self._expire_overdue)

    def _on_client_error(self, error: KafkaError) -> None:
        # Served by poll(), on the loop or on the report thread.
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
        on_loop = self._wakeups is not None
        self._detach_wakeups()  # the old producer's reports are served by _drain
        self._producer = Producer({**self._config, "error_cb": self._on_client_error})
        if on_loop:
            self._attach_wakeups(self._producer)
            if self._wakeups is None:  # the new one cannot be attached: its reports need the thread
                self._start_report_thread()
        self._mark_down()
        drain = asyncio.create_task(self._drain(old))
        self._retired.add(drain)
        drain.add_done_callback(self._retired.discard)

    async def _drain(self, producer: Producer) -> None:
        deadline = time.monotonic() + self._timeout + SETTLE_GRACE_SECONDS
        while len(producer) and time.monotonic() < deadline:
            with suppress(KafkaException):  # its fatal error, raised once more
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
        if self._hand_over_handle is not None:
            self._hand_over_handle.cancel()
            self._hand_over()
        producer = self._producer
        if producer is not None:
            deadline = time.monotonic() + self._timeout
            while len(producer) and time.monotonic() < deadline:
                producer.poll(0)
                await asyncio.sleep(0.01)
        self._running = False
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._reporter is not None:
            await asyncio.to_thread(self._reporter.join)
        self._detach_wakeups()
        self._producer = None

    async def publish(self, records: Sequence[OutgoingRecord]) -> PublishOutcome:
        """Hands every record to the producer and waits until each is settled (or the bound passed)."""
        if self._producer is None or not self._brokers_up:
            raise KafkaUnavailable("not connected to Kafka")
        loop = asyncio.get_running_loop()
        deliveries = _RequestDeliveries(loop, records, self._wakeups is not None)
        started = time.perf_counter()
        self._pending.append(deliveries)
        self._pending_records += len(records)
        if self._pending_records >= HAND_OVER_AT_RECORDS and not self._retry_scheduled:
            if self._hand_over_handle is not None:
                self._hand_over_handle.cancel()
            self._hand_over()
        elif self._hand_over_handle is None:
            self._hand_over_handle = loop.call_soon(self._hand_over)
        # Past the bound, _expire_overdue answers the request with what has been reported.
        self._deadlines.append((time.monotonic() + self._timeout + SETTLE_GRACE_SECONDS, deliveries.done))
        await deliveries.done
        handed = deliveries.handed
        if handed == 0:
            raise KafkaUnavailable(deliveries.reason or "nothing could be handed to the producer")
        errors = deliveries.snapshot()
        if deliveries.failed == 0 and len(errors) == len(records):  # the common case: all acknowledged
            outcome = PublishOutcome(written=list(range(len(records))), reason=deliveries.reason)
        else:
            for index in range(handed, len(records)):
                errors[index] = KafkaError._QUEUE_FULL
            outcome = settle(len(records), errors, deliveries.reason)
        if outcome.all_written:
            PUBLISH_LATENCY.observe(time.perf_counter() - started)
        elif outcome.reason is None:
            outcome.reason = "Kafka did not acknowledge every record in time"
        return outcome

    def _hand_over(self) -> None:
        """Produces the records of every request that reached publish() since the last hand-over.

        A produce() onto an empty queue wakes librdkafka's broker thread (~13 us here); the records
        of the requests one loop iteration served go in one burst, so one wake-up serves them all.
        publish() calls it at once when HAND_OVER_AT_RECORDS are waiting (unless a retry is due).
        """
        self._hand_over_handle = None
        self._retry_scheduled = False
        self._pending_records = 0
        pending, self._pending = self._pending, []
        producer = self._producer
        topic = self.topic
        for position, deliveries in enumerate(pending):
            if deliveries.done.done():
                continue  # answered (past the bound) or abandoned before anything was handed over
            if producer is None:
                deliveries.reason = "not connected to Kafka"
                deliveries.all_handed_over()
                continue
            produce = producer.produce
            report = deliveries.report
            records = deliveries.records
            for index in range(deliveries.handed, len(records)):
                record = records[index]
                try:
                    produce(
                        topic,
                        record.value,
                        record.key,
                        headers=record.headers,
                        on_delivery=partial(report, index),
                    )
                except BufferError:
                    if deliveries.retried:
                        deliveries.reason = "the producer's queue is full"
                        break
                    # The local queue is full: let delivery reports drain it, then try again, this
                    # request and the ones behind it, in order.
                    deliveries.retried = True
                    producer.poll(0)
                    self._pending[:0] = pending[position:]
                    self._pending_records += sum(len(d.records) - d.handed for d in pending[position:])
                    self._retry_scheduled = True
                    self._hand_over_handle = asyncio.get_running_loop().call_later(
                        QUEUE_FULL_RETRY_SECONDS, self._hand_over
                    )
                    return
                except KafkaException as exc:
                    deliveries.reason = str(exc)
                    break
                deliveries.handed += 1
            deliveries.all_handed_over()
