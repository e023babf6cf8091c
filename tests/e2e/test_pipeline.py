"""End to end: an app posts an event, the engine turns it into loyalty state and Customer.io gets it all;
Customer.io posts a signed prediction back and the app reads it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import SIGNING_KEY, SITE_ID, Engine

SEEDS = Path(__file__).parents[1] / "fixtures" / "seed_examples"


async def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def test_a_scan_becomes_points_an_unlock_and_customer_io_events(engine: Engine) -> None:
    user = f"e2e-user-{engine.brand_id}"
    scan = json.loads((SEEDS / "000_1_product_scanned.json").read_text())
    scan["identifiers"] = {"id": user}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{engine.urls['ingest']}/v1/events", json=scan, headers=engine.auth())
        assert answer.status_code == 202, answer.text
        event_id = answer.json()["event_id"]

        delivered = await eventually(lambda: engine.fake.events.get(event_id), what="the scan at Customer.io")
        assert delivered.name == "product_scanned"
        assert delivered.person == f"id:{user}"
        assert delivered.site_id == SITE_ID
        assert delivered.data["product_snapshot"] == scan["data"]["product_snapshot"]
        assert delivered.data["user_snapshot"] == scan["data"]["user_snapshot"]

        unlocks = await eventually(
            lambda: [e for e in engine.fake.events_for(f"id:{user}") if e.name == "achievement_unlocked"],
            what="achievement_unlocked at Customer.io",
        )
        assert [u.data["achievement_data"]["achievement_id"] for u in unlocks] == ["first_scan"]
        assert unlocks[0].data["achievement_data"]["achievement_name"] == "First Scan"
        assert unlocks[0].data["event_context"] == scan["data"]["event_context"]

        attributes = await eventually(
            lambda: engine.fake.people.get((SITE_ID, user)), what="the snapshot as person attributes"
        )
        assert any("points_balance" in name for name in attributes), attributes

        loyalty = await wait_for_loyalty_record(client, engine, user)
        assert loyalty.status_code == 200, loyalty.text
        body = loyalty.json()
        assert body["points"]["balance"] == 400 + 100  # the scan's points_award, then first_scan's reward
        assert [a["achievement_id"] for a in body["achievements"]["unlocked"]] == ["first_scan"]


async def wait_for_loyalty_record(client: httpx.AsyncClient, engine: Engine, user: str) -> httpx.Response:
    url = f"{engine.urls['achievements']}/v1/users/{user}/loyalty"
    deadline = time.monotonic() + 30
    loyalty = await client.get(url, headers=engine.auth())
    while loyalty.status_code == 404 and time.monotonic() < deadline:  # the read model lags the stream
        await asyncio.sleep(0.3)
        loyalty = await client.get(url, headers=engine.auth())
    return loyalty


async def test_a_signed_prediction_for_a_known_user_is_stored_and_read_back(engine: Engine) -> None:
    user = 987654
    session = json.loads((SEEDS / "000_7_user_session_started.json").read_text())
    session["identifiers"] = {"id": str(user)}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{engine.urls['ingest']}/v1/events", json=session, headers=engine.auth())
        assert answer.status_code == 202, answer.text
        assert (await wait_for_loyalty_record(client, engine, str(user))).status_code == 200

    webhook = json.loads((SEEDS / "001_webhook_1.json").read_text())
    webhook["user_id"] = user
    raw = json.dumps(webhook).encode()
    timestamp = str(int(time.time()))
    signature = hmac.new(
        SIGNING_KEY.encode(), b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256
    ).hexdigest()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{engine.urls['insights']}/webhooks/customer-io",
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-CIO-Timestamp": timestamp,
                "X-CIO-Signature": signature,
            },
        )
        assert answer.status_code in (200, 202), answer.text

        async def read() -> dict[str, Any] | None:
            response = await client.get(
                f"{engine.urls['insights']}/v1/users/{user}/insights", headers=engine.auth()
            )
            return response.json() if response.status_code == 200 else None

        deadline = time.monotonic() + 30
        insights = await read()
        while not insights and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            insights = await read()
        assert insights, "the prediction never became readable"
        assert insights["predictions"]["churn_probability"] == webhook["predictions"]["churn_probability"]
        assert insights["predictions"]["recommended_segment"] == webhook["predictions"]["recommended_segment"]
