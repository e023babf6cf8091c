"""Shared fixtures for tests that need real Kafka and PostgreSQL.

Infrastructure is picked by synergy_common.testinfra (env, then testcontainers, then the local launcher) the
first time a test asks for one of these fixtures, so tests that ask for none (tests/unit) start nothing.
Tests that use them are marked `integration` automatically.

While the session runs, KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL point at the chosen servers, so services
started in-process or as subprocesses find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from synergy_common.localinfra import create_topic, wait_for_kafka
from synergy_common.testinfra import Infra, aacquire

INFRA_FIXTURES = frozenset(
    {
        "infra",
        "kafka_bootstrap",
        "database_url",
        "topic_factory",
        "consume_all",
        "kafka_producer",
        "database_factory",
        "kafka_control",
        "postgres_control",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INFRA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def infra() -> AsyncIterator[Infra]:
    """Kafka (topics created) and PostgreSQL for the session; see synergy_common.testinfra."""
    acquired = await aacquire()
    saved = {k: os.environ.get(k) for k in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = acquired.bootstrap_servers
    os.environ["DATABASE_URL"] = acquired.database_url
    try:
        yield acquired
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        await asyncio.to_thread(acquired.close)


@pytest.fixture(scope="session")
def kafka_bootstrap(infra: Infra) -> str:
    return infra.bootstrap_servers


async def _migrate(url: str) -> None:
    try:
        db = importlib.import_module("synergy_common.db")
    except ImportError:
        return
    migrate = getattr(db, "migrate", None)
    if migrate is None:
        return
    result = migrate(url)
    if inspect.isawaitable(result):
        await result


@pytest.fixture(scope="session")
async def database_url(infra: Infra) -> str:
    """The `synergy` database, migrated to the latest schema."""
    await _migrate(infra.database_url)
    return infra.database_url


@pytest.fixture(scope="session")
async def database_factory(infra: Infra) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """`await database_factory(migrate=True)` creates a fresh database and returns its URL."""
    created: list[str] = []

    async def make(prefix: str = "t", *, migrate: bool = True) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        url = await infra.create_database(name)
        created.append(name)
        if migrate:
            await _migrate(url)
        return url

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            await infra.drop_database(name)


@pytest.fixture
async def kafka_control(infra: Infra) -> AsyncIterator[Infra]:
    """The infra, when this session can stop and start Kafka; the test is skipped otherwise.

    After the test, waits until the broker serves metadata again: a broker frozen longer than
    broker.session.timeout.ms is fenced by its own controller when it resumes, and answers metadata
    with no brokers until it is unfenced, which the next test would otherwise meet.
    """
    if reason := infra.kafka_control_reason():
        pytest.skip(reason)
    yield infra
    await wait_for_kafka(infra.bootstrap_servers, timeout=120)


@pytest.fixture
def postgres_control(infra: Infra) -> Infra:
    if reason := infra.postgres_control_reason():
        pytest.skip(reason)
    return infra


@pytest.fixture(scope="session")
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """`await topic_factory(partitions=3)` creates a uniquely named topic, ready to use, and returns its name.

    Topics are deleted at the end of the session.
    """
    created: list[str] = []

    async def make(
        partitions: int = 1,
        *,
        prefix: str = "test",
        compacted: bool = False,
        config: dict[str, str] | None = None,
    ) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        cfg = dict(config or {})
        if compacted:
            cfg.setdefault("cleanup.policy", "compact")
        await create_topic(kafka_bootstrap, name, partitions, config=cfg)
        created.append(name)
        return name

    yield make
    if created:
        with contextlib.suppress(Exception):
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10000)
            await admin.start()
            try:
                await admin.delete_topics(created, timeout_ms=10000)
            finally:
                await admin.close()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    raw_headers: tuple[tuple[str, bytes], ...] = ()
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def key_str(self) -> str | None:
        return None if self.key is None else self.key.decode()

    def json(self) -> Any:
        return None if self.value is None else json.loads(self.value)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode()


Predicate = Callable[[list[Record]], bool]


async def consume(
    bootstrap: str,
    topics: str | Sequence[str],
    count: int | None = None,
    *,
    until: Predicate | None = None,
    where: Callable[[Record], bool] | None = None,
    timeout: float = 30.0,
    strict: bool = True,
    isolation_level: str = "read_uncommitted",
) -> list[Record]:
    """Read `topics` from the beginning with a fresh consumer group (`isolation_level="read_committed"`:
    as the services read, without records of aborted transactions).

    Stops when `count` records (that pass `where`) have arrived, or `until(records)` is true; with neither,
    when every partition is read up to its end as of the start. On timeout it raises AssertionError, unless
    `strict=False`, in which case it returns what it has.
    """
    names = [topics] if isinstance(topics, str) else list(topics)
    consumer = AIOKafkaConsumer(
        *names,
        bootstrap_servers=bootstrap,
        group_id=f"test-consume-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    records: list[Record] = []
    ends: dict[Any, int] | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def done() -> bool:
        if count is not None and len(records) < count:
            return False
        if until is not None and not until(records):
            return False
        return count is not None or until is not None

    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            batches = await consumer.getmany(timeout_ms=int(min(500, remaining * 1000)))
            for batch in batches.values():
                for m in batch:
                    headers = tuple((k, bytes(v)) for k, v in (m.headers or ()))
                    r = Record(
                        m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, headers, dict(headers)
                    )
                    if where is None or where(r):
                        records.append(r)
            if done():
                return records
            if count is None and until is None:
                assignment = consumer.assignment()
                if ends is None and assignment:
                    ends = await consumer.end_offsets(list(assignment))
                if ends is not None:
                    positions = {tp: await consumer.position(tp) for tp in ends}
                    if all(positions[tp] >= end for tp, end in ends.items()):
                        return records
    finally:
        await consumer.stop()
    if strict:
        wanted = f"{count} records" if count is not None else "the predicate" if until else "the end"
        last = [(r.topic, r.partition, r.offset, r.key, (r.value or b"")[:200]) for r in records[-5:]]
        raise AssertionError(
            f"consume({names}): waited {timeout:.0f}s for {wanted}, got {len(records)}; last: {last}"
        )
    return records


@pytest.fixture(scope="session")
def consume_all(kafka_bootstrap: str) -> Callable[..., Awaitable[list[Record]]]:
    """`await consume_all("topic", 5)` or `consume_all(["a", "b"], until=lambda rs: ...)`; see `consume`."""

    async def run(topics: str | Sequence[str], count: int | None = None, **kwargs: Any) -> list[Record]:
        return await consume(kafka_bootstrap, topics, count, **kwargs)

    return run


@pytest.fixture(scope="session")
async def kafka_producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started idempotent acks=all producer (bytes in, bytes out)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()
