"""Per-brand delivery settings from Postgres: credentials (encrypted), region and privacy opt-ins."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
from synergy_common.brands import CredentialCipher

from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.mapping import PrivacySettings
from synergy_cio_sink.transport import Workspace


@dataclass(frozen=True)
class BrandDelivery:
    workspace: Workspace | None  # None: no credentials anywhere, the sink runs dry for this brand
    privacy: PrivacySettings


class BrandDirectory:
    """Brand -> where and how to deliver. A brand's own credentials win; the environment's are the default."""

    def __init__(self, pool: asyncpg.Pool | None, settings: SinkSettings, ttl_seconds: float = 60.0) -> None:
        self._pool = pool
        self._settings = settings
        self._cipher = CredentialCipher(settings.synergy_encryption_key)
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, BrandDelivery]] = {}

    @property
    def default_workspace(self) -> Workspace | None:
        s = self._settings
        if s.cio_site_id and s.cio_api_key:
            return Workspace(s.track_url_for(s.cio_region), s.cio_site_id, s.cio_api_key)
        return None

    async def any_brand_has_credentials(self) -> bool:
        if self._pool is None:
            return False
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM brands WHERE customer_io_site_id IS NOT NULL "
            "AND customer_io_api_key IS NOT NULL)"
        ))

    async def ping(self) -> bool:
        """Postgres answers (the readiness check)."""
        return self._pool is not None and await self._pool.fetchval("SELECT 1") == 1

    async def delivery_for(self, brand_id: str) -> BrandDelivery:
        now = time.monotonic()
        cached = self._cache.get(brand_id)
        if cached and cached[0] > now:
            return cached[1]
        delivery = await self._load(brand_id)
        self._cache[brand_id] = (now + self._ttl, delivery)
        return delivery

    async def _load(self, brand_id: str) -> BrandDelivery:
        row = None
        if self._pool is not None and brand_id.isdigit():
            row = await self._pool.fetchrow(
                "SELECT customer_io_site_id, customer_io_api_key, customer_io_region, settings "
                "FROM brands WHERE id = $1", int(brand_id),
            )
        if row is None:
            return BrandDelivery(self.default_workspace, PrivacySettings())
        privacy = PrivacySettings.from_brand_settings(row["settings"])
        if row["customer_io_site_id"] and row["customer_io_api_key"]:
            api_key = self._cipher.decrypt(row["customer_io_api_key"])
            url = self._settings.track_url_for(row["customer_io_region"])
            return BrandDelivery(Workspace(url, row["customer_io_site_id"], api_key), privacy)
        return BrandDelivery(self.default_workspace, privacy)
