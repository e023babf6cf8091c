"""The marketing service in-process (consumer and scheduler running) on its own topics and database,
with the windows shrunk to seconds, and helpers to send events and read what came out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer
from synergy_common.brands import CredentialCipher, create_brand
from synergy_marketing.settings import MarketingSettings
from ulid import ULID

SECRET = "marketing-trigger-test-secret-0123456789"
PUBLIC_URL = "http://marketing.test"
# Windows in seconds: a cart fires 2 s after its last change, a browse 2 s after the last view.
WINDOWS = {
    "marketing_cart_abandon_after": "2s",
    "marketing_browse_abandon_after": "2s",
    "marketing_browse_min_views": 3,
    "marketing_scheduler_interval": "100ms",
}


@dataclass
class Brand:
    brand_id: str
    write_key: str

    @property
    def pk(self) -> int:
        return int(self.brand_id)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.write_key}"}


async def make_brand(db: asyncpg.Pool, name: str = "Triggers", settings: dict[str, Any] | None = None) -> Brand:
    created = await create_brand(db, f"{name} {uuid.uuid4().hex[:6]}", CredentialCipher(None))
    if settings is not None:
        await db.execute("UPDATE brands SET settings = $2 WHERE id = $1", int(created.brand_id), settings)
    return Brand(created.brand_id, created.write_key)


def settings_for(database_url: str, kafka: str, **overrides: Any) -> MarketingSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka,
        "marketing_token_secret": SECRET,
        "marketing_public_url": PUBLIC_URL,
        "marketing_consumer_group": f"test-marketing-{uuid.uuid4().hex[:8]}",
        "log_level": "WARNING",
        **WINDOWS,
    }
    values.update(overrides)
    return MarketingSettings(**values)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def envelope(
    brand: Brand,
    name: str,
    data: dict[str, Any],
    *,
    user: str | None = None,
    anonymous: str | None = None,
    at: datetime | None = None,
    type_: str = "track",
    event_id: str | None = None,
) -> dict[str, Any]:
    identifiers: dict[str, str] = {}
    if user:
        identifiers["id"] = user
    if anonymous:
        identifiers["anonymous_id"] = anonymous
    now = datetime.now(UTC)
    return {
        "event_id": event_id or str(ULID()),
        "type": type_,
        "name": name,
        "brand_id": brand.brand_id,
        "identifiers": identifiers,
        "data": data,
        "timestamp": (at or now).isoformat().replace("+00:00", "Z"),
        "received_at": now.isoformat().replace("+00:00", "Z"),
        "schema_version": 1,
        "source": "test",
        "correlation_id": str(uuid.uuid4()),
    }


async def send(producer: AIOKafkaProducer, topic: str, *envelopes: dict[str, Any]) -> None:
    futures = []
    for item in envelopes:
        ids = item["identifiers"]
        person = ids.get("id") or f"anon:{ids.get('anonymous_id')}"
        futures.append(
            await producer.send(
                topic,
                key=f"{item['brand_id']}:{person}".encode(),
                value=orjson.dumps(item),
                headers=[("event_name", (item["name"] or item["type"]).encode())],
            )
        )
    await asyncio.gather(*futures)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what or check}; last: {result!r}")
        await asyncio.sleep(0.1)


async def queue_rows(db: asyncpg.Pool, brand: Brand, user: str | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT * FROM marketing_queue WHERE brand_id = $1 AND ($2::text IS NULL OR user_id = $2)"
        " ORDER BY scheduled_send_time, queue_id",
        brand.pk,
        user,
    )
    return [dict(row) for row in rows]


async def marketing_api(client: httpx.AsyncClient, brand: Brand, user: str) -> httpx.Response:
    return await client.get(f"/v1/users/{user}/marketing", headers=brand.auth)


def triggers_in(records: list[Any], brand: Brand) -> list[dict[str, Any]]:
    """The trigger messages (not preference changes) of a brand, as dicts."""
    found = []
    for record in records:
        value = orjson.loads(record.value)
        if value.get("brand_id") == brand.brand_id and value.get("name") in (
            "cart_abandoned",
            "browse_abandoned",
            "price_dropped",
            "back_in_stock",
        ):
            found.append(value)
    return found
