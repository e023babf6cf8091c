"""What the read API tells about a user beyond the stored predictions. Pure: no I/O.

- `delivery_metrics`: how many processed reporting webhooks of each metric Customer.io sent about
  the user, per object type (channel): `{"email": {"opened": 2, "clicked": 1}, "customer": {...}}`.
- `unsubscribed`: true when the latest subscription change reported (a `customer` subscribed or
  unsubscribed, or any channel's `unsubscribed`) is an unsubscribe, by (occurred time, log id).
- predictions: the stored ones with the still pending prediction webhooks merged over them, by the
  same rule processing uses, so a user who has no row yet (or whose webhooks wait for a retry) is
  shown as they will be once those webhooks are processed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from synergy_insights.merge import PredictionMerger
from synergy_insights.payloads import PayloadRejected, PredictionWebhook, ReportingWebhook, parse_webhook

SUBSCRIPTION_METRICS = ("subscribed", "unsubscribed")


@dataclass(frozen=True)
class MetricCount:
    object_type: str
    metric: str
    count: int


@dataclass(frozen=True)
class SubscriptionChange:
    metric: str  # "subscribed" or "unsubscribed"
    occurred_at: datetime
    log_id: int


def delivery_metrics(counts: Iterable[MetricCount]) -> dict[str, dict[str, int]]:
    metrics: dict[str, dict[str, int]] = {}
    for row in counts:
        channel = metrics.setdefault(row.object_type, {})
        channel[row.metric] = channel.get(row.metric, 0) + row.count
    return {channel: dict(sorted(by_metric.items())) for channel, by_metric in sorted(metrics.items())}


def subscription_change(log_id: int, payload: Any, signed_at: datetime) -> SubscriptionChange | None:
    try:
        webhook = parse_webhook(payload, signed_at)
    except PayloadRejected:
        return None
    if not isinstance(webhook, ReportingWebhook) or webhook.metric not in SUBSCRIPTION_METRICS:
        return None
    return SubscriptionChange(webhook.metric, webhook.occurred_at, log_id)


def is_unsubscribed(changes: Iterable[SubscriptionChange]) -> bool:
    latest = max(changes, key=lambda change: (change.occurred_at, change.log_id), default=None)
    return latest is not None and latest.metric == "unsubscribed"


def merged_pending_predictions(
    pending: Iterable[tuple[int, Any, datetime]],
    stored: dict[str, Any] | None = None,
    merger: PredictionMerger | None = None,
) -> dict[str, Any]:
    """ai_features once the pending (log id, payload, signed_at) rows are applied over `stored`."""
    merger = merger or PredictionMerger()
    features: dict[str, Any] = dict(stored or {})
    for log_id, payload, signed_at in pending:
        try:
            webhook = parse_webhook(payload, signed_at)
        except PayloadRejected:
            continue
        if isinstance(webhook, PredictionWebhook):
            features = merger.merge(features, webhook, log_id).ai_features
    return features
