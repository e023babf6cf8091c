"""Helpers for the insights integration tests: brands, users, signed posts, an in-process app, Kafka reads."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from synergy_common.brands import CredentialCipher, create_brand
from synergy_insights.app import create_app
from synergy_insights.publisher import InsightsPublisher
from synergy_insights.settings import InsightsSettings
from synergy_insights.signature import expected_signature

SIGNING_KEY = "insights-test-key"
PREVIOUS_KEY = "insights-previous-key"


async def new_topic(kafka: str) -> str:
    from synergy_common.localinfra import create_topic

    name = f"test.insights.{uuid.uuid4().hex[:10]}"
    await create_topic(kafka, name, partitions=3)
    return name


@dataclass
class Brand:
    brand_id: str
    slug: str
    write_key: str

    @property
    def pk(self) -> int:
        return int(self.brand_id)


async def make_brand(db: asyncpg.Pool, name: str = "Insights Test") -> Brand:
    created = await create_brand(db, f"{name} {uuid.uuid4().hex[:6]}", CredentialCipher(None))
    return Brand(created.brand_id, created.slug, created.write_key)


async def make_user(db: asyncpg.Pool, brand: Brand, external_id: str | None = None) -> str:
    external_id = external_id or f"user-{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO users (brand_id, external_id) VALUES ($1, $2)", brand.pk, external_id)
    return external_id


def signed(body: Any, timestamp: int | None = None, key: str = SIGNING_KEY) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return raw, {
        "Content-Type": "application/json",
        "X-CIO-Timestamp": stamp,
        "X-CIO-Signature": expected_signature(key, stamp, raw),
    }


@dataclass
class Insights:
    app: Any
    client: httpx.AsyncClient
    brand: Brand
    topic: str

    async def post(self, body: Any, path: str = "/webhooks/customer-io", **sign_args: Any) -> httpx.Response:
        raw, headers = signed(body, **sign_args)
        return await self.client.post(path, content=raw, headers=headers)


def insights_settings(database_url: str, kafka: str, **overrides: Any) -> InsightsSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka,
        "cio_webhook_signing_key": SIGNING_KEY,
        "cio_webhook_signing_key_previous": PREVIOUS_KEY,
        "insights_retry_interval": "200ms",
        "insights_retry_max_backoff": "1s",
        "log_level": "WARNING",
    }
    values.update(overrides)
    return InsightsSettings(**values)


@asynccontextmanager
async def running_insights(
    settings: InsightsSettings, brand: Brand, topic: str, publisher: InsightsPublisher | None = None
) -> AsyncIterator[Insights]:
    app = create_app(settings, insights_topic=topic, publisher=publisher)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://insights", timeout=30) as client:
            yield Insights(app, client, brand, topic)


async def consume(
    kafka: str, topic: str | list[str], want: Callable[[dict], bool], count: int, timeout: float = 15
) -> list:
    """Records of `topic` (from the start) whose value passes `want`, once `count` came or time is up."""
    consumer = AIOKafkaConsumer(
        *([topic] if isinstance(topic, str) else topic),
        bootstrap_servers=kafka,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    value = orjson.loads(record.value)
                    if want(value):
                        found.append((record.key.decode(), value, dict(record.headers)))
        # a little longer, to see any record beyond the expected count
        for records in (await consumer.getmany(timeout_ms=500)).values():
            found.extend(
                (r.key.decode(), orjson.loads(r.value), dict(r.headers))
                for r in records
                if want(orjson.loads(r.value))
            )
    finally:
        await consumer.stop()
    return found


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` until it is truthy or time is up; errors count as "not yet" until the last try."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            result = None
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)
