"""Kafka topic names. Each is a default that an environment variable overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    env: str
    default: str
    compacted: bool = False

    @property
    def name(self) -> str:
        return os.environ.get(self.env, self.default)


EVENTS = TopicSpec("SYNERGY_TOPIC_EVENTS", "synergy.events.v1")
LOYALTY = TopicSpec("SYNERGY_TOPIC_LOYALTY", "synergy.loyalty.v1")
SNAPSHOTS = TopicSpec("SYNERGY_TOPIC_SNAPSHOTS", "synergy.snapshots.v1", compacted=True)
MARKETING = TopicSpec("SYNERGY_TOPIC_MARKETING", "synergy.marketing.v1")
INSIGHTS = TopicSpec("SYNERGY_TOPIC_INSIGHTS", "synergy.insights.v1")
DLQ = TopicSpec("SYNERGY_TOPIC_DLQ", "synergy.dlq.v1")

ALL_TOPICS: tuple[TopicSpec, ...] = (EVENTS, LOYALTY, SNAPSHOTS, MARKETING, INSIGHTS, DLQ)

DEFAULT_PARTITIONS = int(os.environ.get("SYNERGY_TOPIC_PARTITIONS", "12"))
