"""Webhook bodies for the insights tests: seed 001 §2.2's predictions and Customer.io reporting webhooks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SEED_EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "seed_examples"

# seed 001 §2.2, kept here too in case the extracted fixtures move
SEED_001_PREDICTIONS: dict[str, dict[str, Any]] = {
    "churn": {
        "user_id": 123,
        "predictions": {
            "churn_probability": 0.78,
            "engagement_score": 0.65,
            "recommended_segment": "high_risk",
            "predicted_ltv": 500.25,
            "next_best_action": "send_retention_offer",
        },
    },
    "affinity": {
        "user_id": 123,
        "predictions": {
            "product_affinity_scores": {"concentrates": 0.85, "vapes": 0.62, "flower": 0.41},
            "recommended_segment": "concentrate_lover",
            "next_best_action": "feature_concentrate_products",
        },
    },
    "purchase_intent": {
        "user_id": 123,
        "predictions": {
            "purchase_probability": 0.82,
            "predicted_purchase_value": 85.50,
            "recommended_segment": "high_intent_buyer",
            "next_best_action": "send_personalized_offer",
        },
    },
}


def seed_001_webhooks() -> dict[str, dict[str, Any]]:
    """The extracted seed fixtures (001_webhook_*.json) when present, else the copies above."""
    files = sorted(SEED_EXAMPLES.glob("001_webhook_*.json"))
    if not files:
        return SEED_001_PREDICTIONS
    return {path.stem: json.loads(path.read_text()) for path in files}


def reporting_webhook(
    object_type: str, metric: str, customer_id: str, timestamp: int = 1_700_000_000
) -> dict:
    """A reporting webhook in Customer.io's shape, with the keys its metric adds."""
    seed = f"{object_type}:{metric}:{customer_id}:{timestamp}"
    event_id = "01J" + hashlib.sha256(seed.encode()).hexdigest()[:23].upper().translate(
        str.maketrans("ILOU", "JKMN")
    )
    data: dict[str, Any] = {"customer_id": customer_id, "identifiers": {"id": customer_id}}
    if object_type != "customer":
        data.update(
            {
                "delivery_id": f"RAECAAA{timestamp}",
                "action_id": 42,
                "campaign_id": 7,
                "journey_id": "01HJOURNEY",
                "recipient": "jane.doe@example.com",
                "subject": "Your points are waiting",
            }
        )
    if metric == "clicked":
        data.update({"href": "https://example.com/rewards", "link_id": 3, "machine": False})
    if metric == "opened":
        data.update({"proxied": False, "prefetched": False, "synthetic": False})
    if metric in ("bounced", "failed", "dropped", "undeliverable"):
        data["failure_message"] = "550 mailbox unavailable"
    return {
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": timestamp,
        "data": data,
    }
