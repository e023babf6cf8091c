"""Fixtures: a cio-sink in-process against real Kafka and Postgres, delivering to the Customer.io fake."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool

from tests.integration.cio_sink.harness import API_KEY, SITE_ID, SinkHarness


@pytest.fixture(scope="session")
async def cio_database_url(database_factory: Callable[..., Awaitable[str]]) -> str:
    """A database of our own, migrated (foundation + this service's migration)."""
    return await database_factory("cio", migrate=True)


async def fresh_topics(topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch,
                       ) -> dict[str, str]:
    """Topics of this test only, wired into the sink through SYNERGY_TOPIC_*."""
    topics = {
        "events": await topic_factory(3, prefix="cio.events"),
        "loyalty": await topic_factory(1, prefix="cio.loyalty"),
        "marketing": await topic_factory(1, prefix="cio.marketing"),
        "snapshots": await topic_factory(1, prefix="cio.snapshots", compacted=True),
        "dlq": await topic_factory(1, prefix="cio.dlq"),
    }
    for name, topic in topics.items():
        monkeypatch.setenv(f"SYNERGY_TOPIC_{name.upper()}", topic)
    return topics


def quick_settings(kafka_bootstrap: str, database_url: str, encryption_key: str, track_url: str) -> SinkSettings:
    """Short timeouts and backoffs, no default credentials (each test's brand carries its own)."""
    return SinkSettings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url, synergy_encryption_key=encryption_key,
        cio_track_url=track_url, cio_site_id=None, cio_api_key=None, cio_request_timeout=1.0,
        cio_max_attempts=1000, cio_max_retry_window=600, cio_backoff_base=0.05, cio_backoff_max=0.5,
        cio_snapshot_interval=0.5, consumer_group=f"cio-sink-test-{uuid.uuid4().hex[:8]}",
        commit_interval=0.2, ops_port=0,
    )


async def new_brand(database_url: str, encryption_key: str, with_credentials: bool = True) -> str:
    pool = await create_pool(database_url)
    try:
        credentials = {"cio_site_id": SITE_ID, "cio_api_key": API_KEY} if with_credentials else {}
        brand = await create_brand(pool, f"cio-sink-test-{uuid.uuid4().hex[:8]}",
                                   CredentialCipher(encryption_key), **credentials)
    finally:
        await pool.close()
    return brand.brand_id


@pytest.fixture
async def harness(
    cio_database_url: str, kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]],
    kafka_producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[SinkHarness]:
    topics = await fresh_topics(topic_factory, monkeypatch)
    key = CredentialCipher.generate_key()
    brand_id = await new_brand(cio_database_url, key)
    fake = CustomerIoFake({SITE_ID: API_KEY})
    async with serve_fake(fake) as url:
        settings = quick_settings(kafka_bootstrap, cio_database_url, key, url)
        harness = SinkHarness(fake, kafka_producer, brand_id, topics, settings)
        try:
            yield harness
        finally:
            await harness.stop_all()
