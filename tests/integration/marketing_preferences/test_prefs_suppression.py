"""Preferences set through these routes stop the triggers (their suppression reads EmailPreferences), and
a sent message's own List-Unsubscribe link unsubscribes in one click. The whole service runs: consumer,
scheduler, windows of seconds."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import orjson
import pytest
from synergy_common.db import create_pool
from synergy_marketing.app import create_app
from synergy_marketing.publisher import MarketingPublisher

from tests.integration.marketing.harness import (
    envelope,
    eventually,
    make_brand,
    new_user,
    queue_rows,
    send,
    settings_for,
    triggers_in,
)
from tests.integration.marketing_preferences.harness import stored_preferences

GUIDE = {"product_id": "prod_001", "product_name": "Voter Guide", "quantity": 1, "price": 19.99}


@pytest.fixture(scope="module")
async def service(database_factory, topic_factory, kafka_bootstrap) -> AsyncIterator[SimpleNamespace]:
    database_url = await database_factory("prefsup")
    events = await topic_factory(2, prefix="test.events")
    insights = await topic_factory(1, prefix="test.insights")
    topic = await topic_factory(2, prefix="test.marketing")
    db = await create_pool(database_url, min_size=1, max_size=4)
    try:
        brand = await make_brand(db)
        app = create_app(
            settings_for(database_url, kafka_bootstrap),
            publisher=MarketingPublisher(kafka_bootstrap, topic=topic),
            events_topic=events,
            insights_topic=insights,
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://marketing.test", timeout=30
            ) as client:
                yield SimpleNamespace(db=db, client=client, brand=brand, events=events, topic=topic)
    finally:
        await db.close()


async def test_users_who_unsubscribed_or_unticked_carts_get_no_cart_mail_and_others_do(
    service, kafka_producer, consume_all
) -> None:
    unsubscribed, unticked, mailed = new_user(), new_user(), new_user()
    api = "/v1/users/{}/email-preferences"
    # two users set up through this service's own routes
    link = (await service.client.put(api.format(unsubscribed), headers=service.brand.auth, json={})).json()
    one_click = await service.client.post(
        link["unsubscribe_url"].removeprefix("http://marketing.test"), data={"List-Unsubscribe": "One-Click"}
    )
    assert one_click.status_code == 200
    prefs_path = (
        (await service.client.put(api.format(unticked), headers=service.brand.auth, json={}))
        .json()["preferences_url"]
        .removeprefix("http://marketing.test")
    )
    page = await service.client.get(prefs_path)
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
    boxes = {
        "marketing_emails": "on",
        "newsletter": "on",
        "price_drop_alerts": "on",
    }  # no abandoned_cart_emails
    assert (await service.client.post(prefs_path, data={"nonce": nonce, **boxes})).status_code == 303

    await send(
        kafka_producer,
        service.events,
        *[
            envelope(service.brand, "cart_item_added", GUIDE, user=u)
            for u in (unsubscribed, unticked, mailed)
        ],
    )

    async def decided(user):
        async def read():
            return await queue_rows(service.db, service.brand, user)

        return await eventually(read, timeout=30, what=f"a decision for {user}")

    assert [(r["status"], r["reason"]) for r in await decided(unsubscribed)] == [
        ("suppressed", "unsubscribed")
    ]
    assert [(r["status"], r["reason"]) for r in await decided(unticked)] == [("suppressed", "preferences")]
    assert [(r["status"], r["reason"]) for r in await decided(mailed)] == [("sent", None)]

    records = await consume_all(service.topic)
    sent = [
        m
        for m in triggers_in(records, service.brand)
        if m["identifiers"]["id"] in (unsubscribed, unticked, mailed)
    ]
    assert [m["identifiers"]["id"] for m in sent] == [mailed]

    # The mailed user's message carries RFC 8058's headers; its own link unsubscribes in one click.
    data = sent[0]["data"]
    assert data["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    match = re.fullmatch(
        r"<(http://marketing\.test/unsubscribe\?token=[A-Za-z0-9_\-.]+)>", data["list_unsubscribe"]
    )
    assert match, data["list_unsubscribe"]
    response = await service.client.post(
        match.group(1).removeprefix("http://marketing.test"),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and "location" not in response.headers
    assert (await stored_preferences(service.db, service.brand, mailed))["unsubscribed"] is True

    def unsubscribe_published(records) -> bool:
        return any(
            (c := orjson.loads(r.value)).get("name") == "email_preferences_changed"
            and c["identifiers"]["id"] == mailed
            and c["data"]["unsubscribed"] is True
            for r in records
        )

    await consume_all(service.topic, until=unsubscribe_published, timeout=20)
