"""Per-brand delivery settings from Postgres: credentials (encrypted), region and privacy opt-ins."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import structlog
from synergy_common.brands import CredentialCipher
from synergy_common.db_errors import is_retryable_db_error

from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.mapping import PrivacySettings
from synergy_cio_sink.transport import Workspace

log = structlog.get_logger(service="cio-sink")


@dataclass(frozen=True)
class BrandDelivery:
    workspace: Workspace | None  # None: no credentials anywhere, the sink runs dry for this brand
    privacy: PrivacySettings


class BrandDirectory:
    """Brand -> where and how to deliver. A brand's own credentials win; the environment's are the default."""

    def __init__(self, pool: asyncpg.Pool | None, settings: SinkSettings,
                 ttl_seconds: float | None = None) -> None:
        self._pool = pool
        self._settings = settings
        self._cipher = CredentialCipher(settings.synergy_encryption_key)
        self._ttl = settings.cio_brand_cache_ttl if ttl_seconds is None else ttl_seconds
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
        """Cached for the TTL. When Postgres is away, a brand seen before keeps its last known settings
        (so delivery goes on); a brand never seen raises, and the caller retries."""
        now = time.monotonic()
        cached = self._cache.get(brand_id)
        if cached and cached[0] > now:
            return cached[1]
        try:
            delivery = await self._load(brand_id)
        except Exception as exc:
            if cached is None or not is_retryable_db_error(exc):
                raise
            log.warning("brand lookup failed; using the last known settings", brand_id=brand_id,
                        error=repr(exc))
            return cached[1]
        self._cache[brand_id] = (now + self._ttl, delivery)
        return delivery

    def forget(self, brand_ids: Iterable[str]) -> None:
        """Re-read these brands from Postgres on their next lookup (their credentials were refused).
        The last known settings stay as the fallback while Postgres is away."""
        for brand_id in brand_ids:
            cached = self._cache.get(brand_id)
            if cached is not None:
                self._cache[brand_id] = (0.0, cached[1])

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
