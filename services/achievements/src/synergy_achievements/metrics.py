"""Prometheus metrics, named synergy_achievements_<what>_<unit>."""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from synergy_common.http import answers_counter

ANSWERS = answers_counter("synergy_achievements_requests_total")

EVENTS_PROCESSED = Counter(
    "synergy_achievements_events_processed_total", "Events applied to user state, by event name and outcome",
    ["event", "outcome"],
)
UNLOCKS = Counter(
    "synergy_achievements_unlocks_total", "Achievements unlocked, by achievement key", ["achievement"]
)
REDEMPTIONS_REJECTED = Counter(
    "synergy_achievements_redemptions_rejected_total", "Redemptions refused for lack of points"
)
PROCESSING_SECONDS = Histogram(
    "synergy_achievements_processing_duration_seconds",
    "Time to apply one event and publish its outputs",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
CONSUMER_LAG = Gauge(
    "synergy_achievements_consumer_lag_messages", "Messages not yet processed, by topic and partition",
    ["topic", "partition"],
)
SNAPSHOTS_RECOMPUTED = Counter(
    "synergy_achievements_snapshots_recomputed_total", "Snapshots re-emitted by the daily recompute"
)
RULES_RELOADS = Counter(
    "synergy_achievements_rules_reloads_total", "Achievement/rank rule reloads from Postgres", ["result"]
)
PERSISTED = Counter(
    "synergy_achievements_persisted_records_total", "Records written to Postgres", ["kind"]
)
INVALID_EVENTS = Counter(
    "synergy_achievements_invalid_events_total", "Events that could not be parsed, sent to the DLQ"
)
DEAD_LETTERS = Counter(
    "synergy_achievements_dead_letters_total", "Records sent to the DLQ, by reason", ["reason"]
)
ASSIGNED_PARTITIONS = Gauge(
    "synergy_achievements_assigned_partitions", "Partitions of the events topic this worker holds now"
)


# Labelled children bound once: `labels()` per event (a lock, a tuple, a dict look-up) cost ~5% of a batch.
@cache  # bounded: catalog event names (others count as `other`) times outcomes
def events_processed(event: str, outcome: str) -> Any:
    return EVENTS_PROCESSED.labels(event, outcome)


@lru_cache(maxsize=4096)  # achievement keys come from the configured rules
def unlocks(achievement: str) -> Any:
    return UNLOCKS.labels(achievement)
