"""Ingest benchmark: events/s, p50/p99, CPU per event, each against a ceiling measured in the same run.

- POST /v1/events/batch (100 events a request, 8 in flight) against the bare producer ingest uses
  (librdkafka through EventPublisher: idempotent, acks=all, lz4) sending the same records in chunks of
  100, 8 in flight. Target: at least 0.6. The bare aiokafka producer is printed beside it.
  The ceiling's records are what the server builds for these requests (same envelopes, same size).
- POST /v1/events (32 in flight) against a bare FastAPI handler that answers 202, served the same
  way (tests/bench/bare_fastapi.py: ingest's uvicorn configuration, GC tuning and worker count).
  Target: at least 0.7. The same for POST /v1/track with Segment bodies.
- Both servers (and the bare producer) stay up for the whole run; each path and its ceiling run in
  turn, in --rounds slices, so the noise of a shared machine hits both sides of a ratio alike; every
  other round each pair runs the other way round, so neither side always runs first. The ratio is
  the median of the slices' own ratios (printed in the order they ran, with the pooled one beside).
- A warm-up at the measured concurrency first (a freshly started broker's JIT included), and every
  line prints the local Kafka broker's CPU per event too: it shares the machine's cores.
- With INGEST_BENCH_PEER_URL (and INGEST_BENCH_PEER_WRITE_KEY), the same Segment bodies go to that
  Segment-compatible gateway (e.g. rudder-server) and to ingest's Segment routes, one at a time,
  --rounds times each way round; skipped when unset. INGEST_BENCH_PEER_PID and
  INGEST_BENCH_PEER_STORE_PID (its database's postmaster) add their CPU per event to its lines.
  services/ingest/README.md says how rudder-server was built and run here.

    uv run python -m tests.bench.bench_ingest [--events 60000] [--singles 12000] [--rounds 6] [--workers 1]

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
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool, migrate
from synergy_common.http import new_correlation_id
from synergy_common.kafka import OutgoingMessage, durable_producer, publish_all
from synergy_common.localinfra import create_topic
from synergy_ingest.client_events import accept_event, parse_client_event
from synergy_ingest.publish_outcome import OutgoingRecord
from synergy_ingest.publisher import EventPublisher
from synergy_ingest.request_context import RequestContext
from synergy_ingest.settings import IngestSettings

from tests.bench.http_load import LoadResult, build_request, drive
from tests.bench.machine_cpu import budget_line, kafka_broker_pid, process_tree_cpu_seconds
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "fixtures" / "seed_examples" / "000_1_product_scanned.json"
BATCH = 100
PUBLISH_TIMEOUT = 10.0
# Each path and its ceiling run in turn, in this many slices: the noise of the shared machine hits
# both sides alike. The ratio printed is the median of the slices' own ratios (each pair ran within
# the same few seconds), so a burst of outside load on one slice does not move it much. With 2 slices
# of 10,000 events / 2,500 posts, two back-to-back runs of the same code differed by up to 40%.
ROUNDS = 6
EVENTS = 60_000
SINGLES = 12_000
WARMUP_SINGLES = 1_500  # a route, to each server
WARMUP_BATCHES = 40


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


def report(label: str, events_sent: int, result: LoadResult, server_cpu: float | None) -> tuple[float, float]:
    """Prints the line; returns events/s and the server's CPU microseconds per event (0 when unknown)."""
    rate = events_sent / result.seconds
    cpu = f"server {server_cpu / events_sent * 1e6:6.1f} us/event" if server_cpu is not None else " " * 23
    print(
        f"{label:<40} {rate:>9,.0f} events/s  p50 {result.percentile(0.5) * 1000:6.1f} ms"
        f"  p99 {result.percentile(0.99) * 1000:6.1f} ms  {cpu}  load generator {result.cpu_share:4.2f} core"
    )
    return rate, server_cpu / events_sent * 1e6 if server_cpu is not None else 0.0


