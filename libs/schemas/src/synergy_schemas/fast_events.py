"""A native fast path for the client events' `data` check: msgspec Structs mirroring the pydantic models.

The pydantic models in `events`, `blocks` and `snapshots` stay the definition. These Structs are a
pre-check that runs in C and accepts a subset of what the models accept, never more: a value the
fast path refuses goes to pydantic, which decides and names the failing field. So the result of
`check_event_data` is always pydantic's, and the happy path costs a few microseconds instead of
pydantic's ~26 per seed event (pydantic builds a Decimal, an IP address object and a model per block).

Where matching pydantic exactly would need Python, the fast path is stricter and leaves the case to
pydantic: money and percentages must be JSON numbers with at most 2 decimals inside a bound that
implies pydantic's digit limits; IP addresses must be dotted-quad IPv4; a profile's `custom_<key>`
fields beyond the two declared ones; patterns are anchored with `\\Z` (Python's `$` also matches
before a final newline, the Rust engine pydantic uses does not) and refuse every character either
engine counts as white space. `tests/unit/test_schemas_fast_path.py` checks the subset property on
every seed and on generated variants.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

# --- scalar types, mirroring synergy_schemas.fields -------------------------------------------------

_WHITE_SPACE = "\\s\x1c-\x1f\x85\xa0\u1680\u180e\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"

Key = Annotated[str, Meta(min_length=1, max_length=100)]
Code = Annotated[str, Meta(min_length=1, max_length=50)]
ShortText = Annotated[str, Meta(max_length=100)]
Name = Annotated[str, Meta(max_length=255)]
Description = Annotated[str, Meta(max_length=2000)]
UserAgent = Annotated[str, Meta(max_length=1000)]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
Phone = Annotated[str, Meta(min_length=1, max_length=20)]
_NOT_IN_EMAIL = f"@{_WHITE_SPACE}\\x00-\\x1f\\x7f-\\x9f"  # as fields.Email: no control character either
Email = Annotated[
    str, Meta(min_length=3, max_length=255, pattern=f"^[^{_NOT_IN_EMAIL}]+@[^{_NOT_IN_EMAIL}]+\\Z")
]
CurrencyCode = Annotated[str, Meta(pattern="^[A-Z]{3}\\Z")]
Tag = Annotated[str, Meta(min_length=1, max_length=50)]
Tags = Annotated[list[Tag], Meta(max_length=100)]

MAX_INT32 = 2**31 - 1
Count = Annotated[int, Meta(ge=0, le=MAX_INT32)]
Points = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Quantity = Annotated[int, Meta(ge=1, le=10_000)]
StockQuantity = Annotated[int, Meta(ge=0, le=MAX_INT32)]
Seconds = Annotated[int, Meta(ge=0, le=MAX_INT32)]
HourOfDay = Annotated[int, Meta(ge=0, le=23)]
Flag = bool
EntityId = Annotated[int, Meta(ge=0, le=2**63 - 1)] | Annotated[str, Meta(min_length=1, max_length=150)]
Timestamp = Annotated[datetime, Meta(tz=True)]

_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
IPv4 = Annotated[str, Meta(pattern=f"^{_OCTET}(\\.{_OCTET}){{3}}\\Z")]

StrainType = Literal["Sativa", "Indica", "Hybrid"]
ReferralStatus = Literal["pending", "converted", "expired"]
GoalType = Literal["wishlist_item", "achievement", "custom"]
AchievementType = Literal[
    "scan_count", "purchase_amount", "referral_count", "wishlist_items", "achievement_unlocked", "custom"
]
DeviceType = Literal["desktop", "mobile", "tablet", "unknown"]
ReferralMethod = Literal["share_link", "direct_email", "sms", "social"]
AchievementRarity = Literal["common", "uncommon", "rare", "epic", "legendary"]
DayOfWeek = Literal["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


# 12 digits, 2 of them decimals
Money = Annotated[int, Meta(ge=0, le=9_999_999_999)] | Annotated[float, Meta(ge=0, le=9_999_999_999.99)]
PercentDecimal = Annotated[int, Meta(ge=0, le=100)] | Annotated[float, Meta(ge=0, le=100)]
Multiplier = Annotated[int, Meta(ge=0, le=9)] | Annotated[float, Meta(ge=0, le=9.99)]


def _at_most_two_decimals(value: int | float | None) -> bool:
    """An int, or a float that is the nearest float to a decimal with at most 2 places (so its
    shortest repr, the string pydantic reads into a Decimal, has at most 2 decimals)."""
    return value is None or type(value) is int or round(value, 2) == value


class _Strict(Struct, forbid_unknown_fields=True, gc=False):
    pass


class _WithDecimals(_Strict):
    """A block with Money, PercentDecimal or Multiplier fields, named in `_decimals`."""

    _decimals: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # _at_most_two_decimals inlined (it runs for every such block of every event); a float
        # with no fractional part is exact below the bounds, so only the others need round().
        for name in self._decimals:
            value = getattr(self, name)
            if type(value) is float and not value.is_integer() and round(value, 2) != value:
                raise ValueError(f"{name}: at most 2 decimals")


# --- snapshots (synergy_schemas.snapshots) ---------------------------------------------------------


class UserIdentity(_Strict):
    user_id: EntityId | None = None
    email: Email | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    is_guest: Flag | None = None
    created_at: Timestamp | None = None


class UserEconomy(_Strict):
    points_balance: Points | None = None
    lifetime_points: Points | None = None
    points_spent_total: Points | None = None
    currency_name: Code | None = None


class UserStatus(_WithDecimals):
    _decimals: ClassVar[tuple[str, ...]] = ("rank_multiplier",)
    rank_key: Code | None = None
    rank_name: ShortText | None = None
    rank_multiplier: Multiplier | None = None
    status_name: ShortText | None = None


class UserEngagement(_Strict):
    total_scans: Count | None = None
    total_redemptions: Count | None = None
    total_achievements_unlocked: Count | None = None
    days_since_signup: Count | None = None
    days_since_last_session: Count | None = None
    days_since_last_scan: Count | None = None
    days_since_last_redemption: Count | None = None
    is_dormant: Flag | None = None
    is_power_user: Flag | None = None


class UserProfileData(_Strict):
    """Only the declared fields: other `custom_<key>` fields are left to pydantic."""

    phone_number: Phone | None = None
    custom_strain_preference: StrainType | None = None
    custom_consumption_method: ShortText | None = None


class UserCompliance(_Strict):
    is_age_verified: Flag | None = None
    age_verified_at: Timestamp | None = None
    has_marketing_consent: Flag | None = None
    marketing_consent_updated_at: Timestamp | None = None


class UserReferralData(_Strict):
    referral_code: Code | None = None
    referred_by_user_id: EntityId | None = None
    total_referrals_completed: Count | None = None


class UserSnapshot(_Strict):
    identity: UserIdentity | None = None
    economy: UserEconomy | None = None
    status: UserStatus | None = None
    engagement: UserEngagement | None = None
    profile_data: UserProfileData | None = None
    compliance_and_contact: UserCompliance | None = None
    referral_data: UserReferralData | None = None


class ProductIdentity(_Strict):
    product_id: EntityId | None = None
    sku: Key | None = None
    product_name: Name | None = None


class ProductEconomy(_WithDecimals):
    _decimals: ClassVar[tuple[str, ...]] = ("msrp",)
    points_award: Points | None = None
    msrp: Money | None = None


class ProductTaxonomy(_Strict):
    product_line: ShortText | None = None
    product_form: ShortText | None = None
    strain_name: ShortText | None = None
    strain_type: StrainType | None = None
    tags: Tags | None = None


class ProductAttributes(_WithDecimals):
    _decimals: ClassVar[tuple[str, ...]] = ("potency_thc_percent", "potency_cbd_percent")
    potency_thc_percent: PercentDecimal | None = None
    potency_cbd_percent: PercentDecimal | None = None
    dominant_terpene: ShortText | None = None


class ProductMerchandising(_Strict):
    is_featured: Flag | None = None
    is_new: Flag | None = None
    is_limited: Flag | None = None
    is_digital: Flag | None = None


class ProductSnapshot(_Strict):
    identity: ProductIdentity | None = None
    economy: ProductEconomy | None = None
    taxonomy: ProductTaxonomy | None = None
    attributes: ProductAttributes | None = None
    merchandising: ProductMerchandising | None = None


class TimeContext(_Strict):
    timestamp_utc: Timestamp | None = None
    timestamp_local: Timestamp | None = None
    day_of_week_local: DayOfWeek | None = None
    hour_of_day_local: HourOfDay | None = None
    is_weekend: Flag | None = None


class DeviceContext(_Strict):
    device_type: DeviceType | None = None
    os: ShortText | None = None
    browser: ShortText | None = None
    user_agent: UserAgent | None = None


class LocationContext(_Strict):
    ip_address: IPv4 | None = None
    geo_city: ShortText | None = None
    geo_region: ShortText | None = None
    geo_country: ShortText | None = None


class EventContext(_Strict):
    time: TimeContext | None = None
    device: DeviceContext | None = None
    location: LocationContext | None = None


# --- blocks (synergy_schemas.blocks) ----------------------------------------------------------------


class ReferralInitiatedData(_Strict):
    referring_user_id: EntityId | None = None
    referring_user_email: Email | None = None
    referral_code: Code | None = None
    referral_method: ReferralMethod | None = None
    target_audience: ShortText | None = None
    referral_email: Email | None = None
    status: ReferralStatus | None = None


class ReferralConvertedData(_Strict):
    referrer_user_id: EntityId | None = None
    referring_user_email: Email | None = None
    referred_user_id: EntityId | None = None
    referral_code_used: Code | None = None
    points_awarded_to_referrer: Points | None = None
    status: ReferralStatus | None = None
    converted_at: Timestamp | None = None


class WishlistData(_Strict):
    wishlist_item_id: Key | None = None
    points_needed: Points | None = None
    referrals_needed: Count | None = None
    time_to_goal: ShortText | None = None
    goal_type: GoalType | None = None


class RewardIdentity(_Strict):
    reward_id: EntityId | None = None
    reward_name: Name | None = None
    reward_sku: Key | None = None


class RewardEconomy(_WithDecimals):
    _decimals: ClassVar[tuple[str, ...]] = ("retail_value",)
    points_cost: Points | None = None
    retail_value: Money | None = None


class RewardMerchandising(_Strict):
    is_digital: Flag | None = None
    requires_shipping: Flag | None = None


class RewardSnapshot(_Strict):
    identity: RewardIdentity | None = None
    economy: RewardEconomy | None = None
    merchandising: RewardMerchandising | None = None


class TransactionData(_Strict):
    points_spent: Points | None = None
    order_id: Key | None = None


class SessionData(_Strict):
    session_id: Key | None = None
    login_method: Code | None = None
    returning_user: Flag | None = None
    duration_seconds: Seconds | None = None
    pages_viewed: Count | None = None
    actions_performed: Count | None = None


class SessionLocation(_Strict):
    city: ShortText | None = None
    region: ShortText | None = None
    country: ShortText | None = None


class SessionDetails(_Strict):
    device_type: DeviceType | None = None
    os: ShortText | None = None
    browser: ShortText | None = None
    location: SessionLocation | None = None


class LineItem(_WithDecimals):
    _decimals: ClassVar[tuple[str, ...]] = ("price",)
    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    quantity: Quantity = 1
    price: Money | None = None
    image_url: Url | None = None


LineItems = Annotated[list[LineItem], Meta(max_length=500)]


# --- event data (synergy_schemas.events, client events only) ---------------------------------------


class EventData(_Strict):
    """No decimals of its own: msgspec calls a __post_init__ from C for every Struct that has one
    (~0.3 us), so only the events' data types with Money fields inherit _WithDecimals' check."""

    _decimals: ClassVar[tuple[str, ...]] = ()
    user_snapshot: UserSnapshot | None = None
    event_context: EventContext | None = None


class ProductEventData(EventData):
    product_snapshot: ProductSnapshot | None = None


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
    points_spent: Points | None = None


class UserSessionData(EventData):
    session_data: SessionData | None = None
    session_details: SessionDetails | None = None


class ProductViewedData(ProductEventData, _WithDecimals, kw_only=True):
    _decimals: ClassVar[tuple[str, ...]] = ("product_price",)
    product_id: EntityId
    product_name: Name | None = None
    product_price: Money | None = None
    currency: CurrencyCode | None = None
    product_category: ShortText | None = None
    image_url: Url | None = None
    view_id: Key | None = None
    session_id: Key | None = None
    view_duration: Seconds | None = None
    referrer: Url | None = None
    device_type: DeviceType | None = None
    browser: ShortText | None = None


class CartItemEventData(ProductEventData, _WithDecimals, kw_only=True):
    _decimals: ClassVar[tuple[str, ...]] = ("price", "cart_total")
    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    quantity: Quantity = 1
    price: Money | None = None
    currency: CurrencyCode | None = None
    image_url: Url | None = None
    cart_id: Key | None = None
    session_id: Key | None = None
    cart_items: LineItems | None = None
    cart_total: Money | None = None


class OrderCompletedData(EventData, _WithDecimals, kw_only=True):
    _decimals: ClassVar[tuple[str, ...]] = ("order_total",)
    order_id: Key
    items: LineItems | None = None
    order_total: Money | None = None
    currency: CurrencyCode | None = None
    discount_code: Code | None = None
    cart_id: Key | None = None
    ref: Key | None = None


class WatchlistItemEventData(ProductEventData, _WithDecimals, kw_only=True):
    _decimals: ClassVar[tuple[str, ...]] = ("current_price", "original_price", "target_price")
    product_id: EntityId
    product_name: Name | None = None
    sku: Key | None = None
    product_category: ShortText | None = None
    image_url: Url | None = None
    current_price: Money | None = None
    original_price: Money | None = None
    target_price: Money | None = None
    currency: CurrencyCode | None = None
    in_stock: Flag | None = None
    notify_on_price_drop: Flag | None = None
    notify_on_restock: Flag | None = None


class ProductPriceChangedData(ProductEventData, _WithDecimals, kw_only=True):
    _decimals: ClassVar[tuple[str, ...]] = ("old_price", "new_price", "original_price")
    product_id: EntityId
    sku: Key | None = None
    product_name: Name | None = None
    old_price: Money | None = None
    new_price: Money
    original_price: Money | None = None
    currency: CurrencyCode | None = None
    changed_at: Timestamp | None = None


class ProductStockChangedData(ProductEventData, kw_only=True):
    product_id: EntityId
    sku: Key | None = None
    product_name: Name | None = None
    in_stock: Flag
    was_in_stock: Flag | None = None
    quantity: StockQuantity | None = None
    old_quantity: StockQuantity | None = None
    changed_at: Timestamp | None = None


FAST_CLIENT_EVENT_DATA: dict[str, type[Struct]] = {
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


def fast_accepts(canonical_name: str, data: Any) -> bool:
    """True only if the pydantic model of this client event accepts `data`; False means "ask pydantic"."""
    struct = FAST_CLIENT_EVENT_DATA.get(canonical_name)
    if struct is None:
        return False
    try:
        msgspec.convert(data, struct)
    except msgspec.ValidationError:
        return False
    return True
