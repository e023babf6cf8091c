"""The pure trigger core: windows on event time, exits, fan-out, suppression order, trigger data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from synergy_marketing.consumer import prepare_event, prepare_insight
from synergy_marketing.decisions import (
    BrandMarketing,
    Candidate,
    History,
    Links,
    Preferences,
    SuppressionConfig,
    decide,
    recheck,
    suppression_reason,
)
from synergy_marketing.state import (
    BatchState,
    CartAdded,
    CartChange,
    Event,
    InvalidEvent,
    LineItem,
    Timer,
    Viewed,
    Watch,
    WindowConfig,
    apply_event,
    money,
    window_timers,
)
from synergy_schemas.events import validate_event_data
from synergy_streaming import Reject, Skip

T0 = datetime(2025, 1, 14, 10, 0, tzinfo=UTC)
CONFIG = WindowConfig()  # 24 h cart, 48 h browse, 3 views
SUPPRESSION = SuppressionConfig()  # 7 d cap, 16 h smart sending, 1 d stale
BRAND = "7"


def event(
    name: str,
    at: datetime,
    data: dict[str, Any],
    user: str | None = "user_123",
    anonymous: str | None = None,
    number: int = 0,
    type_: str = "track",
) -> Event:
    return Event(f"01JAAAAAAAAAAAAAAAAAAAA{number:03d}", BRAND, type_, name, user, anonymous, at, data)


def apply_all(events: list[Event], state: BatchState | None = None) -> BatchState:
    state = state or BatchState()
    for item in events:
        apply_event(state, item)
    return state


def timers_of(state: BatchState, person: str = "user_123") -> list[Timer]:
    return window_timers(state.person(BRAND, person), CONFIG)


def links(brand: str, user: str) -> Links:
    return Links(
        f"https://m.example/unsubscribe?u={user}",
        f"https://m.example/preferences?u={user}",
        f"<https://m.example/unsubscribe?u={user}>",
    )


VOTER_GUIDE = {
    "product_id": "prod_001",
    "product_name": "Christian Voter Guide",
    "quantity": 1,
    "price": 19.99,
    "image_url": "https://img.example/001.png",
}


# --- cart -----------------------------------------------------------------------------------------


def test_a_cart_fires_24_hours_after_its_last_change_on_event_time() -> None:
    state = apply_all(
        [
            event("cart_item_added", T0, VOTER_GUIDE, number=1),
            event(
                "cart_item_added", T0 + timedelta(hours=2), {"product_id": "prod_002", "price": 5}, number=2
            ),
        ]
    )
    (timer,) = timers_of(state)
    assert (timer.trigger, timer.due_at) == ("cart_abandoned", datetime(2025, 1, 15, 12, 0, tzinfo=UTC))


def test_a_late_event_that_changes_the_cart_moves_the_deadline_and_an_older_one_does_not_move_it_back() -> (
    None
):
    state = apply_all([event("cart_item_added", T0, VOTER_GUIDE, number=1)])
    apply_event(
        state, event("cart_item_added", T0 + timedelta(hours=5), {"product_id": "prod_002"}, number=2)
    )
    apply_event(
        state, event("cart_item_removed", T0 - timedelta(hours=1), {"product_id": "prod_002"}, number=3)
    )
    (timer,) = timers_of(state)
    assert timer.due_at == datetime(2025, 1, 15, 15, 0, tzinfo=UTC)


def test_an_emptied_cart_has_no_deadline() -> None:
    state = apply_all(
        [
            event("cart_item_added", T0, {**VOTER_GUIDE, "quantity": 2}, number=1),
            event(
                "cart_item_removed",
                T0 + timedelta(minutes=5),
                {"product_id": "prod_001", "quantity": 2},
                number=2,
            ),
        ]
    )
    assert timers_of(state) == []


def test_an_order_after_the_last_cart_change_exits_the_cart_flow_but_an_earlier_one_does_not() -> None:
    ordered = apply_all(
        [
            event("cart_item_added", T0, VOTER_GUIDE, number=1),
            event(
                "order_completed",
                T0 + timedelta(hours=1),
                {"order_id": "o-1", "order_total": 19.99},
                number=2,
            ),
        ]
    )
    assert timers_of(ordered) == []
    late_order = apply_all(
        [
            event("cart_item_added", T0, VOTER_GUIDE, number=1),
            event("order_completed", T0 - timedelta(hours=1), {"order_id": "o-0"}, number=2),
        ]
    )
    assert [t.due_at for t in timers_of(late_order)] == [datetime(2025, 1, 15, 10, 0, tzinfo=UTC)]


def test_the_whole_cart_in_cart_items_replaces_the_cart() -> None:
    state = apply_all(
        [
            event("cart_item_added", T0, VOTER_GUIDE, number=1),
            event(
                "cart_item_added",
                T0 + timedelta(minutes=1),
                {
                    "product_id": "prod_009",
                    "cart_items": [{"product_id": "prod_009", "quantity": 3, "price": 2.5}],
                },
                number=2,
            ),
        ]
    )
    assert {k: v.quantity for k, v in state.person(BRAND, "user_123").cart.items.items()} == {"prod_009": 3}


def test_cart_trigger_data_has_seed_004s_fields() -> None:
    state = apply_all(
        [
            event("cart_item_added", T0, {**VOTER_GUIDE, "quantity": 2}, number=1),
            event(
                "cart_item_added",
                T0 + timedelta(minutes=1),
                {"product_id": "prod_002", "price": 5.01},
                number=2,
            ),
        ]
    )
    (timer,) = timers_of(state)
    candidate = recheck(timer, state.person(BRAND, "user_123"), None, CONFIG)
    assert candidate is not None
    assert candidate.trigger_data == {
        "cart_items": [
            {
                "product_id": "prod_001",
                "product_name": "Christian Voter Guide",
                "quantity": 2,
                "price": Decimal("19.99"),
                "image_url": "https://img.example/001.png",
            },
            {"product_id": "prod_002", "quantity": 1, "price": Decimal("5.01")},
        ],
        "cart_total": Decimal("44.99"),
        "cart_abandoned_at": datetime(2025, 1, 14, 10, 1, tzinfo=UTC),
    }


def test_at_the_deadline_a_changed_cart_does_not_fire() -> None:
    state = apply_all([event("cart_item_added", T0, VOTER_GUIDE, number=1)])
    (timer,) = timers_of(state)
    apply_event(
        state, event("cart_item_added", T0 + timedelta(hours=3), {"product_id": "prod_002"}, number=2)
    )
    assert recheck(timer, state.person(BRAND, "user_123"), None, CONFIG) is None
    apply_event(state, event("order_completed", T0 + timedelta(hours=4), {"order_id": "o-1"}, number=3))
    (moved,) = timers_of(apply_all([event("cart_item_added", T0, VOTER_GUIDE, number=1)]))
    assert recheck(moved, state.person(BRAND, "user_123"), None, CONFIG) is None


# --- browse ---------------------------------------------------------------------------------------


def view(
    at: datetime,
    number: int,
    product: str = "prod_001",
    user: str | None = "user_123",
    anonymous: str | None = None,
) -> Event:
    return event(
        "product_viewed",
        at,
        {
            "product_id": product,
            "product_name": f"Name of {product}",
            "product_price": 19.99,
            "product_category": "Books",
        },
        user=user,
        anonymous=anonymous,
        number=number,
    )


def test_two_views_do_not_make_a_browse_abandonment_and_three_do() -> None:
    state = apply_all([view(T0, 1), view(T0 + timedelta(hours=1), 2)])
    assert timers_of(state) == []
    apply_event(state, view(T0 + timedelta(hours=3), 3))
    (timer,) = timers_of(state)
    assert (timer.trigger, timer.due_at) == ("browse_abandoned", datetime(2025, 1, 16, 13, 0, tzinfo=UTC))


def test_adding_the_product_to_the_cart_or_any_order_exits_the_browse_flow() -> None:
    views = [view(T0 + timedelta(minutes=i), i) for i in range(1, 4)]
    added = apply_all(
        [*views, event("cart_item_added", T0 + timedelta(hours=1), {"product_id": "prod_001"}, number=9)]
    )
    assert [t.trigger for t in timers_of(added)] == ["cart_abandoned"]
    ordered = apply_all(
        [*views, event("order_completed", T0 + timedelta(hours=1), {"order_id": "o"}, number=9)]
    )
    assert timers_of(ordered) == []
    # Views after the exit start a new cycle; one from before it (late) does not count in it.
    apply_event(ordered, view(T0 + timedelta(minutes=30), 10))
    apply_event(ordered, view(T0 + timedelta(hours=2), 11))
    apply_event(ordered, view(T0 + timedelta(hours=3), 12))
    assert timers_of(ordered) == []
    apply_event(ordered, view(T0 + timedelta(hours=4), 13))
    assert [t.due_at for t in timers_of(ordered)] == [datetime(2025, 1, 16, 14, 0, tzinfo=UTC)]


def test_browse_trigger_data_carries_the_most_viewed_product() -> None:
    state = apply_all(
        [
            view(T0, 1, "prod_a"),
            view(T0, 2, "prod_a"),
            view(T0, 3, "prod_a"),
            view(T0, 4, "prod_b"),
            view(T0, 5, "prod_b"),
            view(T0, 6, "prod_b"),
            view(T0 + timedelta(hours=1), 7, "prod_b"),
        ]
    )
    (timer,) = timers_of(state)
    candidate = recheck(timer, state.person(BRAND, "user_123"), None, CONFIG)
    assert candidate is not None
    assert candidate.trigger_data == {
        "product": {
            "product_id": "prod_b",
            "product_name": "Name of prod_b",
            "product_category": "Books",
            "product_price": Decimal("19.99"),
            "view_count": 4,
            "last_viewed_at": datetime(2025, 1, 14, 11, 0, tzinfo=UTC),
        },
        "browse_started_at": T0,
    }


# --- identity -------------------------------------------------------------------------------------


def test_anonymous_activity_waits_for_its_identify_and_then_joins_the_user() -> None:
    state = apply_all(
        [
            view(T0, 1, user=None, anonymous="anon-9"),
            view(T0, 2, user=None, anonymous="anon-9"),
            event("cart_item_added", T0, VOTER_GUIDE, user=None, anonymous="anon-9", number=3),
            view(T0 + timedelta(minutes=1), 4),
        ]
    )
    assert timers_of(state, "anon:anon-9") == []
    apply_event(
        state,
        event(
            "identify",
            T0 + timedelta(hours=1),
            {},
            user="user_123",
            anonymous="anon-9",
            number=5,
            type_="identify",
        ),
    )
    user = state.person(BRAND, "user_123")
    assert user.views["prod_001"].view_count == 3
    assert list(user.cart.items) == ["prod_001"]
    assert [t.trigger for t in timers_of(state)] == ["cart_abandoned"]
    assert (BRAND, "anon:anon-9") in state.merged_away
    # A later anonymous event goes to the user.
    apply_event(
        state,
        event(
            "cart_item_added",
            T0 + timedelta(hours=2),
            {"product_id": "prod_003"},
            user=None,
            anonymous="anon-9",
            number=6,
        ),
    )
    assert sorted(state.person(BRAND, "user_123").cart.items) == ["prod_001", "prod_003"]


# --- watches --------------------------------------------------------------------------------------


def watch(user: str, number: int, **extra: Any) -> Event:
    return event(
        "watchlist_item_added",
        T0,
        {"product_id": "prod_001", "product_name": "Guide", "current_price": 19.99, **extra},
        user=user,
        number=number,
    )


def test_a_price_drop_fans_out_to_every_watcher_below_its_target_once_per_watch() -> None:
    state = apply_all(
        [
            watch("u1", 1, target_price=15),
            watch("u2", 2),  # no target: below the price when watched
            watch("u3", 3, target_price=10),
            watch("u4", 4, notify_on_price_drop=False),
        ]
    )
    at = T0 + timedelta(days=1)
    apply_event(
        state,
        event(
            "product_price_changed",
            at,
            {"product_id": "prod_001", "new_price": 14.5},
            user="catalog-bot",
            number=10,
        ),
    )
    assert sorted((t.person, t.trigger, t.due_at) for t in state.catalog_timers) == [
        ("u1", "price_dropped", at),
        ("u2", "price_dropped", at),
    ]
    u1 = next(t for t in state.catalog_timers if t.person == "u1")
    assert {k: u1.details[k] for k in ("old_price", "new_price", "savings", "target_price")} == {
        "old_price": Decimal("19.99"),
        "new_price": Decimal("14.5"),
        "savings": Decimal("5.49"),
        "target_price": Decimal("15"),
    }
    apply_event(
        state,
        event(
            "product_price_changed",
            at + timedelta(hours=1),
            {"product_id": "prod_001", "new_price": 9},
            user="catalog-bot",
            number=11,
        ),
    )
    assert sorted(t.person for t in state.catalog_timers) == ["u1", "u2", "u3"]


def test_back_in_stock_fires_for_watchers_of_a_product_that_was_out_of_stock() -> None:
    state = apply_all([watch("u1", 1, in_stock=False), watch("u2", 2, in_stock=True), watch("u3", 3)])
    apply_event(
        state,
        event(
            "product_stock_changed",
            T0 + timedelta(hours=1),
            {"product_id": "prod_001", "in_stock": False},
            user="ops",
            number=5,
        ),
    )
    assert state.catalog_timers == []
    apply_event(
        state,
        event(
            "product_stock_changed",
            T0 + timedelta(hours=2),
            {"product_id": "prod_001", "in_stock": True, "quantity": 4},
            user="ops",
            number=6,
        ),
    )
    assert sorted(t.person for t in state.catalog_timers) == ["u1", "u2", "u3"]
    apply_event(
        state,
        event(
            "product_stock_changed",
            T0 + timedelta(hours=3),
            {"product_id": "prod_001", "in_stock": True},
            user="ops",
            number=7,
        ),
    )
    assert len(state.catalog_timers) == 3


def test_a_removed_watch_does_not_fire() -> None:
    timer = Timer(
        BRAND,
        "u1",
        "price_dropped",
        "prod_001",
        T0,
        {"old_price": Decimal(20), "new_price": Decimal(10), "savings": Decimal(10)},
    )
    assert recheck(timer, None, None, CONFIG) is None
    watched = Watch("u1", "prod_001", T0, product_name="Guide")
    candidate = recheck(timer, None, watched, CONFIG)
    assert candidate is not None
    assert candidate.trigger_data == {
        "product": {"product_id": "prod_001", "product_name": "Guide", "product_price": Decimal(10)},
        "old_price": Decimal(20),
        "new_price": Decimal(10),
        "savings": Decimal(10),
    }


# --- suppression ----------------------------------------------------------------------------------


NOW = datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("preferences", "history", "due_at", "reason"),
    [
        (Preferences(marketing_emails=False, unsubscribed=True), History(), NOW, "preferences"),
        (Preferences(abandoned_cart_emails=False), History(), NOW, "preferences"),
        (
            Preferences(unsubscribed=True),
            History({"cart_abandoned": NOW - timedelta(days=1)}),
            NOW,
            "unsubscribed",
        ),
        (
            Preferences(),
            History({"cart_abandoned": NOW - timedelta(days=6)}, NOW - timedelta(hours=1)),
            NOW,
            "frequency_cap",
        ),
        (
            Preferences(),
            History({"price_dropped": NOW - timedelta(hours=15)}, NOW - timedelta(hours=15)),
            NOW - timedelta(days=3),
            "smart_sending",
        ),
        (
            Preferences(),
            History({"cart_abandoned": NOW - timedelta(days=8)}, NOW - timedelta(hours=17)),
            NOW - timedelta(hours=25),
            "stale",
        ),
        (
            Preferences(),
            History({"cart_abandoned": NOW - timedelta(days=8)}, NOW - timedelta(hours=17)),
            NOW - timedelta(hours=23),
            None,
        ),
    ],
)
def test_suppression_is_checked_in_designs_order(
    preferences: Preferences, history: History, due_at: datetime, reason: str | None
) -> None:
    assert suppression_reason("cart_abandoned", preferences, history, due_at, NOW, SUPPRESSION) == reason


def cart_candidate(user: str, due_at: datetime = NOW) -> Candidate:
    return Candidate(
        Timer(BRAND, user, "cart_abandoned", "", due_at),
        {
            "cart_items": [{"product_id": "prod_001", "quantity": 1, "price": Decimal("19.99")}],
            "cart_total": Decimal("19.99"),
            "cart_abandoned_at": due_at - timedelta(hours=24),
        },
        None,
    )


def browse_candidate(user: str, due_at: datetime) -> Candidate:
    return Candidate(
        Timer(BRAND, user, "browse_abandoned", "", due_at),
        {"product": {"product_id": "prod_001", "product_name": "Guide", "view_count": 3}},
        "Guide",
    )


def test_a_message_sent_earlier_in_the_same_run_makes_smart_sending_suppress_the_next() -> None:
    decisions = decide(
        [browse_candidate("u1", NOW), cart_candidate("u1", NOW - timedelta(minutes=1))],
        {},
        {},
        {},
        links,
        NOW,
        SUPPRESSION,
    )
    assert [(d.trigger, d.reason) for d in decisions] == [
        ("cart_abandoned", None),
        ("browse_abandoned", "smart_sending"),
    ]


def test_a_sent_cart_message_carries_every_field_the_campaign_needs() -> None:
    (decision,) = decide(
        [cart_candidate("u1")],
        {(BRAND, "u1"): Preferences(email="customer@example.com")},
        {},
        {},
        links,
        NOW,
        SUPPRESSION,
    )
    assert decision.sent and decision.user_email == "customer@example.com"
    assert decision.queue_id.startswith("queue_20250115_")
    assert decision.message_data == {
        "cart_items": [{"product_id": "prod_001", "quantity": 1, "price": Decimal("19.99")}],
        "cart_total": Decimal("19.99"),
        "cart_abandoned_at": datetime(2025, 1, 14, 10, 0, tzinfo=UTC),
        "discount_code": "CART10",
        "discount_amount": 10,
        "queue_id": decision.queue_id,
        "trigger_type": "abandoned_cart",
        "email_template": "abandoned_cart_v1",
        "email_subject": "You left items in your cart! \U0001f6d2",
        "unsubscribe_url": "https://m.example/unsubscribe?u=u1",
        "preferences_url": "https://m.example/preferences?u=u1",
        "list_unsubscribe": "<https://m.example/unsubscribe?u=u1>",
        "list_unsubscribe_post": "List-Unsubscribe=One-Click",
    }
    validate_event_data("cart_abandoned", decision.message_data, allow_reserved=True)


def test_brand_settings_choose_the_discount_and_template() -> None:
    brand = BrandMarketing.from_settings(
        {
            "marketing": {
                "discounts": {"browse_abandoned": {"code": "LOOK15", "amount": 15}, "cart_abandoned": None},
                "templates": {"browse_abandoned": "browse_v2"},
            }
        }
    )
    decisions = decide(
        [browse_candidate("u1", NOW), cart_candidate("u2")], {}, {}, {BRAND: brand}, links, NOW, SUPPRESSION
    )
    by_trigger = {d.trigger: d for d in decisions}
    browse = by_trigger["browse_abandoned"]
    assert (browse.discount_code, browse.discount_amount, browse.email_template, browse.email_subject) == (
        "LOOK15",
        15,
        "browse_v2",
        "Still interested in Guide? \U0001f914",
    )
    assert "discount_code" not in by_trigger["cart_abandoned"].message_data
    validate_event_data("browse_abandoned", browse.message_data, allow_reserved=True)


def test_deciding_the_same_input_twice_gives_the_same_decisions() -> None:
    def run() -> list[Any]:
        state = apply_all(
            [
                event("cart_item_added", T0, VOTER_GUIDE, number=1),
                view(T0, 2),
                view(T0, 3),
                view(T0, 4, "prod_x"),
                view(T0, 5, "prod_x"),
                view(T0, 6, "prod_x"),
            ]
        )
        candidates = [
            c
            for t in timers_of(state)
            if (c := recheck(t, state.person(BRAND, "user_123"), None, CONFIG)) is not None
        ]
        return decide(candidates, {}, {}, {}, links, datetime(2025, 1, 18, tzinfo=UTC), SUPPRESSION)

    first, second = run(), run()
    assert first == second
    assert [(d.trigger, d.reason) for d in first] == [
        ("cart_abandoned", "stale"),
        ("browse_abandoned", "stale"),
    ]


# --- what the consumer refuses --------------------------------------------------------------------


def envelope(name: str, data: dict[str, Any], **identifiers: str) -> dict[str, Any]:
    return {
        "event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA",
        "type": "track",
        "name": name,
        "brand_id": BRAND,
        "identifiers": identifiers or {"id": "user_123"},
        "data": data,
        "timestamp": "2025-01-14T10:00:00Z",
        "received_at": "2025-01-14T10:00:01Z",
    }


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ({"product_name": "no id"}, "data.product_id is required"),
        ({"product_id": "p", "price": "abc"}, "data.price must be a number"),
        ({"product_id": "p", "quantity": -1}, "data.quantity must be a non-negative integer"),
        ({"product_id": "p", "cart_items": "all"}, "data.cart_items must be a list"),
        ({"product_id": "p", "price": True}, "data.price must be a number"),
        ({"product_id": "p", "price": -0.01}, "data.price must be a non-negative number"),
        ({"product_id": ["p"]}, "data.product_id must be a string"),
    ],
)
def test_events_marketing_cannot_read_are_rejected_with_a_reason(data: dict[str, Any], detail: str) -> None:
    assert prepare_event(envelope("cart_item_added", data)) == Reject("invalid_event", detail)


def test_events_of_no_interest_are_skipped_and_bad_timestamps_rejected() -> None:
    assert prepare_event(envelope("product_scanned", {})) == Skip("not_a_marketing_event")
    bad = {**envelope("product_viewed", {"product_id": "p"}), "timestamp": "yesterday"}
    assert prepare_event(bad) == Reject("invalid_event", "timestamp is not ISO 8601: 'yesterday'")
    with pytest.raises(InvalidEvent):
        apply_event(BatchState(), event("product_price_changed", T0, {"product_id": "p"}))


def test_the_data_is_read_once_in_prepare_and_a_retried_batch_applies_it_alike() -> None:
    data = {
        "product_id": "sku-1",
        "quantity": 2,
        "price": 19.99,
        "cart_id": "cart-9",
        "product_snapshot": {"name": "Trail shoe", "image_url": "https://img/1.png"},
    }
    (work,) = prepare_event(envelope("cart_item_added", data))  # type: ignore[misc]
    event_, change = work.payload
    data["quantity"] = 50  # the envelope changing afterwards changes nothing: what was read is kept

    def batch() -> BatchState:
        state = BatchState()
        apply_event(state, event_, change)
        return state

    first = batch()
    first.person(BRAND, "user_123").cart.items["sku-1"].quantity += 5  # a later event of that batch
    retried = batch()
    (item,) = retried.person(BRAND, "user_123").cart.items.values()
    assert (item.product_id, item.quantity, item.price, item.product_name, item.image_url, item.added_at) == (
        "sku-1",
        2,
        Decimal("19.99"),
        "Trail shoe",
        "https://img/1.png",
        T0,
    )
    assert retried.person(BRAND, "user_123").cart.cart_id == "cart-9"
    assert first.person(BRAND, "user_123").cart.items["sku-1"].quantity == 7


def test_customer_io_opens_and_clicks_are_matched_by_the_trigger_event_id() -> None:
    opened = {
        **envelope("email_opened", {"metric": "opened", "trigger_event_id": "01jbbbbbbbbbbbbbbbbbbbbbbb"})
    }
    (work,) = prepare_insight(opened)  # type: ignore[misc]
    assert work.payload == (BRAND, "01JBBBBBBBBBBBBBBBBBBBBBBB", "opened", T0)
    assert prepare_insight(envelope("email_delivered", {"metric": "delivered"})) == Skip(
        "not_an_engagement_with_a_trigger"
    )


def test_optional_fields_read_inline_keep_the_strict_readers_rules() -> None:
    """The common cases are read inline in prepare (a string, an absent field); everything else goes
    through the strict readers exactly as before."""
    data = {"product_id": "p", "view_id": 42, "session_id": "", "referrer": None, "device_type": "mobile",
            "product_price": None, "product_snapshot": {"price": 5, "name": "Snapshot name"}}
    (work,) = prepare_event(envelope("product_viewed", data))  # type: ignore[misc]
    _, viewed = work.payload
    assert (viewed.view_id, viewed.session_id, viewed.referrer, viewed.device_type) == ("42", None, None, "mobile")
    # an explicit null price is no price (the snapshot's price counts only when the field is absent)
    assert viewed.price is None
    assert viewed.product_name == "Snapshot name"
    (work,) = prepare_event(envelope("product_viewed", {"product_id": "p", "product_snapshot": {"price": 5}}))  # type: ignore[misc]
    assert work.payload[1].price == Decimal("5")
    assert prepare_event(envelope("product_viewed", {"product_id": "p", "browser": True})) == Reject(
        "invalid_event", "data.browser must be a string")
    assert prepare_event(envelope("cart_item_added", {"product_id": "p", "sku": ["a"]})) == Reject(
        "invalid_event", "data.sku must be a string")
    assert prepare_event(envelope("product_viewed", {"product_id": "p"}, id="x" * 151)) == Reject(
        "invalid_event", "identifiers.id must be a string of 1 to 150 characters")
    assert prepare_event(envelope("product_viewed", {"product_id": "p"}, anonymous_id="")) == Reject(
        "invalid_event", "identifiers.anonymous_id must be a string of 1 to 150 characters")


def test_common_view_and_cart_add_shapes_read_inline_give_what_the_strict_readers_give() -> None:
    """A view or a cart add carrying none of the rarely sent fields is read inline; the values are those
    the strict readers give, and any other shape (a rare field, a number where a string goes, an explicit
    null) still takes the strict readers."""
    (work,) = prepare_event(envelope("product_viewed", {  # type: ignore[misc]
        "product_id": "p1", "product_name": "Trail shoe", "product_price": 9.99, "product_category": "Shoes"}))
    assert work.payload[1] == Viewed("p1", 0, Decimal("9.99"), "Trail shoe", "Shoes",
                                     None, None, None, None, None, None)
    (work,) = prepare_event(envelope("product_viewed", {  # type: ignore[misc]
        "product_id": 12, "view_duration": 30, "product_price": 0, "product_name": ""}))
    assert work.payload[1] == Viewed("12", 30, Decimal("0"), None, None, None, None, None, None, None, None)
    (work,) = prepare_event(envelope("cart_item_added", {  # type: ignore[misc]
        "product_id": "p1", "price": 9.99, "quantity": 2}))
    assert work.payload[1] == CartAdded(LineItem("p1", 2, None, None, None, Decimal("9.99"), None),
                                        CartChange(None, None, None))
    (work,) = prepare_event(envelope("cart_item_added", {  # type: ignore[misc]
        "product_id": "p1", "price": 9.99, "currency": "EUR", "product_snapshot": {"name": "Snap"}}))
    assert work.payload[1] == CartAdded(LineItem("p1", 1, "Snap", None, None, Decimal("9.99"), None),
                                        CartChange(None, "EUR", None))
    assert prepare_event(envelope("product_viewed", {"product_id": "p1", "view_duration": -1})) == Reject(
        "invalid_event", "data.view_duration must be a non-negative integer")
    assert prepare_event(envelope("cart_item_added", {"product_id": "p1", "quantity": True})) == Reject(
        "invalid_event", "data.quantity must be a non-negative integer")


def test_amounts_read_from_floats_are_exact_decimals_each_time_and_bad_ones_are_refused() -> None:
    assert money(9.99, "price") == Decimal("9.99")
    assert money(9.99, "price") == Decimal("9.99")  # the second time from the memo: the same value
    assert str(money(0.0, "price")) == "0.0"
    assert str(money(-0.0, "price")) == "-0.0"
    assert money(5, "price") == Decimal("5")
    for bad in (-1.5, float("inf"), float("nan")):
        with pytest.raises(InvalidEvent):
            money(bad, "price")
