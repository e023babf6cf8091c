"""Dispatcher configuration, read from the environment (DESIGN.md, Configuration)."""

from __future__ import annotations

import os
import socket

from pydantic_settings import BaseSettings, SettingsConfigDict
from synergy_common.durations import parse_duration
from synergy_schemas import topics

from synergy_dispatcher.model import DEFAULT_POSTHOG_HOST


class DispatcherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    synergy_encryption_key: str | None = None
    log_level: str = "INFO"

    # The deployment's own destinations (seed 002), which get every brand's events.
    domain_event_webhook_url: str | None = None
    domain_event_webhook_secret: str | None = None
    posthog_project_api_key: str | None = None
    posthog_host: str = DEFAULT_POSTHOG_HOST

    dispatcher_host: str = "0.0.0.0"
    dispatcher_port: int = 8005
    dispatcher_group_id: str = "synergy-dispatcher"
    dispatcher_replica: str = ""  # defaults to host:pid
    # Topics (each defaults to the topic registry's name, itself overridable by SYNERGY_TOPIC_*).
    dispatcher_topics: str = ""

    dispatcher_webhook_timeout: str = "15s"
    dispatcher_webhook_concurrency: int = 32  # requests in flight per destination
    dispatcher_posthog_timeout: str = "30s"
    dispatcher_posthog_batch_items: int = 1000  # ~2.5 MB of seed-000 events, within 5 MB
    dispatcher_posthog_max_event_bytes: int = 1_000_000
    dispatcher_posthog_max_request_bytes: int = 5_000_000
    # Retries: an item is given up only once both budgets are spent (Standard Webhooks retries for 24 h).
    dispatcher_retry_window: str = "26h"
    dispatcher_retry_attempts: int = 12
    dispatcher_retry_base: str = "5s"
    dispatcher_retry_cap: str = "1h"
    dispatcher_paused_retry: str = "30s"  # a paused destination (revoked key) is asked again this often
    dispatcher_reload_interval: str = "5s"
    dispatcher_status_interval: str = "2s"
    dispatcher_max_buffered: int = 50_000
    # A drainer's round: the due head items of up to this many users, this many each.
    dispatcher_backlog_users: int = 256
    dispatcher_backlog_per_user: int = 20
    # A replica that died leaves its claimed users to the others after this; it must outlast a round
    # (a claimed user's items go out one after another: per_user x the webhook timeout at worst).
    dispatcher_backlog_lease: str = "6m"
    dispatcher_max_in_flight: int = 32  # batches; a batch's slowest key no longer idles the 32 webhook slots
    # Records read ahead beyond those in deliveries (the runtime's default, in-flight x batch items, is
    # 32,000: records that wait that long have left the CPU's caches). A few PostHog batches' worth.
    dispatcher_read_ahead: int = 4_000

    def seconds(self, name: str) -> float:
        return parse_duration(getattr(self, name)).total_seconds()

    @property
    def topic_names(self) -> list[str]:
        if self.dispatcher_topics:
            return [t.strip() for t in self.dispatcher_topics.split(",") if t.strip()]
        return [topics.EVENTS.name, topics.LOYALTY.name, topics.MARKETING.name]

    @property
    def replica(self) -> str:
        return self.dispatcher_replica or f"{socket.gethostname()}:{os.getpid()}"
