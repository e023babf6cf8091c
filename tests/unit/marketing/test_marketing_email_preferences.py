"""Seed 004's EmailPreferences defaults and partial changes, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from synergy_marketing.email_preferences import (
    EmailPreferences,
    apply_change,
    as_api_body,
    change_from_form,
    customer_io_attributes,
)

T0 = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 16, 11, 30, tzinfo=UTC)


def test_a_user_without_a_row_has_seed_004s_defaults() -> None:
    body = as_api_body(EmailPreferences(), "user_123")
    assert body == {
        "user_id": "user_123",
        "email": None,
        "marketing_emails": True,
        "abandoned_cart_emails": True,
        "browse_abandonment_emails": True,
        "price_drop_alerts": True,
        "back_in_stock_alerts": True,
        "product_recommendations": True,
        "newsletter": True,
        "promotional_emails": True,
        "unsubscribed": False,
        "unsubscribed_at": None,
        "created_at": None,
        "updated_at": None,
    }


def test_a_partial_change_changes_only_the_fields_it_names() -> None:
    applied = apply_change(None, {"newsletter": False}, T0)
    assert applied.changed == {"newsletter": (True, False)}
    body = as_api_body(applied.after, "u")
    assert body["newsletter"] is False
    assert body["price_drop_alerts"] is True and body["marketing_emails"] is True
    assert body["created_at"] == "2026-01-15T10:00:00Z" and body["updated_at"] == "2026-01-15T10:00:00Z"
    again = apply_change(applied.after, {"price_drop_alerts": False}, T1)
    assert again.changed == {"price_drop_alerts": (True, False)}
    assert as_api_body(again.after, "u")["newsletter"] is False
    assert as_api_body(again.after, "u")["created_at"] == "2026-01-15T10:00:00Z"


def test_a_change_to_the_stored_values_changes_nothing_not_even_updated_at() -> None:
    stored = apply_change(None, {"newsletter": False}, T0).after
    same = apply_change(stored, {"newsletter": False, "marketing_emails": True}, T1)
    assert same.changed == {}
    assert not same.any
    assert same.after.updated_at == T0


def test_unsubscribing_stamps_unsubscribed_at_and_resubscribing_clears_it() -> None:
    out = apply_change(None, {"unsubscribed": True}, T0)
    assert out.changed == {"unsubscribed": (False, True), "unsubscribed_at": (None, T0)}
    assert as_api_body(out.after, "u")["unsubscribed_at"] == "2026-01-15T10:00:00Z"
    back = apply_change(out.after, {"unsubscribed": False}, T1)
    assert back.changed == {"unsubscribed": (True, False), "unsubscribed_at": (T0, None)}
    assert back.after.unsubscribed_at is None


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="sms_opt_in"):
        apply_change(None, {"sms_opt_in": True}, T0)


def test_the_form_is_a_full_change_where_an_unsent_box_is_unticked() -> None:
    assert change_from_form(["marketing_emails", "newsletter"]) == {
        "marketing_emails": True,
        "abandoned_cart_emails": False,
        "price_drop_alerts": False,
        "back_in_stock_alerts": False,
        "product_recommendations": False,
        "newsletter": True,
        "browse_abandonment_emails": False,
        "promotional_emails": False,
        "unsubscribed": False,
    }


def test_customer_io_attributes_carry_its_own_unsubscribed_attribute() -> None:
    prefs = apply_change(None, {"unsubscribed": True, "newsletter": False}, T0).after
    assert customer_io_attributes(prefs) == {
        "marketing_emails": True,
        "abandoned_cart_emails": True,
        "browse_abandonment_emails": True,
        "price_drop_alerts": True,
        "back_in_stock_alerts": True,
        "product_recommendations": True,
        "newsletter": False,
        "promotional_emails": True,
        "unsubscribed": True,
        "unsubscribed_at": "2026-01-15T10:00:00+00:00",
    }


def test_applying_the_same_change_twice_gives_the_same_result() -> None:
    first = apply_change(None, {"newsletter": False, "unsubscribed": True}, T0)
    second = apply_change(first.after, {"newsletter": False, "unsubscribed": True}, T1)
    assert second.after == first.after


def insight(object_type: str, metric: str, **overrides):
    envelope = {
        "event_id": "01JABCDEFGHJKMNPQRSTVWXYZ0",
        "type": "track",
        "name": f"{object_type}_{metric}",
        "brand_id": "7",
        "identifiers": {"id": "user_123"},
        "data": {"object_type": object_type, "metric": metric, "cio_event_id": "x"},
        "timestamp": "2026-01-15T10:00:00Z",
        "source": "insights",
    }
    envelope.update(overrides)
    return envelope


def test_customer_io_unsubscribes_and_resubscribes_become_subscription_changes() -> None:
    from synergy_marketing.email_preferences import SubscriptionChange, subscription_change_from_insight

    assert subscription_change_from_insight(insight("customer", "unsubscribed")) == SubscriptionChange(
        7, "user_123", True, T0
    )
    assert subscription_change_from_insight(insight("email", "unsubscribed")) == SubscriptionChange(
        7, "user_123", True, T0
    )
    assert subscription_change_from_insight(insight("customer", "subscribed")) == SubscriptionChange(
        7, "user_123", False, T0
    )


@pytest.mark.parametrize(
    "envelope",
    [
        insight("email", "opened"),
        insight("email", "subscribed"),
        insight("customer", "unsubscribed", identifiers={"anonymous_id": "cio:abc"}),
        insight("customer", "unsubscribed", brand_id="acme"),
        insight("customer", "unsubscribed", timestamp="yesterday"),
        insight("customer", "unsubscribed", timestamp="2026-01-15T10:00:00"),
        insight("customer", "unsubscribed", data="junk"),
        {"name": "predictions_updated", "data": {"predictions": {}}},
    ],
)
def test_other_insights_are_not_subscription_changes(envelope) -> None:
    from synergy_marketing.email_preferences import subscription_change_from_insight

    assert subscription_change_from_insight(envelope) is None
