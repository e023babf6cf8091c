"""The achievements worker against real Kafka and Postgres: what reaches the topics, Postgres and the API.

The first test posts through the ingest service (in-process); the fault tests produce the envelope ingest
writes straight to the events topic, so they can count exactly what went in.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from synergy_achievements.processing import LoyaltyProcessor
from synergy_achievements.rules import default_rules
from synergy_achievements.state import UserState
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


def expected_states(events: list[dict[str, Any]]) -> dict[str, UserState]:
    processor, rules = LoyaltyProcessor(), default_rules()
    states: dict[str, UserState] = {}
    for event in events:
        user = event["identifiers"]["id"]
        states[user] = processor.apply(states.get(user), event, rules).state
    return states


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


# faust-streaming 0.15.3 can leave a worker that joins during a rebalance with its flow stopped
# (see worker._hold_deliveries_until_streams_resume); a rare stall is retried rather than hidden.
@pytest.mark.flaky(reruns=2)
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
    expected = expected_states(events)
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
        consume_all,
        achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"],
        brand_id,
        {u: s.version for u, s in expected.items()},
    )
    for user, state in expected.items():
        economy = latest[user]["data"]["user_snapshot"]["economy"]
        assert (economy["points_balance"], economy["lifetime_points"]) == (
            state.points_balance,
            state.lifetime_points,
        )
    unlocks = await consume_all(
        achievements_topics["SYNERGY_TOPIC_LOYALTY"],
        timeout=30,
        where=lambda r: r.json()["brand_id"] == brand_id,
    )
    ids_by_unlock: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in unlocks:
        value = record.json()
        if value["name"] == "achievement_unlocked":
            key = (value["identifiers"]["id"], value["data"]["achievement_data"]["achievement_id"])
            ids_by_unlock[key].add(value["event_id"])
    assert {key: len(ids) for key, ids in ids_by_unlock.items()} == {
        (user, key): 1 for user, state in expected.items() for key in state.achievements
    }


# faust-streaming 0.15.3 can leave a worker that joins during a rebalance with its flow stopped
# (see worker._hold_deliveries_until_streams_resume); a rare stall is retried rather than hidden.
@pytest.mark.flaky(reruns=2)
async def test_two_workers_share_the_partitions_and_totals_come_out_right(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(16)]
    events = user_events(brand_id, users, 6, 25)
    expected = expected_states(events)
    workers = [start_worker(), start_worker()]
    await asyncio.sleep(5)  # let both join the group
    await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], events)
    latest = await final_snapshots(
        consume_all,
        achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"],
        brand_id,
        {u: s.version for u, s in expected.items()},
    )
    totals = Counter({u: v["data"]["user_snapshot"]["economy"]["lifetime_points"] for u, v in latest.items()})
    assert totals == Counter({u: s.lifetime_points for u, s in expected.items()})

    for worker in workers:  # SIGTERM: each stops within the shutdown bound (5s) plus a margin
        worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    for worker in workers:
        worker.wait(timeout=15)
    assert time.monotonic() - started < 12


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
