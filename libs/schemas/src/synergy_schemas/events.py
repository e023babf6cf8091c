"""The `data` of every event the engine knows (DESIGN.md, "Client events" and "Reserved events").

Money is in major currency units (19.99), a Decimal that serializes back to a JSON number.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from synergy_schemas.blocks import (
    AchievementData,
    BrowsedProduct,
    LineItem,
    LineItems,
    ProductSummary,
    ReferralConvertedData,
    ReferralInitiatedData,
    RewardSnapshot,
    SessionData,
    SessionDetails,
    TransactionData,
    WishlistData,
)
from synergy_schemas.fast_events import fast_accepts
from synergy_schemas.fields import (
    AchievementRarity,
    Code,
    CurrencyCode,
    DeviceType,
    EntityId,
    Flag,
    Key,
    Money,
    Multiplier,
    Name,
    Percentage,
    Points,
    Quantity,
    Seconds,
    ShortText,
    StockQuantity,
    StrictModel,
    Timestamp,
    Url,
)
from synergy_schemas.snapshots import EventContext, ProductSnapshot, UserSnapshot


class EventData(StrictModel):
    """Seed 000 §3.1: every event may carry the user's snapshot and the event's context."""

    user_snapshot: UserSnapshot | None = None
    event_context: EventContext | None = None


class ProductEventData(EventData):
    product_snapshot: ProductSnapshot | None = None


# --- seed 000 / 001 ---------------------------------------------------------------------------------


class ProductScannedData(ProductEventData):
    pass


class ReferralInitiatedEventData(EventData):
    referral_data: ReferralInitiatedData | None = None


class ReferralConvertedEventData(EventData):
    referral_data: ReferralConvertedData | None = None


class WishlistItemEventData(ProductEventData):
    wishlist_data: WishlistData | None = None


class RewardRedeemedData(EventData):
    reward_snapshot: RewardSnapshot | None = None
    transaction_data: TransactionData | None = None
    points_spent: Points | None = Field(default=None, description="seed 001's short form")


class UserSessionData(EventData):
    session_data: SessionData | None = None
    session_details: SessionDetails | None = Field(default=None, description="seed 001's short form")


class AchievementUnlockedData(EventData):
    achievement_data: AchievementData | None = None
    achievement_key: Key | None = Field(default=None, description="seed 001's short form")
    points_reward: Points | None = Field(default=None, description="seed 001's short form")
    achievement_rarity: AchievementRarity | None = Field(default=None, description="seed 001's short form")


# --- seed 004 behaviour -----------------------------------------------------------------------------


class ProductViewedData(ProductEventData):
    product_id: EntityId
    product_name: Name | None = None
    product_price: Money | None = None
    currency: CurrencyCode | None = None
    product_category: ShortText | None = None
    image_url: Url | None = None
    view_id: Key | None = None
    session_id: Key | None = None
    view_duration: Seconds | None = Field(default=None, description="seconds on the page")
    referrer: Url | None = None
    device_type: DeviceType | None = None
    browser: ShortText | None = None


class CartItemEventData(ProductEventData):
    """cart_item_added / cart_item_removed: the item, and optionally the cart after the change."""

    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    quantity: Quantity = Field(default=1, description="units added or removed")
    price: Money | None = Field(default=None, description="unit price")
    currency: CurrencyCode | None = None
    image_url: Url | None = None
    cart_id: Key | None = None
    session_id: Key | None = None
    cart_items: LineItems | None = Field(default=None, description="the whole cart after the change")
    cart_total: Money | None = None


class OrderCompletedData(EventData):
    order_id: Key
    items: LineItems | None = None
    order_total: Money | None = None
    currency: CurrencyCode | None = None
    discount_code: Code | None = None
    cart_id: Key | None = None
    ref: Key | None = Field(
        default=None, description="marketing attribution from the ?ref= parameter (seed 004 conversions)"
    )


class WatchlistItemEventData(ProductEventData):
    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    image_url: Url | None = None
    current_price: Money | None = None
    original_price: Money | None = None
    target_price: Money | None = Field(default=None, description="alert when the price drops below this")
    currency: CurrencyCode | None = None
    in_stock: Flag | None = None
    notify_on_price_drop: Flag | None = None
    notify_on_restock: Flag | None = None


# --- catalog, brand-scoped --------------------------------------------------------------------------


class ProductPriceChangedData(ProductEventData):
    product_id: EntityId
    sku: Key | None = None
    product_name: Name | None = None
    old_price: Money | None = None
    new_price: Money
    original_price: Money | None = None
    currency: CurrencyCode | None = None
    changed_at: Timestamp | None = None


class ProductStockChangedData(ProductEventData):
    product_id: EntityId
    sku: Key | None = None
    product_name: Name | None = None
    in_stock: Flag
    was_in_stock: Flag | None = None
    quantity: StockQuantity | None = None
    old_quantity: StockQuantity | None = None
    changed_at: Timestamp | None = None


# --- reserved: only the engine emits these ----------------------------------------------------------


class RankChangedData(EventData):
    old_rank_key: Code | None = None
    old_rank_name: ShortText | None = None
    new_rank_key: Code
    new_rank_name: ShortText | None = None
    new_rank_multiplier: Multiplier | None = None
    points_required: Points | None = None
    lifetime_points: Points | None = None
    direction: Literal["up", "down"] | None = None


class MarketingEventData(EventData):
    """The incentive a marketing email may offer (seed 004 MarketingQueue), and what the campaign
    needs to send it: the queue item, template, subject, and the unsubscribe links and headers."""

    discount_code: Code | None = None
    discount_amount: Percentage | None = Field(default=None, description="percent off")
    queue_id: Key | None = Field(default=None, description="the MarketingQueue item this message is")
    trigger_type: Code | None = Field(default=None, description="seed 004's trigger_type (abandoned_cart)")
    email_template: Code | None = None
    email_subject: Name | None = None
    unsubscribe_url: Url | None = None
    preferences_url: Url | None = None
    list_unsubscribe: Url | None = Field(default=None, description="the List-Unsubscribe header's value")
    list_unsubscribe_post: ShortText | None = Field(
        default=None, description="the List-Unsubscribe-Post header's value (RFC 8058)"
    )


class CartAbandonedData(MarketingEventData):
    cart_items: LineItems = Field(min_length=1)
    cart_total: Money | None = None
    currency: CurrencyCode | None = None
    cart_abandoned_at: Timestamp
    cart_id: Key | None = None


class BrowseAbandonedData(MarketingEventData):
    product: BrowsedProduct
    browse_started_at: Timestamp | None = None


class PriceDroppedData(MarketingEventData):
    product: ProductSummary
    old_price: Money
    new_price: Money
    savings: Money | None = None
    target_price: Money | None = None
    currency: CurrencyCode | None = None

    @model_validator(mode="after")
    def _price_went_down(self) -> PriceDroppedData:
        if self.new_price >= self.old_price:
            raise ValueError("new_price must be below old_price")
        return self


class BackInStockData(MarketingEventData):
    product: ProductSummary
    quantity: StockQuantity | None = None
    restocked_at: Timestamp | None = None
    currency: CurrencyCode | None = None


# --- the registry -----------------------------------------------------------------------------------

CLIENT_EVENT_DATA_MODELS: dict[str, type[BaseModel]] = {
    "product_scanned": ProductScannedData,
    "referral_initiated": ReferralInitiatedEventData,
    "referral_converted": ReferralConvertedEventData,
    "wishlist_item_added": WishlistItemEventData,
    "wishlist_item_removed": WishlistItemEventData,
    "reward_redeemed": RewardRedeemedData,
    "user_session_started": UserSessionData,
    "user_session_ended": UserSessionData,
    "product_viewed": ProductViewedData,
    "cart_item_added": CartItemEventData,
    "cart_item_removed": CartItemEventData,
    "order_completed": OrderCompletedData,
    "watchlist_item_added": WatchlistItemEventData,
    "watchlist_item_removed": WatchlistItemEventData,
    "product_price_changed": ProductPriceChangedData,
    "product_stock_changed": ProductStockChangedData,
}
RESERVED_EVENT_DATA_MODELS: dict[str, type[BaseModel]] = {
    "achievement_unlocked": AchievementUnlockedData,
    "rank_changed": RankChangedData,
    "cart_abandoned": CartAbandonedData,
    "browse_abandoned": BrowseAbandonedData,
    "price_dropped": PriceDroppedData,
    "back_in_stock": BackInStockData,
}
EVENT_DATA_MODELS: dict[str, type[BaseModel]] = {**CLIENT_EVENT_DATA_MODELS, **RESERVED_EVENT_DATA_MODELS}

CLIENT_EVENTS: frozenset[str] = frozenset(CLIENT_EVENT_DATA_MODELS)
RESERVED_EVENTS: frozenset[str] = frozenset(RESERVED_EVENT_DATA_MODELS)
EVENT_ALIASES: dict[str, str] = {
    "wishlist_added": "wishlist_item_added",
    "wishlist_removed": "wishlist_item_removed",
}


class UnknownEventError(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        self.known = sorted(CLIENT_EVENTS | RESERVED_EVENTS)
        aliases = ", ".join(f"{alias} -> {canonical}" for alias, canonical in sorted(EVENT_ALIASES.items()))
        super().__init__(
            f"unknown event {name!r}. Known events: {', '.join(sorted(CLIENT_EVENTS))}; "
            f"aliases: {aliases}; emitted only by the engine: {', '.join(sorted(RESERVED_EVENTS))}"
        )


class ReservedEventError(ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"event {name!r} is reserved: only the engine emits {', '.join(sorted(RESERVED_EVENTS))}"
        )


def canonical_event_name(name: str) -> str:
    canonical = EVENT_ALIASES.get(name, name)
    if canonical not in EVENT_DATA_MODELS:
        raise UnknownEventError(name)
    return canonical


def check_event_data(name: str, data: dict[str, Any], *, allow_reserved: bool = False) -> str:
    """Validate an event's `data` as it stands and return the canonical name; the data is not rewritten.

    The models refuse coercion, so valid data already is its own normal form. The native fast path
    (`fast_events`) accepts only what the model accepts; whatever it refuses, the model decides.
    """
    canonical = canonical_event_name(name)
    if canonical in RESERVED_EVENTS and not allow_reserved:
        raise ReservedEventError(canonical)
    if not fast_accepts(canonical, data):
        EVENT_DATA_MODELS[canonical].model_validate(data)
    return canonical


def validate_event_data(name: str, data: dict[str, Any], *, allow_reserved: bool = False) -> dict[str, Any]:
    """Validate an event's `data` and return it normalized and ready for JSON.

    Raises UnknownEventError, ReservedEventError, or pydantic.ValidationError (with field locations).
    """
    canonical = canonical_event_name(name)
    if canonical in RESERVED_EVENTS and not allow_reserved:
        raise ReservedEventError(canonical)
    model = EVENT_DATA_MODELS[canonical].model_validate(data)
    return dump_event_data(model)


def dump_event_data(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True, exclude_none=True)


__all__ = [
    "CLIENT_EVENTS",
    "EVENT_ALIASES",
    "EVENT_DATA_MODELS",
    "RESERVED_EVENTS",
    "AchievementUnlockedData",
    "BackInStockData",
    "BrowseAbandonedData",
    "CartAbandonedData",
    "CartItemEventData",
    "EventData",
    "LineItem",
    "OrderCompletedData",
    "PriceDroppedData",
    "ProductEventData",
    "ProductPriceChangedData",
    "ProductScannedData",
    "ProductStockChangedData",
    "ProductViewedData",
    "RankChangedData",
    "ReferralConvertedEventData",
    "ReferralInitiatedEventData",
    "ReservedEventError",
    "RewardRedeemedData",
    "UnknownEventError",
    "UserSessionData",
    "WatchlistItemEventData",
    "canonical_event_name",
    "check_event_data",
    "dump_event_data",
    "validate_event_data",
]
