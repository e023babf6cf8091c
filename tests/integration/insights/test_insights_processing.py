"""What happens after a webhook is logged: parking for unknown users, retries, concurrency, the read API."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import pytest
from synergy_common.kafka import PublishError
from synergy_insights.merge import OBSERVED_AT_KEY, profile_columns
from synergy_insights.publisher import InsightsPublisher

from tests.integration.insights.insights_harness import (
    Insights,
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


async def test_a_webhook_for_an_unknown_user_is_kept_and_processed_once_the_user_exists(
    insights: Insights, db: asyncpg.Pool, kafka_bootstrap: str
):
    brand = insights.brand
    body = {"user_id": "late-user-1", "predictions": {"churn_probability": 0.4}}
    answer = await insights.post(body)
    assert answer.status_code == 202 and answer.json()["status"] == "waiting_for_user"
    log_id = answer.json()["log_id"]
    row = await db.fetchrow("SELECT * FROM customer_io_webhook_log WHERE id = $1", log_id)
    assert row["processed_successfully"] is None and "not known yet" in row["error_message"]

    await make_user(db, brand, "late-user-1")

    async def processed() -> bool:
        return bool(
            await db.fetchval(
                "SELECT processed_successfully FROM customer_io_webhook_log WHERE id = $1", log_id
            )
        )

    assert await eventually(processed, timeout=15)
    features = await db.fetchval(
        "SELECT ai_features FROM users WHERE brand_id = $1 AND external_id = 'late-user-1'", brand.pk
    )
    assert features["churn_probability"] == 0.4
    records = await consume(
        kafka_bootstrap,
        insights.topic,
        lambda v: v["brand_id"] == brand.brand_id and v["identifiers"].get("id") == "late-user-1",
        1,
    )
    assert len(records) == 1


class FlakyPublisher(InsightsPublisher):
    """Refuses the first `failures` publishes, as Kafka would while unreachable."""

    def __init__(self, bootstrap: str, topic: str, failures: int) -> None:
        super().__init__(bootstrap, topic)
        self.failures = failures

    async def publish(self, envelope):  # type: ignore[no-untyped-def]
        if self.failures > 0:
            self.failures -= 1
            raise PublishError("Kafka is away")
        await super().publish(envelope)


async def test_processing_that_fails_after_logging_is_retried_from_the_log(
    insights: Insights, db: asyncpg.Pool, database_url: str, kafka_bootstrap: str
):
    brand = await make_brand(db)
    topic = await new_topic(kafka_bootstrap)
    settings = insights_settings(database_url, kafka_bootstrap, insights_default_brand_id=brand.brand_id)
    # Nothing is published inline; the rows wait for the retry loop.
    publisher = FlakyPublisher(kafka_bootstrap, topic, failures=5)
    async with running_insights(
        settings.model_copy(update={"insights_inline_processing_timeout": "1s"}), brand, topic, publisher
    ) as running:
        user = await make_user(db, brand)
        bodies = [reporting_webhook("email", metric, user) for metric in ("sent", "delivered", "opened")]
        for body in bodies:
            answer = await running.post(body)
            assert answer.status_code == 202 and answer.json()["status"] == "retry_later"

        async def all_processed() -> bool:
            states = await db.fetch(
                "SELECT processed_successfully FROM customer_io_webhook_log WHERE brand_id = $1", brand.pk
            )
            return len(states) == 3 and all(row["processed_successfully"] for row in states)

        assert await eventually(all_processed, timeout=20)
    # Whichever replica's retry loop got there first published it (the module's app shares the log).
    records = await consume(
        kafka_bootstrap, [topic, insights.topic], lambda v: v["brand_id"] == brand.brand_id, 3
    )
    assert sorted(value["event_id"] for _, value, _ in records) == sorted(body["event_id"] for body in bodies)


async def test_100_concurrent_webhooks_for_one_user_leave_one_consistent_row(
    insights: Insights, db: asyncpg.Pool
):
    brand = insights.brand
    user = await make_user(db, brand)
    base = int(time.time()) - 1000
    bodies = [
        {
            "user_id": user,
            "timestamp": base + i,
            "predictions": {
                "churn_probability": round(i / 100, 2),
                "recommended_segment": f"segment-{i}",
                **(
                    {"product_affinity_scores": {"vapes": i / 100}}
                    if i % 2
                    else {"engagement_score": i / 100}
                ),
            },
        }
        for i in range(100)
    ]
    random.Random(5).shuffle(bodies)
    answers = await asyncio.gather(*(insights.post(body) for body in bodies))
    assert sorted({answer.status_code for answer in answers}) == [200]

    user_row = await db.fetchrow(
        "SELECT id, ai_features FROM users WHERE brand_id = $1 AND external_id = $2", brand.pk, user
    )
    features = user_row["ai_features"]
    assert features["churn_probability"] == 0.99
    assert features["recommended_segment"] == "segment-99"
    assert features["product_affinity_scores"] == {"vapes": 0.99}
    assert features["engagement_score"] == 0.98
    profiles = await db.fetch("SELECT * FROM user_ai_profiles WHERE user_id = $1", user_row["id"])
    assert len(profiles) == 1
    expected = profile_columns(features)
    assert profiles[0]["churn_probability"] == expected.churn_probability
    assert profiles[0]["engagement_score"] == expected.engagement_score
    assert profiles[0]["recommended_segment"] == expected.recommended_segment
    assert profiles[0]["product_affinity_scores"] == expected.product_affinity_scores
    assert set(features[OBSERVED_AT_KEY]) == {
        "churn_probability",
        "recommended_segment",
        "product_affinity_scores",
        "engagement_score",
    }
    processed = await db.fetchval(
        "SELECT count(*) FROM customer_io_webhook_log WHERE brand_id = $1 AND external_user_id = $2"
        " AND processed_successfully",
        brand.pk,
        user,
    )
    assert processed == 100


async def test_read_api_serves_from_cache_and_sees_updates_from_another_replica(
    insights: Insights, db: asyncpg.Pool, database_url: str, kafka_bootstrap: str
):
    brand = insights.brand
    user = await make_user(db, brand)
    auth = {"Authorization": f"Bearer {brand.write_key}"}
    assert (
        await insights.post({"user_id": user, "predictions": {"churn_probability": 0.2}})
    ).status_code == 200

    settings = insights_settings(database_url, kafka_bootstrap, insights_default_brand_id=brand.brand_id)
    async with running_insights(settings, brand, insights.topic) as replica:

        async def listening() -> bool:
            return replica.app.state.insights_cache.enabled

        assert await eventually(listening)
        first = await replica.client.get(f"/v1/users/{user}/insights", headers=auth)
        assert first.status_code == 200
        assert first.json()["predictions"] == {"churn_probability": 0.2}
        hits_before = replica.app.state.insights_cache.stats.hits
        assert (await replica.client.get(f"/v1/users/{user}/insights", headers=auth)).json() == first.json()
        assert replica.app.state.insights_cache.stats.hits == hits_before + 1

        # the update lands on the other replica; this one hears of it through NOTIFY
        assert (
            await insights.post({"user_id": user, "predictions": {"churn_probability": 0.9}})
        ).status_code == 200

        async def updated() -> bool:
            answer = await replica.client.get(f"/v1/users/{user}/insights", headers=auth)
            return answer.json()["predictions"]["churn_probability"] == 0.9

        assert await eventually(updated, timeout=5)
        metrics = (await replica.client.get("/metrics")).text
        assert "synergy_insights_cache_hit_ratio" in metrics

    assert (await insights.client.get(f"/v1/users/{user}/insights")).status_code == 401
    other = await make_brand(db)
    foreign = await insights.client.get(
        f"/v1/users/{user}/insights", headers={"Authorization": f"Bearer {other.write_key}"}
    )
    assert foreign.status_code == 404 and foreign.json()["field"] == "user_id"


async def test_without_a_signing_key_every_webhook_is_refused(
    db: asyncpg.Pool, database_url: str, kafka_bootstrap: str
):
    brand = await make_brand(db)
    settings = insights_settings(
        database_url,
        kafka_bootstrap,
        insights_default_brand_id=brand.brand_id,
        cio_webhook_signing_key=None,
        cio_webhook_signing_key_previous=None,
    )
    async with running_insights(settings, brand, "unused") as running:
        answer = await running.post(reporting_webhook("email", "opened", "someone"))
        assert answer.status_code == 401
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["reason"] == "no_signing_key"
        assert answer.json()["field"] == "X-CIO-Signature"
    assert (
        await db.fetchval("SELECT count(*) FROM customer_io_webhook_log WHERE brand_id = $1", brand.pk) == 0
    )


async def test_read_api_answers_merged_seed_001_predictions_and_delivery_metrics(
    insights: Insights, db: asyncpg.Pool
):
    brand = insights.brand
    user = await make_user(db, brand)
    auth = {"Authorization": f"Bearer {brand.write_key}"}
    now = int(time.time())
    webhooks = seed_001_webhooks()
    for offset, name in enumerate(sorted(webhooks)):
        body = {**webhooks[name], "user_id": user}
        assert (await insights.post(body, timestamp=now - 20 + offset)).status_code == 200
    reports = [
        reporting_webhook("email", "opened", user, now - 10),
        reporting_webhook("email", "clicked", user, now - 9),
        reporting_webhook("push", "opened", user, now - 8),
        reporting_webhook("email", "converted", user, now - 7),
        reporting_webhook("customer", "unsubscribed", user, now - 6),
    ]
    for body in reports:
        assert (await insights.post(body)).status_code == 200

    answer = await insights.client.get(f"/v1/users/{user}/insights", headers=auth)
    assert answer.status_code == 200
    insight = answer.json()
    assert insight["user_known"] is True
    assert insight["predictions"] == {
        "churn_probability": 0.78,
        "engagement_score": 0.65,
        "predicted_ltv": 500.25,
        "product_affinity_scores": {"concentrates": 0.85, "vapes": 0.62, "flower": 0.41},
        "purchase_probability": 0.82,
        "predicted_purchase_value": 85.5,
        "recommended_segment": "high_intent_buyer",
        "next_best_action": "send_personalized_offer",
    }
    assert insight["delivery_metrics"] == {
        "customer": {"unsubscribed": 1},
        "email": {"clicked": 1, "converted": 1, "opened": 1},
        "push": {"opened": 1},
    }
    assert insight["unsubscribed"] is True

    # A later resubscribe reaches the cached answer (the processed webhook notifies).
    assert (
        await insights.post(reporting_webhook("customer", "subscribed", user, now - 1))
    ).status_code == 200

    async def resubscribed() -> bool:
        body = (await insights.client.get(f"/v1/users/{user}/insights", headers=auth)).json()
        return body["unsubscribed"] is False and body["delivery_metrics"]["customer"]["subscribed"] == 1

    assert await eventually(resubscribed, timeout=5)
