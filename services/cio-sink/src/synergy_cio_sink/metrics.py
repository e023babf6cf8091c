"""Prometheus metrics: synergy_cio_sink_<what>_<unit>."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from synergy_common.http import answers_counter

# The answers of its own HTTP ports; REQUESTS below counts the requests it makes to Customer.io.
ANSWERS = answers_counter("synergy_cio_sink_served_requests_total")

DELIVERED = Counter("synergy_cio_sink_delivered_total", "Operations Customer.io accepted", ["kind"])
FAILED = Counter("synergy_cio_sink_failed_total", "Delivery attempts that failed", ["reason"])
RETRIED = Counter("synergy_cio_sink_retried_total", "Operations scheduled for another attempt")
DEAD_LETTERED = Counter("synergy_cio_sink_dead_lettered_total", "Messages sent to the DLQ", ["reason"])
REQUESTS = Counter("synergy_cio_sink_requests_total", "HTTP requests to Customer.io", ["api", "status"])
SKIPPED = Counter("synergy_cio_sink_skipped_total", "Messages with nothing to send", ["reason"])
COALESCED = Counter("synergy_cio_sink_snapshots_coalesced_total", "Snapshots replaced by a newer one")
STALE_SNAPSHOTS = Counter("synergy_cio_sink_stale_snapshots_dropped_total",
                          "Snapshots older than one already seen or sent for the person (a replay, say)")
WORKSPACE_PAUSED = Gauge("synergy_cio_sink_workspace_paused",
                         "1 while Customer.io refuses the workspace's credentials (401/403)", ["workspace"])
DRY_RUN = Counter("synergy_cio_sink_dry_run_total", "Operations recorded, not sent (no credentials)")
BATCH_SIZE = Histogram(
    "synergy_cio_sink_batch_size_items", "Operations per v2 batch request",
    buckets=(1, 5, 10, 25, 50, 100, 200, 300, 400, 500),
)
RATE_LIMIT = Gauge(
    "synergy_cio_sink_rate_limit_requests_per_second", "This replica's current request budget", ["site_id"]
)
CONSUMER_LAG = Gauge("synergy_cio_sink_consumer_lag_messages", "Messages not yet consumed", ["topic"])
BUFFERED = Gauge("synergy_cio_sink_buffered_messages", "Messages consumed and not yet committed")
DELIVERY_LATENCY = Histogram(
    "synergy_cio_sink_delivery_latency_seconds", "From the event's received_at to Customer.io's acceptance",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 10800),
)
