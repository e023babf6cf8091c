"""A Postgres restart: 503 while it is down, and every webhook accepted before or after is kept."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.integration.insights.insights_harness import Insights, consume, eventually, make_user
from tests.unit.insights.insights_webhook_examples import reporting_webhook

pytestmark = pytest.mark.integration


async def post_until_taken(insights: Insights, body: dict, attempts: int = 20) -> int:
    """Customer.io's behaviour: send again (newly signed) until it gets a 2xx."""
    for _ in range(attempts):
        answer = await insights.post(body)
        if answer.status_code < 300:
            return answer.status_code
        assert answer.status_code == 503, answer.text
        await asyncio.sleep(0.25)
    raise AssertionError("never accepted")


async def test_postgres_restart_gives_503_and_loses_no_accepted_webhook(
    insights: Insights, db: asyncpg.Pool, kafka_bootstrap: str, postgres_control
):
    brand = insights.brand
    user = await make_user(db, brand)
    now = int(time.time())
    before = [reporting_webhook("email", m, user, now - 3) for m in ("sent", "delivered", "opened")]
    during = [reporting_webhook("sms", m, user, now - 2) for m in ("sent", "delivered", "clicked")]
    for body in before:
        assert (await insights.post(body)).status_code == 200

    await postgres_control.astop_postgres()
    try:
        answers = [await insights.post(body) for body in during]
        assert [answer.status_code for answer in answers] == [503, 503, 503]
        assert all(answer.headers.get("retry-after") for answer in answers)
    finally:
        await postgres_control.astart_postgres()

    for body in during:
        assert await post_until_taken(insights, body) in (200, 202)

    wanted = {body["event_id"] for body in before + during}

    async def all_processed() -> bool:
        rows = await db.fetch(
            "SELECT event_id, processed_successfully FROM customer_io_webhook_log"
            " WHERE brand_id = $1 AND external_user_id = $2",
            brand.pk,
            user,
        )
        return {row["event_id"] for row in rows} == wanted and all(
            row["processed_successfully"] for row in rows
        )

    assert await eventually(all_processed, timeout=30)
    assert await db.fetchval(
        "SELECT count(*) FROM customer_io_webhook_log WHERE brand_id = $1 AND external_user_id = $2",
        brand.pk,
        user,
    ) == len(wanted)
    records = await consume(
        kafka_bootstrap, insights.topic, lambda v: v["identifiers"].get("id") == user, len(wanted)
    )
    assert {value["event_id"] for _, value, _ in records} == wanted
