"""The consumer runtime against real Kafka (and Postgres for dead letters), counted by message id."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from synergy_common.db import create_pool
from synergy_common.kafka import durable_producer
from synergy_streaming import (
    DELIVERED,
    BatchOutcome,
    DeadLetterWriter,
    Failed,
    KafkaConsumer,
    PolledChunk,
    Reject,
    Run,
    Source,
    StreamConfig,
    StreamProcessor,
    Work,
)


def envelope(i: int, user: str, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": f"ev-{i:04d}", "brand_id": "1", "user": user, "i": i, **extra})


async def publish(producer: AIOKafkaProducer, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
    futures = [await producer.send(topic, value, key=key.encode()) for key, value in messages]
    await asyncio.gather(*futures)


def prepare(source: Source) -> list[Work] | Reject:
    payload = source.payload
    if payload.get("bad"):
        return Reject("bad_input", f"message {payload['event_id']} is marked bad")
    return [Work(key=payload["user"], target="dest", payload=payload)]


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def running(processor: StreamProcessor) -> AsyncIterator[asyncio.Task[None]]:
    await processor.consumer.start()
    task = asyncio.create_task(processor.run())
    try:
        yield task
    finally:
        processor.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await processor.consumer.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def config(topic: str, **overrides: Any) -> StreamConfig:
    settings: dict[str, Any] = {"commit_interval": 0.2, "max_batch_wait": 0.01, "revoke_grace": 1.0}
    settings.update(overrides)
    return StreamConfig(service="runtime-test", topics=[topic], **settings)


async def test_only_the_done_prefix_is_committed_and_a_restart_resumes_from_it(
    kafka_bootstrap: str, kafka_producer: AIOKafkaProducer, topic_factory: Callable[..., Awaitable[str]],
) -> None:
    topic = await topic_factory(1, prefix="rt.prefix")
    group = f"rt-prefix-{uuid.uuid4().hex[:8]}"
    await publish(kafka_producer, topic, [(f"user-{i}", envelope(i, f"user-{i}")) for i in range(20)])
    first_run: list[str] = []
    never = asyncio.Event()

    async def deliver_all_but_ev5(target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        if any(work.payload["event_id"] == "ev-0005" for work in items):
            await never.wait()  # in flight until the process goes away
        first_run.extend(work.payload["event_id"] for work in items)
        return DELIVERED

    processor = StreamProcessor(config(topic, max_batch_items=1, revoke_grace=0.5),
                                KafkaConsumer(kafka_bootstrap, group, "rt-prefix"), prepare, deliver_all_but_ev5)
    async with running(processor):
        await wait_until(lambda: len(first_run) == 19, 20, "19 deliveries")
        await asyncio.sleep(0.6)  # a few commit rounds
    assert sorted(first_run) == [f"ev-{i:04d}" for i in range(20) if i != 5]
    assert await committed(kafka_bootstrap, group, topic, 1) == {0: 5}  # ev-0005 (offset 5) holds it back

    second_run: list[str] = []

    async def deliver(target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        second_run.extend(work.payload["event_id"] for work in items)
        return DELIVERED

    processor = StreamProcessor(config(topic), KafkaConsumer(kafka_bootstrap, group, "rt-prefix"), prepare, deliver)
    async with running(processor):
        await wait_until(lambda: len(second_run) >= 15, 20, "the rest re-read")
        await asyncio.sleep(0.6)
    assert sorted(second_run) == [f"ev-{i:04d}" for i in range(5, 20)]  # from the committed offset on
    assert await committed(kafka_bootstrap, group, topic, 1) == {0: 20}


async def test_a_rebalance_shares_the_work_and_loses_no_message(
    kafka_bootstrap: str, kafka_producer: AIOKafkaProducer, topic_factory: Callable[..., Awaitable[str]],
) -> None:
    """A second member joins while the first has deliveries in flight: the partitions are split, every
    message is delivered, only what was uncommitted at the rebalance comes again, and order holds."""
    topic = await topic_factory(4, prefix="rt.rebalance")
    group = f"rt-rebalance-{uuid.uuid4().hex[:8]}"
    total = 2000
    users = [f"user-{u}" for u in range(40)]
    messages = [(users[i % 40], envelope(i, users[i % 40])) for i in range(total)]
    delivered: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}

    def deliverer(name: str) -> Callable[[Hashable, Sequence[Work]], Awaitable[BatchOutcome]]:
        async def deliver(target: Hashable, items: Sequence[Work]) -> BatchOutcome:
            await asyncio.sleep(0.05)  # about 400 messages/s per member: still busy when the group rebalances
            delivered[name].extend((work.payload["user"], work.payload["i"]) for work in items)
            return DELIVERED
        return deliver

    def member(name: str) -> StreamProcessor:
        return StreamProcessor(config(topic, max_batch_items=10, max_in_flight=2, max_run_per_key=1),
                               KafkaConsumer(kafka_bootstrap, group, f"rt-{name}"), prepare, deliverer(name))

    a, b = member("a"), member("b")
    async with running(a):
        await publish(kafka_producer, topic, messages[:1200])
        await wait_until(lambda: len(delivered["a"]) >= 100, 30, "a's first deliveries")
        async with running(b):
            # each member learns its share from its own SyncGroup answer: b's may come before a's
            await wait_until(lambda: bool(b.assigned) and bool(a.assigned) and not a.assigned & b.assigned,
                             30, "the partitions shared between a and b")
            in_flight_at_rebalance = 1200 - len(delivered["a"])
            assert in_flight_at_rebalance > 0
            assert a.assigned and not a.assigned & b.assigned and len(a.assigned | b.assigned) == 4
            await publish(kafka_producer, topic, messages[1200:])
            await wait_until(lambda: {i for _, i in delivered["a"] + delivered["b"]} >= set(range(total)), 60,
                             "every message delivered")
            await asyncio.sleep(0.6)  # commits
    counts: dict[int, int] = {}
    for _, i in delivered["a"] + delivered["b"]:
        counts[i] = counts.get(i, 0) + 1
    assert set(counts) == set(range(total))  # nothing lost
    assert len(delivered["b"]) >= 400, "the second member took a share of the work"
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 1200 - 100  # at-least-once: at most what a had not settled at the rebalance
    for name in ("a", "b"):  # within each member, a user's messages went in order
        for user in users:
            seen = [i for u, i in delivered[name] if u == user]
            assert seen == sorted(seen), (name, user, seen)
    assert await committed(kafka_bootstrap, group, topic, 4) == await end_offsets(kafka_bootstrap, topic, 4)


def span_of_events(chunk: PolledChunk) -> list[Run]:
    """A poll chunk as one span in offset order, its items (user, i) of each record."""
    wanted = range(len(chunk.records)) if chunk.indices is None else chunk.indices
    items = [(payload["user"], payload["i"]) for payload in map(chunk.payloads.__getitem__, wanted)]
    return [chunk.span("dest", items)]


async def test_spans_deliver_every_message_in_each_keys_order_across_a_restart(
    kafka_bootstrap: str, kafka_producer: AIOKafkaProducer, topic_factory: Callable[..., Awaitable[str]],
) -> None:
    """Chunks answered as spans (in slices of 50) on 3 partitions; the first member stops after a
    third of the messages with slices in flight, the second reads from the committed prefix: every
    message comes, only what was past that prefix comes twice, and each user's messages in order."""
    topic = await topic_factory(3, prefix="rt.spans")
    group = f"rt-spans-{uuid.uuid4().hex[:8]}"
    total = 3000
    users = [f"user-{u}" for u in range(30)]
    await publish(kafka_producer, topic, [(users[i % 30], envelope(i, users[i % 30])) for i in range(total)])
    runs: list[list[tuple[str, int]]] = []
    kinds: set[str] = set()

    async def deliver(target: Hashable, items: Sequence[Run]) -> BatchOutcome:
        await asyncio.sleep(0.01)
        kinds.update(type(run).__name__ for run in items)
        runs.append([item for run in items for item in run.items or []])
        return DELIVERED

    def member() -> StreamProcessor:
        return StreamProcessor(config(topic, max_batch_items=50), KafkaConsumer(kafka_bootstrap, group, "rt-spans"),
                               prepare, deliver, prepare_runs=span_of_events)

    async with running(member()):
        await wait_until(lambda: sum(map(len, runs)) >= total // 3, 30, "a third delivered")
    first_member = sum(map(len, runs))
    async with running(member()):
        await wait_until(lambda: {i for run in runs for _, i in run} >= set(range(total)), 60, "every message")
        await asyncio.sleep(0.6)  # commits
    counts: dict[int, int] = {}
    for run in runs:
        for _, i in run:
            counts[i] = counts.get(i, 0) + 1
    assert set(counts) == set(range(total))  # nothing lost
    assert "Span" in kinds  # the lane took spans
    assert max(map(len, runs)) == 50  # in slices of max_batch_items
    assert sum(n - 1 for n in counts.values()) <= first_member  # again: only what the first had not committed
    for run in runs:  # one delivery: its users' messages in offset order
        for user in users:
            seen = [i for u, i in run if u == user]
            assert seen == sorted(seen), (user, seen)
    for user in users:  # and across deliveries, past the duplicates of the restart
        seen = [i for run in runs for u, i in run if u == user]
        first_seen = list(dict.fromkeys(seen))
        assert first_seen == sorted(first_seen), (user, first_seen)
    assert await committed(kafka_bootstrap, group, topic, 3) == await end_offsets(kafka_bootstrap, topic, 3)


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


@pytest.fixture
async def dlq_topic(topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch) -> str:
    topic = await topic_factory(1, prefix="rt.dlq")
    monkeypatch.setenv("SYNERGY_TOPIC_DLQ", topic)
    return topic


DLQ_HEADERS = {"dlq_reason", "dlq_detail", "dlq_service", "dlq_destination", "dlq_source_topic",
               "dlq_source_partition", "dlq_source_offset", "dlq_attempts", "dlq_first_attempt_at"}


async def test_dead_letters_land_in_postgres_and_on_the_dlq_topic_in_the_one_format(
    kafka_bootstrap: str, kafka_producer: AIOKafkaProducer, topic_factory: Callable[..., Awaitable[str]],
    database_factory: Callable[..., Awaitable[str]], dlq_topic: str, consume_all: Any,
) -> None:
    topic = await topic_factory(1, prefix="rt.letters")
    group = f"rt-letters-{uuid.uuid4().hex[:8]}"
    database_url = await database_factory("rtdlq", migrate=True)
    messages = [(f"user-{i % 3}", envelope(i, f"user-{i % 3}", bad=i == 3, refused=i == 7)) for i in range(10)]
    messages.insert(5, ("user-x", b"not json at all"))
    await publish(kafka_producer, topic, messages)
    delivered: list[str] = []

    async def deliver(target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        outcomes = []
        for work in items:
            if work.payload.get("refused"):
                outcomes.append(Failed("refused_by_target", "the target said no"))
            else:
                delivered.append(work.payload["event_id"])
                outcomes.append(DELIVERED)
        return outcomes

    pool = await create_pool(database_url)
    producer = durable_producer(kafka_bootstrap)
    await producer.start()
    try:
        processor = StreamProcessor(config(topic), KafkaConsumer(kafka_bootstrap, group, "rt-letters"), prepare,
                                    deliver, dead_letters=DeadLetterWriter(producer, pool),
                                    destination_of=lambda target: f"test/{target}")
        async with running(processor):
            letters = await consume_all(dlq_topic, 3, timeout=30)
            await wait_until(lambda: len(delivered) == 8, 20, "the good messages")
            await asyncio.sleep(0.6)
        rows = await pool.fetch("SELECT * FROM dlq_messages ORDER BY source_offset")
    finally:
        await producer.stop()
        await pool.close()

    assert sorted(delivered) == [f"ev-{i:04d}" for i in range(10) if i not in (3, 7)]
    by_offset = {int(r.header("dlq_source_offset") or -1): r for r in letters}
    assert set(by_offset) == {3, 5, 8}  # ev-0003 (bad), the non-JSON at offset 5, ev-0007 (offset 8)
    for record in letters:
        assert DLQ_HEADERS <= set(record.headers)
        assert record.header("dlq_service") == "runtime-test"
        assert record.header("dlq_source_topic") == topic and record.header("dlq_source_partition") == "0"
    assert [by_offset[o].header("dlq_reason") for o in (3, 5, 8)] == ["bad_input", "malformed_message",
                                                                        "refused_by_target"]
    refused = by_offset[8]
    assert (refused.header("dlq_destination"), refused.header("dlq_attempts")) == ("test/dest", "1")
    assert datetime.fromisoformat(refused.header("dlq_first_attempt_at") or "").tzinfo is not None
    assert by_offset[5].value == b"not json at all"
    assert [(r["service"], r["reason"], r["source_offset"], r["destination"], r["attempts"]) for r in rows] == [
        ("runtime-test", "bad_input", 3, "", 0), ("runtime-test", "malformed_message", 5, "", 0),
        ("runtime-test", "refused_by_target", 8, "test/dest", 1)]
    assert rows[2]["event_id"] == "ev-0007" and rows[2]["first_attempt_at"] is not None
    assert await committed(kafka_bootstrap, group, topic, 1) == {0: 11}
