"""Delivery: an abandoned cart decided by marketing reaches the Customer.io fake through cio-sink as a
`cart_abandoned` event with every field the campaign needs (real Kafka and Postgres throughout)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_cio_sink.service import running_sink
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_marketing.app import create_app
from synergy_marketing.publisher import MarketingPublisher

from tests.integration.marketing.harness import Brand, envelope, eventually, new_user, send, settings_for

SITE_ID, API_KEY = "site-mkt", "key-mkt"


async def test_cart_abandoned_reaches_customer_io_with_every_field(
    database_factory, topic_factory, kafka_bootstrap, kafka_producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = await database_factory("mkt_cio")
    topics = {
        "events": await topic_factory(2, prefix="mkt.cio.events"),
        "loyalty": await topic_factory(1, prefix="mkt.cio.loyalty"),
        "marketing": await topic_factory(2, prefix="mkt.cio.marketing"),
        "snapshots": await topic_factory(1, prefix="mkt.cio.snapshots", compacted=True),
        "insights": await topic_factory(1, prefix="mkt.cio.insights"),
        "dlq": await topic_factory(1, prefix="mkt.cio.dlq"),
    }
    for name, topic in topics.items():
        monkeypatch.setenv(f"SYNERGY_TOPIC_{name.upper()}", topic)
    key = CredentialCipher.generate_key()
    db = await create_pool(database_url)
    try:
        created = await create_brand(db, f"mkt-cio-{uuid.uuid4().hex[:6]}", CredentialCipher(key),
                                     cio_site_id=SITE_ID, cio_api_key=API_KEY)
        brand = Brand(created.brand_id, created.write_key)
        user = new_user()
        fake = CustomerIoFake({SITE_ID: API_KEY})
        async with serve_fake(fake) as url:
            sink_settings = SinkSettings(
                kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url, synergy_encryption_key=key,
                cio_track_url=url, cio_site_id=None, cio_api_key=None, cio_request_timeout=2.0,
                consumer_group=f"mkt-cio-{uuid.uuid4().hex[:8]}", commit_interval=0.2, ops_port=0)
            app = create_app(settings_for(database_url, kafka_bootstrap),
                             publisher=MarketingPublisher(kafka_bootstrap, topic=topics["marketing"]),
                             events_topic=topics["events"], insights_topic=topics["insights"])
            async with running_sink(sink_settings) as sink, app.router.lifespan_context(app):
                sink_task = asyncio.create_task(sink.run())
                try:
                    await send(kafka_producer, topics["events"],
                               envelope(brand, "cart_item_added",
                                        {"product_id": "prod_001", "product_name": "Christian Voter Guide",
                                         "quantity": 1, "price": 19.99, "image_url": "https://img.example/1.png"},
                                        user=user))

                    async def delivered():
                        return [e for e in fake.events_for(f"id:{user}") if e.name == "cart_abandoned"]

                    (event,) = await eventually(delivered, timeout=40, what="cart_abandoned at the fake")
                    # The message is published before its queue row commits (the same transaction).
                    row = await eventually(lambda: db.fetchrow(
                        "SELECT queue_id, event_id FROM marketing_queue WHERE user_id = $1", user), what="the row")
                    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                 base_url="http://marketing.test") as client:
                        queue = (await client.get(f"/v1/users/{user}/marketing", headers=brand.auth)).json()
                finally:
                    sink.stop()
                    await sink_task
    finally:
        await db.close()
    assert event.event_id == row["event_id"].strip()
    data = event.data
    assert data["cart_items"] == [{"product_id": "prod_001", "product_name": "Christian Voter Guide", "quantity": 1,
                                   "price": 19.99, "image_url": "https://img.example/1.png"}]
    assert data["cart_total"] == 19.99
    assert isinstance(data["cart_abandoned_at"], str) and data["cart_abandoned_at"].endswith("Z")
    assert (data["discount_code"], data["discount_amount"]) == ("CART10", 10)
    assert (data["email_template"], data["email_subject"]) == ("abandoned_cart_v1",
                                                              "You left items in your cart! \U0001f6d2")
    assert (data["queue_id"], data["trigger_type"]) == (row["queue_id"], "abandoned_cart")
    assert data["unsubscribe_url"].startswith("http://marketing.test/unsubscribe?token=")
    assert data["preferences_url"].startswith("http://marketing.test/preferences?token=")
    assert data["list_unsubscribe"] == f"<{data['unsubscribe_url']}>"
    assert data["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    assert [(i["queue_id"], i["status"]) for i in queue["items"]] == [(row["queue_id"], "sent")]
