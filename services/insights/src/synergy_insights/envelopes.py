"""The synergy.insights.v1 message for a processed webhook. Pure: no I/O.

Names: `predictions_updated` for a prediction webhook, `<object_type>_<metric>` for a reporting
webhook (`email_opened`, `customer_unsubscribed`, ...). The event_id is Customer.io's own ULID
when it sent one, otherwise derived from the log row, so a republish after a retry carries the same
id and consumers deduplicate it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from synergy_schemas.envelope import Envelope, Identifiers, derive_event_id

from synergy_insights.payloads import PredictionWebhook, ReportingWebhook, Webhook

SOURCE = "insights"
PREDICTIONS_UPDATED = "predictions_updated"


def insight_envelope(brand_id: str, log_id: int, webhook: Webhook, received_at: datetime) -> Envelope:
    client_id = webhook.event_id or f"cio-webhook-log:{log_id}"
    event_id = derive_event_id(brand_id, client_id)
    if isinstance(webhook, PredictionWebhook):
        return Envelope(
            event_id=event_id,
            type="track",
            name=PREDICTIONS_UPDATED,
            brand_id=brand_id,
            identifiers=Identifiers(id=webhook.user_id),
            data={"predictions": webhook.predictions, "webhook_log_id": log_id},
            timestamp=webhook.observed_at,
            received_at=received_at,
            source=SOURCE,
            correlation_id=client_id,
        )
    return Envelope(
        event_id=event_id,
        type="track",
        name=webhook.webhook_type[:100],
        brand_id=brand_id,
        identifiers=_reporting_identifiers(webhook),
        data=_reporting_data(webhook, log_id),
        timestamp=webhook.occurred_at,
        received_at=received_at,
        source=SOURCE,
        correlation_id=webhook.event_id,
    )


def _reporting_data(webhook: ReportingWebhook, log_id: int) -> dict[str, Any]:
    return {
        **webhook.data,
        "object_type": webhook.object_type,
        "metric": webhook.metric,
        "cio_event_id": webhook.event_id,
        "webhook_log_id": log_id,
    }


def _reporting_identifiers(webhook: ReportingWebhook) -> Identifiers:
    if webhook.user_id:
        return Identifiers(id=webhook.user_id)
    # A person Customer.io knows only by email or cio_id: keyed as anonymous so it still partitions.
    identifiers = webhook.data.get("identifiers")
    fallback = None
    if isinstance(identifiers, dict):
        fallback = identifiers.get("cio_id") or identifiers.get("email")
    fallback = fallback or webhook.data.get("recipient") or webhook.event_id
    return Identifiers(anonymous_id=f"cio:{fallback}"[:150])
