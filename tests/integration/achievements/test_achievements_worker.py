"""The achievements worker against real Kafka and Postgres: what reaches the topics, Postgres and the API.

The first test posts through the ingest service (in-process); the fault tests produce the envelope ingest
writes straight to the events topic, so they can count exactly what went in.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka.partitioner import murmur2
from synergy_common.db import create_pool
from synergy_schemas.envelope import Envelope
from synergy_schemas.events import AchievementUnlockedData
from synergy_schemas.snapshots import UserSnapshot
from ulid import ULID

from tests.integration.achievements.harness import (
    SEED_EXAMPLES,
    SIX_SCANS_OF_25,
    TWELVE_SCANS_OF_10,
    assert_every_user_reached,
    assert_users_reached_with_each_unlock_once,
    dead_letter_rows,
    final_snapshots,
    new_brand,
    produce,
    scan_event,
    user_events,
    wait_for_postgres,
    wait_until_ready,
    worker_metric,
)
from tests.support import free_port


async def test_new_users_scan_posted_through_ingest_yields_first_scan_in_seed_shape_and_a_snapshot(
    start_worker: Any,
    achievements_topics: dict[str, str],
    ingest_client: httpx.AsyncClient,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, write_key = await new_brand(database_url)
    port = free_port()
    start_worker(port)
    user = f"user-{ULID()}"
    posted = json.loads((SEED_EXAMPLES / "000_1_product_scanned.json").read_text())
    posted["identifiers"] = {"id": user}
    response = await ingest_client.post(
        "/v1/events", json=posted, headers={"Authorization": f"Bearer {write_key}"}
    )
    assert response.status_code == 202, response.text
    [published] = await consume_all(
        achievements_topics["SYNERGY_TOPIC_EVENTS"],
        1,
        timeout=30,
        where=lambda r: r.json()["event_id"] == response.json()["event_id"],
    )
    event = published.json()

    [unlock] = await consume_all(
        achievements_topics["SYNERGY_TOPIC_LOYALTY"],
        1,
        timeout=90,
        where=lambda r: r.json()["identifiers"]["id"] == user,
    )
    assert unlock.key_str == f"{brand_id}:{user}"
    assert unlock.header("event_name") == "achievement_unlocked"
    value = unlock.json()
    Envelope.model_validate(value)
    AchievementUnlockedData.model_validate(value["data"])
    assert value["name"] == "achievement_unlocked"
    assert set(value["data"]) == {"achievement_data", "user_snapshot", "event_context"}
    assert value["data"]["achievement_data"] == {
        "achievement_id": "first_scan",
        "achievement_name": "First Scan",
        "achievement_description": "Complete your first product scan",
        "points_reward": 100,
        "badge_id": "first-scan-badge",
        "achievement_rarity": "common",
        "achievement_category": "milestone",
    }
    assert value["data"]["event_context"] == event["data"]["event_context"]
    UserSnapshot.model_validate(value["data"]["user_snapshot"])

    [snapshot] = await consume_all(
        achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"],
        1,
        timeout=30,
        where=lambda r: r.json()["identifiers"]["id"] == user,
    )
    assert (
        snapshot.json()["data"]["user_snapshot"]["economy"]["points_balance"] == 500
    )  # 400 + first_scan's 100

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        answer: dict[str, Any] = {}
        for _ in range(60):
            response = await client.get(
                f"/v1/users/{user}/loyalty", headers={"Authorization": f"Bearer {write_key}"}
            )
            if response.status_code == 200:
                answer = response.json()
                if answer["achievements"]["unlocked"]:
                    break
            await asyncio.sleep(0.5)
        assert answer["points"] == {"balance": 500, "lifetime": 500, "spent": 0}
        assert [a["achievement_id"] for a in answer["achievements"]["unlocked"]] == ["first_scan"]
        locked = {a["achievement_id"]: a["progress"] for a in answer["achievements"]["locked"]}
        assert locked["scans_10"]["current"] == 1 and locked["scans_10"]["target"] == 10
        assert (await client.get(f"/v1/users/{user}/loyalty")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'synergy_achievements_unlocks_total{achievement="first_scan"}' in metrics


async def test_sigkill_mid_stream_loses_no_points_and_duplicates_no_unlock(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(20)]
    events = user_events(brand_id, users, 12, 10)
    worker = start_worker()
    await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], events[:120])
    applied: dict[str, int] = {}

    def some_applied(records: list[Any]) -> bool:  # snapshots come one per user per batch
        for record in records:
            value = record.json()
            user = value["identifiers"]["id"]
            applied[user] = max(applied.get(user, 0), value["data"]["loyalty"]["state_version"])
        return sum(applied.values()) >= 30

    await consume_all(
        achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"],
        until=some_applied,
        timeout=90,
        where=lambda r: r.json()["brand_id"] == brand_id,
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], events[120:])
    start_worker()

    await assert_users_reached_with_each_unlock_once(
        consume_all, achievements_topics, brand_id, users, TWELVE_SCANS_OF_10
    )


async def test_a_publish_and_a_postgres_write_failing_half_way_end_the_worker_and_lose_nothing(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
    fault_dir: Path,
) -> None:
    """Each fault fires once (faulty_worker.py); the test restarts the worker as a supervisor would."""
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(10)]
    events = user_events(brand_id, users, 12, 10)
    markers = [fault_dir / "publish.fired", fault_dir / "persist.fired"]
    workers = [start_worker(faults="publish,persist", fault_dir=fault_dir)]
    await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], events)

    deadline = time.monotonic() + 150
    while not all(marker.exists() for marker in markers) or workers[-1].poll() is not None:
        assert time.monotonic() < deadline, f"faults fired: {[m.name for m in markers if m.exists()]}"
        if workers[-1].poll() is not None:
            workers.append(start_worker(faults="publish,persist", fault_dir=fault_dir))
        await asyncio.sleep(0.2)
    failed_pids = {int(marker.read_text()) for marker in markers}
    for worker in workers:
        if worker.pid in failed_pids:
            assert worker.wait(timeout=15) == 70  # exited, and so never acked the failed batch
    if workers[-1].pid in failed_pids:
        workers.append(start_worker(faults="publish,persist", fault_dir=fault_dir))
    assert {worker.pid for worker in workers[:-1]} == failed_pids

    await assert_users_reached_with_each_unlock_once(
        consume_all, achievements_topics, brand_id, users, TWELVE_SCANS_OF_10, timeout=120
    )
    wanted = {user: (770, 770, 12, {"first_scan", "scan_sprint", "scans_10"}) for user in users}
    assert await wait_for_postgres(database_url, brand_id, wanted, timeout=30) == wanted


async def test_two_workers_share_the_partitions_and_each_applies_its_own_users(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(16)]
    events = user_events(brand_id, users, 6, 25)
    ports = [free_port(), free_port()]
    workers = [start_worker(port) for port in ports]
    for port, worker in zip(ports, workers, strict=True):
        await wait_until_ready(port, worker)
    deadline = time.monotonic() + 90
    while True:  # both in the group, the 4 partitions split between them
        held = [await worker_metric(port, "synergy_achievements_assigned_partitions") for port in ports]
        if all(count >= 1 for count in held) and sum(held) == 4:
            break
        assert time.monotonic() < deadline, f"partitions held: {held}"
        await asyncio.sleep(0.5)

    await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], events)
    latest = await final_snapshots(
        consume_all, achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, dict.fromkeys(users, 6)
    )
    assert_every_user_reached(latest, users, SIX_SCANS_OF_25)
    applied = [
        await worker_metric(port, "synergy_achievements_events_processed_total",
                            event="product_scanned", outcome="applied")
        for port in ports
    ]
    assert all(count > 0 for count in applied), applied  # each worker applied events of its own users
    assert sum(applied) == 96  # 16 users x 6 scans, each applied once, by one of the two

    for worker in workers:  # SIGTERM: each stops within the shutdown bound (5s) plus a margin
        worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    for worker in workers:
        worker.wait(timeout=15)
    assert time.monotonic() - started < 12


async def test_a_user_id_postgres_refuses_goes_to_the_dlq_and_the_next_user_still_reaches_postgres(
    start_worker: Any,
    achievements_topics: dict[str, str],
    ingest_client: httpx.AsyncClient,
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, write_key = await new_brand(database_url)
    port = free_port()
    await wait_until_ready(port, start_worker(port))
    example = json.loads((SEED_EXAMPLES / "000_1_product_scanned.json").read_text())
    auth = {"Authorization": f"Bearer {write_key}"}

    poison = {**example, "identifiers": {"id": "\u0000"}}
    response = await ingest_client.post("/v1/events", json=poison, headers=auth)
    if response.status_code != 202:  # ingest may refuse it; the worker must survive it all the same
        await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], [
            scan_event(brand_id, "\u0000", str(ULID()), "2024-06-01T10:00:00Z", 400)
        ])
    good_user = f"user-{ULID()}"
    response = await ingest_client.post(
        "/v1/events", json={**example, "identifiers": {"id": good_user}}, headers=auth
    )
    assert response.status_code == 202, response.text
    posted = time.monotonic()

    # 400 points for the scan, 100 for first_scan
    wanted = {good_user: (500, 500, 1, {"first_scan"})}
    found = await wait_for_postgres(database_url, brand_id, wanted, timeout=15)
    assert found == wanted
    assert time.monotonic() - posted < 15

    dead = await consume_all(
        achievements_topics["SYNERGY_TOPIC_DLQ"],
        2,
        timeout=30,
        where=lambda r: r.json().get("brand_id") == brand_id,
    )
    assert {(r.header("dlq_reason"), r.json()["name"], r.json()["identifiers"]["id"]) for r in dead} == {
        ("postgres_rejected", "user_snapshot", "\u0000"),
        ("postgres_rejected", "achievement_unlocked", "\u0000"),
    }
    assert {(r.header("dlq_service"), r.header("dlq_source_topic")) for r in dead} == {
        ("achievements", achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"]),
        ("achievements", achievements_topics["SYNERGY_TOPIC_LOYALTY"]),
    }
    rows = await dead_letter_rows(database_url, brand_id)  # what `synergy dlq list` shows
    assert sorted((row["reason"], row["source_topic"], row["destination"]) for row in rows) == sorted([
        ("postgres_rejected", achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], "postgres"),
        ("postgres_rejected", achievements_topics["SYNERGY_TOPIC_LOYALTY"], "postgres"),
    ])
    assert all("0x00" in row["detail"] for row in rows)


async def test_an_event_on_another_partition_than_its_users_goes_to_the_dlq_as_wrong_partition(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, _ = await new_brand(database_url)
    start_worker()
    user = f"user-{ULID()}"
    key = f"{brand_id}:{user}".encode()
    right = (murmur2(key) & 0x7FFFFFFF) % 4  # the Java client's partitioner, as ingest's producer uses it
    wrong = (right + 1) % 4
    events_topic = achievements_topics["SYNERGY_TOPIC_EVENTS"]
    misplaced = scan_event(brand_id, user, str(ULID()), "2024-06-01T10:00:00Z", 10)
    placed = scan_event(brand_id, user, str(ULID()), "2024-06-01T11:00:00Z", 10)
    await (await kafka_producer.send(events_topic, orjson.dumps(misplaced), key=key, partition=wrong))
    await (await kafka_producer.send(events_topic, orjson.dumps(placed), key=key, partition=right))

    [dead] = await consume_all(
        achievements_topics["SYNERGY_TOPIC_DLQ"], 1, timeout=90,
        where=lambda r: r.json().get("event_id") == misplaced["event_id"],
    )
    assert (dead.header("dlq_reason"), dead.header("dlq_source_topic"), dead.header("dlq_source_partition")) == (
        "wrong_partition", events_topic, str(wrong)
    )
    [row] = await dead_letter_rows(database_url, brand_id)
    assert (row["service"], row["reason"], row["event_id"], row["source_partition"]) == (
        "achievements", "wrong_partition", misplaced["event_id"], wrong
    )
    latest = await final_snapshots(
        consume_all, achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, {user: 1}
    )
    # only the event on the user's own partition was applied: 10 + first_scan's 100
    economy = latest[user]["data"]["user_snapshot"]["economy"]
    assert (economy["points_balance"], economy["lifetime_points"]) == (110, 110)
    snapshots = await consume_all(
        achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], timeout=30,
        where=lambda r: r.json()["identifiers"]["id"] == user,
    )
    assert {r.json()["data"]["loyalty"]["state_version"] for r in snapshots} == {1}


async def test_a_brand_rule_inserted_while_running_is_applied_without_restart(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, _ = await new_brand(database_url)
    port = free_port()
    start_worker(port)
    user = f"user-{ULID()}"
    events_topic, loyalty_topic = (
        achievements_topics["SYNERGY_TOPIC_EVENTS"],
        achievements_topics["SYNERGY_TOPIC_LOYALTY"],
    )
    await produce(
        kafka_producer, events_topic, [scan_event(brand_id, user, str(ULID()), "2024-06-01T10:00:00Z", 10)]
    )
    await consume_all(loyalty_topic, 1, timeout=90, where=lambda r: r.json()["identifiers"]["id"] == user)

    async def reloads() -> float:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            text = (await client.get("/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('synergy_achievements_rules_reloads_total{result="ok"}')
        )

    before = await reloads()
    pool = await create_pool(database_url)
    try:
        await pool.execute(
            """INSERT INTO achievement_configs (brand_id, name, description, achievement_key, achievement_type,
                                                criteria, rewards, metadata)
               VALUES ($1, 'Second Scan', 'Scan twice', 'brand_second_scan', 'scan_count', $2, $3, $4)""",
            int(brand_id),
            {"metric": "scan_count", "operator": ">=", "value": 2},
            {"points": 77, "badge": "second-badge"},
            {"category": "milestone", "rarity": "common"},
        )
    finally:
        await pool.close()
    for _ in range(40):
        if await reloads() > before:
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("the worker did not reload its rules")
    await produce(
        kafka_producer, events_topic, [scan_event(brand_id, user, str(ULID()), "2024-06-01T11:00:00Z", 10)]
    )

    records = await consume_all(
        loyalty_topic,
        1,
        timeout=30,
        where=lambda r: (
            r.json()["identifiers"]["id"] == user
            and r.json()["name"] == "achievement_unlocked"
            and r.json()["data"]["achievement_data"]["achievement_id"] == "brand_second_scan"
        ),
    )
    assert records[0].json()["data"]["achievement_data"]["points_reward"] == 77
