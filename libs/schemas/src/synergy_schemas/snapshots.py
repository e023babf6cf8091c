"""The snapshots of seed 000 §2.1: user_snapshot, product_snapshot, event_context.

Every field is optional: seed 001 sends shortened snapshots, and seed 000's later examples send `{}`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, IPvAnyAddress, model_validator

from synergy_schemas.fields import (
    Code,
    Count,
    DayOfWeek,
    DeviceType,
    Email,
    EntityId,
    Flag,
    HourOfDay,
    Key,
    Money,
    Multiplier,
    Name,
    PercentDecimal,
    Phone,
    Points,
    ShortText,
    StrainType,
    StrictModel,
    Tags,
    Timestamp,
    UserAgent,
)

# --- user_snapshot ----------------------------------------------------------------------------------


class UserIdentity(StrictModel):
    user_id: EntityId | None = None
    email: Email | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    is_guest: Flag | None = None
    created_at: Timestamp | None = None


class UserEconomy(StrictModel):
    points_balance: Points | None = None
    lifetime_points: Points | None = None
    points_spent_total: Points | None = None
    currency_name: Code | None = None


class UserStatus(StrictModel):
    rank_key: Code | None = None
    rank_name: ShortText | None = None
    rank_multiplier: Multiplier | None = None
    status_name: ShortText | None = None


class UserEngagement(StrictModel):
    total_scans: Count | None = None
    total_redemptions: Count | None = None
    total_achievements_unlocked: Count | None = None
    days_since_signup: Count | None = None
    days_since_last_session: Count | None = None
    days_since_last_scan: Count | None = None
    days_since_last_redemption: Count | None = None
    is_dormant: Flag | None = None
    is_power_user: Flag | None = None


CUSTOM_FIELD_KEY = re.compile(r"^custom_[a-z0-9_]{1,100}$")
MAX_CUSTOM_FIELDS = 50
MAX_CUSTOM_VALUE_LENGTH = 1000


def _custom_fields_json_schema(schema: dict[str, Any]) -> None:
    schema["additionalProperties"] = False
    schema["patternProperties"] = {
        CUSTOM_FIELD_KEY.pattern: {
            "anyOf": [
                {"type": "string", "maxLength": MAX_CUSTOM_VALUE_LENGTH},
                {"type": "boolean"},
                {"type": "number"},
            ]
        }
    }


class UserProfileData(StrictModel):
    """Profile fields, plus the brand's custom fields (seed 003 §8) as `custom_<field_key>`."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_custom_fields_json_schema)

    phone_number: Phone | None = None
    custom_strain_preference: StrainType | None = None
    custom_consumption_method: ShortText | None = None

    @model_validator(mode="after")
    def _only_custom_fields_extra(self) -> UserProfileData:
        extra = self.model_extra or {}
        if len(extra) > MAX_CUSTOM_FIELDS:
            raise ValueError(f"at most {MAX_CUSTOM_FIELDS} custom fields")
        for key, value in extra.items():
            if not CUSTOM_FIELD_KEY.match(key):
                raise ValueError(f"unknown field {key!r}: extra profile fields must be named custom_<key>")
            if isinstance(value, str):
                if len(value) > MAX_CUSTOM_VALUE_LENGTH:
                    raise ValueError(f"{key}: at most {MAX_CUSTOM_VALUE_LENGTH} characters")
            elif not isinstance(value, bool | int | float):
                raise ValueError(f"{key}: a custom field holds a string, a number or a boolean")
        return self


class UserCompliance(StrictModel):
    is_age_verified: Flag | None = None
    age_verified_at: Timestamp | None = None
    has_marketing_consent: Flag | None = None
    marketing_consent_updated_at: Timestamp | None = None


class UserReferralData(StrictModel):
    referral_code: Code | None = None
    referred_by_user_id: EntityId | None = None
    total_referrals_completed: Count | None = None


class UserSnapshot(StrictModel):
    identity: UserIdentity | None = None
    economy: UserEconomy | None = None
    status: UserStatus | None = None
    engagement: UserEngagement | None = None
    profile_data: UserProfileData | None = None
    compliance_and_contact: UserCompliance | None = None
    referral_data: UserReferralData | None = None


# --- product_snapshot -------------------------------------------------------------------------------


class ProductIdentity(StrictModel):
    product_id: EntityId | None = None
    sku: Key | None = None
    product_name: Name | None = None


class ProductEconomy(StrictModel):
    points_award: Points | None = None
    msrp: Money | None = None


class ProductTaxonomy(StrictModel):
    product_line: ShortText | None = None
    product_form: ShortText | None = None
    strain_name: ShortText | None = None
    strain_type: StrainType | None = None
    tags: Tags | None = None


class ProductAttributes(StrictModel):
    potency_thc_percent: PercentDecimal | None = None
    potency_cbd_percent: PercentDecimal | None = None
    dominant_terpene: ShortText | None = None


class ProductMerchandising(StrictModel):
    is_featured: Flag | None = None
    is_new: Flag | None = None
    is_limited: Flag | None = None
    is_digital: Flag | None = None


class ProductSnapshot(StrictModel):
    identity: ProductIdentity | None = None
    economy: ProductEconomy | None = None
    taxonomy: ProductTaxonomy | None = None
    attributes: ProductAttributes | None = None
    merchandising: ProductMerchandising | None = None


# --- event_context ----------------------------------------------------------------------------------


class TimeContext(StrictModel):
    timestamp_utc: Timestamp | None = None
    timestamp_local: Timestamp | None = None
    day_of_week_local: DayOfWeek | None = None
    hour_of_day_local: HourOfDay | None = None
    is_weekend: Flag | None = None


class DeviceContext(StrictModel):
    device_type: DeviceType | None = None
    os: ShortText | None = None
    browser: ShortText | None = None
    user_agent: UserAgent | None = None


class LocationContext(StrictModel):
    ip_address: IPvAnyAddress | None = None
    geo_city: ShortText | None = None
    geo_region: ShortText | None = None
    geo_country: ShortText | None = None


class EventContext(StrictModel):
    time: TimeContext | None = None
    device: DeviceContext | None = None
    location: LocationContext | None = None


__all__ = [
    "DeviceContext",
    "EventContext",
    "LocationContext",
    "ProductAttributes",
    "ProductEconomy",
    "ProductIdentity",
    "ProductMerchandising",
    "ProductSnapshot",
    "ProductTaxonomy",
    "TimeContext",
    "UserCompliance",
    "UserEconomy",
    "UserEngagement",
    "UserIdentity",
    "UserProfileData",
    "UserReferralData",
    "UserSnapshot",
    "UserStatus",
]
