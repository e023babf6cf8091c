"""A client's retry of the same event id is counted once, end to end: one points award, one Customer.io
event. The retries arrive by both doors: the native route's `event_id` and Segment's `messageId`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import Engine
from tests.e2e.test_pipeline import eventually, wait_for_loyalty_record

SEEDS = Path(__file__).parents[1] / "fixtures" / "seed_examples"


async def test_a_retried_event_id_awards_points_once_and_reaches_customer_io_once(engine: Engine) -> None:
    user = f"retry-user-{engine.brand_id}"
    scan = json.loads((SEEDS / "000_1_product_scanned.json").read_text())
    scan["identifiers"] = {"id": user}
    first = {**scan, "event_id": "app-retry-1"}  # the app's own id, not a ULID
    second = {**scan, "event_id": "app-retry-2"}
    segment_retry = {
        "type": "track",
        "userId": user,
        "event": "product_scanned",
        "messageId": "app-retry-1",
        "properties": scan["data"],
        "timestamp": scan["timestamp"],
    }
    basic = "Basic " + base64.b64encode(f"{engine.write_key}:".encode()).decode()
    async with httpx.AsyncClient(base_url=engine.urls["ingest"], timeout=30) as client:
        answers = [
            await client.post("/v1/events", json=first, headers=engine.auth()),
            await client.post("/v1/events", json=first, headers=engine.auth()),
            await client.post("/v1/track", json=segment_retry, headers={"Authorization": basic}),
            await client.post("/v1/events/batch", json={"batch": [first]}, headers=engine.auth()),
        ]
        assert [a.status_code for a in answers] == [202, 202, 200, 202], [a.text for a in answers]
        ids = {a.json()["event_id"] for a in answers[:3]} | {answers[3].json()["accepted"][0]["event_id"]}
        assert len(ids) == 1, "every retry of the same client id carries the same event_id"
        (retried_id,) = ids
        later = await client.post("/v1/events", json=second, headers=engine.auth())
        assert later.status_code == 202
        later_id = later.json()["event_id"]

        # Same user, same partition, so once the later scan is in, every retry before it was applied.
        person = f"id:{user}"
        await eventually(lambda: engine.fake.events.get(later_id), what="the later scan at Customer.io")
        scans = [e.event_id for e in engine.fake.events_for(person) if e.name == "product_scanned"]
        assert sorted(scans) == sorted([retried_id, later_id])

        deadline = time.monotonic() + 60
        balance = 0
        while balance < 900 and time.monotonic() < deadline:
            loyalty = await wait_for_loyalty_record(client, engine, user)
            balance = loyalty.json()["points"]["balance"] if loyalty.status_code == 200 else 0
            await asyncio.sleep(0.3)
        await asyncio.sleep(2)  # a double count would show up right behind
        loyalty = await wait_for_loyalty_record(client, engine, user)
        body = loyalty.json()
        # 400 for the scan (once, though sent four times), 100 for first_scan, 400 for the later scan
        assert body["points"]["balance"] == 900, body["points"]
        assert [a["achievement_id"] for a in body["achievements"]["unlocked"]] == ["first_scan"]
