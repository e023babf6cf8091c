"""Signed webhooks end to end: what Postgres holds, what reached Kafka, what Customer.io was answered."""

from __future__ import annotations

import time
from decimal import Decimal

import asyncpg
import orjson
import pytest
from synergy_insights.payloads import METRICS_BY_OBJECT_TYPE

from tests.integration.insights.insights_harness import Insights, consume, make_user, signed
from tests.unit.insights.insights_webhook_examples import reporting_webhook, seed_001_webhooks

pytestmark = pytest.mark.integration


async def log_rows(db: asyncpg.Pool, brand_id: int, **where: object) -> list[asyncpg.Record]:
    clauses = "".join(f" AND {column} = ${i + 2}" for i, column in enumerate(where))
    return await db.fetch(
        f"SELECT * FROM customer_io_webhook_log WHERE brand_id = $1{clauses} ORDER BY id",
        brand_id,
        *where.values(),
    )


async def test_seed_001_predictions_merge_into_one_profile_and_reach_kafka(
    insights: Insights, db: asyncpg.Pool, kafka_bootstrap: str
):
    brand = insights.brand
    await make_user(db, brand, "123")  # seed 001's user_id 123 is users.external_id "123"
    now = int(time.time())
    webhooks = seed_001_webhooks()
    for offset, name in enumerate(sorted(webhooks)):
        answer = await insights.post(webhooks[name], timestamp=now - 10 + offset)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "processed"

    user = await db.fetchrow(
        "SELECT id, ai_features FROM users WHERE brand_id = $1 AND external_id = '123'", brand.pk
    )
    features = user["ai_features"]
    assert features["churn_probability"] == 0.78  # kept through the affinity and intent updates
    assert features["predicted_ltv"] == 500.25
    assert features["product_affinity_scores"] == {"concentrates": 0.85, "vapes": 0.62, "flower": 0.41}
    assert features["purchase_probability"] == 0.82
    assert features["recommended_segment"] == "high_intent_buyer"  # the newest
    profile = await db.fetchrow("SELECT * FROM user_ai_profiles WHERE user_id = $1", user["id"])
    assert profile["churn_probability"] == Decimal("0.7800")
    assert profile["engagement_score"] == Decimal("0.6500")
    assert profile["predicted_lifetime_value"] == Decimal("500.25")
    assert profile["purchase_probability"] == Decimal("0.8200")
    assert profile["recommended_segment"] == "high_intent_buyer"
    assert profile["next_best_action"] == "send_personalized_offer"
    assert profile["ai_insights"] == {"predicted_purchase_value": 85.5}

    rows = await log_rows(db, brand.pk, webhook_type="prediction_update")
    assert [row["processed_successfully"] for row in rows] == [True, True, True]
    assert [row["payload"] for row in rows] == [webhooks[name] for name in sorted(webhooks)]
    assert all(row["user_id"] == user["id"] for row in rows)

    records = await consume(kafka_bootstrap, insights.topic, lambda v: v["brand_id"] == brand.brand_id, 3)
    assert [(key, value["name"]) for key, value, _ in records] == [
        (f"{brand.brand_id}:123", "predictions_updated")
    ] * 3
    assert records[0][2]["event_name"] == b"predictions_updated"


async def test_a_reporting_webhook_of_every_object_type_and_metric(
    insights: Insights, db: asyncpg.Pool, kafka_bootstrap: str
):
    brand = insights.brand
    user = await make_user(db, brand)
    sent = {}
    for object_type, metrics in METRICS_BY_OBJECT_TYPE.items():
        for metric in metrics:
            body = reporting_webhook(object_type, metric, user, timestamp=int(time.time()))
            answer = await insights.post(body)
            assert answer.status_code == 200, answer.text
            sent[body["event_id"]] = f"{object_type}_{metric}"

    rows = await log_rows(db, brand.pk, external_user_id=user)
    assert {row["event_id"]: row["webhook_type"] for row in rows} == sent
    assert all(row["processed_successfully"] for row in rows)
    records = await consume(
        kafka_bootstrap, insights.topic, lambda v: v["identifiers"].get("id") == user, len(sent)
    )
    assert {value["event_id"]: value["name"] for _, value, _ in records} == sent
    assert len(records) == len(sent)


async def test_a_redelivered_event_id_changes_nothing(
    insights: Insights, db: asyncpg.Pool, kafka_bootstrap: str
):
    brand = insights.brand
    user = await make_user(db, brand)
    body = reporting_webhook("email", "clicked", user)
    first = await insights.post(body, timestamp=int(time.time()) - 5)
    again = await insights.post(body)  # Customer.io's retry: new timestamp, new signature
    assert first.status_code == 200 and first.json()["status"] == "processed"
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(await log_rows(db, brand.pk, event_id=body["event_id"])) == 1
    records = await consume(kafka_bootstrap, insights.topic, lambda v: v["event_id"] == body["event_id"], 1)
    assert len(records) == 1


