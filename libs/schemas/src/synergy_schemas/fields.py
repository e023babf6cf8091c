"""Constrained field types and the enums of seed 003, shared by every event model."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

MAX_INT32 = 2**31 - 1
MAX_UINT32 = 2**32 - 1
MAX_LIST_ITEMS = 100
MAX_CART_ITEMS = 500


class StrictModel(BaseModel):
    """A modelled block: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


# --- seed 003 enums ---------------------------------------------------------------------------------


class StrainType(StrEnum):
    SATIVA = "Sativa"
    INDICA = "Indica"
    HYBRID = "Hybrid"


class ReferralStatus(StrEnum):
    PENDING = "pending"
    CONVERTED = "converted"
    EXPIRED = "expired"


class GoalType(StrEnum):
    WISHLIST_ITEM = "wishlist_item"
    ACHIEVEMENT = "achievement"
    CUSTOM = "custom"


class AchievementType(StrEnum):
    SCAN_COUNT = "scan_count"
    PURCHASE_AMOUNT = "purchase_amount"
    REFERRAL_COUNT = "referral_count"
    WISHLIST_ITEMS = "wishlist_items"
    ACHIEVEMENT_UNLOCKED = "achievement_unlocked"
    CUSTOM = "custom"


class CustomFieldType(StrEnum):
    TEXT = "text"
    SELECT = "select"
    CHECKBOX = "checkbox"
    RADIO = "radio"


# --- enums the seeds name in comments --------------------------------------------------------------


class DeviceType(StrEnum):
    """Seed 004: desktop, mobile, tablet; `unknown` is what tracking_api records without one."""

    DESKTOP = "desktop"
    MOBILE = "mobile"
    TABLET = "tablet"
    UNKNOWN = "unknown"


class ReferralMethod(StrEnum):
    SHARE_LINK = "share_link"
    DIRECT_EMAIL = "direct_email"
    SMS = "sms"
    SOCIAL = "social"


class AchievementRarity(StrEnum):
    COMMON = "common"
    UNCOMMON = "uncommon"
    RARE = "rare"
    EPIC = "epic"
    LEGENDARY = "legendary"


class DayOfWeek(StrEnum):
    MONDAY = "Monday"
    TUESDAY = "Tuesday"
    WEDNESDAY = "Wednesday"
    THURSDAY = "Thursday"
    FRIDAY = "Friday"
    SATURDAY = "Saturday"
    SUNDAY = "Sunday"


class TriggerType(StrEnum):
    """Seed 004 MarketingQueue.trigger_type."""

    ABANDONED_CART = "abandoned_cart"
    BROWSE_ABANDONMENT = "browse_abandonment"
    PRICE_DROP = "price_drop"
    BACK_IN_STOCK = "back_in_stock"


# --- strings ----------------------------------------------------------------------------------------

Key = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=100)]
Code = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=50)]
ShortText = Annotated[str, StringConstraints(strict=True, max_length=100)]
Name = Annotated[str, StringConstraints(strict=True, max_length=255)]
Description = Annotated[str, StringConstraints(strict=True, max_length=2000)]
UserAgent = Annotated[str, StringConstraints(strict=True, max_length=1000)]
Url = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=2048)]
Phone = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=20)]
# No white space and no control character (C0, DEL, C1: a NUL is also what Postgres cannot store in text).
Email = Annotated[
    str, StringConstraints(strict=True, min_length=3, max_length=255,
                           pattern=r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+$")
]
CurrencyCode = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{3}$")]
Tag = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=50)]
Tags = Annotated[list[Tag], Field(max_length=MAX_LIST_ITEMS)]

# --- numbers ----------------------------------------------------------------------------------------

Count = Annotated[int, Field(strict=True, ge=0, le=MAX_INT32)]
Points = Annotated[int, Field(strict=True, ge=0, le=MAX_UINT32)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=10_000)]
StockQuantity = Annotated[int, Field(strict=True, ge=0, le=MAX_INT32)]
Seconds = Annotated[int, Field(strict=True, ge=0, le=MAX_INT32)]
HourOfDay = Annotated[int, Field(strict=True, ge=0, le=23)]
Percentage = Annotated[int, Field(strict=True, ge=0, le=100)]
Cents = Annotated[int, Field(strict=True, ge=0, le=MAX_INT32, description="an amount in cents")]
Flag = Annotated[bool, Field(strict=True)]

EntityId = (
    Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
    | Annotated[str, StringConstraints(strict=True, min_length=1, max_length=150)]
)


def _json_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a JSON number")
    return value


def decimal_to_json_number(value: Decimal) -> int | float:
    """A Decimal as a JSON number: an int when written without a fraction, else the nearest float.

    Every decimal allowed here has at most 15 significant digits, so the float prints back as the
    same decimal digits.
    """
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(value)
    return float(value)


def _digits_at_most(max_digits: int, places: int) -> AfterValidator:
    """pydantic's max_digits/decimal_places, in one pass: they run as Python and dominate validation."""

    def check(value: Decimal) -> Decimal:
        _, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise ValueError("must be a finite number")
        decimals = max(0, -exponent)
        whole_digits = max(len(digits) + exponent, 0)
        if decimals > places:
            raise ValueError(f"Decimal input should have no more than {places} decimal places")
        if whole_digits + decimals > max_digits and any(digits):
            raise ValueError(f"Decimal input should have no more than {max_digits} digits in total")
        return value

    return AfterValidator(check)


_AS_JSON_NUMBER = PlainSerializer(decimal_to_json_number, return_type=int | float, when_used="json")

Money = Annotated[
    Decimal,
    BeforeValidator(_json_number),
    Field(ge=0),
    _digits_at_most(12, 2),
    _AS_JSON_NUMBER,
    WithJsonSchema(
        {"type": "number", "minimum": 0, "maximum": 9999999999.99, "description": "major currency units"}
    ),
]
PercentDecimal = Annotated[
    Decimal,
    BeforeValidator(_json_number),
    Field(ge=0, le=100),
    _digits_at_most(5, 2),
    _AS_JSON_NUMBER,
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100}),
]
Multiplier = Annotated[
    Decimal,
    BeforeValidator(_json_number),
    Field(ge=0),
    _digits_at_most(3, 2),
    _AS_JSON_NUMBER,
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 9.99}),
]

Timestamp = AwareDatetime
