"""Prometheus metrics of the preference, unsubscribe and tracking routes (issue 10)."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

PREFERENCE_CHANGES = Counter(
    "synergy_marketing_preference_changes_total",
    "Email-preference changes stored, by source (api, preference_centre, one_click, customer_io)",
    ["source"],
)
UNSUBSCRIBES = Counter(
    "synergy_marketing_unsubscribes_total", "Users turned unsubscribed, by where it came from", ["source"]
)
TOKENS_REJECTED = Counter(
    "synergy_marketing_tokens_rejected_total",
    "Unsubscribe/preference links refused, by reason (malformed, bad_signature, expired, wrong_purpose)",
    ["reason"],
)
TRACKING_REQUESTS = Counter(
    "synergy_marketing_tracking_requests_total",
    "Open and click tracking requests, by kind and outcome",
    ["kind", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "synergy_marketing_preference_request_duration_seconds",
    "Time to answer the preference, unsubscribe and tracking routes, by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CHANGES_UNPUBLISHED = Gauge(
    "synergy_marketing_preference_changes_unpublished",
    "Preference changes stored but not yet published to synergy.marketing.v1 (as of the relay's last pass)",
)


@cache
def request_seconds(route: str) -> Histogram:
    """REQUEST_SECONDS of one route (prometheus-client locks and builds a tuple on every labels() call)."""
    return REQUEST_SECONDS.labels(route)


@cache
def preference_changes(source: str) -> Counter:
    return PREFERENCE_CHANGES.labels(source)


@cache
def unsubscribes(source: str) -> Counter:
    return UNSUBSCRIBES.labels(source)


@cache
def tracking_requests(kind: str, outcome: str) -> Counter:
    return TRACKING_REQUESTS.labels(kind, outcome)
