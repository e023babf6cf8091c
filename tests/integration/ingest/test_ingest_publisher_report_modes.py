"""EventPublisher serves delivery reports on the event loop, woken by librdkafka through a pipe, and
falls back to a report thread where the pipe cannot be attached. Against real Kafka, both ways:
every request is answered with its own records written, and every record lands once."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from confluent_kafka import KafkaError
from synergy_ingest import publisher as publisher_module
from synergy_ingest import report_wakeups
from synergy_ingest.publish_outcome import OutgoingRecord
from synergy_ingest.report_wakeups import ReportWakeups

from tests.conftest import consume

from .test_ingest_publisher_bursts import request_records, running_publisher

pytestmark = pytest.mark.integration

SIZES = [1, 100, 3, 1, 64, 2, 1, 250]  # below and above the size that is handed over at once


async def publish_and_count(
    publisher: publisher_module.EventPublisher,
    kafka: str,
    topic: str,
    earlier: frozenset[bytes] = frozenset(),
) -> None:
    """Concurrent requests of SIZES; then every record on the topic, `earlier` ones included, once."""
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(publisher.publish(request_records(request, size)) for request, size in enumerate(SIZES))
        ),
        30,
    )
    for size, outcome in zip(SIZES, outcomes, strict=True):
        assert outcome.written == list(range(size))
        assert outcome.refused == [] and outcome.unknown == []
    records = await consume(kafka, topic, sum(SIZES) + len(earlier))
    landed = Counter(record.value for record in records)
    assert set(landed) == earlier | {
        f"r{request}-e{index}".encode() for request, size in enumerate(SIZES) for index in range(size)
    }
    assert set(landed.values()) == {1}


async def test_reports_served_on_the_loop_answer_every_request_without_the_sweep(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No sweep in the test's lifetime: only the pipe can wake the loop for the reports (a request
    # nobody woke for would be answered `unknown` at its bound).
    monkeypatch.setattr(publisher_module, "EXPIRY_SWEEP_SECONDS", 3600.0)
    topic = await topic_factory(partitions=6)
    threads_before = {thread.name for thread in threading.enumerate()}
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        assert publisher.reports_on_loop
        assert "ingest-delivery-reports" not in {t.name for t in threading.enumerate()} - threads_before
        alone = [f"alone-{i}".encode() for i in range(3)]
        for value in alone:  # one after the other: each answer needs its own wake-up
            outcome = await asyncio.wait_for(publisher.publish([OutgoingRecord(b"7:u", value, [])]), 5)
            assert outcome.written == [0]
        await publish_and_count(publisher, kafka_bootstrap, topic, frozenset(alone))


async def test_without_the_pipe_a_report_thread_serves_the_reports(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ReportWakeups, "attach", classmethod(lambda cls, producer, client_id: None))
    topic = await topic_factory(partitions=6)
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        assert not publisher.reports_on_loop
        assert "ingest-delivery-reports" in {thread.name for thread in threading.enumerate()}
        await publish_and_count(publisher, kafka_bootstrap, topic)


async def test_a_large_request_reaches_librdkafka_before_the_loop_turns(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=3)
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        producer = publisher._producer
        assert producer is not None
        small = asyncio.create_task(publisher.publish(request_records(0, 1)))
        await asyncio.sleep(0)  # the small request reached publish(): it waits for the iteration's hand-over
        assert len(producer) == 0
        large = asyncio.create_task(publisher.publish(request_records(1, 100)))
        await asyncio.sleep(0)  # the large one was produced at once, the small one with it
        assert len(producer) >= 100
        assert (await small).written == [0]
        assert (await large).written == list(range(100))


@pytest.mark.parametrize("new_one_attaches", [True, False], ids=["pipe", "thread"])
async def test_after_a_fatal_error_the_new_producer_still_gets_its_reports_served(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
    new_one_attaches: bool,
) -> None:
    topic = await topic_factory(partitions=3)
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        old = publisher._producer
        assert old is not None and publisher.reports_on_loop
        if not new_one_attaches:
            monkeypatch.setattr(ReportWakeups, "attach", classmethod(lambda cls, producer, client_id: None))
        lib = report_wakeups._load_librdkafka()
        assert lib is not None
        handle = report_wakeups._producer_handle(lib, old, publisher_module.CLIENT_ID)
        lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        # what librdkafka raises when the idempotent producer has lost its sequence
        assert lib.rd_kafka_test_fatal_error(handle, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, b"test") == 0
        for _ in range(200):  # the error callback runs on the next poll, the replacement on the loop
            if publisher._producer is not old:
                break
            await asyncio.sleep(0.05)
        assert publisher._producer is not old
        assert await publisher.wait_started(20)
        assert publisher.reports_on_loop is new_one_attaches
        await publish_and_count(publisher, kafka_bootstrap, topic)
