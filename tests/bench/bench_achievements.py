"""Achievements benchmark: one worker's events/s against a bare aiokafka consume-and-produce loop over
the same topic in the same run, and the memory the state of 100k users takes.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 uv run python tests/bench/bench_achievements.py

The worker runs with ACHIEVEMENTS_PERSIST=false (Kafka only), memory store. Its rate is measured on the
broker timestamps of the snapshots it writes (one per user per batch, counted as the events their
state_version advanced by), the bare loop's on the copies it writes (one per event).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from synergy_achievements.processing import LoyaltyProcessor
from synergy_achievements.rules import default_rules
from ulid import ULID

EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
USERS = 2000
PARTITIONS = 4
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed_examples" / "000_1_product_scanned.json"


def scan(user: str, n: int) -> dict[str, Any]:
    example = json.loads(SEED.read_text())
    timestamp = f"2024-06-{1 + n % 28:02d}T12:00:00Z"
    return {**example, "event_id": str(ULID()), "type": "track", "brand_id": "1", "identifiers": {"id": user},
            "timestamp": timestamp, "received_at": timestamp, "schema_version": 1, "source": "bench",
            "correlation_id": "bench"}


async def create_topics(names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


async def fill(topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = []
        for n in range(EVENTS):
            user = f"user-{n % USERS}"
            futures.append(await producer.send(topic, orjson.dumps(scan(user, n // USERS)),
                                               key=f"1:{user}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def one_each(record: Any) -> int:
    return 1


class EventsCoveredBySnapshots:
    """How many input events a snapshot accounts for: its state_version minus the user's previous one."""

    def __init__(self) -> None:
        self.versions: dict[bytes, int] = {}

    def __call__(self, record: Any) -> int:
        version = orjson.loads(record.value)["data"]["loyalty"]["state_version"]
        previous = self.versions.get(record.key, 0)
        self.versions[record.key] = max(previous, version)
        return max(0, version - previous)


async def output_rate(topic: str, expected: int, timeout: float, covered: Any = one_each) -> float:
    """Input events per second, measured on the broker timestamps of the outputs that account for them.

    Steady state: the events accounted for by the first millisecond's outputs are left out, and so is
    the time before it (consumer group join, faust start-up, the first batch).
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    stamped: list[tuple[int, int]] = []
    total = 0
    deadline = time.monotonic() + timeout
    try:
        while total < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10000)).values():
                for record in batch:
                    count = covered(record)
                    stamped.append((record.timestamp, count))
                    total += count
    finally:
        await consumer.stop()
    if total < expected:
        raise RuntimeError(f"{topic}: only {total} of {expected} events accounted for within {timeout}s")
    first = min(stamp for stamp, _ in stamped)
    last = max(stamp for stamp, _ in stamped)
    after_first = sum(count for stamp, count in stamped if stamp > first)
    return after_first / max((last - first) / 1000, 1e-3)


async def bare_loop(source: str, sink: str) -> float:
    consumer = AIOKafkaConsumer(source, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                group_id=f"bench-bare-{uuid.uuid4().hex[:6]}", enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=5)
    await consumer.start()
    await producer.start()
    seen = 0
    try:
        while seen < EVENTS:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=1000)).values():
                for record in batch:
                    await producer.send(sink, record.value, key=record.key)
                    seen += 1
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()
    return await output_rate(sink, EVENTS, 60)


async def worker_rate(source: str, prefix: str) -> float:
    topics = {
        "SYNERGY_TOPIC_EVENTS": source, "SYNERGY_TOPIC_LOYALTY": f"{prefix}.loyalty",
        "SYNERGY_TOPIC_SNAPSHOTS": f"{prefix}.snapshots", "SYNERGY_TOPIC_REFERRAL_AWARDS": f"{prefix}.awards",
        "SYNERGY_TOPIC_DLQ": f"{prefix}.dlq",
    }
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, **topics, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "ACHIEVEMENTS_PERSIST": "false",
               "ACHIEVEMENTS_STORE": "memory://", "ACHIEVEMENTS_DATA_DIR": data_dir,
               "ACHIEVEMENTS_APP_ID": f"{prefix}-app", "ACHIEVEMENTS_HTTP_PORT": "0", "LOG_LEVEL": "WARNING",
               "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        profile = os.environ.get("BENCH_PROFILE")  # a path: the worker runs under cProfile, stats written there
        command = ["-m", "cProfile", "-o", profile, "-m", "synergy_achievements"] if profile else [
            "-m", "synergy_achievements"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            return await output_rate(topics["SYNERGY_TOPIC_SNAPSHOTS"], EVENTS, 100,
                                     EventsCoveredBySnapshots())
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 20)


def state_memory(users: int = 100_000) -> tuple[float, float]:
    """(MiB of the table's values, MiB of Python heap they take as held by faust's memory store)."""
    processor, rules = LoyaltyProcessor(), default_rules()
    example = scan("u", 0)
    tracemalloc.start()
    table: dict[bytes, bytes] = {}
    for n in range(users):
        event = {**example, "event_id": f"{n:026d}", "identifiers": {"id": f"user-{n}"}}
        table[f"1:user-{n}".encode()] = processor.apply(None, event, rules).state.to_bytes()
    heap, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return sum(map(len, table.values())) / 2**20, heap / 2**20


async def main() -> None:
    prefix = f"bench.ach.{uuid.uuid4().hex[:6]}"
    source, sink = f"{prefix}.events", f"{prefix}.bare-out"
    await create_topics([source, sink])
    await fill(source)
    bare = await bare_loop(source, sink)
    worker = await worker_rate(source, prefix)
    print(f"bare aiokafka consume+produce: {bare:,.0f} events/s (ceiling)")
    print(f"achievements worker (faust):  {worker:,.0f} events/s  ratio {worker / bare:.2f} (target >= 0.5)")
    values, heap = state_memory()
    print(f"state of 100k users (1 scan each): {values:.1f} MiB serialized, {heap:.1f} MiB Python heap")


if __name__ == "__main__":
    asyncio.run(main())
