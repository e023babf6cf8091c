"""Durable timers: the marketing service as real processes. A SIGKILL with 1,000 pending timers loses
none and sends none twice after the restart; two replicas share 1,000 due timers without sending any
twice. Counted by queue id, in Postgres and on synergy.marketing.v1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from synergy_common.db import create_pool

from tests.integration.marketing.harness import SECRET, envelope, eventually, make_brand, send, triggers_in
from tests.support import free_port

TIMERS = 1000


def start_marketing(database_url: str, kafka: str, topics: dict[str, str], group: str, log: Path,
                    cart_after: str, scheduler_batch: int = 500) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "SYNERGY_TOPIC_EVENTS": topics["events"],
        "SYNERGY_TOPIC_INSIGHTS": topics["insights"],
        "SYNERGY_TOPIC_MARKETING": topics["marketing"],
        "MARKETING_PORT": str(port),
        "MARKETING_HOST": "127.0.0.1",
        "MARKETING_CART_ABANDON_AFTER": cart_after,
        "MARKETING_SCHEDULER_INTERVAL": "100ms",
        "MARKETING_SCHEDULER_BATCH": str(scheduler_batch),
        "MARKETING_CONSUMER_GROUP": group,
        "MARKETING_TOKEN_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "synergy_marketing"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return process, port


async def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if process.poll() is not None:
                raise AssertionError(f"marketing exited: {log.read_text()[-3000:]}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"marketing never became healthy: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
async def setup(database_factory, topic_factory, tmp_path):
    database_url = await database_factory("mkt_timers")
    topics = {
        "events": await topic_factory(4, prefix="test.events"),
        "insights": await topic_factory(1, prefix="test.insights"),
        "marketing": await topic_factory(3, prefix="test.marketing"),
    }
    db = await create_pool(database_url, min_size=1, max_size=4)
    brand = await make_brand(db, "Durable")
    try:
        yield database_url, topics, db, brand, tmp_path / "marketing.log"
    finally:
        await db.close()


async def carts_for(brand, users: list[str]) -> list[dict]:
    return [envelope(brand, "cart_item_added", {"product_id": "prod_1", "price": 3}, user=u) for u in users]


async def test_sigkill_with_1000_pending_timers_fires_each_exactly_once_after_the_restart(
    setup, kafka_bootstrap, kafka_producer, consume_all
) -> None:
    database_url, topics, db, brand, log = setup
    group = f"test-marketing-{uuid.uuid4().hex[:8]}"
    users = [f"u{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(TIMERS)]
    process, port = start_marketing(database_url, kafka_bootstrap, topics, group, log, cart_after="12s")
    try:
        await wait_healthy(port, process, log)
        await send(kafka_producer, topics["events"], *await carts_for(brand, users))
        await eventually(lambda: db.fetchval(
            "SELECT count(*) = $1 FROM marketing_timers WHERE fired_at IS NULL", TIMERS), timeout=30,
            what="1,000 pending timers")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert await db.fetchval("SELECT count(*) FROM marketing_queue") == 0, "killed before any was due"
        process, port = start_marketing(database_url, kafka_bootstrap, topics, group, log, cart_after="12s")
        await wait_healthy(port, process, log)
        await eventually(lambda: db.fetchval("SELECT count(*) = $1 FROM marketing_queue", TIMERS), timeout=60,
                         what="1,000 queue items")
    finally:
        stop(process)
    queued = {row["queue_id"]: row["user_id"] for row in await db.fetch("SELECT queue_id, user_id FROM marketing_queue")}
    assert sorted(queued.values()) == sorted(users)
    records = await consume_all(topics["marketing"], until=lambda rs: len(triggers_in(rs, brand)) >= TIMERS)
    await asyncio.sleep(1)
    records = await consume_all(topics["marketing"])
    sent = Counter(m["data"]["queue_id"] for m in triggers_in(records, brand))
    assert set(sent) == set(queued)
    assert max(sent.values()) == 1
    assert await db.fetchval("SELECT count(*) FROM marketing_timers WHERE fired_at IS NULL") == 0


async def test_two_replicas_share_the_timers_without_sending_any_twice(
    setup, kafka_bootstrap, kafka_producer, consume_all
) -> None:
    database_url, topics, db, brand, log = setup
    group = f"test-marketing-{uuid.uuid4().hex[:8]}"
    users = [f"r{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(TIMERS)]
    # Claims of 50: firing 1,000 takes one replica's two workers ten transactions each, so the other
    # replica (polling every 100 ms) is due to claim its share meanwhile.
    replicas = [start_marketing(database_url, kafka_bootstrap, topics, group, log, cart_after="8s",
                                scheduler_batch=50) for _ in range(2)]
    try:
        for process, port in replicas:
            await wait_healthy(port, process, log)
        await send(kafka_producer, topics["events"], *await carts_for(brand, users))
        await eventually(lambda: db.fetchval("SELECT count(*) = $1 FROM marketing_queue", TIMERS), timeout=60,
                         what="1,000 queue items")
        await asyncio.sleep(1)
        fired_by = []
        async with httpx.AsyncClient() as client:
            for process, port in replicas:
                assert process.poll() is None, log.read_text()[-3000:]
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                fired_by.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                    if line.startswith("synergy_marketing_timers_fired_total{")))
        assert sum(fired_by) == TIMERS
        assert min(fired_by) > 0, f"one replica fired them all: {fired_by}"
    finally:
        for process, _ in replicas:
            stop(process)
    records = await consume_all(topics["marketing"])
    sent = Counter(m["data"]["queue_id"] for m in triggers_in(records, brand))
    assert len(sent) == TIMERS
    assert max(sent.values()) == 1
    assert sorted(r["user_id"] for r in await db.fetch("SELECT user_id FROM marketing_queue")) == sorted(users)
