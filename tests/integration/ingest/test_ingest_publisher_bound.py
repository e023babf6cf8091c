"""EventPublisher answers every request within its bound, even when librdkafka has not reported yet:
what it has not heard back about is `unknown`, and a report that comes later does not change the
answer. Against real Kafka, frozen with SIGSTOP (connections stay open, nothing is acknowledged)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from synergy_ingest.publish_outcome import OutgoingRecord

from tests.conftest import consume
from tests.support import frozen_process

from .test_ingest_publisher_bursts import running_publisher

pytestmark = pytest.mark.integration


async def test_a_request_past_its_bound_is_answered_unknown_and_its_late_record_still_lands(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], kafka_control: Any
) -> None:
    topic = await topic_factory(partitions=1)
    async with running_publisher(kafka_bootstrap, topic) as publisher:
        warm = await publisher.publish([OutgoingRecord(b"7:u", b"warm", [])])
        assert warm.written == [0]
        # librdkafka may take the whole message timeout (10 s); the answer's bound is 1 s here
        publisher._timeout = 1.0
        pid = kafka_control.local.kafka_pid()
        assert pid is not None
        with frozen_process(pid):
            started = time.monotonic()
            outcome = await publisher.publish([OutgoingRecord(b"7:u", b"late", [])])
            waited = time.monotonic() - started

    assert outcome.written == [] and outcome.refused == []
    assert outcome.unknown == [0]
    assert 3.0 <= waited < 6.0  # the bound (1 s) and its 2 s grace, not librdkafka's 10 s
    records = await consume(kafka_bootstrap, topic, 2)
    assert [record.value for record in records] == [b"warm", b"late"]  # why it had to be "unknown"
