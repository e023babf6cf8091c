"""Each module gets a fresh migrated database (the relay publishes every unpublished change of its
database, so modules must not share one), its own marketing topic and an in-process service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from synergy_common.db import create_pool

from tests.integration.marketing_preferences.harness import (
    Brand,
    client_for,
    make_brand,
    running_marketing,
    settings_for,
)


@dataclass
class Marketing:
    app: Any
    client: httpx.AsyncClient
    db: asyncpg.Pool
    topic: str
    brand: Brand
    other_brand: Brand
    database_url: str


@pytest.fixture(scope="module")
async def marketing(database_factory, topic_factory, kafka_bootstrap: str) -> AsyncIterator[Marketing]:
    database_url = await database_factory("prefs")
    topic = await topic_factory(3, prefix="test.marketing")
    db = await create_pool(database_url, min_size=1, max_size=4)
    try:
        brand = await make_brand(db)
        other = await make_brand(db, "Other")
        async with running_marketing(settings_for(database_url, kafka_bootstrap), topic) as app:
            async with client_for(app) as client:
                yield Marketing(app, client, db, topic, brand, other, database_url)
    finally:
        await db.close()