async def measured(
    url: str,
    pid: int | None,
    requests: Sequence[bytes],
    concurrency: int,
    expect: int,
    broker_pid: int | None = None,
) -> tuple[LoadResult, float | None, float | None]:
    """The load, the server's CPU seconds and the Kafka broker's (None when unknown)."""
    cpu_before, broker_before = cpu_seconds(pid), cpu_seconds(broker_pid)
    result = await drive(url, requests, concurrency)
    cpu, broker = used(cpu_before, pid), used(broker_before, broker_pid)
    wrong = {status: n for status, n in result.statuses.items() if status != expect}
    assert not wrong, f"unexpected answers from {url}: {wrong}"
    return result, cpu, broker


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


@dataclass
class Tally:
    """One line's figures, summed over the slices it ran in."""

    events: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float | None = 0.0  # the server's (or, for the producer, this process') CPU seconds
    client_cpu: float = 0.0
    broker_cpu: float | None = 0.0  # the Kafka broker's JVM, when it runs on this machine
    slice_rates: list[float] = field(default_factory=list)

    def add(
        self,
        events: int,
        seconds: float,
        latencies: list[float],
        cpu: float | None,
        client: float,
        broker: float | None = None,
    ) -> None:
        self.events += events
        self.seconds += seconds
        self.latencies += latencies
        self.cpu = None if cpu is None or self.cpu is None else self.cpu + cpu
        self.client_cpu += client
        self.broker_cpu = None if broker is None or self.broker_cpu is None else self.broker_cpu + broker
        self.slice_rates.append(events / seconds)

    def add_load(self, events: int, result: LoadResult, cpu: float | None, broker: float | None) -> None:
        self.add(events, result.seconds, result.latencies, cpu, result.client_cpu_seconds, broker)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_event(self) -> float:
        return self.cpu / self.events * 1e6 if self.cpu is not None else 0.0

    def print(self, label: str, whose: str = "server", load_generator: bool = True) -> None:
        ordered = sorted(self.latencies)
        cpu = f"{whose} {self.cpu_per_event:6.1f} us/event" if self.cpu is not None else " " * 23
        client = f"  load generator {self.client_cpu / self.seconds:4.2f} core" if load_generator else ""
        broker = (
            f"  Kafka {self.broker_cpu / self.events * 1e6:5.1f} us/event"
            if self.broker_cpu is not None
            else ""
        )
        print(
            f"{label:<40} {self.rate:>9,.0f} events/s  p50 {ordered[len(ordered) // 2] * 1000:6.1f} ms"
            f"  p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000:6.1f} ms  {cpu}{client}{broker}"
        )


def batch_budget(batch: Tally, producer: Tally) -> str:
    """The cores the batch target's rate needs at this run's CPU per batch event (the server's, the
    broker's, the load generator's), and what the ceiling itself kept busy."""
    per_event = {"ingest": batch.cpu_per_event, "load generator": batch.client_cpu / batch.events * 1e6}
    if batch.broker_cpu is not None:
        per_event["Kafka"] = batch.broker_cpu / batch.events * 1e6
    line = budget_line("0.6 of the bare librdkafka producer", 0.6 * producer.rate, per_event)
    if producer.cpu is not None and producer.broker_cpu is not None:
        ceiling = producer.rate * (producer.cpu + producer.broker_cpu) / producer.events
        line += f" (the ceiling itself kept {ceiling:.2f} cores busy: producer and Kafka)"
    return line


def slice_ratios(ours: Tally, ceiling: Tally) -> list[float]:
    return [a / b for a, b in zip(ours.slice_rates, ceiling.slice_rates, strict=True)]


def ratio_line(ours: Tally, ceiling: Tally) -> str:
    """The median of the slices' ratios, each slice's in the order they ran, and the pooled ratio (total
    events over total time)."""
    ratios = slice_ratios(ours, ceiling)
    in_order = ", ".join(f"{r:.2f}" for r in ratios)
    return (
        f"{statistics.median(ratios):.2f} (median of {len(ratios)} slices: {in_order};"
        f" pooled {ours.rate / ceiling.rate:.2f})"
    )


