"""Insights running in-process (ASGI, with its lifespan) against the shared Kafka and Postgres.

Infrastructure comes from the shared fixtures in tests/conftest.py (`database_url`,
`kafka_bootstrap`) when they exist; INSIGHTS_TEST_DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS override
them. Each test module gets its own brand and insights topic.
"""

from __future__ import annotations

import asyncio
import os
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


def _fixture_or_env(request: pytest.FixtureRequest, env: str, fixture: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    try:
        return str(request.getfixturevalue(fixture))
    except pytest.FixtureLookupError:
        pytest.skip(f"no {fixture} fixture and {env} is not set")


@pytest.fixture(scope="session")
def insights_database_url(request: pytest.FixtureRequest) -> str:
    return _fixture_or_env(request, "INSIGHTS_TEST_DATABASE_URL", "database_url")


@pytest.fixture(scope="session")
def insights_kafka(request: pytest.FixtureRequest) -> str:
    return _fixture_or_env(request, "KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap")


@pytest.fixture(scope="session")
async def db(insights_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(insights_database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def insights(
    db: asyncpg.Pool, insights_database_url: str, insights_kafka: str
) -> AsyncIterator[Insights]:
    brand = await make_brand(db)
    topic = await new_topic(insights_kafka)
    settings = insights_settings(
        insights_database_url, insights_kafka, insights_default_brand_id=brand.brand_id
    )
    async with running_insights(settings, brand, topic) as running:
        yield running


class _LocalPostgres:
    """stop/start of the Postgres of a named local instance (INSIGHTS_LOCALINFRA_NAME)."""

    def __init__(self, name: str) -> None:
        from synergy_common.localinfra import LocalInfra

        self._local = LocalInfra.load(name)

    async def astop_postgres(self) -> None:
        await asyncio.to_thread(self._local.stop_postgres)

    async def astart_postgres(self) -> None:
        await asyncio.to_thread(self._local.start_postgres)


@pytest.fixture
def postgres_switch(request: pytest.FixtureRequest) -> object:
    """Something with astop_postgres()/astart_postgres() for the Postgres the tests use; skips otherwise."""
    if name := os.environ.get("INSIGHTS_LOCALINFRA_NAME"):
        return _LocalPostgres(name)
    try:
        return request.getfixturevalue("postgres_control")
    except pytest.FixtureLookupError:
        pytest.skip("no postgres_control fixture and INSIGHTS_LOCALINFRA_NAME is not set")
