"""Prometheus metrics of the dispatcher (the runtime adds synergy_streaming_*{service="dispatcher"})."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from synergy_common.http import answers_counter

ANSWERS = answers_counter("synergy_dispatcher_requests_total")

LABELS = ["type", "brand_id", "destination"]

DELIVERED = Counter("synergy_dispatcher_delivered_total", "Events delivered to a destination", LABELS)
FAILED = Counter("synergy_dispatcher_failed_total",
                 "Delivery attempts that failed (retried or dead-lettered)", LABELS)
DEAD_LETTERED = Counter("synergy_dispatcher_dead_lettered_total", "Events dead-lettered for a destination",
                        LABELS)
DESTINATION_DISABLED = Gauge("synergy_dispatcher_destination_disabled",
                             "1 while the destination is disabled (410, or by hand)",
                             ["brand_id", "destination"])
DESTINATION_PAUSED = Gauge("synergy_dispatcher_destination_paused",
                           "1 while the destination refuses our credentials (deliveries held)",
                           ["brand_id", "destination"])
DESTINATION_LAG = Gauge("synergy_dispatcher_destination_lag_messages",
                        "Events consumed for the destination and not yet delivered or dead-lettered",
                        ["brand_id", "destination"])
REQUEST_SECONDS = Histogram("synergy_dispatcher_request_duration_seconds",
                            "One HTTP request to a destination", ["type"],
                            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15))
BACKLOG_ITEMS = Gauge("synergy_dispatcher_destination_backlog_items",
                      "Items in the destination's backlog in Postgres (waiting for it, consumer offsets "
                      "committed); the same on every replica", ["brand_id", "destination"])
BACKLOG_OLDEST_AGE = Gauge("synergy_dispatcher_destination_backlog_oldest_age_seconds",
                           "Age of the oldest item of the destination's backlog (0 when empty)",
                           ["brand_id", "destination"])
