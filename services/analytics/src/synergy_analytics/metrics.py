"""Prometheus metrics of analytics (the runtime adds synergy_streaming_*{service="analytics"}: lag too)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from synergy_common.http import answers_counter

LOGGED = Counter("synergy_analytics_events_logged_total", "Events written to user_action_log", ["topic"])
DUPLICATES = Counter(
    "synergy_analytics_duplicate_events_total",
    "Events already in user_action_log (a redelivery), not written again",
    ["topic"],
)
SKIPPED = Counter("synergy_analytics_events_skipped_total", "Events not logged, by reason", ["reason"])
WRITE_SECONDS = Histogram(
    "synergy_analytics_batch_write_duration_seconds",
    "One batch into the action log and read models",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_ROWS = Histogram(
    "synergy_analytics_batch_rows",
    "Rows per action-log batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
PARTITIONS_CREATED = Counter("synergy_analytics_partitions_created_total", "Month partitions made")
PARTITIONS_DROPPED = Counter(
    "synergy_analytics_partitions_dropped_total", "Month partitions dropped past the retention"
)
PARTITIONS = Gauge("synergy_analytics_partitions", "Month partitions of user_action_log")
REQUESTS = answers_counter("synergy_analytics_requests_total")
QUERY_SECONDS = Histogram(
    "synergy_analytics_kpi_query_duration_seconds",
    "One KPI query",
    ["kpi"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
