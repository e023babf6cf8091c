"""What Customer.io posts to us, parsed into typed webhooks. Pure: no I/O.

Two shapes arrive on the same endpoint:
- prediction webhooks (seed 001 §2.2): `{"user_id": 123, "predictions": {...}}`, optionally with a
  `timestamp` (unix seconds or ISO 8601) and an `event_id`;
- reporting webhooks: `{"event_id", "object_type", "metric", "timestamp", "data": {...}}`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_USER_ID_LENGTH = 150
MAX_EVENT_ID_LENGTH = 64
MAX_TEXT_PREDICTION_LENGTH = 100

# Customer.io's reporting metrics by object type (CUSTOMERIO.md). Object types without a list
# (slack, webhook, whatsapp) accept any metric, and so do new metrics Customer.io may add: a
# refused webhook costs an hour of retries, so an unknown metric is stored and published as is.
METRICS_BY_OBJECT_TYPE: dict[str, tuple[str, ...]] = {
    "customer": ("subscribed", "unsubscribed"),
    "email": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "unsubscribed",
        "bounced",
        "dropped",
        "spammed",
        "failed",
        "undeliverable",
    ),
    "push": (
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "bounced",
        "dropped",
        "failed",
        "undeliverable",
    ),
    "sms": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "clicked",
        "converted",
        "bounced",
        "failed",
        "undeliverable",
        "replied",
    ),
    "in_app": ("drafted", "attempted", "sent", "opened", "clicked", "converted", "failed", "undeliverable"),
}
OBJECT_TYPES = (*METRICS_BY_OBJECT_TYPE, "slack", "webhook", "whatsapp")

PROBABILITY_FIELDS = ("churn_probability", "engagement_score", "purchase_probability")
AMOUNT_FIELDS = ("predicted_ltv", "predicted_purchase_value")
TEXT_FIELDS = ("recommended_segment", "next_best_action")
SCORES_FIELDS = ("product_affinity_scores",)
MAX_AMOUNT = 99_999_999.99  # NUMERIC(10,2)
_METRIC = re.compile(r"[a-z][a-z0-9_]{0,48}")


class PayloadRejected(Exception):
    """The body is JSON but not a webhook we can take; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PredictionWebhook:
    user_id: str
    predictions: dict[str, Any]
    observed_at: datetime
    event_id: str | None = None

    webhook_type = "prediction_update"


@dataclass(frozen=True)
class ReportingWebhook:
    event_id: str
    object_type: str
    metric: str
    occurred_at: datetime
    user_id: str | None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def webhook_type(self) -> str:
        return f"{self.object_type}_{self.metric}"


Webhook = PredictionWebhook | ReportingWebhook


def parse_webhook(body: Any, signed_at: datetime) -> Webhook:
    """Classify and validate a decoded JSON body. `signed_at` dates predictions that carry no timestamp."""
    if not isinstance(body, dict):
        raise PayloadRejected("body", "expected a JSON object")
    if "object_type" in body or "metric" in body:
        return _reporting_webhook(body)
    if "predictions" in body or "user_id" in body:
        return _prediction_webhook(body, signed_at)
    raise PayloadRejected(
        "body",
        "neither a prediction webhook (user_id, predictions) nor a reporting webhook (object_type, metric)",
    )


def reject_nul_characters(body: Any, where: str = "body") -> None:
    """Postgres cannot store U+0000 in jsonb (nor text), so a body holding one is refused, named."""
    if isinstance(body, str):
        if "\x00" in body:
            raise PayloadRejected(where, "contains a NUL character (\\u0000), which cannot be stored")
    elif isinstance(body, dict):
        for key, value in body.items():
            reject_nul_characters(key, where)
            reject_nul_characters(value, f"{where}.{key}" if where != "body" else str(key))
    elif isinstance(body, list):
        for index, value in enumerate(body):
            reject_nul_characters(value, f"{where}[{index}]")


