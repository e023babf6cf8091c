"""The consumer runtime's own ceiling: a pipeline of no-op steps against a bare aiokafka consume loop.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 uv run python -m tests.bench.bench_streaming

Both read the same pre-filled topic from the start, each in a consumer group of its own, alternately,
four times each (`BENCH_RUNS`; medians compared: one run to the next moves by a fifth on this shared
machine), in one process whose collector is set as the runtime sets it for itself
(`tune_garbage_collector`, before the first loop): the runtime's `run()` would otherwise leave the bare
loops after the first with its settings, and the first alone with CPython's defaults, which cost the
bare loop ~0.25 µs a record (1.6-1.8 against 1.35-1.4). The bare loop polls (`getmany`,
2,000 records at most, as the runtime) and decodes each value with orjson (what any envelope consumer
must do). The pipeline is `StreamProcessor` with `prepare_runs`, the API of a batch consumer; a no-op
needs no grouping by key, so it answers each poll chunk as one `Span` (`PolledChunk.span`: the
chunk's records in offset order, one unit), and a deliver answers DELIVERED: decode and envelope
checks, per-key order (a partition's spans one at a time while their keys are nowhere else; cut by
key otherwise), batching by record count, settling and done-prefix commits, all real; nothing else.
(`BENCH_API=runs`: one `Run` a key of each chunk, `PolledChunk.runs`, what a consumer that groups by
key answers; `BENCH_API=records`: the per-record API, one Work a record. Knobs for experiments, both
loops alike: `BENCH_POLL_RECORDS` (2,000), and `BENCH_READ_AHEAD` for the runtime.)
Each rate is records per second from the first record handled to the last. The load generator (the
producer) fills the topic before any timing, so it takes no CPU from the loops under test; its share
of the CPU during the timed runs is printed (0 %), and the process's own CPU share during each run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Hashable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from synergy_common.gc_tuning import YOUNG_THRESHOLD, tune_garbage_collector
from synergy_common.localinfra import create_topic
from synergy_common.testinfra import aacquire
from synergy_streaming import (
    DELIVERED,
    BatchOutcome,
    KafkaConsumer,
    PolledChunk,
    Run,
    Source,
    StreamConfig,
    StreamProcessor,
    Work,
)

RECORDS = int(os.environ.get("BENCH_RECORDS", "200000"))
USERS = 5000
PARTITIONS = 6
RUNS = int(os.environ.get("BENCH_RUNS", "4"))
MAX_POLL_RECORDS = int(os.environ.get("BENCH_POLL_RECORDS", "2000"))
API = os.environ.get("BENCH_API", "span")


async def fill(bootstrap: str, topic: str) -> tuple[float, float]:
    """Records/s the producer wrote, and its CPU share while it did."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                compression_type="lz4")
    await producer.start()
    started, cpu = time.monotonic(), time.process_time()
    try:
        futures = []
        for i in range(RECORDS):
            user = f"user-{i % USERS}"
            value = orjson.dumps({"event_id": f"{i:026d}", "brand_id": "1", "type": "track",
                                  "name": "product_scanned", "identifiers": {"id": user},
                                  "data": {"sku": "SKU-1", "n": i}, "timestamp": "2024-05-22T18:35:12Z"})
            futures.append(await producer.send(topic, value, key=f"1:{user}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    wall = time.monotonic() - started
    return RECORDS / wall, (time.process_time() - cpu) / wall


async def bare_loop(bootstrap: str, topic: str) -> tuple[float, float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=MAX_POLL_RECORDS)
    await consumer.start()
    seen = 0
    first = cpu = 0.0
    try:
        while seen < RECORDS:
            batches = await consumer.getmany(timeout_ms=100, max_records=MAX_POLL_RECORDS)
            for records in batches.values():
                if not seen and records:
                    first, cpu = time.monotonic(), time.process_time()
                for record in records:
                    orjson.loads(record.value)
                seen += len(records)
        wall = time.monotonic() - first
    finally:
        await consumer.stop()
    return RECORDS / wall, (time.process_time() - cpu) / wall


async def pipeline(bootstrap: str, topic: str, **overrides: Any) -> tuple[float, float]:
    delivered = 0
    first = cpu = 0.0
    done = asyncio.Event()

    def prepare(source: Source) -> list[Work]:
        return prepare_many([source])

    def prepare_many(sources: list[Source]) -> list[Work]:
        nonlocal first, cpu
        if not first:
            first, cpu = time.monotonic(), time.process_time()
        return [Work(key=source.record.key.decode() if source.record.key else "", target="noop", payload=None)
                for source in sources]

    def prepare_runs(chunk: PolledChunk) -> list[Run]:
        nonlocal first, cpu
        if not first:
            first, cpu = time.monotonic(), time.process_time()
        return [chunk.span("noop")] if API == "span" else chunk.runs("noop")

    async def deliver(target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        nonlocal delivered
        delivered += sum([item.count for item in items])
        if delivered >= RECORDS:
            done.set()
        return DELIVERED

    consumer = KafkaConsumer(bootstrap, group_id=f"bench-runtime-{uuid.uuid4().hex[:8]}", client_id="bench")
    api: dict[str, Any] = {"prepare_many": prepare_many} if API == "records" else {"prepare_runs": prepare_runs}
    processor = StreamProcessor(StreamConfig(service="bench", topics=[topic], **overrides), consumer, prepare,
                                deliver, **api)
    await consumer.start()
    task = asyncio.create_task(processor.run())
    try:
        await asyncio.wait_for(done.wait(), 600)
        wall = time.monotonic() - first
        used = time.process_time() - cpu
    finally:
        processor.stop()
        await task
        await consumer.stop()
    return RECORDS / wall, used / wall


async def main() -> None:
    tune_garbage_collector(YOUNG_THRESHOLD, freeze=False)  # the runtime's own settings, for both loops
    infra = await aacquire()
    try:
        topic = f"bench.streaming.{uuid.uuid4().hex[:8]}"
        await create_topic(infra.bootstrap_servers, topic, PARTITIONS)
        fill_rate, fill_cpu = await fill(infra.bootstrap_servers, topic)
        print(f"load generator: filled {RECORDS:,} records at {fill_rate:,.0f}/s (CPU share {fill_cpu:.0%}) "
              "before timing; its CPU share during the timed runs: 0%", flush=True)
        bare: list[float] = []
        runtime: list[float] = []
        bare_cpu: list[float] = []  # µs of CPU a record: robust to a busy machine, unlike the rates
        runtime_cpu: list[float] = []
        for run in range(RUNS):  # alternately, so both see the same spells of noise on a shared machine
            rate, cpu = await bare_loop(infra.bootstrap_servers, topic)
            bare.append(rate)
            bare_cpu.append(cpu / rate * 1e6)
            print(f"run {run + 1}: bare loop {rate:,.0f} records/s (process CPU {cpu:.0%}, "
                  f"{bare_cpu[-1]:.2f} µs CPU a record)", flush=True)
            rate, cpu = await pipeline(infra.bootstrap_servers, topic, max_poll_records=MAX_POLL_RECORDS,
                                       **({"read_ahead": int(os.environ["BENCH_READ_AHEAD"])}
                                          if "BENCH_READ_AHEAD" in os.environ else {}))
            runtime.append(rate)
            runtime_cpu.append(cpu / rate * 1e6)
            print(f"run {run + 1}: runtime   {rate:,.0f} records/s (process CPU {cpu:.0%}, "
                  f"{runtime_cpu[-1]:.2f} µs CPU a record)", flush=True)
    finally:
        await asyncio.to_thread(infra.close)
    ceiling, figure = statistics.median(bare), statistics.median(runtime)
    print(f"bare aiokafka consume loop: {ceiling:,.0f} records/s (ceiling, median of {RUNS})")
    print(f"streaming runtime, no-op steps ({API}): {figure:,.0f} records/s (median of {RUNS})  "
          f"ratio {figure / ceiling:.2f} (target >= 0.7)")
    per_record = statistics.median(bare_cpu) / statistics.median(runtime_cpu)
    print(f"CPU a record: bare {statistics.median(bare_cpu):.2f} µs, runtime {statistics.median(runtime_cpu):.2f} µs: "
          f"ratio {per_record:.2f} (what the rate ratio is when both loops get a whole core)")


if __name__ == "__main__":
    asyncio.run(main())
