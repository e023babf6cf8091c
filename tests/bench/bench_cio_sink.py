"""cio-sink throughput to a Customer.io fake capped at 100 requests/s with 50 ms per request.

Kafka -> sink -> fake, measured twice in the same run: v2 batches, then single-event v1 calls
(the ceiling for a one-event-per-request client at this cap). Prints events/s of each, their
ratio (target >= 30x), and the highest request rate the fake observed (must stay <= the cap).

    uv run python tests/bench/bench_cio_sink.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_cio_sink.service import running_sink
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_common.localinfra import create_topic
from synergy_common.testinfra import aacquire
from ulid import ULID

CAP = 100.0
LATENCY = 0.05
SEED = Path(__file__).parents[1] / "fixtures" / "seed_examples" / "000_1_product_scanned.json"


async def produce(bootstrap: str, topic: str, brand_id: str, count: int) -> list[str]:
    seed = json.loads(SEED.read_text())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                compression_type="lz4")
    await producer.start()
    ids = []
    try:
        for i in range(count):
            event_id = str(ULID())
            user = f"bench-{i % 5000}"
            envelope = {"event_id": event_id, "type": "track", "name": seed["name"], "brand_id": brand_id,
                        "identifiers": {"id": user}, "data": seed["data"], "timestamp": seed["timestamp"],
                        "received_at": seed["timestamp"], "schema_version": 1, "source": "bench",
                        "correlation_id": event_id}
            await producer.send(topic, json.dumps(envelope).encode(), key=f"{brand_id}:{user}".encode())
            ids.append(event_id)
        await producer.flush()
    finally:
        await producer.stop()
    return ids


async def measure(api: str, events: int, seconds: float, bootstrap: str, database_url: str, key: str,
                  brand_id: str) -> tuple[float, int, int]:
    """Events/s delivered, unique events received, the max requests/s the fake saw."""
    topic = f"bench.cio.{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, 6)
    os.environ["SYNERGY_TOPIC_EVENTS"] = topic
    for name in ("LOYALTY", "MARKETING", "SNAPSHOTS", "DLQ"):
        os.environ[f"SYNERGY_TOPIC_{name}"] = f"{topic}.{name.lower()}"
        await create_topic(bootstrap, f"{topic}.{name.lower()}", 1)
    await produce(bootstrap, topic, brand_id, events)
    fake = CustomerIoFake({"bench-site": "bench-key"})
    fake.faults.rate_cap = CAP
    fake.faults.latency = LATENCY
    async with serve_fake(fake) as url:
        settings = SinkSettings(kafka_bootstrap_servers=bootstrap, database_url=database_url,
                                synergy_encryption_key=key, cio_track_url=url, cio_api=api,
                                cio_rate_limit=CAP, consumer_group=f"bench-{uuid.uuid4().hex[:8]}",
                                ops_port=0)
        async with running_sink(settings) as sink:
            task = asyncio.create_task(sink.run())
            give_up = time.monotonic() + 60
            while not fake.events and time.monotonic() < give_up:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            started, first = time.monotonic(), len(fake.events)
            while len(fake.events) < events and time.monotonic() - started < seconds:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            delivered = len(fake.events) - first
            sink.stop()
            await task
    return delivered / elapsed, len(fake.events), fake.max_requests_per_second


async def main(events: int, v1_seconds: float) -> None:
    infra = await aacquire()
    try:
        key = CredentialCipher.generate_key()
        pool = await create_pool(infra.database_url)
        try:
            brand = await create_brand(pool, f"bench-{uuid.uuid4().hex[:6]}", CredentialCipher(key),
                                       cio_site_id="bench-site", cio_api_key="bench-key")
        finally:
            await pool.close()
        common = (infra.bootstrap_servers, infra.database_url, key, brand.brand_id)
        v2_rate, v2_received, v2_max = await measure("v2", events, 90.0, *common)
        v1_rate, _, v1_max = await measure("v1", int(CAP * v1_seconds * 1.5), v1_seconds, *common)
    finally:
        await asyncio.to_thread(infra.close)
    ratio = v2_rate / v1_rate
    print(f"cio-sink v2 batch: {v2_rate:,.0f} events/s ({v2_received} events), "
          f"max {v2_max} req/s (cap {CAP:g})")
    print(f"cio-sink v1 single: {v1_rate:,.0f} events/s, max {v1_max} req/s (cap {CAP:g})")
    print(f"ratio v2/v1: {ratio:.1f}x (target >= 30x); cap kept: {max(v2_max, v1_max) <= CAP}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--v1-seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.v1_seconds))
