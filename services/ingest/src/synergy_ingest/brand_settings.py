"""A brand's `settings` (JSONB in Postgres), where its own ingest quota may be set."""

from __future__ import annotations

from typing import Any

import asyncpg


async def brand_settings(pool: asyncpg.Pool, brand_id: str) -> dict[str, Any]:
    settings = await pool.fetchval("SELECT settings FROM brands WHERE id = $1", int(brand_id))
    return settings if isinstance(settings, dict) else {}
