"""Configuration shared by every service, read from the environment (DESIGN.md, Configuration)."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://synergy:synergy@127.0.0.1:5432/synergy"
    # Fernet key that encrypts brands' Customer.io credentials at rest.
    synergy_encryption_key: str | None = None
    log_level: str = "INFO"


@lru_cache(maxsize=1)
def common_settings() -> CommonSettings:
    return CommonSettings()
