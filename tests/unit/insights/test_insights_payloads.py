from datetime import UTC, datetime

import pytest
from synergy_insights.payloads import (
    METRICS_BY_OBJECT_TYPE,
    PayloadRejected,
    PredictionWebhook,
    ReportingWebhook,
    parse_webhook,
)

from tests.unit.insights.insights_webhook_examples import reporting_webhook, seed_001_webhooks

SIGNED_AT = datetime(2024, 5, 22, 18, 35, 12, tzinfo=UTC)


@pytest.mark.parametrize("name", sorted(seed_001_webhooks()))
def test_every_seed_001_prediction_webhook_parses(name):
    body = seed_001_webhooks()[name]
    webhook = parse_webhook(body, SIGNED_AT)
    assert isinstance(webhook, PredictionWebhook)
    assert webhook.user_id == "123"  # users.external_id is a string
    assert webhook.predictions == body["predictions"]
    assert webhook.observed_at == SIGNED_AT  # no timestamp in the body: the signature's
    assert webhook.webhook_type == "prediction_update"


def test_prediction_timestamp_in_the_body_wins_over_the_signature_time():
    body = {"user_id": "user-9", "timestamp": 1_600_000_000, "predictions": {"churn_probability": 0.1}}
    assert parse_webhook(body, SIGNED_AT).observed_at == datetime.fromtimestamp(1_600_000_000, UTC)
    body["timestamp"] = "2024-01-01T00:00:00Z"
    assert parse_webhook(body, SIGNED_AT).observed_at == datetime(2024, 1, 1, tzinfo=UTC)


ALL_METRICS = [
    (object_type, metric) for object_type, metrics in METRICS_BY_OBJECT_TYPE.items() for metric in metrics
]


@pytest.mark.parametrize(("object_type", "metric"), ALL_METRICS)
def test_every_reporting_metric_parses(object_type, metric):
    body = reporting_webhook(object_type, metric, "user-123")
    webhook = parse_webhook(body, SIGNED_AT)
    assert isinstance(webhook, ReportingWebhook)
    assert (webhook.object_type, webhook.metric, webhook.user_id) == (object_type, metric, "user-123")
    assert webhook.event_id == body["event_id"]
    assert webhook.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert webhook.webhook_type == f"{object_type}_{metric}"


def test_reporting_person_comes_from_customer_id_without_identifiers():
    body = reporting_webhook("email", "opened", "user-7")
    del body["data"]["identifiers"]
    webhook = parse_webhook(body, SIGNED_AT)
    assert isinstance(webhook, ReportingWebhook)
    assert webhook.user_id == "user-7"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "body"),
        ({"hello": "world"}, "body"),
        ({"predictions": {"churn_probability": 0.5}}, "user_id"),
        ({"user_id": True, "predictions": {"churn_probability": 0.5}}, "user_id"),
        ({"user_id": 1, "predictions": {}}, "predictions"),
        ({"user_id": 1, "predictions": {"churn_probability": 1.5}}, "predictions.churn_probability"),
        ({"user_id": 1, "predictions": {"engagement_score": "high"}}, "predictions.engagement_score"),
        ({"user_id": 1, "predictions": {"predicted_ltv": -1}}, "predictions.predicted_ltv"),
        (
            {"user_id": 1, "predictions": {"recommended_segment": "x" * 101}},
            "predictions.recommended_segment",
        ),
        (
            {"user_id": 1, "predictions": {"product_affinity_scores": {"vapes": "a"}}},
            "predictions.product_affinity_scores.vapes",
        ),
        ({"user_id": "u" * 151, "predictions": {"churn_probability": 0.5}}, "user_id"),
        ({"user_id": 1, "timestamp": "soon", "predictions": {"churn_probability": 0.5}}, "timestamp"),
        ({"object_type": "email", "metric": "opened", "timestamp": 1}, "event_id"),
        ({"event_id": "e", "object_type": "fax", "metric": "opened", "timestamp": 1}, "object_type"),
        ({"event_id": "e", "object_type": "email", "metric": "Opened!", "timestamp": 1}, "metric"),
        ({"event_id": "e", "object_type": "email", "metric": "opened"}, "timestamp"),
        ({"event_id": "e", "object_type": "email", "metric": "opened", "timestamp": 1, "data": []}, "data"),
    ],
)
def test_unusable_bodies_name_the_failing_field(body, field):
    with pytest.raises(PayloadRejected) as caught:
        parse_webhook(body, SIGNED_AT)
    assert caught.value.field == field


def test_parsing_twice_gives_the_same_webhook():
    body = seed_001_webhooks()[sorted(seed_001_webhooks())[0]]
    assert parse_webhook(body, SIGNED_AT) == parse_webhook(body, SIGNED_AT)


def test_nul_characters_are_refused_with_their_path():
    from synergy_insights.payloads import reject_nul_characters

    reject_nul_characters({"user_id": 1, "predictions": {"segment": "fine"}})
    with pytest.raises(PayloadRejected) as caught:
        reject_nul_characters({"user_id": 1, "predictions": {"segment": ["ok", "bad\x00"]}})
    assert caught.value.field == "predictions.segment[1]"
