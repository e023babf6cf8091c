"""Cache invalidation across replicas through Postgres LISTEN/NOTIFY.

The profile upsert NOTIFYs `brand:user` in its transaction; every replica listens and drops that
entry. While the listening connection is down, notifications may be missed, so the cache is off.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from synergy_insights import metrics
from synergy_insights.cache import InsightsCache
from synergy_insights.store import INVALIDATION_CHANNEL

log = structlog.get_logger(service="insights")


class InvalidationListener:
    def __init__(self, database_url: str, cache: InsightsCache, keepalive_seconds: float = 5.0) -> None:
        self._database_url = database_url
        self._cache = cache
        self._keepalive = keepalive_seconds
        self._cache.enabled = False

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        brand_id, _, user_id = payload.partition(":")
        self._cache.invalidate((brand_id, user_id))
        metrics.CACHE_INVALIDATIONS.inc()

    async def run_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("invalidation_listener_down", error=repr(exc))
            finally:
                self._cache.enabled = False
                self._cache.invalidate_all()
            await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._database_url, timeout=5)
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _c: closed.set())
        try:
            await connection.add_listener(INVALIDATION_CHANNEL, self._on_notify)
            self._cache.invalidate_all()
            self._cache.enabled = True
            while not closed.is_set():
                try:
                    await asyncio.wait_for(closed.wait(), self._keepalive)
                except TimeoutError:
                    await connection.fetchval("SELECT 1", timeout=2)
        finally:
            connection.terminate()
