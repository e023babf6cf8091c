"""Marketing configuration, read from the environment (DESIGN.md's configuration table)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict
from synergy_common.durations import parse_duration


class MarketingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    log_level: str = "INFO"

    marketing_cart_abandon_after: str = "24h"
    marketing_browse_abandon_after: str = "48h"
    marketing_browse_min_views: int = 3
    marketing_frequency_cap: str = "7d"
    marketing_smart_sending: str = "16h"
    marketing_conversion_window: str = "7d"
    # A deadline further than this in the past when it is processed is replayed history: suppressed `stale`.
    marketing_stale_after: str = "1d"
    marketing_public_url: str = "http://127.0.0.1:8002"
    # Signs unsubscribe and preference tokens (synergy_marketing.tokens); `make run` generates one.
    marketing_token_secret: str | None = None
    # Issue 10 (preferences): the secret being rotated out, still accepted; how long a link stays valid
    # (CAN-SPAM: at least 30 days after sending; shorter values are raised to 30d); List-Unsubscribe mailto.
    marketing_token_secret_previous: str | None = None
    marketing_token_max_age: str = "60d"
    marketing_unsubscribe_mailto: str | None = None
    marketing_max_form_bytes: int = 16 * 1024

    # The timer scheduler: how often it looks for due timers, and how many it claims per transaction.
    marketing_scheduler_interval: str = "200ms"
    marketing_scheduler_batch: int = 500
    marketing_scheduler_workers: int = 2
    marketing_consumer_group: str = "synergy-marketing"
    # Events per consumer batch (one transaction, one statement per table) and batches in flight at once.
    # A person's events of one batch cost one row write per table: under a backlog, 8,000 an event batch
    # coalesce about twice as many of a person's events as 4,000 (README, "Where the consumer's time went").
    marketing_consumer_batch: int = 8000
    marketing_consumer_in_flight: int = 2
    # How long a batch may wait to fill: fewer, larger transactions at moderate rates; adds at most this
    # to a deadline's arming (the windows are hours).
    marketing_consumer_batch_wait: str = "250ms"
    # The consumer's young-generation GC threshold (the runtime's gc_young_threshold: allocations not yet
    # freed). The events read ahead and in flight (~16,000, ~10 tracked objects each) are alive at once;
    # with the runtime's 50,000 every young collection traversed them and promoted them, 1.4-2.5 us an event
    # in the bench. Reference counting frees them; only reference cycles wait for a collection.
    marketing_gc_young_objects: int = 400_000
    marketing_db_pool_size: int = 10
    # Off in tests that drive the consumer or the scheduler themselves.
    marketing_run_consumer: bool = True
    marketing_run_scheduler: bool = True

    def seconds(self, name: str) -> float:
        return parse_duration(getattr(self, name)).total_seconds()
