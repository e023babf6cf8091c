"""Faults: Kafka away (changes are kept and published once it is back, each once, by id) and Postgres
away (clear errors, a GIF still for the pixel, nothing half-done)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY
from synergy_common.brands import new_write_key
from synergy_common.db import create_pool
from synergy_marketing.preferences_store import PreferenceChangeRelay
from synergy_marketing.publisher import MarketingPublisher
from synergy_marketing.tracking import PIXEL_GIF

from tests.integration.marketing_preferences.harness import (
    client_for,
    envelope_of,
    eventually,
    make_brand,
    make_user,
    running_marketing,
    settings_for,
    stored_preferences,
    token,
)
from tests.support import free_port


async def test_changes_made_while_kafka_is_away_are_published_once_it_is_back(
    database_factory, topic_factory, kafka_bootstrap, consume_all
) -> None:
    database_url = await database_factory("prefskafka")
    topic = await topic_factory(2, prefix="test.marketing")
    db = await create_pool(database_url, min_size=1, max_size=2)
    dead_kafka = f"127.0.0.1:{free_port()}"
    try:
        brand = await make_brand(db)
        users = [await make_user(db, brand) for _ in range(6)]
        settings = settings_for(database_url, dead_kafka)
        async with running_marketing(settings, topic) as app, client_for(app) as client:
            for index, user in enumerate(users):
                if index % 2:
                    answer = await client.post(
                        f"/unsubscribe?token={token('unsubscribe', brand, user)}",
                        data={"List-Unsubscribe": "One-Click"},
                    )
                else:
                    answer = await client.put(
                        f"/v1/users/{user}/email-preferences", headers=brand.auth, json={"newsletter": False}
                    )
                assert answer.status_code == 200  # accepted: Postgres holds it
            flags = [(await stored_preferences(db, brand, u))["unsubscribed"] for u in users]
            assert flags == [False, True, False, True, False, True]
            # the relay keeps failing meanwhile, and nothing is marked published
            await asyncio.sleep(0.5)
            stored_ids = {
                row["event_id"]
                for row in await db.fetch(
                    "SELECT envelope->>'event_id' AS event_id FROM email_preference_changes WHERE published_at IS NULL"
                )
            }
            assert len(stored_ids) == 6

            async def backlog_reported() -> bool:
                return REGISTRY.get_sample_value("synergy_marketing_preference_changes_unpublished") == 6

            assert await eventually(backlog_reported, timeout=10)
        # Kafka is back (a relay with a working publisher, as after a restart)
        publisher = MarketingPublisher(kafka_bootstrap, topic=topic)
        try:
            assert await PreferenceChangeRelay(db, publisher).publish_pending() == 6
            assert await PreferenceChangeRelay(db, publisher).publish_pending() == 0
        finally:
            await publisher.stop()
        records = await consume_all(topic, 6, timeout=20)
        assert sorted(envelope_of(r)["event_id"] for r in records) == sorted(stored_ids)
        assert len(await consume_all(topic)) == 6  # each once
        assert (
            await db.fetchval("SELECT count(*) FROM email_preference_changes WHERE published_at IS NULL") == 0
        )
        # in each user's order, keyed by brand:user
        assert {r.key.decode() for r in records} == {f"{brand.brand_id}:{u}" for u in users}
    finally:
        await db.close()


async def test_with_postgres_away_the_routes_answer_clearly_and_the_pixel_is_still_a_gif(
    topic_factory, kafka_bootstrap
) -> None:
    topic = await topic_factory(1, prefix="test.marketing")
    dead_postgres = f"postgresql://synergy:synergy@127.0.0.1:{free_port()}/synergy"
    settings = settings_for(dead_postgres, kafka_bootstrap)
    async with running_marketing(settings, topic) as app, client_for(app) as client:
        started = time.perf_counter()
        pixel = await client.get("/track/email-open?queue_id=queue_123")
        assert pixel.status_code == 200 and pixel.content == PIXEL_GIF
        assert time.perf_counter() - started < 1.5  # bounded by the tracking timeout, whatever Postgres does
        click = await client.get("/track/email-click?queue_id=queue_123&redirect=https://shop.example.com/")
        assert click.status_code == 503 and "location" not in click.headers
        for answer in (
            await client.post(
                f"/unsubscribe?token={token('unsubscribe', '1', 'u1')}",
                data={"List-Unsubscribe": "One-Click"},
            ),
            await client.get(f"/preferences?token={token('preferences', '1', 'u1')}"),
            await client.get(f"/unsubscribe?token={token('unsubscribe', '1', 'u1')}"),
        ):
            assert answer.status_code == 503
            assert answer.headers["content-type"].startswith("text/html")
        api = await client.put(
            "/v1/users/u1/email-preferences",
            headers={"Authorization": f"Bearer {new_write_key()}"},  # well formed, so Postgres is asked
            json={"newsletter": False},
        )
        assert api.status_code == 503
        assert api.headers["content-type"] == "application/problem+json"
        assert "asyncpg" not in api.text and "Connect call failed" not in api.text


async def test_one_bad_change_in_a_batch_does_not_fail_the_others(database_factory) -> None:
    import asyncpg
    from synergy_marketing.preferences_store import PreferenceWriter

    database_url = await database_factory("prefsbatch")
    db = await create_pool(database_url, min_size=1, max_size=2)
    writer = PreferenceWriter(db, writers=1)
    task = asyncio.create_task(writer.run_forever())
    try:
        brand = await make_brand(db)
        good = [await make_user(db, brand) for _ in range(3)]
        results = await asyncio.gather(
            writer.change(brand.pk, good[0], {"unsubscribed": True}, "one_click"),
            writer.change(10**20, "overflowing-brand", {"unsubscribed": True}, "one_click"),
            writer.change(brand.pk, good[1], {"newsletter": False}, "api"),
            writer.change(brand.pk, good[2], {"unsubscribed": True}, "one_click"),
            return_exceptions=True,
        )
        assert isinstance(results[1], asyncpg.DataError)
        assert [r.any for i, r in enumerate(results) if i != 1] == [True, True, True]
        assert [(await stored_preferences(db, brand, u))["unsubscribed"] for u in good] == [True, False, True]
        assert await db.fetchval("SELECT count(*) FROM email_preference_changes") == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_a_batch_mixes_new_and_stored_users_and_one_users_changes_apply_in_order(
    database_factory,
) -> None:
    from datetime import UTC, datetime

    from synergy_marketing.preferences_store import PendingChange, change_preferences_batch

    database_url = await database_factory("prefsmix")
    db = await create_pool(database_url, min_size=1, max_size=2)
    try:
        brand = await make_brand(db)
        await db.execute(
            "INSERT INTO email_preferences (brand_id, user_id, price_drop_alerts) VALUES ($1, 'stored', FALSE)",
            brand.pk,
        )
        loop = asyncio.get_running_loop()
        now = datetime.now(UTC)

        def item(user: str, change: dict) -> PendingChange:
            return PendingChange(brand.pk, user, change, "api", now, loop.create_future())

        batch = [
            item("fresh", {"unsubscribed": True}),
            item("stored", {"newsletter": False}),
            item("fresh", {"unsubscribed": False, "newsletter": False}),
            item("stored", {"newsletter": False}),  # the same again: no change
            item("fresh-untouched", {}),
        ]
        async with db.acquire() as connection, connection.transaction():
            results = await change_preferences_batch(connection, batch)
        assert [sorted(r.changed) for r in results] == [
            ["unsubscribed", "unsubscribed_at"],
            ["newsletter"],
            ["newsletter", "unsubscribed", "unsubscribed_at"],
            [],
            [],
        ]
        fresh = await stored_preferences(db, brand, "fresh")
        assert (fresh["unsubscribed"], fresh["unsubscribed_at"], fresh["newsletter"]) == (False, None, False)
        stored = await stored_preferences(db, brand, "stored")
        assert (stored["newsletter"], stored["price_drop_alerts"], stored["marketing_emails"]) == (
            False,
            False,
            True,
        )
        untouched = await stored_preferences(db, brand, "fresh-untouched")
        assert untouched["newsletter"] is True and untouched["unsubscribed"] is False
        audit = await db.fetch("SELECT user_id, changes FROM email_preference_changes ORDER BY change_id")
        assert [(a["user_id"], sorted(a["changes"])) for a in audit] == [
            ("fresh", ["unsubscribed", "unsubscribed_at"]),
            ("stored", ["newsletter"]),
            ("fresh", ["newsletter", "unsubscribed", "unsubscribed_at"]),
        ]
    finally:
        await db.close()


async def test_one_click_answers_503_while_postgres_restarts_and_200_again_after_nothing_lost(
    database_factory, topic_factory, kafka_bootstrap, postgres_control, consume_all
) -> None:
    database_url = await database_factory("prefsrestart")
    topic = await topic_factory(1, prefix="test.marketing")
    db = await create_pool(database_url, min_size=0, max_size=2)
    try:
        brand = await make_brand(db)
        users = [await make_user(db, brand) for _ in range(6)]
        settings = settings_for(database_url, kafka_bootstrap)
        async with running_marketing(settings, topic) as app, client_for(app) as client:

            async def one_click(user: str) -> int:
                answer = await client.post(
                    f"/unsubscribe?token={token('unsubscribe', brand, user)}",
                    content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                assert answer.headers["content-type"].startswith("text/html")
                return answer.status_code

            assert await one_click(users[0]) == 200  # the writer now holds a connection
            async with postgres_control.postgres_outage():
                assert await one_click(users[1]) == 503
            # the connection held from before the restart is dead: replaced, not used
            assert [await one_click(user) for user in users[2:]] == [200, 200, 200, 200]
            answered = [users[0], *users[2:]]
            for user in users:
                stored = await stored_preferences(db, brand, user)
                assert (stored is not None and stored["unsubscribed"]) is (user in answered)
            keys = {f"{brand.brand_id}:{user}".encode() for user in answered}
            records = await consume_all(topic, 5, where=lambda r: r.key in keys, timeout=30)
            assert sorted(r.key for r in records) == sorted(keys)
            assert all(envelope_of(r)["data"]["unsubscribed"] is True for r in records)
    finally:
        await db.close()
