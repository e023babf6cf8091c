"""ReportWakeups: librdkafka signals a pipe when a delivery report is waiting, so the event loop can
serve reports itself. No broker is needed: a record that cannot be delivered gets a failed report
once its message timeout passes, and that report must make the pipe readable."""

from __future__ import annotations

import select
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Message, Producer
from synergy_ingest.report_wakeups import ReportWakeups

UNREACHABLE = "127.0.0.1:1"


@pytest.fixture
def producer() -> Iterator[Producer]:
    producer = Producer(
        {
            "bootstrap.servers": UNREACHABLE,
            "client.id": "wakeup-test",
            "message.timeout.ms": 200,
            "log_level": 0,
        }
    )
    yield producer
    producer.purge()
    producer.flush(0)


def readable(fd: int, seconds: float) -> bool:
    return bool(select.select([fd], [], [], seconds)[0])


def test_a_delivery_report_makes_the_pipe_readable_and_poll_serves_it(producer: Producer) -> None:
    wakeups = ReportWakeups.attach(producer, "wakeup-test")
    assert wakeups is not None
    reports: list[int] = []

    def report(error: KafkaError | None, _message: Message) -> None:
        reports.append(error.code() if error is not None else 0)

    try:
        assert readable(wakeups.fd, 0), "the pipe starts readable: events queued before attach"
        wakeups.drain()
        assert not readable(wakeups.fd, 0)  # until a poll, librdkafka writes nothing more
        producer.poll(0)
        producer.produce("t", b"never delivered", b"k", on_delivery=report)
        for _ in range(50):  # connection errors signal too; the report comes after the timeout
            assert readable(wakeups.fd, 10), "no signal although an event was waiting"
            wakeups.drain()
            producer.poll(0)
            if reports:
                break
        assert reports == [KafkaError._MSG_TIMED_OUT]

        # served: the next report signals again
        producer.produce("t", b"never delivered either", b"k", on_delivery=report)
        for _ in range(50):
            assert readable(wakeups.fd, 10), "no signal although an event was waiting"
            wakeups.drain()
            producer.poll(0)
            if len(reports) == 2:
                break
        assert reports == [KafkaError._MSG_TIMED_OUT, KafkaError._MSG_TIMED_OUT]
    finally:
        wakeups.close()
    wakeups.close()  # a second close does nothing


def test_a_producer_under_another_name_is_not_attached(producer: Producer) -> None:
    assert ReportWakeups.attach(producer, "someone-else") is None


def test_after_close_the_producer_still_serves_its_reports_through_poll(producer: Producer) -> None:
    wakeups = ReportWakeups.attach(producer, "wakeup-test")
    assert wakeups is not None
    wakeups.close()
    reports: list[KafkaError | None] = []
    producer.produce("t", b"x", b"k", on_delivery=lambda error, _m: reports.append(error))
    for _ in range(50):  # the report is still there for poll(), only the signal is gone
        producer.poll(0.2)
        if reports:
            break
    assert len(reports) == 1
    assert reports[0] is not None and reports[0].code() == KafkaError._MSG_TIMED_OUT
