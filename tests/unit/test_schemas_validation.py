"""Validation is strict: names, timestamps, money, enums, bounds and unknown fields."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from synergy_schemas.events import (
    CLIENT_EVENTS,
    EVENT_DATA_MODELS,
    RESERVED_EVENTS,
    UnknownEventError,
    canonical_event_name,
    validate_event_data,
)
from synergy_schemas.snapshots import ProductEconomy, ProductSnapshot, UserSnapshot

PRODUCT = {"product_id": "prod_001", "product_name": "Blue Dream 1g Vape", "product_category": "Vapes"}

SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "product_scanned": {"product_snapshot": {"identity": {"product_id": 45}, "economy": {"msrp": 45.0}}},
    "referral_initiated": {"referral_data": {"referral_code": "JANE1A2B", "status": "pending"}},
    "referral_converted": {"referral_data": {"referred_user_id": 456, "status": "converted"}},
    "wishlist_item_added": {"wishlist_data": {"wishlist_item_id": "w-1", "goal_type": "wishlist_item"}},
    "wishlist_item_removed": {"wishlist_data": {"wishlist_item_id": "w-1"}},
    "reward_redeemed": {"points_spent": 5000, "transaction_data": {"order_id": "order-1"}},
    "user_session_started": {"session_data": {"session_id": "s-1", "login_method": "email"}},
    "user_session_ended": {"session_data": {"session_id": "s-1", "duration_seconds": 1200}},
    "product_viewed": {
        **PRODUCT,
        "product_price": 19.99,
        "currency": "USD",
        "session_id": "sess_xyz789",
        "view_duration": 45,
        "referrer": "https://google.com",
        "device_type": "desktop",
        "browser": "Chrome",
    },
    "cart_item_added": {
        **PRODUCT,
        "quantity": 2,
        "price": 19.99,
        "cart_id": "cart-1",
        "cart_items": [{"product_id": "prod_001", "quantity": 2, "price": 19.99}],
        "cart_total": 39.98,
    },
    "cart_item_removed": {"product_id": "prod_001", "quantity": 1, "cart_items": [], "cart_total": 0},
    "order_completed": {
        "order_id": "order-77",
        "items": [{"product_id": "prod_001", "quantity": 1, "price": 19.99}],
        "order_total": 19.99,
        "currency": "USD",
        "discount_code": "CART10",
        "ref": "email_queue_abc",
    },
    "watchlist_item_added": {
        **PRODUCT,
        "current_price": 19.99,
        "target_price": 15.0,
        "in_stock": True,
        "notify_on_price_drop": True,
        "notify_on_restock": True,
    },
    "watchlist_item_removed": {"product_id": "prod_001"},
    "product_price_changed": {
        "product_id": "prod_001",
        "old_price": 19.99,
        "new_price": 14.99,
        "currency": "USD",
        "changed_at": "2025-01-15T10:00:00Z",
    },
    "product_stock_changed": {
        "product_id": "prod_001",
        "in_stock": True,
        "was_in_stock": False,
        "quantity": 12,
    },
    "achievement_unlocked": {
        "achievement_key": "first_scan",
        "points_reward": 100,
        "achievement_rarity": "common",
    },
    "rank_changed": {
        "old_rank_key": "silver",
        "new_rank_key": "gold",
        "new_rank_multiplier": 2.0,
        "direction": "up",
    },
    "cart_abandoned": {
        "cart_items": [{"product_id": "prod_001", "product_name": "Guide", "quantity": 1, "price": 19.99}],
        "cart_total": 19.99,
        "cart_abandoned_at": "2025-01-14T10:00:00Z",
        "discount_code": "CART10",
        "discount_amount": 10,
    },
    "browse_abandoned": {
        "product": {**PRODUCT, "view_count": 3, "last_viewed_at": "2025-01-13T09:00:00Z"},
        "discount_code": "BROWSE5",
        "discount_amount": 5,
    },
    "price_dropped": {"product": PRODUCT, "old_price": 19.99, "new_price": 14.99, "savings": 5.0},
    "back_in_stock": {"product": PRODUCT, "quantity": 40, "restocked_at": "2025-01-15T10:00:00+01:00"},
}


def error_locations(error: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(item["loc"]) for item in error.errors()]


def test_every_event_has_a_sample() -> None:
    assert set(SAMPLE_DATA) == set(EVENT_DATA_MODELS) == CLIENT_EVENTS | RESERVED_EVENTS
    assert not CLIENT_EVENTS & RESERVED_EVENTS


@pytest.mark.parametrize("name", sorted(SAMPLE_DATA))
def test_samples_validate_and_round_trip(name: str) -> None:
    normalized = validate_event_data(name, SAMPLE_DATA[name], allow_reserved=True)
    assert json.loads(json.dumps(normalized)) == SAMPLE_DATA[name]


def test_unknown_event_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownEventError) as raised:
        validate_event_data("product_scaned", {})
    message = str(raised.value)
    assert "product_scaned" in message
    for name in CLIENT_EVENTS | RESERVED_EVENTS:
        assert name in message
    assert "wishlist_added" in message
    assert isinstance(raised.value, ValueError)


def test_canonical_event_name_refuses_unknown_names() -> None:
    with pytest.raises(UnknownEventError):
        canonical_event_name("Product_Scanned")


def test_naive_timestamp_is_refused() -> None:
    data = {"user_snapshot": {"identity": {"created_at": "2024-05-21T10:00:00"}}}
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_scanned", data)
    assert error_locations(raised.value) == [("user_snapshot", "identity", "created_at")]


def test_naive_cart_abandoned_at_is_refused() -> None:
    data = {**SAMPLE_DATA["cart_abandoned"], "cart_abandoned_at": "2025-01-14T10:00:00"}
    with pytest.raises(ValidationError) as raised:
        validate_event_data("cart_abandoned", data, allow_reserved=True)
    assert error_locations(raised.value) == [("cart_abandoned_at",)]


def test_money_is_decimal_and_serializes_as_a_json_number() -> None:
    economy = ProductEconomy.model_validate({"msrp": 45.10})
    assert economy.msrp == Decimal("45.1")
    assert isinstance(economy.msrp, Decimal)
    assert economy.model_dump_json() == '{"points_award":null,"msrp":45.1}'
    normalized = validate_event_data("product_viewed", {"product_id": 1, "product_price": 1999})
    assert normalized["product_price"] == 1999
    assert isinstance(normalized["product_price"], int)


@pytest.mark.parametrize("value", ["45.00", True, 45.001, -1, None, [45]])
def test_money_refuses_strings_bools_extra_places_and_negatives(value: Any) -> None:
    if value is None:
        assert ProductEconomy.model_validate({"msrp": None}).msrp is None
        return
    with pytest.raises(ValidationError) as raised:
        ProductEconomy.model_validate({"msrp": value})
    assert error_locations(raised.value)[0][0] == "msrp"


@given(st.decimals(min_value=0, max_value=Decimal("9999999999.99"), places=2, allow_nan=False))
def test_money_round_trips_exactly_through_json(amount: Decimal) -> None:
    dumped = ProductEconomy(msrp=amount).model_dump_json()
    assert Decimal(json.loads(dumped, parse_float=Decimal)["msrp"]) == amount
    parsed = ProductEconomy.model_validate(json.loads(dumped))
    assert parsed.msrp == amount


@pytest.mark.parametrize(
    ("name", "data", "location"),
    [
        (
            "product_scanned",
            {"product_snapshot": {"taxonomy": {"strain_type": "Ruderalis"}}},
            ("product_snapshot", "taxonomy", "strain_type"),
        ),
        ("referral_initiated", {"referral_data": {"status": "lost"}}, ("referral_data", "status")),
        ("wishlist_item_added", {"wishlist_data": {"goal_type": "dream"}}, ("wishlist_data", "goal_type")),
        (
            "user_session_started",
            {"session_details": {"device_type": "fridge"}},
            ("session_details", "device_type"),
        ),
        (
            "product_scanned",
            {"event_context": {"time": {"day_of_week_local": "Caturday"}}},
            ("event_context", "time", "day_of_week_local"),
        ),
    ],
)
def test_values_outside_an_enum_are_refused(
    name: str, data: dict[str, Any], location: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as raised:
        validate_event_data(name, data)
    assert error_locations(raised.value) == [location]


def test_overlong_string_is_refused() -> None:
    data = {"product_snapshot": {"identity": {"product_name": "x" * 256}}}
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_scanned", data)
    assert error_locations(raised.value) == [("product_snapshot", "identity", "product_name")]


def test_overlong_list_is_refused() -> None:
    data = {"product_snapshot": {"taxonomy": {"tags": [f"tag-{n}" for n in range(101)]}}}
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_scanned", data)
    assert error_locations(raised.value) == [("product_snapshot", "taxonomy", "tags")]


def test_overlong_cart_is_refused() -> None:
    data = {"product_id": 1, "cart_items": [{"product_id": n} for n in range(501)]}
    with pytest.raises(ValidationError) as raised:
        validate_event_data("cart_item_added", data)
    assert error_locations(raised.value) == [("cart_items",)]


@pytest.mark.parametrize(
    ("data", "location"),
    [
        ({"surprise": 1}, ("surprise",)),
        ({"user_snapshot": {"identity": {"ssn": "x"}}}, ("user_snapshot", "identity", "ssn")),
        ({"product_snapshot": {"pricing": {}}}, ("product_snapshot", "pricing")),
    ],
)
def test_unknown_fields_are_refused(data: dict[str, Any], location: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_scanned", data)
    assert error_locations(raised.value) == [location]


def test_brand_custom_fields_are_the_only_extra_profile_fields() -> None:
    snapshot = UserSnapshot.model_validate({"profile_data": {"custom_favourite_store": "Downtown"}})
    dumped = snapshot.model_dump(mode="json", exclude_none=True)
    assert dumped == {"profile_data": {"custom_favourite_store": "Downtown"}}
    with pytest.raises(ValidationError):
        UserSnapshot.model_validate({"profile_data": {"favourite_store": "Downtown"}})
    with pytest.raises(ValidationError):
        UserSnapshot.model_validate({"profile_data": {"custom_store": {"nested": True}}})


@pytest.mark.parametrize(
    ("data", "location"),
    [
        (
            {"product_snapshot": {"economy": {"points_award": "400"}}},
            ("product_snapshot", "economy", "points_award"),
        ),
        (
            {"product_snapshot": {"economy": {"points_award": True}}},
            ("product_snapshot", "economy", "points_award"),
        ),
        (
            {"product_snapshot": {"merchandising": {"is_new": "yes"}}},
            ("product_snapshot", "merchandising", "is_new"),
        ),
        ({"product_snapshot": {"identity": {"sku": 12}}}, ("product_snapshot", "identity", "sku")),
    ],
)
def test_types_are_not_coerced(data: dict[str, Any], location: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_scanned", data)
    assert error_locations(raised.value) == [location]


def test_required_fields_of_seed_004_events() -> None:
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_viewed", {"product_name": "x"})
    assert error_locations(raised.value) == [("product_id",)]
    with pytest.raises(ValidationError) as raised:
        validate_event_data("product_price_changed", {"product_id": 1})
    assert error_locations(raised.value) == [("new_price",)]


def test_price_dropped_needs_a_lower_price() -> None:
    data = {**SAMPLE_DATA["price_dropped"], "new_price": 25.0}
    with pytest.raises(ValidationError):
        validate_event_data("price_dropped", data, allow_reserved=True)


def test_none_and_unset_fields_are_left_out() -> None:
    data = {"product_snapshot": {"identity": {"product_id": 45, "sku": None}}, "user_snapshot": None}
    assert validate_event_data("product_scanned", data) == {
        "product_snapshot": {"identity": {"product_id": 45}}
    }


def test_snapshots_can_be_built_in_code() -> None:
    snapshot = ProductSnapshot.model_validate(
        {"identity": {"product_id": 45}, "attributes": {"potency_thc_percent": Decimal("88.50")}}
    )
    assert snapshot.model_dump(mode="json", exclude_none=True) == {
        "identity": {"product_id": 45},
        "attributes": {"potency_thc_percent": 88.5},
    }
