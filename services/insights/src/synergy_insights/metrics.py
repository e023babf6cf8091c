"""Prometheus metrics, named synergy_insights_<what>_<unit>."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from synergy_common.http import answers_counter

ANSWERS = answers_counter("synergy_insights_requests_total")

WEBHOOKS = Counter(
    "synergy_insights_webhooks_total",
    "Webhooks received, by webhook type and outcome",
    ["type", "outcome"],
)
SIGNATURE_FAILURES = Counter(
    "synergy_insights_signature_failures_total",
    "Webhooks refused for their signature, by reason",
    ["reason"],
)
PROCESSING_SECONDS = Histogram(
    "synergy_insights_processing_duration_seconds",
    "Time to process one logged webhook (Postgres upsert and Kafka publish)",
    ["type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REQUEST_SECONDS = Histogram(
    "synergy_insights_webhook_request_duration_seconds",
    "Time from receiving a webhook to answering it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 4),
)
RETRY_BACKLOG = Gauge(
    "synergy_insights_retry_backlog_webhooks",
    "Logged webhooks not processed yet (failed transiently, or their user is not known yet)",
)
RETRIES = Counter(
    "synergy_insights_retries_total", "Processing attempts made by the retry loop, by outcome", ["outcome"]
)
CACHE_LOOKUPS = Counter(
    "synergy_insights_cache_lookups_total", "Insights read API cache lookups, by result", ["result"]
)
CACHE_HIT_RATIO = Gauge(
    "synergy_insights_cache_hit_ratio", "Share of insights reads answered from the cache since start"
)
CACHE_INVALIDATIONS = Counter(
    "synergy_insights_cache_invalidations_total", "Cache entries invalidated by a NOTIFY from any replica"
)
