"""Insights running in-process (ASGI, with its lifespan) against the shared Kafka and Postgres.

Each test module gets its own brand and insights topic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from synergy_common.db import create_pool

from tests.integration.insights.insights_harness import (
    Insights,
    insights_settings,
    make_brand,
    new_topic,
    running_insights,
)


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def insights(db: asyncpg.Pool, database_url: str, kafka_bootstrap: str) -> AsyncIterator[Insights]:
    brand = await make_brand(db)
    topic = await new_topic(kafka_bootstrap)
    settings = insights_settings(database_url, kafka_bootstrap, insights_default_brand_id=brand.brand_id)
    async with running_insights(settings, brand, topic) as running:
        yield running
