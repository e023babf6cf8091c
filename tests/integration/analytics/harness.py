"""The analytics service in this event loop over fresh topics, its HTTP surface through ASGI, and brands."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from synergy_analytics.app import Running, create_app, serving
from synergy_analytics.settings import AnalyticsSettings
from synergy_common.brands import CredentialCipher, create_brand


@dataclass(frozen=True)
class Brand:
    brand_id: str
    write_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.write_key}"}


async def make_brand(db: asyncpg.Pool, name: str = "Analytics Test") -> Brand:
    created = await create_brand(db, f"{name} {uuid.uuid4().hex[:6]}", CredentialCipher(None))
    return Brand(created.brand_id, created.write_key)


@asynccontextmanager
async def analytics_service(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[..., Awaitable[str]],
    group: str | None = None, topics: Sequence[str] | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, Running, list[str]]]:
    """analytics consuming `topics` (three fresh ones by default); yields an HTTP client to it."""
    names = list(topics) if topics else [await topic_factory(3, prefix=f"analytics.{t}")
                                         for t in ("events", "loyalty", "marketing")]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SYNERGY_TOPIC_DLQ", await topic_factory(1, prefix="analytics.dlq"))
    settings = AnalyticsSettings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url, analytics_topics=",".join(names),
        analytics_group_id=group or f"analytics-test-{uuid.uuid4().hex[:8]}", analytics_batch_wait="20ms",
        analytics_retry_cap="2s")
    try:
        async with serving(settings) as running:
            app = create_app(settings, running)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://analytics") as client:
                yield client, running, names
    finally:
        monkeypatch.undo()


async def publish(producer: AIOKafkaProducer, topic: str, envelopes: Sequence[dict[str, Any] | bytes]) -> None:
    for envelope in envelopes:
        if isinstance(envelope, bytes):
            await producer.send_and_wait(topic, envelope, key=b"poison")
            continue
        user = envelope.get("identifiers", {}).get("id", "anon")
        await producer.send_and_wait(topic, orjson.dumps(envelope), key=f"{envelope.get('brand_id')}:{user}".encode())


async def logged_ids(db: asyncpg.Pool, brand_id: str) -> list[str]:
    rows = await db.fetch("SELECT event_id FROM user_action_log WHERE brand_id = $1 ORDER BY event_id", int(brand_id))
    return [r["event_id"] for r in rows]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            from prometheus_client import REGISTRY
            seen = {m.name: [(s.labels, s.value) for s in m.samples if s.labels.get("service") == "analytics"]
                    for m in REGISTRY.collect() if m.name.startswith(("synergy_streaming_consumed", "synergy_streaming_settled"))}
            raise AssertionError(f"condition not met in time; runtime counters: {seen}")
        await asyncio.sleep(0.1)
