"""The marketing service in-process (its lifespan, real Kafka and Postgres), for the preference tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from synergy_common.brands import CredentialCipher, create_brand
from synergy_marketing.app import create_app
from synergy_marketing.publisher import MarketingPublisher
from synergy_marketing.settings import MarketingSettings
from synergy_marketing.tokens import TokenSigner

SECRET = "marketing-test-secret-0123456789"
PREVIOUS_SECRET = "marketing-previous-secret-0123456789"
PUBLIC_URL = "http://marketing.test"
DAY = 86400


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


async def make_brand(db: asyncpg.Pool, name: str = "Prefs") -> Brand:
    created = await create_brand(db, f"{name} {uuid.uuid4().hex[:6]}", CredentialCipher(None))
    return Brand(created.brand_id, created.write_key)


async def make_user(db: asyncpg.Pool, brand: Brand, email: str | None = None) -> str:
    user_id = f"user-{uuid.uuid4().hex[:10]}"
    await db.execute(
        "INSERT INTO users (brand_id, external_id, email) VALUES ($1, $2, $3)", brand.pk, user_id, email
    )
    return user_id


def settings_for(database_url: str, kafka: str, **overrides: Any) -> MarketingSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka,
        "marketing_token_secret": SECRET,
        "marketing_token_secret_previous": PREVIOUS_SECRET,
        "marketing_public_url": PUBLIC_URL,
        "marketing_run_consumer": False,
        "marketing_run_scheduler": False,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return MarketingSettings(**values)


signer = TokenSigner([SECRET])


def token(purpose: str, brand: Brand | str | int, user_id: str, issued_at: float | None = None) -> str:
    brand_id = brand.brand_id if isinstance(brand, Brand) else brand
    return signer.sign(purpose, brand_id, user_id, issued_at)  # type: ignore[arg-type]


@asynccontextmanager
async def running_marketing(settings: MarketingSettings, topic: str) -> AsyncIterator[Any]:
    app = create_app(settings, publisher=MarketingPublisher(settings.kafka_bootstrap_servers, topic=topic))
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://marketing.test", timeout=30) as client:
        yield client


async def stored_preferences(db: asyncpg.Pool, brand: Brand, user_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT * FROM email_preferences WHERE brand_id = $1 AND user_id = $2", brand.pk, user_id
    )
    return None if row is None else dict(row)


async def changes_of(db: asyncpg.Pool, brand: Brand, user_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT source, changes, envelope, published_at FROM email_preference_changes
           WHERE brand_id = $1 AND user_id = $2 ORDER BY change_id""",
        brand.pk,
        user_id,
    )
    return [dict(row) for row in rows]


async def insert_queue_item(
    db: asyncpg.Pool,
    brand: Brand,
    user_id: str,
    message_data: dict[str, Any],
    status: str = "sent",
) -> str:
    queue_id = f"queue_{uuid.uuid4().hex[:16]}"
    event_id = str(uuid.uuid4().hex[:26]).upper()
    now = datetime.now(UTC)
    await db.execute(
        """INSERT INTO marketing_queue (queue_id, brand_id, user_id, trigger_type, event_name, event_id,
               trigger_data, message_data, scheduled_send_time, status, sent, sent_at, reason)
           VALUES ($1, $2, $3, 'abandoned_cart', 'cart_abandoned', $4, $5, $6, $7, $8, $9, $10, $11)""",
        queue_id,
        brand.pk,
        user_id,
        event_id,
        message_data.get("trigger_data", {}),
        message_data,
        now,
        status,
        status != "suppressed",
        now if status != "suppressed" else None,
        "preferences" if status == "suppressed" else None,
    )
    return queue_id


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


def envelope_of(record: Any) -> dict[str, Any]:
    return orjson.loads(record.value)
