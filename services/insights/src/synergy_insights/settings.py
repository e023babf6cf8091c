"""Insights configuration, read from the environment."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict
from synergy_common.durations import parse_duration


class InsightsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    log_level: str = "INFO"

    # The deployment's key: it serves the unbranded paths and brands without a key of their own
    # (`synergy brands update BRAND --cio-webhook-signing-key -`). Current key and, during a rotation,
    # the one it replaces. With neither, webhooks to those are refused.
    cio_webhook_signing_key: str | None = None
    cio_webhook_signing_key_previous: str | None = None
    insights_signature_tolerance: str = "5m"
    # Decrypts brands' own signing keys (the Fernet key of `synergy keys generate`).
    synergy_encryption_key: str | None = None
    # How often brands and their signing keys are read again: a key change applies within this.
    insights_brand_refresh_interval: str = "5s"
    # The brand (id or slug) of webhooks posted to the path without a brand slug; unset, the brand is
    # chosen per webhook (synergy_insights.brand_choice).
    insights_default_brand_id: str | None = None
    insights_max_body_bytes: int = 1024 * 1024
    insights_cache_ttl: str = "60s"
    insights_retry_interval: str = "5s"
    insights_retry_max_backoff: str = "5m"
    # How long a webhook for a user we do not know yet is kept retrying before it is given up.
    insights_unknown_user_horizon: str = "7d"
    # Processing done inside the request before answering; what does not finish is left to the retry loop.
    insights_inline_processing_timeout: str = "2s"
    insights_db_pool_size: int = 10

    @property
    def signing_keys(self) -> list[str | None]:
        return [self.cio_webhook_signing_key, self.cio_webhook_signing_key_previous]

    def seconds(self, name: str) -> float:
        return parse_duration(getattr(self, name)).total_seconds()
