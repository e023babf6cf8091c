"""Postgres goes away while events arrive: /readyz says so, nothing is lost (every event applied once,
counted by id), and the deadlines fire once Postgres is back."""

from __future__ import annotations

import asyncio

from tests.integration.marketing.harness import envelope, eventually, new_user, send


async def test_a_postgres_outage_loses_no_event_and_every_cart_fires_after_it(
    marketing, kafka_producer, postgres_control
) -> None:
    users = [new_user() for _ in range(50)]
    before = [envelope(marketing.brand, "cart_item_added", {"product_id": "p1", "price": 2}, user=u)
              for u in users[:25]]
    during = [envelope(marketing.brand, "cart_item_added", {"product_id": "p1", "price": 2}, user=u)
              for u in users[25:]]
    views = [envelope(marketing.brand, "product_viewed", {"product_id": "p9"}, user=u) for u in users]
    await send(kafka_producer, marketing.events, *before)
    await postgres_control.astop_postgres()
    try:
        await send(kafka_producer, marketing.events, *during, *views)
        ready = await marketing.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["postgres"] is False
        await asyncio.sleep(3)
    finally:
        await postgres_control.astart_postgres()
    wanted = {e["event_id"] for e in before + during + views}

    async def all_applied():
        rows = await marketing.db.fetch(
            "SELECT event_id FROM marketing_applied_events WHERE brand_id = $1 AND event_id = ANY($2::text[])",
            marketing.brand.pk, sorted(wanted))
        return len(rows) == len(wanted)

    await eventually(all_applied, timeout=90, what="every event applied after the outage")

    async def all_fired():
        rows = await marketing.db.fetch(
            "SELECT user_id, status FROM marketing_queue WHERE brand_id = $1 AND user_id = ANY($2::text[])",
            marketing.brand.pk, users)
        return rows if len(rows) == len(users) else None

    rows = await eventually(all_fired, timeout=60, what="one cart message per user")
    assert sorted(r["user_id"] for r in rows) == sorted(users)
    assert {r["status"] for r in rows} == {"sent"}
    views_counted = await marketing.db.fetchval(
        "SELECT sum(view_count) FROM product_views WHERE brand_id = $1 AND person = ANY($2::text[])",
        marketing.brand.pk, users)
    assert views_counted == len(users)
    assert (await marketing.client.get("/readyz")).status_code == 200
