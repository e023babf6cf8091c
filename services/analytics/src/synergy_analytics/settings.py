"""Analytics configuration, read from the environment (DESIGN.md, Configuration)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict
from synergy_common.durations import parse_duration
from synergy_schemas import topics


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    log_level: str = "INFO"

    analytics_host: str = "0.0.0.0"
    analytics_port: int = 8006
    analytics_group_id: str = "synergy-analytics"
    analytics_topics: str = ""  # comma-separated; defaults to the events, loyalty and marketing topics
    # Rows older than this are dropped a month partition at a time (and such late events are not logged).
    analytics_retention: str = "395d"  # 13 months
    analytics_partitions_ahead: int = 4  # months of partitions made ahead of now
    analytics_maintenance_interval: str = "1h"
    analytics_batch_items: int = 2_000
    analytics_batch_wait: str = "50ms"
    analytics_max_in_flight: int = 2  # concurrent batch writes (the benchmark: 2 beat 1 and 4 here)
    analytics_max_buffered: int = 50_000
    # Allocations between two collections of the young generation (Python's default: 700).
    analytics_gc_young_objects: int = 20_000
    # A batch Postgres could not take (connection lost, deadlock) is retried with backoff, never dropped.
    analytics_retry_base: str = "1s"
    analytics_retry_cap: str = "30s"

    def seconds(self, name: str) -> float:
        return parse_duration(getattr(self, name)).total_seconds()

    @property
    def topic_names(self) -> list[str]:
        if self.analytics_topics:
            return [t.strip() for t in self.analytics_topics.split(",") if t.strip()]
        return [topics.EVENTS.name, topics.LOYALTY.name, topics.MARKETING.name]
