"""Configuration shared by every service, read from the environment (DESIGN.md, Configuration)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    # Fernet key that encrypts brands' Customer.io credentials at rest.
    synergy_encryption_key: str | None = None
    log_level: str = "INFO"
    # Durability of every topic the system creates (`synergy topics create`, services, faust's changelog).
    synergy_topic_replication: int = Field(default=1, ge=1)
    synergy_topic_min_insync: int = Field(default=1, ge=1)

    def topic_replication(self) -> int:
        return self.synergy_topic_replication

    def topic_configs(self, **configs: str) -> dict[str, str]:
        """A created topic's configs: `min.insync.replicas` from the settings, plus `configs`."""
        if self.synergy_topic_min_insync > self.synergy_topic_replication:
            raise ValueError(
                f"SYNERGY_TOPIC_MIN_INSYNC ({self.synergy_topic_min_insync}) exceeds "
                f"SYNERGY_TOPIC_REPLICATION ({self.synergy_topic_replication})"
            )
        return {"min.insync.replicas": str(self.synergy_topic_min_insync), **configs}


@lru_cache(maxsize=1)
def common_settings() -> CommonSettings:
    return CommonSettings()
