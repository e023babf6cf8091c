"""Postgres goes away while events flow: nothing is lost, nothing is logged twice, counted by id."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.integration.analytics.harness import analytics_service, logged_ids, make_brand, publish, wait_for

pytestmark = pytest.mark.integration


async def test_events_sent_before_during_and_after_a_postgres_outage_are_all_logged_once(
    kafka_bootstrap, database_url, topic_factory, kafka_producer, db, postgres_control
) -> None:
    brand = await make_brand(db)
    topic = await topic_factory(3, prefix="analytics.outage")

    def event(i: int) -> dict:
        return {"event_id": f"{brand.brand_id}-out-{i:04d}", "type": "track", "name": "product_scanned",
                "brand_id": brand.brand_id, "identifiers": {"id": f"user-{i % 17}"}, "data": {},
                "timestamp": f"2026-11-20T10:{i // 60:02d}:{i % 60:02d}Z", "source": "ingest"}

    sent = [event(i) for i in range(300)]
    async with analytics_service(kafka_bootstrap, database_url, topic_factory, topics=[topic]) as (client, _, _t):
        await publish(kafka_producer, topic, sent[:100])
        await wait_for(lambda: _count(db, brand.brand_id, 100))
        async with postgres_control.postgres_outage():
            await publish(kafka_producer, topic, sent[100:200])  # consumed while Postgres is down
            await asyncio.sleep(3)
            ready = await client.get("/readyz")
        await publish(kafka_producer, topic, sent[200:])
        await wait_for(lambda: _count(db, brand.brand_id, 300), timeout=90)
    assert ready.status_code == 503
    assert await logged_ids(db, brand.brand_id) == sorted(e["event_id"] for e in sent)
    assert await db.fetchval("SELECT count(*) FROM dlq_messages WHERE source_topic = $1", topic) == 0


async def _count(db, brand_id: str, n: int) -> bool:
    try:
        return len(await logged_ids(db, brand_id)) >= n
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
