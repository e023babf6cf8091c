"""Fixtures: a dispatcher harness per test (its own topics, consumer group and brand)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from synergy_common.brands import CredentialCipher
from synergy_common.db import create_pool

from tests.integration.dispatcher.harness import Brand, DispatcherHarness

ENCRYPTION_KEY = CredentialCipher.generate_key()


@pytest.fixture(scope="session")
async def dispatcher_database_url(database_factory: Callable[..., Awaitable[str]]) -> str:
    return await database_factory("dispatch", migrate=True)


async def make_harness(kafka_bootstrap: str, database_url: str, producer: AIOKafkaProducer,
                       topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch,
                       ) -> DispatcherHarness:
    topics = {
        "events": await topic_factory(3, prefix="dispatch.events"),
        "loyalty": await topic_factory(1, prefix="dispatch.loyalty"),
        "marketing": await topic_factory(1, prefix="dispatch.marketing"),
        "dlq": await topic_factory(1, prefix="dispatch.dlq"),
    }
    monkeypatch.setenv("SYNERGY_TOPIC_DLQ", topics["dlq"])
    pool = await create_pool(database_url)
    return DispatcherHarness(kafka_bootstrap, database_url, ENCRYPTION_KEY, producer, pool, topics)


@pytest.fixture
async def harness(kafka_bootstrap: str, dispatcher_database_url: str, kafka_producer: AIOKafkaProducer,
                  topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch,
                  ) -> AsyncIterator[DispatcherHarness]:
    built = await make_harness(kafka_bootstrap, dispatcher_database_url, kafka_producer, topic_factory,
                               monkeypatch)
    try:
        yield built
    finally:
        await built.close()
        await built.pool.close()


@pytest.fixture
async def brand(harness: DispatcherHarness) -> Brand:
    """A brand of its own in the harness's database."""
    return Brand(*await harness.brand())


@pytest.fixture
async def isolated_harness(kafka_bootstrap: str, database_factory: Callable[..., Awaitable[str]],
                           kafka_producer: AIOKafkaProducer, topic_factory: Callable[..., Awaitable[str]],
                           monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DispatcherHarness]:
    """With a database of its own: for tests of the deployment's destinations (one row per database)."""
    url = await database_factory("dispatch", migrate=True)
    built = await make_harness(kafka_bootstrap, url, kafka_producer, topic_factory, monkeypatch)
    try:
        yield built
    finally:
        await built.close()
        await built.pool.close()
