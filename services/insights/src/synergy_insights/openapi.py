"""OpenAPI descriptions of the webhook routes, which read their raw body themselves (to verify it)."""

from __future__ import annotations

from typing import Any

from synergy_insights.payloads import OBJECT_TYPES

_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}

PREDICTION_WEBHOOK_SCHEMA: dict[str, Any] = {
    "title": "PredictionWebhook",
    "type": "object",
    "required": ["user_id", "predictions"],
    "properties": {
        "user_id": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 150}, {"type": "integer"}]},
        "event_id": {"type": "string", "maxLength": 64},
        "timestamp": {
            "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "date-time"}]
        },
        "predictions": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "churn_probability": _PROBABILITY,
                "engagement_score": _PROBABILITY,
                "purchase_probability": _PROBABILITY,
                "predicted_ltv": {"type": "number", "minimum": 0},
                "predicted_purchase_value": {"type": "number", "minimum": 0},
                "recommended_segment": {"type": "string", "maxLength": 100},
                "next_best_action": {"type": "string", "maxLength": 100},
                "product_affinity_scores": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
    },
}

REPORTING_WEBHOOK_SCHEMA: dict[str, Any] = {
    "title": "ReportingWebhook",
    "type": "object",
    "required": ["event_id", "object_type", "metric", "timestamp"],
    "properties": {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "object_type": {"type": "string", "enum": list(OBJECT_TYPES)},
        "metric": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,48}$"},
        "timestamp": {"type": "integer", "minimum": 0},
        "data": {
            "type": "object",
            "properties": {
                "customer_id": {"type": "string"},
                "identifiers": {"type": "object"},
                "delivery_id": {"type": "string"},
                "campaign_id": {"type": "integer"},
            },
        },
    },
}

WEBHOOK_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"oneOf": [PREDICTION_WEBHOOK_SCHEMA, REPORTING_WEBHOOK_SCHEMA]}}
    },
}

WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "processed, or a redelivery of an event_id already logged"},
    202: {
        "description": "logged durably; finished by the retry loop (the user or the brand is not known yet)"
    },
    400: {"description": "the body is not JSON", "content": _PROBLEM},
    401: {
        "description": "unsigned, bad signature, stale timestamp, replayed, or no signing key configured",
        "content": _PROBLEM,
    },
    404: {"description": "no such brand (path, or INSIGHTS_DEFAULT_BRAND_ID)", "content": _PROBLEM},
    413: {"description": "the body is over 1 MB", "content": _PROBLEM},
    415: {"description": "not application/json", "content": _PROBLEM},
    422: {"description": "JSON, but not a webhook this service knows", "content": _PROBLEM},
    503: {
        "description": "Postgres unavailable: retry later",
        "content": _PROBLEM,
    },
}
