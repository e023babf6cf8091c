"""The event-specific blocks of seeds 000 and 001, and the line items of seed 004's events."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from synergy_schemas.fields import (
    MAX_CART_ITEMS,
    AchievementRarity,
    AchievementType,
    Code,
    Count,
    Description,
    DeviceType,
    Email,
    EntityId,
    Flag,
    GoalType,
    Key,
    Money,
    Name,
    Points,
    Quantity,
    ReferralMethod,
    ReferralStatus,
    Seconds,
    ShortText,
    StrictModel,
    Timestamp,
    Url,
)

# --- seed 000 §2.2 / §2.3, seed 001 §2.1.2 --------------------------------------------------------


class ReferralInitiatedData(StrictModel):
    referring_user_id: EntityId | None = None
    referring_user_email: Email | None = None
    referral_code: Code | None = None
    referral_method: ReferralMethod | None = None
    target_audience: ShortText | None = None
    referral_email: Email | None = Field(default=None, description="the invited friend's address")
    status: ReferralStatus | None = None


class ReferralConvertedData(StrictModel):
    referrer_user_id: EntityId | None = None
    referring_user_email: Email | None = None
    referred_user_id: EntityId | None = None
    referral_code_used: Code | None = None
    points_awarded_to_referrer: Points | None = None
    status: ReferralStatus | None = None
    converted_at: Timestamp | None = None


# --- seed 000 §2.4 ----------------------------------------------------------------------------------


class WishlistData(StrictModel):
    wishlist_item_id: Key | None = None
    points_needed: Points | None = None
    referrals_needed: Count | None = None
    time_to_goal: ShortText | None = None
    goal_type: GoalType | None = None


# --- seed 000 §2.5 ----------------------------------------------------------------------------------


class AchievementData(StrictModel):
    achievement_id: Key | None = None
    achievement_key: Key | None = None
    achievement_name: Name | None = None
    achievement_description: Description | None = None
    achievement_type: AchievementType | None = None
    points_reward: Points | None = None
    badge_id: Key | None = None
    achievement_rarity: AchievementRarity | None = None
    achievement_category: Code | None = None


# --- seed 000 §2.6 ----------------------------------------------------------------------------------


class RewardIdentity(StrictModel):
    reward_id: EntityId | None = None
    reward_name: Name | None = None
    reward_sku: Key | None = None


class RewardEconomy(StrictModel):
    points_cost: Points | None = None
    retail_value: Money | None = None


class RewardMerchandising(StrictModel):
    is_digital: Flag | None = None
    requires_shipping: Flag | None = None


class RewardSnapshot(StrictModel):
    identity: RewardIdentity | None = None
    economy: RewardEconomy | None = None
    merchandising: RewardMerchandising | None = None


class TransactionData(StrictModel):
    points_spent: Points | None = None
    order_id: Key | None = None


# --- seed 000 §2.7 / §2.8, seed 001 §2.1.6 --------------------------------------------------------


class SessionData(StrictModel):
    session_id: Key | None = None
    login_method: Code | None = None
    returning_user: Flag | None = None
    duration_seconds: Seconds | None = None
    pages_viewed: Count | None = None
    actions_performed: Count | None = None


class SessionLocation(StrictModel):
    city: ShortText | None = None
    region: ShortText | None = None
    country: ShortText | None = None


class SessionDetails(StrictModel):
    device_type: DeviceType | None = None
    os: ShortText | None = None
    browser: ShortText | None = None
    location: SessionLocation | None = None


# --- seed 004 line items, in major currency units ------------------------------------------------


class LineItem(StrictModel):
    """One product in a cart or an order (seed 004 Cart.items / trigger_data.cart_items)."""

    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    quantity: Quantity = 1
    price: Money | None = Field(default=None, description="unit price, major currency units")
    image_url: Url | None = None


class ProductSummary(StrictModel):
    """The product a marketing event is about (seed 004 trigger_data.product)."""

    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    product_price: Money | None = None
    image_url: Url | None = None
    product_url: Url | None = None


class BrowsedProduct(ProductSummary):
    view_count: Count = Field(description="product views in the browse window")
    last_viewed_at: Timestamp | None = None


LineItems = Annotated[list[LineItem], Field(max_length=MAX_CART_ITEMS)]
