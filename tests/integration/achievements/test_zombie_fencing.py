"""A worker paused past its session timeout (a zombie) writes nothing that counts once its partitions moved.

W1 stops itself (SIGSTOP) inside its first transaction, with the batch's outputs and changelog records
already sent to Kafka but not committed. W2, started next, takes the partitions over (fencing W1 and
aborting its transaction), restores the table and applies every event. Then W1 is resumed (SIGCONT): its
commit is refused, it exits 70, and a read_committed reader sees none of what it wrote after W2 took over.
Every record carries the `synergy_writer` header (`<host>:<pid>`), so the writes are counted per worker.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ulid import ULID

from tests.integration.achievements.harness import (
    SIX_SCANS_OF_25,
    assert_every_user_reached,
    final_snapshots,
    new_brand,
    produce,
    user_events,
    wait_for_postgres,
    wait_until_ready,
    worker_metric,
)
from tests.support import free_port

WRITER_HEADER = "synergy_writer"


def writer(process: Any) -> str:
    return f"{socket.gethostname()}:{process.pid}"


def is_stopped(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state == "T"


async def test_a_paused_worker_whose_partitions_moved_writes_nothing_visible_after_it_resumes(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
    tmp_path: Path,
    fault_dir: Path,
) -> None:
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(8)]
    events = user_events(brand_id, users, 6, 25)  # 3 scans per user before the takeover, 3 after
    events_topic = achievements_topics["SYNERGY_TOPIC_EVENTS"]
    ports = [free_port(), free_port()]

    zombie = start_worker(ports[0], faults="stop_in_transaction", fault_dir=fault_dir)
    await wait_until_ready(ports[0], zombie)
    await produce(kafka_producer, events_topic, events[:24])
    deadline = time.monotonic() + 60
    while not (fault_dir / "stop_in_transaction.fired").exists() or not is_stopped(zombie.pid):
        assert time.monotonic() < deadline, "W1 never stopped inside a transaction"
        assert zombie.poll() is None
        await asyncio.sleep(0.1)

    successor = start_worker(ports[1])
    await wait_until_ready(ports[1], successor)
    deadline = time.monotonic() + 90
    while await worker_metric(ports[1], "synergy_achievements_assigned_partitions") != 4:
        assert time.monotonic() < deadline, "W2 never held the 4 partitions"
        await asyncio.sleep(0.5)
    await produce(kafka_producer, events_topic, events[24:])
    latest = await final_snapshots(
        consume_all, achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, dict.fromkeys(users, 6)
    )
    assert_every_user_reached(latest, users, SIX_SCANS_OF_25)

    zombie.send_signal(signal.SIGCONT)
    assert zombie.wait(timeout=60) == 70  # its commit was refused: it ended without acking the batch
    assert "ProducerFenced" in (tmp_path / "worker-0.log").read_text()
    await asyncio.sleep(1.0)  # anything it could still have written would have reached the log by now

    changelog = f"{start_worker.app_id}-user-state-changelog"
    written = [achievements_topics["SYNERGY_TOPIC_LOYALTY"], achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"],
               changelog]
    committed = await consume_all(written, timeout=60)
    everything = await consume_all(written, timeout=60, isolation_level="read_uncommitted")
    w1, w2 = writer(zombie), writer(successor)
    # W1's open transaction was in the log (read_uncommitted shows it) ...
    aborted = {(r.topic, r.partition, r.offset) for r in everything} - {
        (r.topic, r.partition, r.offset) for r in committed}
    assert len(aborted) >= 3  # at least one user's first_scan unlock, snapshot and changelog record
    assert {r.header(WRITER_HEADER) for r in everything if (r.topic, r.partition, r.offset) in aborted} == {w1}
    # ... and nothing W1 wrote is visible: every transaction of W1 was its first (each partition's first
    # batch unlocks first_scan, and the fault stops the process when the first send returns, before any
    # partition's commit), so all that read_committed readers see on these topics is W2's
    assert Counter(r.header(WRITER_HEADER) for r in committed) == {w2: len(committed)}
    assert {r.topic for r in committed} == set(written)

    # each unlock exactly once (counted by record, not by distinct id), with the hand-computed totals
    unlocks = Counter(
        (r.json()["identifiers"]["id"], r.json()["data"]["achievement_data"]["achievement_id"])
        for r in committed
        if r.topic == achievements_topics["SYNERGY_TOPIC_LOYALTY"] and r.json()["name"] == "achievement_unlocked"
        and r.json()["brand_id"] == brand_id
    )
    assert unlocks == {(user, key): 1 for user in users for key in ("first_scan", "scan_sprint")}
    wanted = {user: (550, 550, 6, {"first_scan", "scan_sprint"}) for user in users}
    assert await wait_for_postgres(database_url, brand_id, wanted, timeout=30) == wanted
    applied = await worker_metric(ports[1], "synergy_achievements_events_processed_total",
                                  event="product_scanned", outcome="applied")
    assert applied == 48  # W2 applied all 8 users x 6 scans itself: W1's batch never counted
