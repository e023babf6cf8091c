"""Achievements benchmark: one worker's events/s against two ceilings measured over the same topic in
the same run: a bare aiokafka consume-and-produce loop, and a bare faust agent that only drains
`take_events` (tests/bench/faust_floor.py); and the memory the state of 100k users takes.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 uv run python -m tests.bench.bench_achievements

The topic is filled before any loop runs, so no load generator shares the CPU with a loop under test.
The loops consume the same filled topic (from the start, in their own consumer group), poll at most
500 records at a time and produce through `durable_producer` with the worker's PRODUCER_SETTINGS (and its lz4 level, `compress_lz4_fast`); they
run alternately, three times each, and the medians are compared. Each rate is input events per second on the
broker timestamps of what the loop wrote, read after the loop has finished: the bare loop's copies (one
per event), the worker's snapshots (one per user per batch, counted as the events their state_version
advanced by). The worker runs Kafka-only (ACHIEVEMENTS_PERSIST=false) with the memory store.

The machine is shared, so wall-clock rates of loops run one after another see different spells of
load. Each loop's events per CPU-second is printed too (the bare loop: this process's CPU time over
the loop; faust's and the worker's: the subprocess's with its children (the worker's batch body runs in
two), all threads, between its first and its last committed offsets),
which another process's load changes much less; its ratios are printed next to the wall-clock ones.

BENCH_PROFILE=<path> runs the worker under cProfile and writes its stats there (then its figures are
the profiled worker's)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from synergy_achievements.processing import LoyaltyProcessor
from synergy_achievements.publisher import PRODUCER_SETTINGS, compress_lz4_fast
from synergy_achievements.rules import default_rules
from synergy_common.kafka import durable_producer
from ulid import ULID

from tests.bench.machine_cpu import (
    budget_line,
    cores_needed,
    kafka_broker_pid,
    process_cpu_seconds,
    process_tree_cpu_seconds,
)

# 120k: at 40k a loop ran 2-5 s, and start-up and the last batch (cut by the batch wait) weighed on each
# rate, the floor's most (README, eighth round).
EVENTS = int(os.environ.get("BENCH_EVENTS", "120000"))
USERS = 2000
PARTITIONS = 4
# Each loop runs this often, alternating; the median of each is reported. Three, so that one pass caught
# in a stall (seen once: a faust floor pass at 6,920 events/s against ~21k) does not decide a figure.
RUNS = 3
MAX_POLL_RECORDS = 500  # both loops poll alike (the worker's default)
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

    Read once the loop under test has finished, so the reading takes no CPU from it. Steady state: the
    events accounted for by the first millisecond's outputs are left out, and so is the time before it
    (consumer group join, faust start-up, the first batch).
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


@dataclass
class CpuPerEvent:
    """CPU microseconds an input event cost, over a loop's steady part: the loop's process with its
    children, the process alone (the worker's main process: faust, the hand-off, the transactions), and the
    local Kafka broker's JVM (None when the broker is not on this machine)."""

    tree: float
    own: float
    broker: float | None

    @classmethod
    def over(cls, events: int, tree: float, own: float, broker: float | None) -> CpuPerEvent:
        """From the CPU seconds each spent on `events` events."""
        return cls(tree / events * 1e6, own / events * 1e6, None if broker is None else broker / events * 1e6)


class Rate:
    """A loop's input events per second (wall clock, on the broker timestamps of its outputs) and what an
    event cost in CPU (None when consumed too fast to tell)."""

    def __init__(self, wall: float, per_event: CpuPerEvent | None, batch: float | None = None) -> None:
        self.wall, self.per_event, self.batch = wall, per_event, batch  # batch: mean events per take_events batch

    @property
    def cpu(self) -> float:
        """Events per CPU-second of the loop's own process (with its child processes); 0 when unknown."""
        return 1e6 / self.per_event.tree if self.per_event else 0.0


class Medians(NamedTuple):
    wall: float
    cpu: float


BROKER_PID = kafka_broker_pid(BOOTSTRAP)


def broker_cpu_seconds() -> float | None:
    return process_cpu_seconds(BROKER_PID) if BROKER_PID else None


def spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


async def bare_loop(source: str, sink: str) -> Rate:
    """The ceiling: consume the events topic and produce one record per event, with the producer
    settings the worker publishes with."""
    consumer = AIOKafkaConsumer(source, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                group_id=f"bench-bare-{uuid.uuid4().hex[:6]}", enable_auto_commit=True,
                                max_poll_records=MAX_POLL_RECORDS)
    compress_lz4_fast()  # as the worker compresses
    producer = durable_producer(BOOTSTRAP, client_id="bench-bare", **PRODUCER_SETTINGS)
    await consumer.start()
    await producer.start()
    seen = 0
    cpu_before, broker_before = time.process_time(), broker_cpu_seconds()
    try:
        while seen < EVENTS:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    await producer.send(sink, record.value, key=record.key)
                    seen += 1
        await producer.flush()
        cpu, broker_after = time.process_time() - cpu_before, broker_cpu_seconds()
    finally:
        await consumer.stop()
        await producer.stop()
    return Rate(await output_rate(sink, EVENTS, 60),
                CpuPerEvent.over(EVENTS, cpu, cpu, spent(broker_before, broker_after)))


class Sample(NamedTuple):
    done: int  # input events committed
    tree: float  # CPU seconds: the process with its children, the process alone, the broker
    own: float
    broker: float | None


async def wait_until_consumed(
    group: str, source: str, timeout: float, pid: int,
) -> CpuPerEvent | None:
    """Until the group has committed the end of every partition of the source topic; returns what an event
    cost in CPU (process `pid` with its children, alone, and the broker) from its first committed offsets to
    its last, sampled each second (None when consumed within one sample: too fast to tell)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(source, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        first: Sample | None = None
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            done = sum(committed[tp].offset for tp in partitions if tp in committed and committed[tp].offset > 0)
            now = Sample(done, process_tree_cpu_seconds(pid), process_cpu_seconds(pid) or 0.0,
                         broker_cpu_seconds())
            if first is None and done > 0:
                first = now
            if all(tp in committed and committed[tp].offset >= ends[tp] for tp in partitions):
                if first is None or done <= first.done or now.tree <= first.tree:
                    return None
                return CpuPerEvent.over(done - first.done, now.tree - first.tree, now.own - first.own,
                                        spent(first.broker, now.broker))
            await asyncio.sleep(1.0)
        raise RuntimeError(f"the worker did not consume {source} within {timeout}s")
    finally:
        await consumer.stop()
        await admin.close()


async def faust_floor_rate(source: str, prefix: str) -> Rate:
    """The faust ceiling: an agent that drains take_events and writes one record per batch (its size)."""
    app_id, sink = f"{prefix}-floor", f"{prefix}.floor-out"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "FLOOR_APP_ID": app_id,
           "FLOOR_SOURCE": source, "FLOOR_SINK": sink, "ACHIEVEMENTS_MAX_POLL_RECORDS": str(MAX_POLL_RECORDS)}
    with tempfile.TemporaryDirectory() as data_dir:
        env["FLOOR_DATA_DIR"] = data_dir
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.faust_floor", "worker", "--without-web", env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdout=asyncio.subprocess.DEVNULL, stderr=open(Path(data_dir) / "floor.log", "wb"))
        try:
            per_event = await wait_until_consumed(app_id, source, 100, process.pid)
        except RuntimeError:
            print((Path(data_dir) / "floor.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 20)
    sizes: list[int] = []

    def batch_size(record: Any) -> int:
        sizes.append(int(record.value))
        return sizes[-1]

    wall = await output_rate(sink, EVENTS, 60, batch_size)
    return Rate(wall, per_event, sum(sizes) / max(len(sizes), 1))


async def worker_rate(source: str, prefix: str) -> Rate:
    topics = {
        "SYNERGY_TOPIC_EVENTS": source, "SYNERGY_TOPIC_LOYALTY": f"{prefix}.loyalty",
        "SYNERGY_TOPIC_SNAPSHOTS": f"{prefix}.snapshots", "SYNERGY_TOPIC_REFERRAL_AWARDS": f"{prefix}.awards",
        "SYNERGY_TOPIC_DLQ": f"{prefix}.dlq",
    }
    app_id = f"{prefix}-app"
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, **topics, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "ACHIEVEMENTS_PERSIST": "false",
               "ACHIEVEMENTS_STORE": "memory://", "ACHIEVEMENTS_DATA_DIR": data_dir,
               "ACHIEVEMENTS_APP_ID": app_id, "ACHIEVEMENTS_HTTP_PORT": "0", "LOG_LEVEL": "WARNING",
               "ACHIEVEMENTS_MAX_POLL_RECORDS": str(MAX_POLL_RECORDS),
               "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "ACHIEVEMENTS_RULES_WAIT": "0s"}
        profile = os.environ.get("BENCH_PROFILE")  # a path: the worker runs under cProfile, stats written there
        command = ["-m", "cProfile", "-o", profile, "-m", "synergy_achievements"] if profile else [
            "-m", "synergy_achievements"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            per_event = await wait_until_consumed(app_id, source, 100, process.pid)
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 20)
        wall = await output_rate(topics["SYNERGY_TOPIC_SNAPSHOTS"], EVENTS, 60, EventsCoveredBySnapshots())
        return Rate(wall, per_event)


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


def median_rates(rates: list[Rate]) -> Medians:
    return Medians(statistics.median(rate.wall for rate in rates), statistics.median(rate.cpu for rate in rates))


LOOPS = ("bare aiokafka", "bare faust", "worker")


def per_loop_line(loops: tuple[Rate, ...], shown: Callable[[str, Rate, CpuPerEvent], str]) -> str:
    """One figure per loop of a run, `shown` from its rate and CPU per event; a loop consumed too fast to
    measure says so."""
    return "; ".join(f"{name} (too fast to tell)" if rate.per_event is None else shown(name, rate, rate.per_event)
                     for name, rate in zip(LOOPS, loops, strict=True))


def cpu_figure(name: str, rate: Rate, cost: CpuPerEvent) -> str:
    """A loop's own CPU per event (the worker's main process and children apart) and the broker's while it
    ran."""
    split = f" (main process {cost.own:.0f}, children {cost.tree - cost.own:.0f})" if name == "worker" else ""
    broker = f" + Kafka {cost.broker:.0f}" if cost.broker is not None else ""
    return f"{name} {cost.tree:.0f}{split}{broker}"


def cores_figure(name: str, rate: Rate, cost: CpuPerEvent) -> str:
    """The cores a loop kept busy, itself and the broker: its rate times what an event cost them."""
    return f"{name} {cores_needed(rate.wall, cost.tree, cost.broker or 0.0):.2f}"


def median_costs(worker: list[Rate]) -> dict[str, float]:
    """The worker's median CPU per event, and the broker's while the worker ran (empty when unknown)."""
    measured = [rate.per_event for rate in worker if rate.per_event is not None]
    if not measured:
        return {}
    costs = {"worker": statistics.median(cost.tree for cost in measured)}
    brokers = [cost.broker for cost in measured if cost.broker is not None]
    if brokers:
        costs["Kafka"] = statistics.median(brokers)
    return costs


async def main() -> None:
    prefix = f"bench.ach.{uuid.uuid4().hex[:6]}"
    source = f"{prefix}.events"
    await create_topics([source, *(f"{prefix}.bare-out-{run}" for run in range(RUNS)),
                         *(f"{prefix}.run{run}.floor-out" for run in range(RUNS))])
    fill_cpu, fill_started = time.process_time(), time.monotonic()
    await fill(source)
    fill_cpu, fill_wall = time.process_time() - fill_cpu, time.monotonic() - fill_started
    print(f"load average at the start: {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    bare: list[Rate] = []
    floor: list[Rate] = []
    worker: list[Rate] = []
    for run in range(RUNS):  # alternately, so all see the same spells of noise on a shared machine
        bare.append(await bare_loop(source, f"{prefix}.bare-out-{run}"))
        floor.append(await faust_floor_rate(source, f"{prefix}.run{run}"))
        worker.append(await worker_rate(source, f"{prefix}.run{run}"))
        print(f"run {run + 1}: bare aiokafka {bare[-1].wall:,.0f}, bare faust {floor[-1].wall:,.0f}, "
              f"worker {worker[-1].wall:,.0f} events/s (ratios {worker[-1].wall / bare[-1].wall:.2f}, "
              f"{worker[-1].wall / floor[-1].wall:.2f}); per CPU-second {bare[-1].cpu:,.0f}, "
              f"{floor[-1].cpu:,.0f}, {worker[-1].cpu:,.0f}; faust's mean batch {floor[-1].batch:,.0f} events",
              flush=True)
        loops = (bare[-1], floor[-1], worker[-1])
        print(f"       CPU us an event: {per_loop_line(loops, cpu_figure)}", flush=True)
        print(f"       cores in use (with Kafka): {per_loop_line(loops, cores_figure)}", flush=True)
    ceiling, faust_ceiling, figure = median_rates(bare), median_rates(floor), median_rates(worker)
    print(f"load generator: the topic is filled before the loops run ({EVENTS:,} events in {fill_wall:.1f}s, "
          f"{fill_cpu / fill_wall:.0%} of a core); while a loop runs: none, 0% of the CPU")
    print(f"load average at the end: {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    print(f"bare aiokafka consume+produce: {ceiling.wall:,.0f} events/s (ceiling 1, median of {RUNS})")
    print(f"bare faust take_events agent: {faust_ceiling.wall:,.0f} events/s (ceiling 2, median of {RUNS}), "
          f"{faust_ceiling.wall / ceiling.wall:.2f} of ceiling 1")
    print(f"achievements worker (faust):  {figure.wall:,.0f} events/s (median of {RUNS})  "
          f"ratio {figure.wall / ceiling.wall:.2f} of ceiling 1 (target >= 0.15), "
          f"{figure.wall / faust_ceiling.wall:.2f} of ceiling 2 (target >= 0.6)")
    if ceiling.cpu and faust_ceiling.cpu and figure.cpu:
        print(f"per CPU-second (medians): bare aiokafka {ceiling.cpu:,.0f}, bare faust {faust_ceiling.cpu:,.0f}, "
              f"worker {figure.cpu:,.0f}: ratio {figure.cpu / ceiling.cpu:.2f} of ceiling 1, "
              f"{figure.cpu / faust_ceiling.cpu:.2f} of ceiling 2")
    costs = median_costs(worker)
    if costs:
        print(budget_line("0.6 of the bare faust agent", 0.6 * faust_ceiling.wall, costs, figure.wall))
    values, heap = state_memory()
    print(f"state of 100k users (1 scan each): {values:.1f} MiB serialized, {heap:.1f} MiB Python heap")


if __name__ == "__main__":
    asyncio.run(main())
