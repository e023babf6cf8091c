"""An ingest service running in-process under uvicorn, bound to a fresh events topic and a brand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_common.settings import CommonSettings
from synergy_ingest.app import create_app
from synergy_ingest.settings import IngestSettings

from tests.conftest import Record, consume
from tests.support import free_port


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
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[..., Any]
) -> AsyncIterator[RunningIngest]:
    topic = await _maybe_await(topic_factory(partitions=3))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SYNERGY_TOPIC_EVENTS", topic)
    port = free_port()
    app = create_app(
        IngestSettings(port=port, publish_timeout_seconds=5),
        CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url),
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield RunningIngest(url, topic, client)
    server.should_exit = True
    await task
    monkeypatch.undo()


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


async def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 20.0) -> list[Record]:
    """Records of `topic` from the beginning, once at least `at_least` have arrived (or the timeout)."""
    return await consume(bootstrap, topic, at_least, timeout=timeout, strict=False)
