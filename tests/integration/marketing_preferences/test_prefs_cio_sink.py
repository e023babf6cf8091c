"""A preference change reaches Customer.io (the local fake) as person attributes through cio-sink;
`unsubscribed` is Customer.io's own attribute, set on unsubscribe and cleared on a resubscribe."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_cio_sink.service import running_sink
from synergy_common.brands import CredentialCipher
from synergy_common.db import create_pool

from tests.integration.cio_sink.conftest import fresh_topics, new_brand, quick_settings
from tests.integration.cio_sink.harness import API_KEY, SITE_ID
from tests.integration.marketing_preferences.harness import (
    Brand,
    client_for,
    make_user,
    running_marketing,
    settings_for,
    token,
)


async def test_unsubscribe_and_resubscribe_set_customer_ios_own_attribute_at_the_fake(
    database_factory, topic_factory, kafka_bootstrap, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = await database_factory("prefscio")
    topics = await fresh_topics(topic_factory, monkeypatch)
    encryption_key = CredentialCipher.generate_key()
    brand_id = await new_brand(database_url, encryption_key)
    db = await create_pool(database_url, min_size=1, max_size=2)
    fake = CustomerIoFake({SITE_ID: API_KEY})
    try:
        brand = Brand(brand_id, write_key="")  # the pages need no key: the signed token is the authority
        user = await make_user(db, brand)
        async with (
            serve_fake(fake) as url,
            running_sink(quick_settings(kafka_bootstrap, database_url, encryption_key, url)) as sink,
            running_marketing(settings_for(database_url, kafka_bootstrap), topics["marketing"]) as app,
            client_for(app) as client,
        ):
            sink_task = asyncio.create_task(sink.run())
            try:
                one_click = await client.post(
                    f"/unsubscribe?token={token('unsubscribe', brand, user)}",
                    data={"List-Unsubscribe": "One-Click"},
                )
                assert one_click.status_code == 200

                async def attribute(expected: bool) -> None:
                    for _ in range(600):
                        if fake.people.get((SITE_ID, user), {}).get("unsubscribed") is expected:
                            return
                        await asyncio.sleep(0.05)
                    raise AssertionError(
                        f"unsubscribed never became {expected}: {fake.people.get((SITE_ID, user))}"
                    )

                await attribute(True)
                person = fake.people[(SITE_ID, user)]
                assert person["newsletter"] is True and person["marketing_emails"] is True
                assert isinstance(person["unsubscribed_at"], int)  # unix seconds, as Customer.io wants

                page = await client.get(f"/preferences?token={token('preferences', brand, user)}")
                nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
                saved = await client.post(
                    f"/preferences?token={token('preferences', brand, user)}",
                    data={"nonce": nonce, "marketing_emails": "on", "price_drop_alerts": "on"},
                )
                assert saved.status_code == 303
                await attribute(False)
                person = fake.people[(SITE_ID, user)]
                assert (person["newsletter"], person["price_drop_alerts"], person["marketing_emails"]) == (
                    False,
                    True,
                    True,
                )
                assert person["unsubscribed_at"] is None
                # nothing was sent as an event: preferences are attributes, not activity
                assert [e.name for e in fake.event_order if e.name == "email_preferences_changed"] == []
            finally:
                sink.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sink_task, 30)
    finally:
        await db.close()
