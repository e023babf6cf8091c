"""Dispatcher throughput to a webhook receiver that answers at once, and to the PostHog fake.

All on one topic of N seed-000 events, in the same run:
- ceiling: the runtime's bare consume loop (StreamProcessor, one work item per record, a deliver
  that does nothing), and for reference a plain poll loop;
- webhook: one signed POST per event, 32 in flight (target >= 2,000 events/s);
- posthog: `/batch/` requests (target >= 0.3 of the bare loop).
The receivers run in a process of their own (the load generator); its CPU share is printed.

    uv run python -m tests.bench.bench_dispatcher [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool, migrate
from synergy_common.localinfra import create_topic
from synergy_common.logging import configure_logging
from synergy_common.testinfra import aacquire
from synergy_dispatcher import store
from synergy_dispatcher.app import serving
from synergy_dispatcher.settings import DispatcherSettings
from synergy_streaming import DELIVERED, KafkaConsumer, Source, StreamConfig, StreamProcessor, Work
from ulid import ULID

SEED = Path(__file__).parents[1] / "fixtures" / "seed_examples" / "000_1_product_scanned.json"
SECRET = "whsec_YmVuY2gtZGlzcGF0Y2hlci1zZWNyZXQta2V5"
API_KEY = "phc_bench"


async def produce(bootstrap: str, topic: str, brand_id: str, count: int) -> None:
    seed = json.loads(SEED.read_text())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                compression_type="lz4")
    await producer.start()
    try:
        for i in range(count):
            event_id = str(ULID())
            user = f"bench-{i % 2000}"
            envelope = {"event_id": event_id, "type": "track", "name": seed["name"], "brand_id": brand_id,
                        "identifiers": {"id": user}, "data": seed["data"], "timestamp": seed["timestamp"],
                        "received_at": seed["timestamp"], "schema_version": 1, "source": "bench",
                        "correlation_id": event_id}
            await producer.send(topic, json.dumps(envelope).encode(), key=f"{brand_id}:{user}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def bare_runtime_loop(bootstrap: str, topic: str, count: int) -> float:
    """Events/s through the runtime with nothing to deliver: the ceiling of any processor on it."""
    done = 0
    finished = asyncio.Event()

    def prepare(source: Source) -> list[Work]:
        return [Work(key=(source.record.key or b"").decode(), target="none", payload=None)]

    async def deliver(_: Any, items: Sequence[Work]) -> Any:
        nonlocal done
        done += len(items)
        if done >= count:
            finished.set()
        return DELIVERED

    consumer = KafkaConsumer(bootstrap, group_id=f"bench-bare-{uuid.uuid4().hex[:8]}", client_id="bench")
    await consumer.start()
    processor = StreamProcessor(StreamConfig(service="bench-bare", topics=[topic]), consumer, prepare, deliver)
    task = asyncio.create_task(processor.run())
    while done == 0:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    started, first = time.monotonic(), done
    await asyncio.wait_for(finished.wait(), 300)
    elapsed = time.monotonic() - started
    processor.stop()
    await task
    await consumer.stop()
    return (done - first) / elapsed


async def plain_poll_loop(bootstrap: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(bootstrap, group_id=f"bench-poll-{uuid.uuid4().hex[:8]}", client_id="bench")
    await consumer.start()
    seen = 0
    started = None

    async def noop(_: Any) -> None:
        return None

    consumer.subscribe([topic], noop, noop)
    try:
        while seen < count:
            records = await consumer.poll(0.1, 2000)
            if records and started is None:
                started = time.monotonic()
                count -= len(records)  # timed from the end of the first poll
                continue
            seen += len(records)
    finally:
        await consumer.stop()
    assert started is not None
    return seen / (time.monotonic() - started)


class Receiver:
    """A fake in its own process; `stats()` reads what it received and the CPU it used."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> Receiver:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.serve", self.kind, "--secret", SECRET, "--api-key", API_KEY,
            stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).parents[2]))
        assert self.process.stdout is not None
        self.port = int((await self.process.stdout.readline()).decode())
        return self

    async def stats(self, client: httpx.AsyncClient) -> dict[str, Any]:
        return (await client.get(f"http://127.0.0.1:{self.port}/stats")).json()

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()


