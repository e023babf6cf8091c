"""Two-way with Customer.io: its `unsubscribed` reporting webhooks (via synergy.insights.v1) set
EmailPreferences; a resubscribe here clears it and goes back out as Customer.io's own attribute."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
from synergy_marketing.subscription_consumer import run_subscription_consumer

from tests.integration.marketing_preferences.harness import (
    changes_of,
    envelope_of,
    eventually,
    make_user,
    settings_for,
    stored_preferences,
)


def insight(brand_id: str, user: str, object_type: str, metric: str, at: datetime, event_id: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": "track",
            "name": f"{object_type}_{metric}",
            "brand_id": brand_id,
            "identifiers": {"id": user},
            "data": {"object_type": object_type, "metric": metric, "cio_event_id": event_id},
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "received_at": at.isoformat().replace("+00:00", "Z"),
            "schema_version": 1,
            "source": "insights",
            "correlation_id": event_id,
        }
    )


async def test_customer_io_unsubscribes_set_preferences_and_late_ones_never_undo_a_resubscribe(
    marketing, topic_factory, kafka_producer, kafka_bootstrap, consume_all
) -> None:
    insights_topic = await topic_factory(2, prefix="test.insights")
    brand = marketing.brand
    unsubscriber = await make_user(marketing.db, brand)
    resubscriber = await make_user(marketing.db, brand)
    bystander = await make_user(marketing.db, brand)
    now = datetime.now(UTC)
    for key, value in [
        (
            unsubscriber,
            insight(
                brand.brand_id, unsubscriber, "customer", "unsubscribed", now, "01JCIO00000000000000000001"
            ),
        ),
        (bystander, insight(brand.brand_id, bystander, "email", "opened", now, "01JCIO00000000000000000002")),
        # the same webhook delivered twice
        (
            unsubscriber,
            insight(
                brand.brand_id, unsubscriber, "customer", "unsubscribed", now, "01JCIO00000000000000000001"
            ),
        ),
    ]:
        await kafka_producer.send_and_wait(insights_topic, value, key=f"{brand.brand_id}:{key}".encode())

    # resubscriber: resubscribed here (now), then an older unsubscribe from Customer.io arrives late
    await marketing.client.put(
        f"/v1/users/{resubscriber}/email-preferences", headers=brand.auth, json={"unsubscribed": True}
    )
    await marketing.client.put(
        f"/v1/users/{resubscriber}/email-preferences", headers=brand.auth, json={"unsubscribed": False}
    )
    late = insight(
        brand.brand_id,
        resubscriber,
        "email",
        "unsubscribed",
        now - timedelta(hours=1),
        "01JCIO00000000000000000003",
    )
    sent = await kafka_producer.send_and_wait(
        insights_topic, late, key=f"{brand.brand_id}:{resubscriber}".encode()
    )
    # a sentinel behind the late webhook in its partition: once it is applied, the late one was too
    sentinel = await make_user(marketing.db, brand)
    await kafka_producer.send_and_wait(
        insights_topic,
        insight(brand.brand_id, sentinel, "customer", "unsubscribed", now, "01JCIO00000000000000000004"),
        key=f"{brand.brand_id}:{sentinel}".encode(),
        partition=sent.partition,
    )

    settings = settings_for(marketing.database_url, kafka_bootstrap)
    relay = marketing.app.state.preferences.relay
    task = asyncio.create_task(
        run_subscription_consumer(
            marketing.db, settings, relay, insights_topic=insights_topic, group_id=f"subs-{insights_topic}"
        )
    )
    try:

        async def unsubscribed() -> bool:
            for user in (unsubscriber, sentinel):
                stored = await stored_preferences(marketing.db, brand, user)
                if not (stored and stored["unsubscribed"]):
                    return False
            return True

        assert await eventually(unsubscribed, timeout=30)
        stored = await stored_preferences(marketing.db, brand, unsubscriber)
        assert stored["unsubscribed_at"] == now  # when it happened at Customer.io
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert [c["source"] for c in await changes_of(marketing.db, brand, unsubscriber)] == ["customer_io"]
    assert (await stored_preferences(marketing.db, brand, resubscriber))["unsubscribed"] is False
    assert [c["source"] for c in await changes_of(marketing.db, brand, resubscriber)] == ["api", "api"]
    assert await stored_preferences(marketing.db, brand, bystander) is None
    key = f"{brand.brand_id}:{unsubscriber}".encode()
    [record] = await consume_all(marketing.topic, 1, where=lambda r: r.key == key, timeout=20)
    assert envelope_of(record)["data"]["unsubscribed"] is True
