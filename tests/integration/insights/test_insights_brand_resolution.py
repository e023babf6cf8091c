"""Webhooks posted to the contract paths with no INSIGHTS_DEFAULT_BRAND_ID: the brand comes from the
payload's user, or is the only brand; while ambiguous the webhook waits in the log, never dropped.

Each test has a database of its own, since "the only brand" cannot be arranged in a shared one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest
from synergy_common.db import create_pool

from tests.integration.insights.insights_harness import (
    Brand,
    consume,
    eventually,
    insights_settings,
    make_brand,
    make_user,
    new_topic,
    running_insights,
)
from tests.unit.insights.insights_webhook_examples import reporting_webhook, seed_001_webhooks

pytestmark = pytest.mark.integration


@dataclass
class FreshDatabase:
    url: str
    pool: asyncpg.Pool


@pytest.fixture
async def fresh(database_factory: Callable[..., Awaitable[str]]) -> AsyncIterator[FreshDatabase]:
    url = await database_factory("insights", migrate=True)
    pool = await create_pool(url, min_size=1, max_size=2)
    yield FreshDatabase(url, pool)
    await pool.close()


def auth(brand: Brand) -> dict[str, str]:
    return {"Authorization": f"Bearer {brand.write_key}"}


async def log_rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM customer_io_webhook_log ORDER BY id")


async def test_with_one_brand_seed_001_predictions_are_stored_for_it_and_readable_with_its_key(
    fresh: FreshDatabase, kafka_bootstrap: str
):
    brand = await make_brand(fresh.pool)
    topic = await new_topic(kafka_bootstrap)
    settings = insights_settings(fresh.url, kafka_bootstrap)
    assert settings.insights_default_brand_id is None
    now = int(time.time())
    webhooks = seed_001_webhooks()
    async with running_insights(settings, brand, topic) as insights:
        paths = ("/webhooks/customer-io", "/api/webhooks/customer-io", "/webhooks/customer-io")
        for offset, (name, path) in enumerate(zip(sorted(webhooks), paths, strict=True)):
            answer = await insights.post(webhooks[name], path=path, timestamp=now - 10 + offset)
            # Seed 001's user 123 has no row in this brand yet: kept, and shown from the log.
            assert answer.status_code == 202 and answer.json()["status"] == "waiting_for_user", answer.text
        assert [row["brand_id"] for row in await log_rows(fresh.pool)] == [brand.pk] * 3

        expected = {
            "churn_probability": 0.78,
            "engagement_score": 0.65,
            "predicted_ltv": 500.25,
            "product_affinity_scores": {"concentrates": 0.85, "vapes": 0.62, "flower": 0.41},
            "purchase_probability": 0.82,
            "predicted_purchase_value": 85.5,
            "recommended_segment": "high_intent_buyer",
            "next_best_action": "send_personalized_offer",
        }
        waiting = await insights.client.get("/v1/users/123/insights", headers=auth(brand))
        assert waiting.status_code == 200, waiting.text
        assert waiting.json()["predictions"] == expected and waiting.json()["user_known"] is False

        other = await make_brand(fresh.pool, "Other")
        foreign = await insights.client.get("/v1/users/123/insights", headers=auth(other))
        assert foreign.status_code == 404

        await make_user(fresh.pool, brand, "123")

        async def processed() -> bool:
            return all(row["processed_successfully"] for row in await log_rows(fresh.pool))

        assert await eventually(processed, timeout=15)
        answer = (await insights.client.get("/v1/users/123/insights", headers=auth(brand))).json()
        assert answer["predictions"] == expected and answer["user_known"] is True
        features = await fresh.pool.fetchval(
            "SELECT ai_features FROM users WHERE brand_id = $1 AND external_id = '123'", brand.pk
        )
        assert features["churn_probability"] == 0.78
        assert (await insights.client.get("/v1/users/123/insights", headers=auth(other))).status_code == 404


async def test_among_several_brands_the_user_decides_and_an_ambiguous_webhook_waits_for_a_brand(
    fresh: FreshDatabase, kafka_bootstrap: str
):
    first = await make_brand(fresh.pool, "First")
    second = await make_brand(fresh.pool, "Second")
    await make_user(fresh.pool, second, "known-to-second")
    topic = await new_topic(kafka_bootstrap)
    settings = insights_settings(fresh.url, kafka_bootstrap)
    now = int(time.time())
    later = reporting_webhook("email", "opened", "appears-later", now - 5)
    nobody = {"user_id": "nobody", "event_id": "pred-nobody-1", "predictions": {"churn_probability": 0.3}}
    async with running_insights(settings, first, topic) as insights:
        known = reporting_webhook("email", "clicked", "known-to-second", now - 6)
        answer = await insights.post(known)
        assert answer.status_code == 200 and answer.json()["status"] == "processed"

        for body in (later, nobody):
            answer = await insights.post(body)
            assert answer.status_code == 202 and answer.json()["status"] == "waiting_for_brand"
        redelivered = await insights.post(later, timestamp=int(time.time()) - 30)  # signed anew
        assert redelivered.status_code == 200 and redelivered.json()["status"] == "duplicate"
        rows = await log_rows(fresh.pool)
        assert [(row["brand_id"], row["processed_successfully"]) for row in rows] == [
            (second.pk, True),
            (None, None),
            (None, None),
        ]

        await make_user(fresh.pool, first, "appears-later")

        async def resolved() -> bool:
            row = await fresh.pool.fetchrow(
                "SELECT brand_id, processed_successfully FROM customer_io_webhook_log WHERE event_id = $1",
                later["event_id"],
            )
            return row["brand_id"] == first.pk and bool(row["processed_successfully"])

        assert await eventually(resolved, timeout=15)

    # Still ambiguous for "nobody" until a default brand is configured.
    pending = await fresh.pool.fetchrow(
        "SELECT brand_id, processed_successfully FROM customer_io_webhook_log WHERE event_id = 'pred-nobody-1'"
    )
    assert (pending["brand_id"], pending["processed_successfully"]) == (None, None)
    with_default = settings.model_copy(update={"insights_default_brand_id": second.slug})
    async with running_insights(with_default, second, topic):

        async def given_the_default() -> bool:
            return (
                await fresh.pool.fetchval(
                    "SELECT brand_id FROM customer_io_webhook_log WHERE event_id = 'pred-nobody-1'"
                )
                == second.pk
            )

        assert await eventually(given_the_default, timeout=15)

    records = await consume(kafka_bootstrap, topic, lambda v: True, 2)
    assert sorted((value["brand_id"], value["event_id"]) for _, value, _ in records) == sorted(
        [(second.brand_id, records_id(known, second)), (first.brand_id, records_id(later, first))]
    )


def records_id(body: dict, brand: Brand) -> str:
    from synergy_schemas.envelope import derive_event_id

    return derive_event_id(brand.brand_id, body["event_id"])
