"""The test infrastructure itself: Kafka 4.x, the topics, the clients we use, restarts, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.admin import ApiVersionRequest
from synergy_common.testinfra import Infra
from synergy_schemas.topics import ALL_TOPICS, SNAPSHOTS

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., Awaitable[str]]
ConsumeAll = Callable[..., Awaitable[list[Any]]]
FETCH_API = 1


async def api_versions(bootstrap: str) -> dict[int, tuple[int, int]]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node = next(iter(client.cluster.brokers())).nodeId
        response = await client.send(node, ApiVersionRequest())
        return {key: (low, high) for key, low, high in response.api_versions}
    finally:
        await client.close()


async def test_broker_is_kafka_4(infra: Infra, kafka_bootstrap: str) -> None:
    versions = await api_versions(kafka_bootstrap)
    # Kafka 4.0 dropped Fetch v0-v3 (KIP-896); every 3.x broker still accepts v0.
    assert versions[FETCH_API][0] >= 4, versions[FETCH_API]
    if infra.local is not None and infra.kafka_source == "local":
        version = infra.local.kafka_running_version()
        assert version is not None and version.startswith("4."), version


async def test_idempotent_producer_round_trip(
    kafka_producer: AIOKafkaProducer, topic_factory: TopicFactory, consume_all: ConsumeAll
) -> None:
    topic = await topic_factory(partitions=3)
    sent = []
    for i in range(30):
        key, value = f"brand:user-{i % 4}".encode(), f'{{"n": {i}}}'.encode()
        meta = await kafka_producer.send_and_wait(
            topic, value, key=key, headers=[("event_name", b"probe"), ("n", str(i).encode())]
        )
        assert meta.offset >= 0
        sent.append((key, value))

    records = await consume_all(topic, 30, timeout=30)

    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    assert {r.header("event_name") for r in records} == {"probe"}
    for key in {k for k, _ in sent}:
        same_key = [r for r in records if r.key == key]
        assert len({r.partition for r in same_key}) == 1
        assert [r.json()["n"] for r in sorted(same_key, key=lambda r: r.offset)] == sorted(
            r.json()["n"] for r in same_key
        )


async def test_consumer_group_commits_resume_where_they_left(
    kafka_bootstrap: str, kafka_producer: AIOKafkaProducer, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(partitions=2)
    group = f"probe-{uuid.uuid4().hex}"
    for i in range(10):
        await kafka_producer.send_and_wait(topic, str(i).encode(), key=str(i).encode())

    async def read(expected: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            deadline = time.monotonic() + 20
            while len(values) < expected and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    values += [m.value for m in batch if m.value is not None]
            if expected == 0:
                for batch in (await consumer.getmany(timeout_ms=1500)).values():
                    values += [m.value for m in batch if m.value is not None]
            await consumer.commit()
            committed = [await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)]
            assert sum(c or 0 for c in committed) == 10
        finally:
            await consumer.stop()
        return values

    assert sorted(await read(10)) == sorted(str(i).encode() for i in range(10))
    assert await read(0) == []


async def test_every_topic_exists_with_12_partitions_and_snapshots_is_compacted(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = [t.name for t in ALL_TOPICS]
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
        for name in names:
            assert described[name]["error_code"] == 0, name
            assert len(described[name]["partitions"]) == 12, name
        resources = [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in ALL_TOPICS]
        policies = {}
        for response in await admin.describe_configs(resources):
            for resource in response.resources:
                entries = {e[0]: e[1] for e in resource[4]}
                policies[resource[3]] = entries["cleanup.policy"]
    finally:
        await admin.close()
    assert policies[SNAPSHOTS.name] == "compact"
    assert {name for name, policy in policies.items() if policy == "compact"} == {
        t.name for t in ALL_TOPICS if t.compacted
    }


async def test_start_is_idempotent(kafka_control: Infra, postgres_control: Infra) -> None:
    local = kafka_control.local
    assert local is not None
    kafka_pid, pg_pid = local.kafka_pid(), local.postgres_pid()
    started = time.monotonic()
    await local.astart()
    await local.astart()
    assert (local.kafka_pid(), local.postgres_pid()) == (kafka_pid, pg_pid)
    assert time.monotonic() - started < 10
    status = local.status()
    assert status["kafka"]["running"] and status["postgres"]["running"]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_kafka_restart_keeps_written_messages(
    kafka_control: Infra, topic_factory: TopicFactory, consume_all: ConsumeAll, kill: bool
) -> None:
    bootstrap = kafka_control.bootstrap_servers
    topic = await topic_factory(partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topic, f"before-{i}".encode(), key=f"k{i % 5}".encode())
    finally:
        await producer.stop()

    async with kafka_control.kafka_outage(kill=kill):
        assert kafka_control.local is not None and kafka_control.local.kafka_pid() is None

    records = await consume_all(topic, 20, timeout=60)
    assert sorted(r.value for r in records) == sorted(f"before-{i}".encode() for i in range(20))

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"after", key=b"k0")
    finally:
        await producer.stop()
    assert len(await consume_all(topic, 21, timeout=30)) == 21


async def test_postgres_answers_and_synergy_database_exists(infra: Infra, database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'synergy'") == 1
        if infra.postgres_source == "local":
            assert await conn.fetchval("SELECT current_database()") == "synergy"
            assert await conn.fetchval("SELECT current_user") == "synergy"
    finally:
        await conn.close()


async def test_postgres_restart_keeps_data(
    postgres_control: Infra, database_factory: Callable[..., Awaitable[str]]
) -> None:
    url = await database_factory(migrate=False)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("CREATE TABLE probe (n int); INSERT INTO probe VALUES (1), (2)")
    finally:
        await conn.close()

    async with postgres_control.postgres_outage():
        with pytest.raises((OSError, asyncpg.PostgresError, asyncio.TimeoutError)):
            await asyncpg.connect(url, timeout=3)

    conn = await asyncpg.connect(url, timeout=10)
    try:
        assert await conn.fetchval("SELECT sum(n) FROM probe") == 3
    finally:
        await conn.close()


FAUST_APP = """
import faust

