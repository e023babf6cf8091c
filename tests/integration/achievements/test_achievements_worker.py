"""The achievements worker against real Kafka and Postgres: what reaches the topics, Postgres and the API.

The first test posts through the ingest service (in-process); the fault tests produce the envelope ingest
writes straight to the events topic, so they can count exactly what went in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka.partitioner import murmur2
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_schemas.envelope import Envelope
from synergy_schemas.events import AchievementUnlockedData
from synergy_schemas.snapshots import UserSnapshot
from ulid import ULID

from tests.support import free_port

SEED_EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "seed_examples"


def scan_event(
    brand_id: str, user_id: str, event_id: str, timestamp: str, points_award: int
) -> dict[str, Any]:
    example = json.loads((SEED_EXAMPLES / "000_1_product_scanned.json").read_text())
    example["data"]["product_snapshot"]["economy"]["points_award"] = points_award
    return {
        **example,
        "event_id": event_id,
        "type": "track",
        "brand_id": brand_id,
        "identifiers": {"id": user_id},
        "timestamp": timestamp,
        "received_at": timestamp,
        "schema_version": 1,
        "source": "ingest",
        "correlation_id": f"c-{event_id}",
    }


async def new_brand(database_url: str) -> tuple[str, str]:
    pool = await create_pool(database_url)
    try:
        brand = await create_brand(pool, f"ach-{ULID()}", CredentialCipher(None))
    finally:
        await pool.close()
    return brand.brand_id, brand.write_key


async def produce(producer: Any, topic: str, events: list[dict[str, Any]]) -> None:
    futures = [
        await producer.send(topic, orjson.dumps(e), key=f"{e['brand_id']}:{e['identifiers']['id']}".encode())
        for e in events
    ]
    await asyncio.gather(*futures)


def user_events(brand_id: str, users: list[str], per_user: int, points_award: int) -> list[dict[str, Any]]:
    events = []
    for n in range(per_user):
        for user in users:
            events.append(
                scan_event(
                    brand_id, user, str(ULID()), f"2024-06-0{1 + n % 5}T1{n % 10}:00:00Z", points_award
                )
            )
    return events


# Hand-computed with the default rules (bronze rank, multiplier 1): scans on June 1st to 5th earn
# first_scan (100) at the 1st, scan_sprint (300, 5 scans within 7 days) at the 5th, scans_10 (250) at the 10th.
# 12 scans of 10 points: 12 * 10 + 100 + 300 + 250 = 770.
TWELVE_SCANS_OF_10 = {"version": 12, "balance": 770, "lifetime": 770,
                      "achievements": {"first_scan", "scan_sprint", "scans_10"}}
# 6 scans of 25 points: 6 * 25 + 100 + 300 = 550.
SIX_SCANS_OF_25 = {"version": 6, "balance": 550, "lifetime": 550, "achievements": {"first_scan", "scan_sprint"}}


async def final_snapshots(
    consume_all: Any, topic: str, brand_id: str, versions: dict[str, int], timeout: float = 90
) -> dict[str, dict[str, Any]]:
    """The highest-version snapshot of each user, once every user has reached the version expected."""
    latest: dict[str, dict[str, Any]] = {}

    def version(value: dict[str, Any] | None) -> int:
        return -1 if value is None else int(value["data"]["loyalty"]["state_version"])

    def complete(records: list[Any]) -> bool:
        for record in records:
            value = record.json()
            user = value["identifiers"]["id"]
            if version(value) > version(latest.get(user)):
                latest[user] = value
        return all(version(latest.get(user)) == wanted for user, wanted in versions.items())

    await consume_all(
        topic, until=complete, timeout=timeout, where=lambda r: r.json()["brand_id"] == brand_id
    )
    return latest


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


def unlock_ids(records: list[Any]) -> dict[tuple[str, str], set[str]]:
    """The distinct event ids published for each (user, achievement) unlock."""
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in records:
        value = record.json()
        if value["name"] == "achievement_unlocked":
            ids[(value["identifiers"]["id"], value["data"]["achievement_data"]["achievement_id"])].add(
                value["event_id"]
            )
    return ids


def assert_every_user_reached(latest: dict[str, dict[str, Any]], users: list[str], expected: dict[str, Any]) -> None:
    for user in users:
        economy = latest[user]["data"]["user_snapshot"]["economy"]
        loyalty = latest[user]["data"]["loyalty"]
        assert (loyalty["state_version"], economy["points_balance"], economy["lifetime_points"]) == (
            expected["version"], expected["balance"], expected["lifetime"]
        ), user
        assert set(loyalty["achievements"]) == expected["achievements"], user


async def assert_each_unlock_published_under_one_id(
    consume_all: Any, topic: str, brand_id: str, users: list[str], achievements: set[str]
) -> None:
    unlocks = await consume_all(topic, timeout=30, where=lambda r: r.json()["brand_id"] == brand_id)
    assert {key: len(ids) for key, ids in unlock_ids(unlocks).items()} == {
        (user, key): 1 for user in users for key in achievements
    }


async def postgres_loyalty(database_url: str, brand_id: str) -> dict[str, tuple[int, int, int, set[str]]]:
    """Per user of the brand: balance, lifetime points, state version and unlocked achievements in Postgres."""
    pool = await create_pool(database_url)
    try:
        rows = await pool.fetch(
            """SELECT u.external_id, u.points_balance, u.lifetime_points, u.loyalty_state_version,
                      array_remove(array_agg(c.achievement_key ORDER BY c.achievement_key), NULL) AS keys,
                      count(ua.*) AS unlock_rows
               FROM users u
               LEFT JOIN user_achievements ua ON ua.user_id = u.id
               LEFT JOIN achievement_configs c ON c.id = ua.achievement_config_id
               WHERE u.brand_id = $1 GROUP BY u.id""",
            int(brand_id),
        )
    finally:
        await pool.close()
    result = {}
    for row in rows:
        assert row["unlock_rows"] == len(set(row["keys"])), row  # never two rows for one unlock
        result[row["external_id"]] = (
            row["points_balance"], row["lifetime_points"], row["loyalty_state_version"], set(row["keys"])
        )
    return result


async def wait_for_postgres(
    database_url: str, brand_id: str, wanted: dict[str, tuple[int, int, int, set[str]]], timeout: float
) -> dict[str, tuple[int, int, int, set[str]]]:
    deadline = time.monotonic() + timeout
    found = await postgres_loyalty(database_url, brand_id)
    while found != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        found = await postgres_loyalty(database_url, brand_id)
    return found


async def dead_letter_rows(database_url: str, brand_id: str) -> list[dict[str, Any]]:
    pool = await create_pool(database_url)
    try:
        rows = await pool.fetch(
            "SELECT * FROM dlq_messages WHERE brand_id = $1 AND service = 'achievements' ORDER BY id",
            int(brand_id),
        )
    finally:
        await pool.close()
    return [dict(row) for row in rows]


async def worker_metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples (those with these labels) on a worker's /metrics."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_until_ready(port: int, process: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the worker on port {port} exited with {process.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.25)
    raise AssertionError(f"the worker on port {port} was not ready within {timeout:.0f}s")


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

    latest = await final_snapshots(
        consume_all, achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, dict.fromkeys(users, 12)
    )
    assert_every_user_reached(latest, users, TWELVE_SCANS_OF_10)
    await assert_each_unlock_published_under_one_id(
        consume_all, achievements_topics["SYNERGY_TOPIC_LOYALTY"], brand_id, users,
        TWELVE_SCANS_OF_10["achievements"],
    )


async def test_a_publish_and_a_postgres_write_failing_half_way_end_the_worker_and_lose_nothing(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Each fault fires once (faulty_worker.py); the test restarts the worker as a supervisor would."""
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(10)]
    events = user_events(brand_id, users, 12, 10)
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
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

    latest = await final_snapshots(
        consume_all, achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, dict.fromkeys(users, 12),
        timeout=120,
    )
    assert_every_user_reached(latest, users, TWELVE_SCANS_OF_10)
    await assert_each_unlock_published_under_one_id(
        consume_all, achievements_topics["SYNERGY_TOPIC_LOYALTY"], brand_id, users,
        TWELVE_SCANS_OF_10["achievements"],
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