async def through_dispatcher(kind: str, bootstrap: str, database_url: str, key: str, topic: str,
                             brand_id: str, count: int) -> tuple[float, float, dict[str, Any]]:
    """Events/s delivered to the receiver, and the receiver's CPU share over that time.

    The brand has this one destination during the run (the previous run's is disabled).
    """
    receiver = await Receiver(kind).start()
    pool = await create_pool(database_url)
    try:
        await pool.execute("UPDATE destinations SET state = 'disabled' WHERE brand_id = $1", int(brand_id))
        if kind == "webhook":
            await store.add_destination(pool, CredentialCipher(key), brand_id, kind, "webhook",
                                        {"url": f"http://127.0.0.1:{receiver.port}/hook"},
                                        {"signing_secrets": [SECRET]})
        else:
            await store.add_destination(pool, CredentialCipher(key), brand_id, kind, "posthog",
                                        {"host": f"http://127.0.0.1:{receiver.port}"}, {"api_key": API_KEY})
    finally:
        await pool.close()
    settings = DispatcherSettings(
        kafka_bootstrap_servers=bootstrap, database_url=database_url, synergy_encryption_key=key,
        dispatcher_topics=topic, dispatcher_group_id=f"bench-{uuid.uuid4().hex[:8]}",
        dispatcher_replica="bench", log_level="WARNING")
    async with httpx.AsyncClient() as client:
        try:
            async with serving(settings):
                while (await receiver.stats(client))["received"] == 0:  # noqa: ASYNC110 - polled over HTTP
                    await asyncio.sleep(0.01)
                first = await receiver.stats(client)
                started, own_cpu = time.monotonic(), time.process_time()
                last = first
                while last["received"] < count and time.monotonic() - started < 300:
                    await asyncio.sleep(0.1)
                    last = await receiver.stats(client)
                elapsed = time.monotonic() - started
                last["dispatcher_cpu"] = (time.process_time() - own_cpu) / elapsed
                labels = {"type": kind}
                total = REGISTRY.get_sample_value("synergy_dispatcher_request_duration_seconds_sum", labels)
                requests = REGISTRY.get_sample_value("synergy_dispatcher_request_duration_seconds_count", labels)
                last["mean_request"] = (total or 0.0) / max(1.0, requests or 0.0)
        finally:
            await receiver.stop()
    rate = (last["received"] - first["received"]) / elapsed
    cpu_share = (last["cpu"] - first["cpu"]) / elapsed
    return rate, cpu_share, last


async def main(events: int) -> None:
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    configure_logging("bench", "WARNING")
    infra = await aacquire()
    try:
        await migrate(infra.database_url)
        bootstrap = infra.bootstrap_servers
        key = CredentialCipher.generate_key()
        topic = f"bench.dispatcher.{uuid.uuid4().hex[:8]}"
        await create_topic(bootstrap, topic, 6)
        pool = await create_pool(infra.database_url)
        try:
            brand_id = (await create_brand(pool, f"bench-{uuid.uuid4().hex[:6]}", CredentialCipher(key))).brand_id
        finally:
            await pool.close()
        await produce(bootstrap, topic, brand_id, events)
        bare = await bare_runtime_loop(bootstrap, topic, events)
        print(f"bare runtime loop: {bare:,.0f} events/s", flush=True)
        poll = await plain_poll_loop(bootstrap, topic, events)
        print(f"plain poll loop: {poll:,.0f} events/s", flush=True)
        hook_rate, hook_cpu, hook_stats = await through_dispatcher("webhook", bootstrap, infra.database_url, key,
                                                                   topic, brand_id, events)
        ph_rate, ph_cpu, ph_stats = await through_dispatcher("posthog", bootstrap, infra.database_url, key,
                                                             topic, brand_id, events)
        # The machine is shared: the ceiling is measured again afterwards and the better figure kept,
        # so that a busy moment during the first measurement cannot flatter the ratios.
        bare_after = await bare_runtime_loop(bootstrap, topic, events)
        print(f"bare runtime loop, again: {bare_after:,.0f} events/s", flush=True)
        bare = max(bare, bare_after)
    finally:
        await asyncio.to_thread(infra.close)
    print(f"ceiling: runtime bare consume loop {bare:,.0f} events/s (plain poll loop {poll:,.0f}/s), "
          f"{events} events")
    print(f"webhook (32 in flight, signed): {hook_rate:,.0f} events/s, ratio {hook_rate / bare:.2f} of the "
          f"bare loop (target >= 2,000/s); receiver CPU share {hook_cpu:.0%}; "
          f"dispatcher CPU {hook_stats['dispatcher_cpu']:.0%}; "
          f"mean request {hook_stats['mean_request'] * 1000:.1f} ms; "
          f"received {hook_stats['received']}, bad signatures {hook_stats['refused']}")
    print(f"posthog (/batch/): {ph_rate:,.0f} events/s, ratio {ph_rate / bare:.2f} of the bare loop "
          f"(target >= 0.30); fake CPU share {ph_cpu:.0%}; dispatcher CPU {ph_stats['dispatcher_cpu']:.0%}; "
          f"ingested {ph_stats['received']}, "
          f"duplicates {ph_stats['duplicates']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--profile", default=None, help="write a cProfile of the run to this file")
    args = parser.parse_args()
    if args.profile:
        import cProfile

        cProfile.run("asyncio.run(main(args.events))", args.profile)
    else:
        asyncio.run(main(args.events))