app = faust.App(
    "probe-{suffix}", broker="kafka://{bootstrap}", store="memory://", web_enabled=False,
    topic_partitions=2, topic_replication_factor=1,
)
source = app.topic("{source}", key_type=str, value_type=str)
sink = app.topic("{sink}", key_type=str, value_type=str)
counts = app.Table("counts", default=int)


@app.agent(source)
async def count(stream):
    async for key, value in stream.items():
        counts[key] += 1
        await sink.send(key=key, value=f"{{key}}={{counts[key]}}")
"""


async def test_faust_agent_with_table_runs_against_the_broker(
    kafka_bootstrap: str,
    kafka_producer: AIOKafkaProducer,
    topic_factory: TopicFactory,
    consume_all: ConsumeAll,
    tmp_path: Path,
) -> None:
    source, sink = await topic_factory(partitions=2), await topic_factory(partitions=2)
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "probe_app.py").write_text(
        textwrap.dedent(FAUST_APP).format(suffix=suffix, bootstrap=kafka_bootstrap, source=source, sink=sink)
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "faust", "-A", "probe_app", "worker", "-l", "info",
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while b"Worker]: Ready" not in log_path.read_bytes():
            assert worker.returncode is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.2)
        for i in range(6):
            await kafka_producer.send_and_wait(source, f'"v{i}"'.encode(), key=f"k{i % 2}".encode())
        records = await consume_all(sink, 6, timeout=90)
    finally:
        worker.terminate()
        try:
            await asyncio.wait_for(worker.wait(), 30)
        except TimeoutError:
            worker.kill()
            await worker.wait()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            own = [t for t in await admin.list_topics() if t.startswith(f"probe-{suffix}-")]
            if own:
                await admin.delete_topics(own)
        finally:
            await admin.close()
    values = sorted(r.json() for r in records)
    assert values == sorted(f"k{i % 2}={i // 2 + 1}" for i in range(6)), log_path.read_text()[-3000:]
