"""Kafka I/O: publishes processed webhooks to synergy.insights.v1."""

from __future__ import annotations

from synergy_common.kafka import EnvelopePublisher
from synergy_schemas.topics import INSIGHTS


class InsightsPublisher(EnvelopePublisher):
    def __init__(self, bootstrap_servers: str, topic: str | None = None, timeout: float = 5.0) -> None:
        super().__init__(bootstrap_servers, topic or INSIGHTS.name, "synergy-insights", timeout)
