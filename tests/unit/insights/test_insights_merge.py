from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import permutations

from synergy_insights.merge import OBSERVED_AT_KEY, PredictionMerger, predictions_view, profile_columns
from synergy_insights.payloads import PredictionWebhook, parse_webhook

from tests.unit.insights.insights_webhook_examples import SEED_001_PREDICTIONS

T0 = datetime(2024, 5, 22, 18, 0, tzinfo=UTC)


def update(name: str, at: datetime) -> PredictionWebhook:
    webhook = parse_webhook(SEED_001_PREDICTIONS[name], at)
    assert isinstance(webhook, PredictionWebhook)
    return webhook


def merge_all(*updates: PredictionWebhook, stored: dict | None = None) -> dict:
    features = stored
    for webhook in updates:
        features = PredictionMerger().merge(features, webhook).ai_features
    return features or {}


def test_same_second_predictions_are_ordered_by_log_id_whatever_the_processing_order():
    first = parse_webhook({"user_id": 1, "predictions": {"churn_probability": 0.2}}, T0)
    second = parse_webhook({"user_id": 1, "predictions": {"churn_probability": 0.9}}, T0)
    assert isinstance(first, PredictionWebhook) and isinstance(second, PredictionWebhook)
    merger = PredictionMerger()
    in_order = merger.merge(merger.merge({}, first, 10).ai_features, second, 11).ai_features
    reversed_order = merger.merge(merger.merge({}, second, 11).ai_features, first, 10).ai_features
    assert in_order == reversed_order
    assert in_order["churn_probability"] == 0.9
    assert merger.merge(in_order, first, 10).changed == ()


def test_affinity_update_keeps_the_churn_fields():
    features = merge_all(update("churn", T0), update("affinity", T0 + timedelta(minutes=1)))
    assert features["churn_probability"] == 0.78
    assert features["predicted_ltv"] == 500.25
    assert features["product_affinity_scores"] == {"concentrates": 0.85, "vapes": 0.62, "flower": 0.41}
    assert features["recommended_segment"] == "concentrate_lover"  # the newer one


def test_an_older_prediction_never_overwrites_a_newer_one():
    features = merge_all(update("affinity", T0 + timedelta(minutes=1)), update("churn", T0))
    assert features["recommended_segment"] == "concentrate_lover"
    assert features["next_best_action"] == "feature_concentrate_products"
    assert features["churn_probability"] == 0.78  # a field only the older update carries is still taken


def test_the_result_does_not_depend_on_arrival_order():
    updates = [
        update("churn", T0),
        update("affinity", T0 + timedelta(minutes=1)),
        update("purchase_intent", T0 + timedelta(minutes=2)),
    ]
    results = [merge_all(*order) for order in permutations(updates)]
    assert all(result == results[0] for result in results)
    assert results[0]["recommended_segment"] == "high_intent_buyer"


def test_merging_the_same_update_twice_changes_nothing():
    once = PredictionMerger().merge({}, update("churn", T0))
    twice = PredictionMerger().merge(once.ai_features, update("churn", T0))
    assert twice.ai_features == once.ai_features
    assert twice.changed == ()
    assert set(once.changed) == set(SEED_001_PREDICTIONS["churn"]["predictions"])


def test_keys_not_owned_by_predictions_are_kept():
    features = merge_all(update("churn", T0), stored={"favourite_store": "Venice"})
    assert features["favourite_store"] == "Venice"
    assert predictions_view(features) == SEED_001_PREDICTIONS["churn"]["predictions"]


def test_profile_row_takes_every_prediction_column():
    features = merge_all(
        update("churn", T0),
        update("affinity", T0 + timedelta(minutes=1)),
        update("purchase_intent", T0 + timedelta(minutes=2)),
    )
    columns = profile_columns(features)
    assert columns.churn_probability == Decimal("0.7800")
    assert columns.engagement_score == Decimal("0.6500")
    assert columns.predicted_lifetime_value == Decimal("500.25")
    assert columns.purchase_probability == Decimal("0.8200")
    assert columns.product_affinity_scores == {"concentrates": 0.85, "vapes": 0.62, "flower": 0.41}
    assert columns.recommended_segment == "high_intent_buyer"
    assert columns.next_best_action == "send_personalized_offer"
    assert columns.ai_insights == {"predicted_purchase_value": 85.5}
    assert columns.calculated_at == T0 + timedelta(minutes=2)
    assert set(features[OBSERVED_AT_KEY]) == set(predictions_view(features))
    assert "predictions_log_ids" not in predictions_view(features)
