from datetime import UTC, datetime, timedelta

from synergy_insights.brand_choice import choose_brand
from synergy_insights.summary import (
    MetricCount,
    delivery_metrics,
    is_unsubscribed,
    merged_pending_predictions,
    subscription_change,
)

from tests.unit.insights.insights_webhook_examples import SEED_001_PREDICTIONS, reporting_webhook

T0 = datetime(2024, 5, 22, 18, 0, tzinfo=UTC)
SEED_001_FIELDS = {
    "churn_probability",
    "engagement_score",
    "recommended_segment",
    "predicted_ltv",
    "next_best_action",
    "product_affinity_scores",
    "purchase_probability",
    "predicted_purchase_value",
}


def test_a_configured_default_brand_wins():
    assert choose_brand(7, [3], [3, 4]) == 7


def test_the_one_brand_that_knows_the_user_is_chosen_among_several():
    assert choose_brand(None, [4], [3, 4]) == 4


def test_the_only_brand_is_chosen_when_no_brand_knows_the_user():
    assert choose_brand(None, [], [3]) == 3


def test_ambiguity_leaves_the_webhook_without_a_brand():
    assert choose_brand(None, [3, 4], [3, 4]) is None  # both know the user
    assert choose_brand(None, [], [3, 4]) is None  # several brands, none knows the user
    assert choose_brand(None, [], []) is None  # no brand yet


def test_delivery_metrics_are_counted_per_channel_and_metric():
    counts = [
        MetricCount("email", "opened", 2),
        MetricCount("email", "clicked", 1),
        MetricCount("push", "opened", 1),
        MetricCount("email", "opened", 1),
    ]
    assert delivery_metrics(counts) == {"email": {"clicked": 1, "opened": 3}, "push": {"opened": 1}}
    assert delivery_metrics([]) == {}


def change(metric: str, timestamp: int, log_id: int):  # type: ignore[no-untyped-def]
    return subscription_change(log_id, reporting_webhook("customer", metric, "u1", timestamp), T0)


def test_the_latest_subscription_change_decides_whatever_the_log_order():
    unsubscribed_then_back = [
        change("subscribed", 1_700_000_100, 1),
        change("unsubscribed", 1_700_000_000, 2),
    ]
    assert is_unsubscribed(unsubscribed_then_back) is False
    assert is_unsubscribed(reversed(unsubscribed_then_back)) is False
    assert is_unsubscribed([change("unsubscribed", 1_700_000_000, 1)]) is True
    assert is_unsubscribed([]) is False


def test_a_channel_unsubscribe_counts_and_other_metrics_are_not_subscription_changes():
    email_unsubscribe = subscription_change(1, reporting_webhook("email", "unsubscribed", "u1"), T0)
    assert email_unsubscribe is not None and is_unsubscribed([email_unsubscribe])
    assert subscription_change(2, reporting_webhook("email", "opened", "u1"), T0) is None
    assert subscription_change(3, {"user_id": 1, "predictions": {"churn_probability": 0.1}}, T0) is None


def test_pending_seed_001_predictions_merge_as_they_will_once_the_user_exists():
    pending = [
        (log_id, SEED_001_PREDICTIONS[name], T0 + timedelta(minutes=log_id))
        for log_id, name in enumerate(("churn", "affinity", "purchase_intent"), start=1)
    ]
    features = merged_pending_predictions(pending)
    assert SEED_001_FIELDS <= set(features)
    assert features["churn_probability"] == 0.78
    assert features["recommended_segment"] == "high_intent_buyer"
    assert merged_pending_predictions(pending) == features  # same input, same result
    assert merged_pending_predictions([(9, {"hello": "world"}, T0)]) == {}
