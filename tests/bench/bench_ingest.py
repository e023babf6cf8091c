"""Ingest benchmark: events/s and p50/p99 latency, each against a ceiling measured in the same run.

- POST /v1/events/batch (100 events a request, concurrent) against a bare aiokafka producer sending the
  same envelopes with the same settings (idempotent, acks=all, lz4). Target: at least 0.6.
- POST /v1/events against a bare FastAPI handler that answers 202. Target: at least 0.5.

    uv run python -m tests.bench.bench_ingest [--events 20000] [--singles 3000]

The services run as separate processes (uvicorn, one worker each); this process is the load generator.
Infrastructure: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else synergy_common.testinfra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool, migrate
from synergy_common.kafka import OutgoingMessage, durable_producer, publish_all
from synergy_common.localinfra import create_topic
from synergy_ingest.client_events import build_envelope
from synergy_ingest.request_context import RequestContext

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "fixtures" / "seed_examples" / "000_1_product_scanned.json"
BATCH = 100
JSON = {"Content-Type": "application/json"}



def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def infrastructure() -> tuple[str, str]:
    kafka, database = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if not (kafka and database):
        from synergy_common.testinfra import aacquire

        infra = await aacquire(keep_running=True)
        kafka, database = infra.bootstrap_servers, infra.database_url
    await migrate(database)
    return kafka, database


@asynccontextmanager
async def server(args: list[str], env: dict[str, str], port: int) -> AsyncIterator[str]:
    process = subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(f"{url}/healthz")).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


Timed = Callable[[int], Awaitable[None]]


async def run_concurrently(jobs: int, concurrency: int, job: Timed) -> tuple[float, list[float]]:
    """Runs job(0..jobs-1) with `concurrency` in flight; returns wall seconds and each job's latency."""
    next_job = iter(range(jobs))
    latencies: list[float] = []

    async def worker() -> None:
        for index in next_job:
            started = time.perf_counter()
            await job(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def events(count: int, run: str) -> list[dict[str, Any]]:
    seed = json.loads(SEED.read_text())
    return [
        {**seed, "identifiers": {"id": f"user-{i % 5000}"}, "event_id": f"{run}-{i}"} for i in range(count)
    ]


def report(label: str, count: int, seconds: float, latencies: list[float], unit: str) -> float:
    rate = count / seconds
    print(
        f"{label:<44} {rate:>10,.0f} events/s   {unit} p50 {percentile(latencies, 0.5) * 1000:7.1f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:7.1f} ms"
    )
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--singles", type=int, default=3_000)
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument("--single-concurrency", type=int, default=32)
    options = parser.parse_args()

    kafka, database = await infrastructure()
    pool = await create_pool(database)
    brand = await create_brand(pool, "Bench Brand", CredentialCipher(CredentialCipher.generate_key()))
    await pool.close()
    topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    await create_topic(kafka, topic, 12)
    run = uuid.uuid4().hex[:6]
    batch_events = events(options.events, f"b{run}")
    single_events = events(options.singles, f"s{run}")
    batches = options.events // BATCH
    # Bodies are encoded up front so the load generator spends its CPU on sending, not on JSON.
    batch_bodies = [orjson.dumps({"batch": batch_events[i * BATCH : (i + 1) * BATCH]}) for i in range(batches)]
    single_bodies = [orjson.dumps(event) for event in single_events]
    print(f"ingest benchmark: {options.events} events in batches of {BATCH}, {options.singles} single posts")

    # Ceiling 1: the same envelopes through a bare producer with ingest's settings.
    context = RequestContext(brand.brand_id, datetime.now(UTC), "bench", "bench/1.0", "127.0.0.1")
    envelopes = [build_envelope(event, context, 32 * 1024) for event in batch_events]
    producer = durable_producer(kafka)
    await producer.start()

    async def produce_chunk(index: int) -> None:
        chunk = envelopes[index * BATCH : (index + 1) * BATCH]
        await publish_all(
            producer, [OutgoingMessage(topic, e.key, e.to_json_bytes(), e.kafka_headers()) for e in chunk]
        )

    await run_concurrently(10, 1, produce_chunk)  # warm-up: metadata and connections
    seconds, latencies = await run_concurrently(batches, options.batch_concurrency, produce_chunk)
    await producer.stop()
    ceiling_batch = report("bare aiokafka producer (ceiling)", batches * BATCH, seconds, latencies, "chunk")

    port = free_port()
    ingest_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": database,
        "SYNERGY_TOPIC_EVENTS": topic,
        "INGEST_PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    headers = {"Authorization": f"Bearer {brand.write_key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        server(["-m", "synergy_ingest"], ingest_env, port) as url,
        httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client,
    ):

        async def post_batch(index: int) -> None:
            response = await client.post("/v1/events/batch", content=batch_bodies[index], headers=JSON)
            assert response.status_code == 202, response.text

        async def post_single(index: int) -> None:
            response = await client.post("/v1/events", content=single_bodies[index], headers=JSON)
            assert response.status_code == 202, response.text

        await run_concurrently(10, 1, post_single)
        seconds, latencies = await run_concurrently(batches, options.batch_concurrency, post_batch)
        ingest_batch = report("ingest POST /v1/events/batch", batches * BATCH, seconds, latencies, "request")
        seconds, latencies = await run_concurrently(options.singles, options.single_concurrency, post_single)
        ingest_single = report("ingest POST /v1/events", options.singles, seconds, latencies, "request")

    bare_port = free_port()
    bare_args = [
        "-m",
        "uvicorn",
        "tests.bench.bare_fastapi:app",
        "--port",
        str(bare_port),
        "--log-level",
        "warning",
    ]
    async with (
        server(bare_args, {}, bare_port) as url,
        httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client,
    ):

        async def post_bare(index: int) -> None:
            response = await client.post("/v1/events", content=single_bodies[index], headers=JSON)
            assert response.status_code == 202

        await run_concurrently(10, 1, post_bare)
        seconds, latencies = await run_concurrently(options.singles, options.single_concurrency, post_bare)
        ceiling_single = report(
            "bare FastAPI 202 handler (ceiling)", options.singles, seconds, latencies, "request"
        )

    print()
    print(
        f"batch path:  {ingest_batch:,.0f} / {ceiling_batch:,.0f} events/s = {ingest_batch / ceiling_batch:.2f}"
        " of the bare producer (target >= 0.6)"
    )
    print(
        f"single path: {ingest_single:,.0f} / {ceiling_single:,.0f} events/s = {ingest_single / ceiling_single:.2f}"
        " of the bare FastAPI handler (target >= 0.5)"
    )


if __name__ == "__main__":
    asyncio.run(main())
