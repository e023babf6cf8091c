"""Events ingest would refuse, written straight to the events topic (any producer can): each is dead-lettered,
and the events after it, the same user's included, are all applied by the same worker, which keeps running.

Before the fix, an event with a numeric `brand_id` was applied: the user's state stored the number, no
longer decoded as a state, and every later batch of that user ended the worker (70), over and over.
Counted by id: the dead letters hold exactly the bad events, the state on the changelog exactly the good
ones."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from synergy_achievements.state import UserState
from ulid import ULID

from tests.integration.achievements.harness import (
    dead_letter_rows,
    final_snapshots,
    new_brand,
    produce,
    scan_event,
    wait_for_postgres,
    wait_until_ready,
)
from tests.support import free_port


async def test_events_with_wrong_types_are_dead_lettered_and_the_events_after_them_applied(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
) -> None:
    brand_id, _ = await new_brand(database_url)
    port = free_port()
    worker = start_worker(port)
    await wait_until_ready(port, worker)
    user, other = f"user-{ULID()}", f"user-{ULID()}"
    events_topic = achievements_topics["SYNERGY_TOPIC_EVENTS"]

    first = scan_event(brand_id, user, str(ULID()), "2024-06-01T10:00:00Z", 10)
    numeric_brand = {**scan_event(brand_id, user, str(ULID()), "2024-06-01T10:30:00Z", 10),
                     "brand_id": int(brand_id)}  # its key is the user's own (`7:user`): same partition
    numeric_user = {**scan_event(brand_id, "42", str(ULID()), "2024-06-01T10:40:00Z", 10),
                    "identifiers": {"id": 42}}
    text_points = scan_event(brand_id, user, str(ULID()), "2024-06-01T10:50:00Z", 10)
    text_points = copy.deepcopy(text_points)
    text_points["data"]["product_snapshot"]["economy"]["points_award"] = "ten"
    after = [scan_event(brand_id, user, str(ULID()), f"2024-06-01T1{hour}:00:00Z", 10) for hour in (1, 2)]
    other_scan = scan_event(brand_id, other, str(ULID()), "2024-06-01T12:00:00Z", 10)
    # one send each, in this order, so each bad event sits between good ones of the same user
    for event in [first, numeric_brand, numeric_user, text_points, *after, other_scan]:
        await produce(kafka_producer, events_topic, [event])

    latest = await final_snapshots(
        consume_all, achievements_topics["SYNERGY_TOPIC_SNAPSHOTS"], brand_id, {user: 3, other: 1}
    )
    # user: 3 scans of 10 + first_scan's 100; other: 10 + 100
    economies = {name: latest[name]["data"]["user_snapshot"]["economy"] for name in (user, other)}
    assert {name: (e["points_balance"], e["lifetime_points"]) for name, e in economies.items()} == {
        user: (130, 130), other: (110, 110)
    }

    changelog = await consume_all(
        f"{start_worker.app_id}-user-state-changelog", timeout=30,
        where=lambda r: r.key in (f"{brand_id}:{user}".encode(), f"{brand_id}:{other}".encode()),
    )
    states = {record.key.decode(): UserState.from_bytes(record.value) for record in changelog}
    candidates = [first, *after, other_scan, numeric_brand, numeric_user, text_points]
    applied = {key: ([e["event_id"] for e in candidates if state.has_applied(e["event_id"])], state.applied_count)
               for key, state in states.items()}
    assert applied == {
        f"{brand_id}:{user}": ([first["event_id"], after[0]["event_id"], after[1]["event_id"]], 3),
        f"{brand_id}:{other}": ([other_scan["event_id"]], 1),
    }
    assert [orjson.loads(r.value)["brand_id"] for r in changelog] == [brand_id] * len(changelog)

    bad = {numeric_brand["event_id"]: "invalid_envelope", numeric_user["event_id"]: "invalid_envelope",
           text_points["event_id"]: "unprocessable_event"}
    dead = await consume_all(
        achievements_topics["SYNERGY_TOPIC_DLQ"], 3, timeout=30,
        where=lambda r: r.json().get("event_id") in bad,
    )
    assert {r.json()["event_id"]: r.header("dlq_reason") for r in dead} == bad
    assert {r.header("dlq_source_topic") for r in dead} == {events_topic}
    assert {r.header("dlq_service") for r in dead} == {"achievements"}
    details = {r.json()["event_id"]: r.header("dlq_detail") for r in dead}
    assert details[numeric_brand["event_id"]] == f"brand_id must be a non-empty string, got int '{brand_id}'"
    assert details[numeric_user["event_id"]] == "identifiers.id must be a string, got int '42'"
    assert "invalid literal for int()" in details[text_points["event_id"]]
    rows = await dead_letter_rows(database_url, brand_id)  # what `synergy dlq list` shows
    assert {row["event_id"]: row["reason"] for row in rows} == bad

    wanted = {user: (130, 130, 3, {"first_scan"}), other: (110, 110, 1, {"first_scan"})}
    assert await wait_for_postgres(database_url, brand_id, wanted, timeout=30) == wanted
    assert worker.poll() is None  # never exited: no restart loop
