"""Ingest configuration from the environment."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    port: int = 8000
    workers: int = 1
    max_batch_events: int = 500
    max_batch_bytes: int = 500 * 1024
    max_event_bytes: int = 32 * 1024
    max_segment_batch_events: int = 2500
    publish_timeout_seconds: float = 10.0
    retry_after_seconds: int = 5
    producer_linger_ms: int = 5
