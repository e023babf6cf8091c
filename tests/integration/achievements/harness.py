"""What the achievements integration tests share: the events they produce, the brands they make, and how
they read what the worker wrote (snapshots, unlocks, Postgres, dead letters, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from ulid import ULID

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


async def assert_users_reached_with_each_unlock_once(
    consume_all: Any, topics: dict[str, str], brand_id: str, users: list[str], expected: dict[str, Any],
    timeout: float = 90,
) -> None:
    """Every user's last snapshot is at `expected` (version = scans applied), and each of its unlocks was
    published under exactly one event id."""
    latest = await final_snapshots(
        consume_all, topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, dict.fromkeys(users, expected["version"]),
        timeout=timeout,
    )
    assert_every_user_reached(latest, users, expected)
    await assert_each_unlock_published_under_one_id(
        consume_all, topics["SYNERGY_TOPIC_LOYALTY"], brand_id, users, expected["achievements"]
    )