def _prediction_webhook(body: dict[str, Any], signed_at: datetime) -> PredictionWebhook:
    user_id = _user_id(body.get("user_id"), "user_id")
    if user_id is None:
        raise PayloadRejected("user_id", "is required")
    raw_predictions = body.get("predictions")
    if not isinstance(raw_predictions, dict) or not raw_predictions:
        raise PayloadRejected("predictions", "must be a non-empty object")
    predictions = {name: _prediction_value(name, value) for name, value in raw_predictions.items()}
    observed_at = signed_at
    for name in ("timestamp", "calculated_at"):
        if body.get(name) is not None:
            observed_at = _timestamp(body[name], name)
            break
    return PredictionWebhook(
        user_id=user_id,
        predictions=predictions,
        observed_at=observed_at,
        event_id=_event_id(body.get("event_id"), required=False),
    )


def _prediction_value(name: str, value: Any) -> Any:
    where = f"predictions.{name}"
    if not name or len(name) > MAX_TEXT_PREDICTION_LENGTH:
        raise PayloadRejected("predictions", "prediction names must be 1 to 100 characters")
    if name in PROBABILITY_FIELDS:
        number = _number(value, where)
        if not 0 <= number <= 1:
            raise PayloadRejected(where, "must be between 0 and 1")
        return number
    if name in AMOUNT_FIELDS:
        number = _number(value, where)
        if not 0 <= number <= MAX_AMOUNT:
            raise PayloadRejected(where, f"must be between 0 and {MAX_AMOUNT}")
        return number
    if name in TEXT_FIELDS:
        if not isinstance(value, str) or len(value) > MAX_TEXT_PREDICTION_LENGTH:
            raise PayloadRejected(where, "must be a string of at most 100 characters")
        return value
    if name in SCORES_FIELDS:
        if not isinstance(value, dict):
            raise PayloadRejected(where, "must be an object of category: score")
        return {str(category): _number(score, f"{where}.{category}") for category, score in value.items()}
    return value


def _reporting_webhook(body: dict[str, Any]) -> ReportingWebhook:
    event_id = _event_id(body.get("event_id"), required=True)
    assert event_id is not None
    object_type = body.get("object_type")
    if object_type not in OBJECT_TYPES:
        raise PayloadRejected("object_type", f"must be one of {', '.join(OBJECT_TYPES)}")
    metric = body.get("metric")
    if not isinstance(metric, str) or not _METRIC.fullmatch(metric):
        raise PayloadRejected("metric", "must be a lowercase metric name such as 'opened'")
    if body.get("timestamp") is None:
        raise PayloadRejected("timestamp", "is required")
    occurred_at = _timestamp(body["timestamp"], "timestamp")
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise PayloadRejected("data", "must be an object")
    return ReportingWebhook(
        event_id=event_id,
        object_type=object_type,
        metric=metric,
        occurred_at=occurred_at,
        user_id=reporting_user_id(data),
        data=data,
    )


def reporting_user_id(data: dict[str, Any]) -> str | None:
    """The person a reporting webhook is about: identifiers.id, else customer_id."""
    identifiers = data.get("identifiers")
    if isinstance(identifiers, dict):
        found = _user_id(identifiers.get("id"), "data.identifiers.id")
        if found:
            return found
    return _user_id(data.get("customer_id"), "data.customer_id")


def _user_id(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PayloadRejected(where, "must be a string or an integer")
    text = str(value)
    if len(text) > MAX_USER_ID_LENGTH:
        raise PayloadRejected(where, f"must be at most {MAX_USER_ID_LENGTH} characters")
    return text


def _event_id(value: Any, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise PayloadRejected("event_id", "is required")
        return None
    if not isinstance(value, str) or len(value) > MAX_EVENT_ID_LENGTH:
        raise PayloadRejected("event_id", f"must be a string of at most {MAX_EVENT_ID_LENGTH} characters")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadRejected(where, "must be a number")
    return float(value)


def _timestamp(value: Any, where: str) -> datetime:
    """Unix seconds (Customer.io's convention) or an ISO 8601 string with a zone."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value < 32503680000:  # before year 3000
            raise PayloadRejected(where, "must be a unix time in seconds")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PayloadRejected(where, "must be unix seconds or an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise PayloadRejected(where, "an ISO 8601 time needs a zone, e.g. 'Z'")
        return parsed.astimezone(UTC)
    raise PayloadRejected(where, "must be unix seconds or an ISO 8601 time")
