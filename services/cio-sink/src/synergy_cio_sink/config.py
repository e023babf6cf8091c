"""The sink's configuration, read from the environment (DESIGN.md, Configuration)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from synergy_common.durations import parse_duration

US_TRACK_URL = "https://track.customer.io"
EU_TRACK_URL = "https://track-eu.customer.io"


def _seconds(value: object) -> object:
    if isinstance(value, str) and value and not value.replace(".", "", 1).isdigit():
        return parse_duration(value).total_seconds()
    return value


class SinkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    synergy_encryption_key: str | None = None

    # Customer.io. CIO_TRACK_URL overrides the region's host for every brand (tests, proxies).
    cio_track_url: str | None = None
    cio_site_id: str | None = None
    cio_api_key: str | None = None
    cio_region: Literal["us", "eu"] = "us"
    cio_api: Literal["v2", "v1"] = "v2"
    cio_request_timeout: float = 10.0
    cio_v1_concurrency: int = 16

    # Rate limit per Customer.io workspace, for the whole fleet of sink replicas.
    cio_rate_limit: float = 100.0
    cio_rate_limit_min: float = 1.0

    # Retries: a message is dead-lettered only once BOTH limits are passed.
    cio_max_attempts: int = 10
    cio_max_retry_window: float = 3 * 3600.0
    cio_backoff_base: float = 0.5
    cio_backoff_max: float = 300.0

    # Batching (v2).
    cio_batch_max_items: int = 500
    cio_batch_linger: float = 0.05

    # Snapshots: a user's attributes go out at most once per interval; a snapshot older than the newest
    # one seen or sent for its person (remembered for the last `cio_snapshot_memory` people) is dropped.
    cio_snapshot_interval: float = 60.0
    cio_snapshot_memory: int = 200_000

    # Brand credentials are re-read from Postgres after this long; a paused workspace (401/403) is
    # probed every `cio_auth_probe_interval`, each probe with credentials re-read from Postgres.
    cio_brand_cache_ttl: float = 60.0
    cio_auth_probe_interval: float = 10.0

    # The DLQ brake (libs/streaming): more than this share of the last `window` items, or this many
    # in a row, would be dead-lettered -> stop, pause, not ready, retry every `retry_interval`.
    cio_dlq_brake_max_share: float = 0.5
    cio_dlq_brake_window: int = 100
    cio_dlq_brake_consecutive: int = 50
    cio_dlq_brake_retry_interval: float = 30.0

    # /dry-run: served only when the sink runs dry, on 127.0.0.1 only, to a Bearer of this token.
    cio_sink_operator_token: str | None = None
    cio_sink_dry_run_port: int = 8013

    # Flow control and the hot-user escape hatch (README, "A hot user").
    cio_max_buffered: int = 20_000
    cio_max_pending_per_user: int = 1_000

    consumer_group: str = "synergy-cio-sink"
    commit_interval: float = 1.0
    ops_port: int = 8003

    @field_validator(
        "cio_max_retry_window", "cio_snapshot_interval", "cio_backoff_base", "cio_backoff_max",
        "cio_batch_linger", "cio_request_timeout", "commit_interval", "cio_brand_cache_ttl",
        "cio_auth_probe_interval", "cio_dlq_brake_retry_interval", mode="before",
    )
    @classmethod
    def _durations(cls, value: object) -> object:
        return _seconds(value)

    def track_url_for(self, region: str) -> str:
        if self.cio_track_url:
            return self.cio_track_url.rstrip("/")
        return EU_TRACK_URL if region == "eu" else US_TRACK_URL