async def test_the_brand_path_variant_routes_to_that_brand(insights: Insights, db: asyncpg.Pool):
    brand = insights.brand
    user = await make_user(db, brand)
    body = reporting_webhook("customer", "unsubscribed", user)
    answer = await insights.post(body, path=f"/api/webhooks/customer-io/{brand.slug}")
    assert answer.status_code == 200, answer.text
    assert len(await log_rows(db, brand.pk, event_id=body["event_id"])) == 1
    unknown = await insights.post(
        reporting_webhook("customer", "subscribed", user), path="/webhooks/customer-io/nope"
    )
    assert unknown.status_code == 404 and unknown.json()["field"] == "brand"


async def test_previous_key_is_accepted_during_rotation(insights: Insights, db: asyncpg.Pool):
    from tests.integration.insights.insights_harness import PREVIOUS_KEY

    body = reporting_webhook("push", "opened", await make_user(db, insights.brand))
    answer = await insights.post(body, key=PREVIOUS_KEY)
    assert answer.status_code == 200, answer.text


async def refused(insights: Insights, raw: bytes, headers: dict[str, str], status: int, field: str) -> dict:
    answer = await insights.client.post("/webhooks/customer-io", content=raw, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["field"] == field
    return problem


async def test_refusals_get_their_status_and_nothing_is_logged_or_processed(
    insights: Insights, db: asyncpg.Pool
):
    brand = insights.brand
    user = await make_user(db, brand)
    before = len(await log_rows(db, brand.pk))

    raw, headers = signed(reporting_webhook("email", "opened", user))
    await refused(insights, raw.replace(b"opened", b"clicked"), headers, 401, "X-CIO-Signature")  # tampered

    raw, headers = signed(reporting_webhook("email", "sent", user), timestamp=int(time.time()) - 301)
    assert (await refused(insights, raw, headers, 401, "X-CIO-Timestamp"))["reason"] == "stale_timestamp"

    raw, headers = signed(reporting_webhook("email", "delivered", user), key="not-the-key")
    assert (await refused(insights, raw, headers, 401, "X-CIO-Signature"))["reason"] == "bad_signature"

    raw, headers = signed(reporting_webhook("email", "bounced", user))
    del headers["X-CIO-Signature"]
    assert (await refused(insights, raw, headers, 401, "X-CIO-Signature"))["reason"] == "missing_signature"

    oversized = orjson.dumps({**reporting_webhook("email", "sent", user), "pad": "x" * (1024 * 1024)})
    raw, headers = signed(oversized)
    await refused(insights, raw, headers, 413, "body")

    raw, headers = signed(b'{"event_id": "01J", "object_type": ')
    await refused(insights, raw, headers, 400, "body")

    raw, headers = signed(reporting_webhook("email", "spammed", user))
    headers["Content-Type"] = "text/plain"
    await refused(insights, raw, headers, 415, "Content-Type")

    assert len(await log_rows(db, brand.pk)) == before

    # A replay: the same signed request twice. The first is taken, the copy refused.
    raw, headers = signed(reporting_webhook("email", "converted", user))
    first = await insights.client.post("/webhooks/customer-io", content=raw, headers=headers)
    assert first.status_code == 200
    assert (await refused(insights, raw, headers, 401, "X-CIO-Signature"))["reason"] == "replayed"
    assert len(await log_rows(db, brand.pk)) == before + 1


async def test_oversized_body_is_refused_while_streaming_even_with_a_small_content_length(insights: Insights):
    chunk = b"x" * 65536

    async def body():
        for _ in range(20):  # 1.25 MB
            yield chunk

    headers = {"Content-Type": "application/json", "X-CIO-Timestamp": "1", "X-CIO-Signature": "0" * 64}
    answer = await insights.client.post("/webhooks/customer-io", content=body(), headers=headers)
    assert answer.status_code == 413


async def test_an_unrecognised_json_body_is_logged_as_failed_and_answered_422(
    insights: Insights, db: asyncpg.Pool
):
    answer = await insights.post({"hello": "world"})
    assert answer.status_code == 422 and answer.json()["field"] == "body"
    rows = await db.fetch(
        "SELECT * FROM customer_io_webhook_log WHERE brand_id = $1 AND webhook_type = 'unrecognised'",
        insights.brand.pk,
    )
    assert [(row["processed_successfully"], row["payload"]) for row in rows] == [(False, {"hello": "world"})]
