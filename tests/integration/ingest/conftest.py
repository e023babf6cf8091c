"""An ingest service running in-process under uvicorn, bound to a fresh events topic and a brand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool

from tests.conftest import Record, consume
from tests.support import ingest_in_process


@dataclass
class RunningIngest:
    url: str
    topic: str
    client: httpx.AsyncClient

    def authed(self, write_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {write_key}"}


@dataclass
class Brand:
    brand_id: str
    write_key: str


@pytest.fixture(scope="session")
async def brand_factory(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    pool = await create_pool(database_url)

    async def make(name: str = "Test Brand") -> Brand:
        created = await create_brand(pool, name, CredentialCipher(CredentialCipher.generate_key()))
        return Brand(created.brand_id, created.write_key)

    yield make
    await pool.close()


@pytest.fixture(scope="module")
async def ingest(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[..., Awaitable[str]]
) -> AsyncIterator[RunningIngest]:
    topic = await topic_factory(partitions=3)
    async with ingest_in_process(kafka_bootstrap, database_url, topic, publish_timeout=5) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield RunningIngest(url, topic, client)


async def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 20.0) -> list[Record]:
    """Records of `topic` from the beginning, once at least `at_least` have arrived (or the timeout)."""
    return await consume(bootstrap, topic, at_least, timeout=timeout, strict=False)