def cpu_seconds(pid: int | None) -> float | None:
    return process_tree_cpu_seconds(pid) if pid else None


def used(before: float | None, pid: int | None) -> float | None:
    after = cpu_seconds(pid)
    return after - before if after is not None and before is not None else None


async def aiokafka_line(kafka: str, topic: str, records: list[OutgoingRecord], concurrency: int) -> None:
    """The bare aiokafka producer on the same records, for comparison (ingest no longer uses it)."""
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
    tally = Tally()
    tally.add(chunks * BATCH, seconds, latencies, time.process_time() - cpu, 0.0)
    tally.print("bare aiokafka producer", "producer", load_generator=False)
    await producer.stop()


def slices(items: Sequence[bytes], rounds: int) -> list[Sequence[bytes]]:
    size = len(items) // rounds
    return [items[i * size : (i + 1) * size] for i in range(rounds)]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--singles", type=int, default=SINGLES)
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument("--single-concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("INGEST_WORKERS", "1")))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    options = parser.parse_args()

    kafka, database = await infrastructure()
    pool = await create_pool(database)
    brand = await create_brand(pool, "Bench Brand", CredentialCipher(CredentialCipher.generate_key()))
    await pool.close()
    broker_pid = kafka_broker_pid(kafka)
    topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    await create_topic(kafka, topic, 12)
    run = uuid.uuid4().hex[:6]
    batch_events = events(options.events, f"b{run}")
    single_events = events(options.singles, f"s{run}")
    track_events = events(options.singles, f"t{run}")
    batches = options.events // BATCH
    print(
        f"ingest benchmark: {options.events} events in batches of {BATCH} ({options.batch_concurrency} in flight),"
        f" {options.singles} single posts a route ({options.single_concurrency} in flight),"
        f" {options.workers} worker(s); each path and its ceiling alternate in {options.rounds} slices"
    )

    # What the server builds for the load generator's requests: no User-Agent, 127.0.0.1, a fresh
    # correlation id; so the ceiling sends the same envelopes, byte for byte in size.
    context = RequestContext(brand.brand_id, datetime.now(UTC), new_correlation_id(), None, "127.0.0.1")
    records = [accept_event(parse_client_event(e), context, 32 * 1024).record for e in batch_events]
    await aiokafka_line(kafka, topic, records, options.batch_concurrency)

    host = "127.0.0.1"
    bearer = {"Authorization": f"Bearer {brand.write_key}", "Content-Type": "application/json"}
    basic = {
        "Authorization": "Basic " + base64.b64encode(f"{brand.write_key}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    def batch_requests_of(batched: list[dict[str, Any]], count: int) -> list[bytes]:
        return [
            build_request(
                host, "/v1/events/batch", orjson.dumps({"batch": batched[i * BATCH : (i + 1) * BATCH]}), bearer
            )
            for i in range(count)
        ]

    batch_requests = batch_requests_of(batch_events, batches)
    single_requests = [build_request(host, "/v1/events", orjson.dumps(e), bearer) for e in single_events]
    track_requests = [
        build_request(host, "/v1/track", orjson.dumps(segment_message(e, "track")), basic)
        for e in track_events
    ]
    # Warm-up at the measured concurrency, long enough for a freshly started broker's JIT too: a
    # broker started a minute before cost 200 to 270 us of CPU per single post against 50 warm, and
    # the first slices of such a run came out at a third of the later ones.
    warmup = [
        build_request(host, "/v1/events", orjson.dumps(e), bearer) for e in events(WARMUP_SINGLES, f"w{run}")
    ]
    warmup += [
        build_request(host, "/v1/track", orjson.dumps(segment_message(e, "track")), basic)
        for e in events(WARMUP_SINGLES, f"x{run}")
    ]
    warmup_events = events(WARMUP_BATCHES * BATCH, f"y{run}")
    warmup_batches = batch_requests_of(warmup_events, WARMUP_BATCHES)

    # the ceiling: ingest's own producer and settings, INGEST_PRODUCER_LINGER_MS included (the server
    # reads the same env), on the records ingest builds for the same events
    publisher = EventPublisher(kafka, PUBLISH_TIMEOUT, IngestSettings().producer_linger_ms)
    publisher.topic = topic
    publisher.start()
    assert await publisher.wait_started(20), "librdkafka could not reach Kafka"

    async def producer_chunk(index: int) -> None:
        outcome = await publisher.publish(records[index * BATCH : (index + 1) * BATCH])
        assert outcome.all_written, outcome

    await run_chunks(min(batches, WARMUP_BATCHES), options.batch_concurrency, producer_chunk)

    port, bare_port = free_port(), free_port()
    ingest_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": database,
        "SYNERGY_TOPIC_EVENTS": topic,
        "INGEST_PORT": str(port),
        "INGEST_WORKERS": str(options.workers),
        "LOG_LEVEL": "WARNING",
    }
    bare_args = ["-m", "tests.bench.bare_fastapi", str(bare_port), str(options.workers)]
    lines = {name: Tally() for name in ("producer", "batch", "single", "bare", "track", "bare_track")}
    chunks_per_round = batches // options.rounds
    async with (
        server(["-m", "synergy_ingest"], ingest_env, port) as (url, pid),
        server(bare_args, {}, bare_port) as (bare_url, bare_pid),
    ):
        await drive(url, warmup_batches, options.batch_concurrency)
        await drive(url, warmup, options.single_concurrency)
        await drive(bare_url, warmup, options.single_concurrency)
        for round_index, (batch_slice, single_slice, track_slice) in enumerate(
            zip(
                slices(batch_requests, options.rounds),
                slices(single_requests, options.rounds),
                slices(track_requests, options.rounds),
                strict=True,
            )
        ):
            first = round_index * chunks_per_round

            async def producer_slice(first: int = first) -> None:
                cpu, broker = time.process_time(), cpu_seconds(broker_pid)
                seconds, latencies = await run_chunks(
                    chunks_per_round, options.batch_concurrency, lambda i: producer_chunk(first + i)
                )
                lines["producer"].add(
                    chunks_per_round * BATCH,
                    seconds,
                    latencies,
                    time.process_time() - cpu,
                    0.0,
                    used(broker, broker_pid),
                )

            async def batch_slice_run(batch_slice: Sequence[bytes] = batch_slice) -> None:
                result, cpu_used, broker = await measured(
                    url, pid, batch_slice, options.batch_concurrency, 202, broker_pid
                )
                lines["batch"].add_load(len(batch_slice) * BATCH, result, cpu_used, broker)

            # Each pair runs in turn, and every other round the other way round (ABBA): whichever
            # side runs second no longer always inherits the first one's aftermath (Kafka's and the
            # kernel's catch-up after 200 kB batches, the other server's idle connections closing).
            flip = round_index % 2 == 1
            for job in (batch_slice_run, producer_slice) if flip else (producer_slice, batch_slice_run):
                await job()
            pairs = (
                (("single", url, pid, single_slice, 202), ("bare", bare_url, bare_pid, single_slice, 202)),
                (
                    ("track", url, pid, track_slice, 200),
                    ("bare_track", bare_url, bare_pid, track_slice, 200),
                ),
            )
            for pair in pairs:
                for name, target, target_pid, requests, status in reversed(pair) if flip else pair:
                    result, cpu_used, broker = await measured(
                        target, target_pid, requests, options.single_concurrency, status, broker_pid
                    )
                    lines[name].add_load(len(requests), result, cpu_used, broker)
        await publisher.stop()
        lines["producer"].print("bare librdkafka producer (ceiling)", "producer", load_generator=False)
        lines["batch"].print("ingest POST /v1/events/batch")
        lines["single"].print("ingest POST /v1/events")
        lines["bare"].print("bare FastAPI 202 handler (ceiling)")
        lines["track"].print("ingest POST /v1/track (Segment)")
        lines["bare_track"].print("bare FastAPI /v1/track (ceiling)")
        peer = os.environ.get("INGEST_BENCH_PEER_URL")
        if peer:
            await side_by_side(url, pid, broker_pid, peer, brand.write_key, batch_events, single_events, options)

    batch, producer = lines["batch"], lines["producer"]
    print()
    print(
        f"batch path:  {batch.rate:,.0f} / {producer.rate:,.0f} events/s;"
        f" {ratio_line(batch, producer)} of the bare librdkafka producer (target >= 0.6)"
    )
    for name, ceiling, route in (("single", "bare", "/v1/events"), ("track", "bare_track", "/v1/track")):
        ours, bare = lines[name], lines[ceiling]
        print(
            f"single path {route}: {ours.rate:,.0f} / {bare.rate:,.0f} events/s;"
            f" {ratio_line(ours, bare)} of the bare FastAPI handler (target >= 0.7)"
        )
    # On a shared machine events/s follow the CPU share the process gets; CPU per event does not.
    single, bare = lines["single"], lines["bare"]
    print(
        f"CPU per event: batch {batch.cpu_per_event:.1f} us against the producer's {producer.cpu_per_event:.1f}"
        f" ({producer.cpu_per_event / batch.cpu_per_event:.2f}); single {single.cpu_per_event:.0f} us against"
        f" the bare handler's {bare.cpu_per_event:.0f} ({bare.cpu_per_event / single.cpu_per_event:.2f})"
    )
    print(batch_budget(batch, producer))
    if not os.environ.get("INGEST_BENCH_PEER_URL"):
        print(
            "side by side: skipped (set INGEST_BENCH_PEER_URL to a Segment-compatible gateway, e.g. rudder-server)"
        )


async def side_by_side(
    url: str,
    pid: int,
    broker_pid: int | None,
    peer: str,
    write_key: str,
    batch_events: list[dict[str, Any]],
    single_events: list[dict[str, Any]],
    options: argparse.Namespace,
) -> None:
    """The same Segment bodies to ingest's Segment routes and to the peer, one server loaded at a time,
    `--rounds` times each way round. Each line prints the server's CPU per event and its durable
    store's: Kafka's broker for ingest, the peer's (INGEST_BENCH_PEER_STORE_PID, e.g. the postmaster of
    rudder-server's jobsdb, counted with its backends) for the peer."""
    peer_key = os.environ.get("INGEST_BENCH_PEER_WRITE_KEY", "")
    peer_pid, store_pid = (int(os.environ.get(name) or 0) or None
                           for name in ("INGEST_BENCH_PEER_PID", "INGEST_BENCH_PEER_STORE_PID"))
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

    sides = {
        "ingest": (url, pid, broker_pid, requests_for(write_key, "ours-")),
        "peer": (peer, peer_pid, store_pid, requests_for(peer_key, "peer-")),
    }
    rates: dict[tuple[str, str], list[float]] = {}
    print(f"side by side against {peer} ({options.rounds} rounds, each way round in turn):")
    for round_number in range(options.rounds):
        order = ("ingest", "peer") if round_number % 2 == 0 else ("peer", "ingest")
        for path, concurrency, kind, per_request in (("/v1/batch", options.batch_concurrency, 0, BATCH),
                                                     ("/v1/track", options.single_concurrency, 1, 1)):
            for label in order:
                target, target_pid, store, bodies = sides[label]
                requests = bodies[kind]
                events = len(requests) * per_request
                result, cpu, store_cpu = await measured(target, target_pid, requests, concurrency, 200, store)
                rate, _ = report(f"{label} POST {path} (Segment)", events, result, cpu)
                if store_cpu is not None:
                    print(f"{'':<40} its durable store {store_cpu / events * 1e6:6.1f} us/event")
                rates.setdefault((label, path), []).append(rate)
    for path in ("/v1/batch", "/v1/track"):
        ours, theirs = statistics.median(rates[("ingest", path)]), statistics.median(rates[("peer", path)])
        print(f"side by side {path}: ingest {ours:,.0f} / peer {theirs:,.0f} events/s (medians of "
              f"{options.rounds}): {ours / theirs:.2f} of the peer (goal > 1)")


if __name__ == "__main__":
    uvloop.run(main())
