"""Ingest benchmark: events/s, p50/p99, CPU per event, each against a ceiling measured in the same run.

- POST /v1/events/batch (100 events a request, 8 in flight) against the bare producer ingest uses
  (librdkafka through EventPublisher: idempotent, acks=all, lz4) sending the same records in chunks of
  100, 8 in flight. Target: at least 0.6. The bare aiokafka producer is printed beside it.
- POST /v1/events (32 in flight) against a bare FastAPI handler that answers 202. Target: at least 0.7.
- With INGEST_BENCH_PEER_URL (and INGEST_BENCH_PEER_WRITE_KEY), the same Segment bodies go to that
  Segment-compatible gateway (e.g. rudder-server) and to ingest's Segment routes, one at a time;
  skipped when unset.

    uv run python -m tests.bench.bench_ingest [--events 20000] [--singles 5000] [--workers 1]

The servers run as separate processes under uvicorn; this process is the load generator
(tests/bench/http_load.py: raw keep-alive HTTP/1.1 on uvloop, bodies built up front). Each line
prints the load generator's CPU share and the server's CPU microseconds per event.
Infrastructure: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else synergy_common.testinfra.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool, migrate
from synergy_common.kafka import OutgoingMessage, durable_producer, publish_all
from synergy_common.localinfra import create_topic
from synergy_ingest.client_events import accept_event, parse_client_event
from synergy_ingest.publish_outcome import OutgoingRecord
from synergy_ingest.publisher import EventPublisher
from synergy_ingest.request_context import RequestContext

from tests.bench.http_load import LoadResult, build_request, drive, process_tree_cpu_seconds
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "fixtures" / "seed_examples" / "000_1_product_scanned.json"
BATCH = 100
PUBLISH_TIMEOUT = 10.0


async def infrastructure() -> tuple[str, str]:
    kafka, database = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if not (kafka and database):
        from synergy_common.testinfra import aacquire

        infra = await aacquire(keep_running=True)
        kafka, database = infra.bootstrap_servers, infra.database_url
    await migrate(database)
    return kafka, database


@asynccontextmanager
async def server(args: list[str], env: dict[str, str], port: int) -> AsyncIterator[tuple[str, int]]:
    process = subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    if (await client.get(f"{url}/readyz")).status_code in (200, 404):
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def events(count: int, run: str) -> list[dict[str, Any]]:
    seed = json.loads(SEED.read_text())
    return [
        {**seed, "identifiers": {"id": f"user-{i % 5000}"}, "event_id": f"{run}-{i}"} for i in range(count)
    ]


def segment_message(event: dict[str, Any], message_type: str | None = None) -> dict[str, Any]:
    message = {
        "userId": event["identifiers"]["id"],
        "event": event["name"],
        "properties": event["data"],
        "messageId": event["event_id"],
        "timestamp": event["timestamp"],
    }
    return {"type": message_type or "track", **message}


def report(label: str, events_sent: int, result: LoadResult, server_cpu: float | None) -> float:
    rate = events_sent / result.seconds
    cpu = f"server {server_cpu / events_sent * 1e6:6.1f} us/event" if server_cpu is not None else " " * 23
    print(
        f"{label:<40} {rate:>9,.0f} events/s  p50 {result.percentile(0.5) * 1000:6.1f} ms"
        f"  p99 {result.percentile(0.99) * 1000:6.1f} ms  {cpu}  load generator {result.cpu_share:4.2f} core"
    )
    return rate


async def measured(
    url: str, pid: int | None, requests: Sequence[bytes], concurrency: int, expect: int
) -> tuple[LoadResult, float | None]:
    cpu_before = process_tree_cpu_seconds(pid) if pid else None
    result = await drive(url, requests, concurrency)
    cpu = process_tree_cpu_seconds(pid) - cpu_before if pid and cpu_before is not None else None
    wrong = {status: n for status, n in result.statuses.items() if status != expect}
    assert not wrong, f"unexpected answers from {url}: {wrong}"
    return result, cpu


Chunk = Callable[[int], Awaitable[None]]


async def run_chunks(chunks: int, concurrency: int, job: Chunk) -> tuple[float, list[float]]:
    next_chunk = iter(range(chunks))
    latencies: list[float] = []

    async def worker() -> None:
        for index in next_chunk:
            started = time.perf_counter()
            await job(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def producer_report(label: str, count: int, seconds: float, latencies: list[float], cpu: float) -> float:
    ordered = sorted(latencies)
    rate = count / seconds
    print(
        f"{label:<40} {rate:>9,.0f} events/s  p50 {ordered[len(ordered) // 2] * 1000:6.1f} ms"
        f"  p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000:6.1f} ms"
        f"  producer {cpu / count * 1e6:6.1f} us/event"
    )
    return rate


async def bare_producers(kafka: str, topic: str, records: list[OutgoingRecord], concurrency: int) -> float:
    """Both producers with ingest's settings on the same records; returns librdkafka's rate."""
    chunks = len(records) // BATCH
    producer = durable_producer(kafka)
    await producer.start()

    async def aiokafka_chunk(index: int) -> None:
        chunk = records[index * BATCH : (index + 1) * BATCH]
        messages = [OutgoingMessage(topic, r.key.decode(), r.value, r.headers) for r in chunk]
        await publish_all(producer, messages)

    await run_chunks(5, 1, aiokafka_chunk)
    cpu = time.process_time()
    seconds, latencies = await run_chunks(chunks, concurrency, aiokafka_chunk)
    producer_report("bare aiokafka producer", chunks * BATCH, seconds, latencies, time.process_time() - cpu)
    await producer.stop()

    publisher = EventPublisher(kafka, PUBLISH_TIMEOUT)
    publisher.topic = topic
    publisher.start()
    assert await publisher.wait_started(20), "librdkafka could not reach Kafka"

    async def librdkafka_chunk(index: int) -> None:
        outcome = await publisher.publish(records[index * BATCH : (index + 1) * BATCH])
        assert outcome.all_written, outcome

    await run_chunks(5, 1, librdkafka_chunk)
    cpu = time.process_time()
    seconds, latencies = await run_chunks(chunks, concurrency, librdkafka_chunk)
    rate = producer_report(
        "bare librdkafka producer (ceiling)", chunks * BATCH, seconds, latencies, time.process_time() - cpu
    )
    await publisher.stop()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--singles", type=int, default=5_000)
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument("--single-concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("INGEST_WORKERS", "1")))
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
    print(
        f"ingest benchmark: {options.events} events in batches of {BATCH} ({options.batch_concurrency} in flight),"
        f" {options.singles} single posts ({options.single_concurrency} in flight), {options.workers} worker(s)"
    )

    context = RequestContext(brand.brand_id, datetime.now(UTC), "bench", "bench/1.0", "127.0.0.1")
    records = [accept_event(parse_client_event(e), context, 32 * 1024).record for e in batch_events]
    ceiling_batch = await bare_producers(kafka, topic, records, options.batch_concurrency)

    host = "127.0.0.1"
    bearer = {"Authorization": f"Bearer {brand.write_key}", "Content-Type": "application/json"}
    batch_requests = [
        build_request(
            host,
            "/v1/events/batch",
            orjson.dumps({"batch": batch_events[i * BATCH : (i + 1) * BATCH]}),
            bearer,
        )
        for i in range(batches)
    ]
    single_requests = [build_request(host, "/v1/events", orjson.dumps(e), bearer) for e in single_events]
    warmup = [build_request(host, "/v1/events", orjson.dumps(e), bearer) for e in events(50, f"w{run}")]

    port = free_port()
    ingest_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": database,
        "SYNERGY_TOPIC_EVENTS": topic,
        "INGEST_PORT": str(port),
        "INGEST_WORKERS": str(options.workers),
        "LOG_LEVEL": "WARNING",
    }
    async with server(["-m", "synergy_ingest"], ingest_env, port) as (url, pid):
        await drive(url, warmup, 4)
        result, cpu = await measured(url, pid, batch_requests, options.batch_concurrency, 202)
        ingest_batch = report("ingest POST /v1/events/batch", batches * BATCH, result, cpu)
        result, cpu = await measured(url, pid, single_requests, options.single_concurrency, 202)
        ingest_single = report("ingest POST /v1/events", options.singles, result, cpu)
        peer = os.environ.get("INGEST_BENCH_PEER_URL")
        if peer:
            await side_by_side(url, pid, peer, brand.write_key, batch_events, single_events, options)

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
    async with server(bare_args, {}, bare_port) as (url, pid):
        await drive(url, warmup, 4)
        result, cpu = await measured(url, pid, single_requests, options.single_concurrency, 202)
        ceiling_single = report("bare FastAPI 202 handler (ceiling)", options.singles, result, cpu)

    print()
    print(
        f"batch path:  {ingest_batch:,.0f} / {ceiling_batch:,.0f} events/s = {ingest_batch / ceiling_batch:.2f}"
        " of the bare librdkafka producer (target >= 0.6)"
    )
    print(
        f"single path: {ingest_single:,.0f} / {ceiling_single:,.0f} events/s = {ingest_single / ceiling_single:.2f}"
        " of the bare FastAPI handler (target >= 0.7)"
    )
    if not os.environ.get("INGEST_BENCH_PEER_URL"):
        print(
            "side by side: skipped (set INGEST_BENCH_PEER_URL to a Segment-compatible gateway, e.g. rudder-server)"
        )


async def side_by_side(
    url: str,
    pid: int,
    peer: str,
    write_key: str,
    batch_events: list[dict[str, Any]],
    single_events: list[dict[str, Any]],
    options: argparse.Namespace,
) -> None:
    """The same Segment bodies to ingest's Segment routes and to the peer, one server loaded at a time."""
    peer_key = os.environ.get("INGEST_BENCH_PEER_WRITE_KEY", "")
    host = "127.0.0.1"

    def requests_for(key: str, salt: str) -> tuple[list[bytes], list[bytes]]:
        basic = {
            "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
            "Content-Type": "application/json",
        }
        batches = [
            build_request(
                host,
                "/v1/batch",
                orjson.dumps(
                    {
                        "batch": [
                            segment_message({**e, "event_id": f"{salt}{e['event_id']}"})
                            for e in batch_events[i * BATCH : (i + 1) * BATCH]
                        ]
                    }
                ),
                basic,
            )
            for i in range(len(batch_events) // BATCH)
        ]
        singles = [
            build_request(
                host,
                "/v1/track",
                orjson.dumps(segment_message({**e, "event_id": f"{salt}{e['event_id']}"}, "track")),
                basic,
            )
            for e in single_events
        ]
        return batches, singles

    ours_batches, ours_singles = requests_for(write_key, "ours-")
    peer_batches, peer_singles = requests_for(peer_key, "peer-")
    for label, target, target_pid, batches, singles in (
        ("ingest", url, pid, ours_batches, ours_singles),
        ("peer", peer, None, peer_batches, peer_singles),
        ("ingest", url, pid, ours_batches, ours_singles),
        ("peer", peer, None, peer_batches, peer_singles),
    ):
        result, cpu = await measured(target, target_pid, batches, options.batch_concurrency, 200)
        report(f"{label} POST /v1/batch (Segment)", len(batches) * BATCH, result, cpu)
        result, cpu = await measured(target, target_pid, singles, options.single_concurrency, 200)
        report(f"{label} POST /v1/track (Segment)", len(singles), result, cpu)


if __name__ == "__main__":
    uvloop.run(main())
