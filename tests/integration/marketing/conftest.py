"""Each module gets a fresh migrated database, its own events/insights/marketing topics and the
marketing service in-process with its consumer and scheduler running (windows of seconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from synergy_common.db import create_pool
from synergy_marketing.app import create_app
from synergy_marketing.publisher import MarketingPublisher

from tests.integration.marketing.harness import Brand, make_brand, settings_for


@dataclass
class Marketing:
    app: Any
    client: httpx.AsyncClient
    db: asyncpg.Pool
    events: str
    insights: str
    topic: str
    brand: Brand
    other_brand: Brand
    database_url: str


@pytest.fixture(scope="module")
async def marketing(database_factory, topic_factory, kafka_bootstrap: str) -> AsyncIterator[Marketing]:
    database_url = await database_factory("mkt")
    events = await topic_factory(3, prefix="test.events")
    insights = await topic_factory(2, prefix="test.insights")
    topic = await topic_factory(3, prefix="test.marketing")
    db = await create_pool(database_url, min_size=1, max_size=4)
    try:
        brand = await make_brand(db)
        other = await make_brand(db, "Other")
        settings = settings_for(database_url, kafka_bootstrap)
        app = create_app(
            settings,
            publisher=MarketingPublisher(kafka_bootstrap, topic=topic),
            events_topic=events,
            insights_topic=insights,
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://marketing.test", timeout=30) as client:
                yield Marketing(app, client, db, events, insights, topic, brand, other, database_url)
    finally:
        await db.close()
