"""Merging a prediction update into what is stored for the user. Pure: no I/O.

`users.ai_features` holds the latest value of every prediction at its top level, plus, for each
prediction, when Customer.io computed the value we hold (`predictions_observed_at`) and the webhook
log row it came from (`predictions_log_ids`). A partial update only touches its own predictions,
and a prediction only replaces the stored one if it is newer, by (observed time, log id): the later
logged of two same-second predictions wins. So the result does not depend on the order webhooks are
processed in, and applying the same update twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from synergy_insights.payloads import (
    AMOUNT_FIELDS,
    PROBABILITY_FIELDS,
    SCORES_FIELDS,
    TEXT_FIELDS,
    PredictionWebhook,
)

OBSERVED_AT_KEY = "predictions_observed_at"
LOG_IDS_KEY = "predictions_log_ids"
KNOWN_PREDICTIONS = (*PROBABILITY_FIELDS, *AMOUNT_FIELDS, *TEXT_FIELDS, *SCORES_FIELDS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MergeResult:
    ai_features: dict[str, Any]
    changed: tuple[str, ...]


class PredictionMerger:
    """Field-by-field last-writer-wins, ordered by each prediction's own observation time."""

    def merge(self, stored: dict[str, Any] | None, update: PredictionWebhook, log_id: int = 0) -> MergeResult:
        """`changed` names the predictions taken from `update` (a new value or a newer observation)."""
        features = dict(stored or {})
        observed = dict(features.get(OBSERVED_AT_KEY) or {})
        log_ids = dict(features.get(LOG_IDS_KEY) or {})
        incoming = (update.observed_at.astimezone(UTC), log_id)
        changed = []
        for name, value in update.predictions.items():
            if name in (OBSERVED_AT_KEY, LOG_IDS_KEY):
                continue
            stored_at = _parse(observed.get(name)) if name in features else None
            if stored_at is not None and incoming <= (stored_at, _int(log_ids.get(name))):
                continue
            changed.append(name)
            features[name] = value
            observed[name] = _format(incoming[0])
            log_ids[name] = log_id
        features[OBSERVED_AT_KEY] = observed
        features[LOG_IDS_KEY] = log_ids
        return MergeResult(ai_features=features, changed=tuple(changed))


@dataclass(frozen=True)
class ProfileColumns:
    """One `user_ai_profiles` row (seed 003 §5.1) derived from the merged ai_features."""

    churn_probability: Decimal
    predicted_lifetime_value: Decimal
    engagement_score: Decimal
    product_affinity_scores: dict[str, float] | None
    purchase_probability: Decimal
    recommended_segment: str | None
    next_best_action: str | None
    ai_insights: dict[str, Any]
    calculated_at: datetime


def profile_columns(ai_features: dict[str, Any]) -> ProfileColumns:
    observed = ai_features.get(OBSERVED_AT_KEY) or {}
    times = [t for t in (_parse(v) for v in observed.values()) if t is not None]
    insights = {
        name: ai_features[name] for name in observed if name in ai_features and name not in KNOWN_PREDICTIONS
    }
    if "predicted_purchase_value" in ai_features:
        insights["predicted_purchase_value"] = ai_features["predicted_purchase_value"]
    return ProfileColumns(
        churn_probability=_decimal(ai_features.get("churn_probability"), "0.0001"),
        predicted_lifetime_value=_decimal(ai_features.get("predicted_ltv"), "0.01"),
        engagement_score=_decimal(ai_features.get("engagement_score"), "0.0001"),
        product_affinity_scores=ai_features.get("product_affinity_scores"),
        purchase_probability=_decimal(ai_features.get("purchase_probability"), "0.0001"),
        recommended_segment=ai_features.get("recommended_segment"),
        next_best_action=ai_features.get("next_best_action"),
        ai_insights=insights,
        calculated_at=max(times) if times else _EPOCH,
    )


def predictions_view(ai_features: dict[str, Any]) -> dict[str, Any]:
    """The predictions part of ai_features, as the read API shows it."""
    observed = ai_features.get(OBSERVED_AT_KEY) or {}
    return {name: ai_features[name] for name in observed if name in ai_features}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _decimal(value: Any, quantum: str) -> Decimal:
    if value is None:
        return Decimal(0)
    return Decimal(str(value)).quantize(Decimal(quantum))


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
