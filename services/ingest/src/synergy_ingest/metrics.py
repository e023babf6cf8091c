"""Prometheus metrics of the ingest service."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram
from synergy_common.http import answers_counter

REQUESTS = answers_counter("synergy_ingest_requests_total")
EVENTS_ACCEPTED = Counter("synergy_ingest_events_accepted_total", "Events durably written to Kafka", ["type"])
EVENTS_REJECTED = Counter("synergy_ingest_events_rejected_total", "Events refused, by reason", ["reason"])
PUBLISH_LATENCY = Histogram(
    "synergy_ingest_publish_latency_seconds",
    "Time from handing events to the producer to the broker's acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "synergy_ingest_batch_size_events",
    "Events per request",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
EVENTS_THROTTLED = Counter(
    "synergy_ingest_events_throttled_total",
    "Events refused with 429: the brand is over its quota",
    ["brand_id"],
)

_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def labelled(metric: Counter, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once (prometheus-client locks and builds a tuple per call)."""
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child
