"""Kafka I/O: publishes marketing envelopes (triggers, preference changes) to synergy.marketing.v1."""

from __future__ import annotations

from synergy_common.kafka import EnvelopePublisher
from synergy_schemas.topics import MARKETING


class MarketingPublisher(EnvelopePublisher):
    def __init__(self, bootstrap_servers: str, topic: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(bootstrap_servers, topic or MARKETING.name, "synergy-marketing", timeout)
