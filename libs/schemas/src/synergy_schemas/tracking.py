"""Seed 004's stored rows and lambda bodies, as the seed writes them: prices in integer cents.

These are payloads, not events. The events of seed 004 (synergy_schemas.events) carry prices in
major currency units; `cents_to_money` converts.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, IPvAnyAddress, model_validator

from synergy_schemas.fields import (
    MAX_CART_ITEMS,
    Cents,
    Code,
    Count,
    Description,
    DeviceType,
    Email,
    EntityId,
    Flag,
    Key,
    Name,
    Percentage,
    Quantity,
    Seconds,
    ShortText,
    StrictModel,
    Timestamp,
    TriggerType,
    Url,
)


def cents_to_money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


class ProductView(StrictModel):
    """A ProductViews row."""

    view_id: Key
    timestamp: Timestamp
    user_id: Key | None = Field(description="null when anonymous")
    session_id: Key | None = None
    product_id: EntityId
    product_name: Name | None = None
    product_price: Cents | None = None
    product_category: ShortText | None = None
    view_duration: Seconds | None = None
    view_count: Count | None = None
    added_to_cart: Flag = False
    purchased: Flag = False
    referrer: Url | None = None
    device_type: DeviceType | None = None
    browser: ShortText | None = None
    ip_address: IPvAnyAddress | None = None
    created_at: Timestamp | None = None


class TrackViewRequest(StrictModel):
    """POST /track/view."""

    product_id: EntityId
    product_name: Name | None = None
    product_price: Cents | None = None
    product_category: ShortText | None = None
    referrer: Url | None = None
    device_type: DeviceType | None = None


class TrackViewResponse(StrictModel):
    success: Flag
    view_id: Key


class TrackCartAddRequest(StrictModel):
    """POST /track/cart-add."""

    product_id: EntityId


class WatchlistAddRequest(StrictModel):
    """POST /track/watchlist/add."""

    product_id: EntityId
    target_price: Cents | None = None
    notify_on_price_drop: Flag = True
    notify_on_restock: Flag = True


class CartItem(StrictModel):
    """One of Cart.items, and of MarketingQueue trigger_data.cart_items."""

    product_id: EntityId
    product_name: Name | None = None
    quantity: Quantity = 1
    price: Cents | None = None
    image_url: Url | None = None


class Cart(StrictModel):
    user_id: Key
    items: Annotated[list[CartItem], Field(max_length=MAX_CART_ITEMS)]
    updated_at: Timestamp


class CatalogProduct(StrictModel):
    """A Products row, as trigger_data.product of a price drop or a restock."""

    product_id: EntityId
    name: Name | None = None
    price: Cents | None = None
    category: ShortText | None = None
    image_url: Url | None = None
    in_stock: Flag | None = None


class AbandonedCartTriggerData(StrictModel):
    cart_items: Annotated[list[CartItem], Field(min_length=1, max_length=MAX_CART_ITEMS)]
    cart_total: Cents
    cart_abandoned_at: Timestamp


class BrowseAbandonmentTriggerData(StrictModel):
    product: ProductView


class PriceDropTriggerData(StrictModel):
    product: CatalogProduct
    old_price: Cents
    new_price: Cents
    savings: Cents


class BackInStockTriggerData(StrictModel):
    product: CatalogProduct


TriggerData = (
    AbandonedCartTriggerData | BrowseAbandonmentTriggerData | PriceDropTriggerData | BackInStockTriggerData
)
TRIGGER_DATA_MODELS: dict[TriggerType, type[StrictModel]] = {
    TriggerType.ABANDONED_CART: AbandonedCartTriggerData,
    TriggerType.BROWSE_ABANDONMENT: BrowseAbandonmentTriggerData,
    TriggerType.PRICE_DROP: PriceDropTriggerData,
    TriggerType.BACK_IN_STOCK: BackInStockTriggerData,
}


class MarketingQueueItem(StrictModel):
    """A MarketingQueue row."""

    queue_id: Key
    user_id: Key
    user_email: Email
    user_name: Name | None = None
    trigger_type: TriggerType
    trigger_data: TriggerData
    discount_code: Code | None = None
    discount_amount: Percentage | None = Field(default=None, description="percent off")
    scheduled_send_time: Timestamp
    sent: Flag = False
    sent_at: Timestamp | None = None
    email_subject: Name
    email_template: Key
    opened: Flag = False
    opened_at: Timestamp | None = None
    clicked: Flag = False
    clicked_at: Timestamp | None = None
    converted: Flag = False
    converted_at: Timestamp | None = None
    conversion_order_id: Key | None = None
    created_at: Timestamp

    @model_validator(mode="after")
    def _trigger_data_matches_type(self) -> MarketingQueueItem:
        expected = TRIGGER_DATA_MODELS[self.trigger_type]
        if not isinstance(self.trigger_data, expected):
            raise ValueError(f"trigger_data of a {self.trigger_type} trigger is a {expected.__name__}")
        return self


class EmailPreferences(StrictModel):
    """An EmailPreferences row. Every opt-in defaults to true; unsubscribed to false."""

    user_id: Key
    email: Email
    marketing_emails: Flag = True
    abandoned_cart_emails: Flag = True
    browse_abandonment_emails: Flag = True
    price_drop_alerts: Flag = True
    back_in_stock_alerts: Flag = True
    product_recommendations: Flag = True
    newsletter: Flag = True
    promotional_emails: Flag = True
    unsubscribed: Flag = False
    unsubscribe_token: Key | None = None
    unsubscribed_at: Timestamp | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class WatchListItem(StrictModel):
    """A WatchList row."""

    user_id: Key
    product_id: EntityId
    product_name: Name | None = None
    current_price: Cents | None = None
    original_price: Cents | None = None
    target_price: Cents | None = Field(default=None, description="alert when the price drops below this")
    in_stock: Flag | None = None
    notify_on_price_drop: Flag = True
    notify_on_restock: Flag = True
    notified_price_drop: Flag = False
    notified_restock: Flag = False
    created_at: Timestamp | None = None


class ScheduleRule(StrictModel):
    """The CloudWatch rule that runs the marketing jobs."""

    schedule: Annotated[str, Field(strict=True, min_length=1, max_length=256)]
    description: Description | None = None
