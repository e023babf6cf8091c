"""What one envelope means to analytics: an action-log row and the read-model changes it carries. Pure.

No Kafka, HTTP or SQL here: `process_message(envelope)` is a function of the envelope alone, so
processing the same message twice gives the same result (the writes it leads to are idempotent by
event id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

# Events only the engine emits (achievements, marketing): kept in the log, left out of strict funnels'
# "nothing in between" (a points event after every scan would otherwise break every strict funnel).
ENGINE_EVENTS = frozenset(
    {
        "achievement_unlocked",
        "rank_changed",
        "points_awarded",
        "points_earned",
        "points_spent",
        "referral_points_awarded",
        "cart_abandoned",
        "browse_abandoned",
        "price_dropped",
        "back_in_stock",
        "email_preferences_changed",
    }
)
ENGINE_SOURCES = frozenset({"achievements", "marketing"})
ALIASES = {"wishlist_added": "wishlist_item_added", "wishlist_removed": "wishlist_item_removed"}
MAX_TEXT = {"event_id": 100, "user_id": 150, "action_type": 100, "product_id": 100, "ip_address": 45}


class Unusable(ValueError):
    """The envelope lacks what the log needs (an id, a brand, a time); it is dead-lettered."""


class LogRow(NamedTuple):
    """A row of the action log, its fields in `store.LOG_COLUMNS` order (COPY takes it as it is)."""

    event_id: str
    occurred_at: datetime
    brand_id: int
    user_id: str | None
    anonymous_id: str | None
    event_type: str
    action_type: str
    engine_event: bool
    action_data: str  # JSON text
    product_id: str | None
    points_awarded: int
    ip_address: str | None
    user_agent: str | None
    received_at: datetime | None


@dataclass(frozen=True, slots=True)
class WishlistAdded:
    user_id: str
    wishlist_item_id: str
    product_ref: str | None
    points_needed: int | None
    referrals_needed: int | None


@dataclass(frozen=True, slots=True)
class WishlistRemoved:
    user_id: str
    wishlist_item_id: str | None
    product_ref: str | None


@dataclass(frozen=True, slots=True)
class ReferralInitiated:
    referrer_user_id: str
    code: str | None
    email: str | None


@dataclass(frozen=True, slots=True)
class ReferralConverted:
    referee_user_id: str
    referrer_user_id: str | None
    code: str | None
    email: str | None
    points_awarded_to_referrer: int


@dataclass(frozen=True, slots=True)
class BalanceSeen:
    """The user's points balance (and completed referrals) as their snapshot showed it at event time."""

    user_id: str
    points_balance: int
    referrals_completed: int | None


ReadModelChange = WishlistAdded | WishlistRemoved | ReferralInitiated | ReferralConverted | BalanceSeen


@dataclass(frozen=True, slots=True)
class Processed:
    row: LogRow
    changes: tuple[ReadModelChange, ...] = field(default=())


def parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise Unusable("timestamp missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Unusable(f"timestamp {value[:40]!r} is not ISO 8601") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _text(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).replace("\x00", "\\u0000")
    return text[:limit]


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def json_text(data: dict[str, Any]) -> str:
    """JSON for a jsonb column, which cannot hold U+0000: a NUL is kept visible as the text `\\u0000`."""
    text = orjson.dumps(data).decode()
    return orjson.dumps(_without_nul(data)).decode() if "\\u0000" in text else text


def action_type_of(envelope: dict[str, Any]) -> str:
    """A track event's name (aliases resolved); identify/page/screen by their name, else their type."""
    name = envelope.get("name")
    kind = str(envelope.get("type") or "track")
    if not name:
        return kind
    name = ALIASES.get(str(name), str(name))
    return name[: MAX_TEXT["action_type"]]


def product_of(data: dict[str, Any]) -> str | None:
    product = _dict(data.get("product_snapshot"))
    identity = _dict(product.get("identity"))
    for candidate in (identity.get("product_id"), identity.get("sku"), data.get("product_id")):
        if candidate not in (None, ""):
            return _text(candidate, MAX_TEXT["product_id"])
    return None


def points_of(name: str, data: dict[str, Any]) -> int:
    """Points the event awarded: loyalty events' `points`, seed 000's scan and referral figures."""
    for candidate in (
        data.get("points"),
        data.get("points_awarded"),
        _dict(data.get("scan_data")).get("points_awarded"),
        _dict(data.get("referral_data")).get("points_awarded_to_referrer")
        if name == "referral_converted"
        else None,
    ):
        value = _int(candidate)
        if value is not None:
            return max(min(value, 2**31 - 1), -(2**31))
    return 0


def referrer_of(user_id: str, referral: dict[str, Any]) -> str | None:
    """The referrer's external id, as achievements resolves it: seed 000 sends numeric ids (referrer
    123, referred 456) while the event's own id is "user-456", so the referrer is "user-123"."""
    referrer = referral.get("referrer_user_id", referral.get("referring_user_id"))
    if referrer is None or referrer == "":
        return None
    if isinstance(referrer, str):
        return referrer
    referred = referral.get("referred_user_id")
    if referred is not None and user_id != str(referred) and user_id.endswith(str(referred)):
        return user_id[: -len(str(referred))] + str(referrer)
    return str(referrer)


def read_model_changes(name: str, user_id: str | None, data: dict[str, Any]) -> tuple[ReadModelChange, ...]:
    if user_id is None:
        return ()
    changes: list[ReadModelChange] = []
    if name == "wishlist_item_added":
        wishlist = _dict(data.get("wishlist_data"))
        product = product_of(data)
        item = _text(wishlist.get("wishlist_item_id"), 100) or product
        if item is not None:
            changes.append(
                WishlistAdded(
                    user_id,
                    item,
                    product,
                    _int(wishlist.get("points_needed")),
                    _int(wishlist.get("referrals_needed")),
                )
            )
    elif name == "wishlist_item_removed":
        wishlist = _dict(data.get("wishlist_data"))
        item, product = _text(wishlist.get("wishlist_item_id"), 100), product_of(data)
        if item is not None or product is not None:
            changes.append(WishlistRemoved(user_id, item, product))
    elif name == "referral_initiated":
        referral = _dict(data.get("referral_data"))
        changes.append(
            ReferralInitiated(
                user_id, _text(referral.get("referral_code"), 50), _text(referral.get("referral_email"), 255)
            )
        )
    elif name == "referral_converted":
        referral = _dict(data.get("referral_data"))
        changes.append(
            ReferralConverted(
                user_id,
                referrer_of(user_id, referral),
                _text(referral.get("referral_code_used"), 50),
                _text(referral.get("referred_user_email") or referral.get("email"), 255),
                _int(referral.get("points_awarded_to_referrer")) or 0,
            )
        )
    economy = _dict(_dict(data.get("user_snapshot")).get("economy"))
    balance = _int(economy.get("points_balance"))
    if balance is not None:
        referrals = _int(
            _dict(_dict(data.get("user_snapshot")).get("referral_data")).get("total_referrals_completed")
        )
        changes.append(BalanceSeen(user_id, balance, referrals))
    return tuple(changes)


def process_message(envelope: Any) -> Processed:
    """The envelope as a log row plus its read-model changes; raises Unusable when it cannot be logged."""
    if not isinstance(envelope, dict):
        raise Unusable("the message is not a JSON object")
    event_id = _text(envelope.get("event_id"), MAX_TEXT["event_id"])
    if event_id is None:
        raise Unusable("event_id missing")
    brand = envelope.get("brand_id")
    brand_id = _int(brand) if not isinstance(brand, str) or brand.strip().isdigit() else None
    if brand_id is None or brand_id <= 0 or brand_id >= 2**63:
        raise Unusable(f"brand_id {str(brand)[:40]!r} is not a brand id")
    occurred_at = parse_time(envelope.get("timestamp"))
    received = envelope.get("received_at")
    received_at = parse_time(received) if isinstance(received, str) and received else None
    identifiers = _dict(envelope.get("identifiers"))
    user_id = _text(identifiers.get("id"), MAX_TEXT["user_id"])
    anonymous_id = _text(identifiers.get("anonymous_id"), MAX_TEXT["user_id"])
    data = _dict(envelope.get("data"))
    name = action_type_of(envelope)
    context = _dict(data.get("event_context"))
    source = str(envelope.get("source") or "")
    row = LogRow(
        event_id=event_id,
        occurred_at=occurred_at,
        brand_id=brand_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        event_type=str(envelope.get("type") or "track")[:16],
        action_type=name,
        engine_event=name in ENGINE_EVENTS or source in ENGINE_SOURCES,
        action_data=json_text(data),
        product_id=product_of(data),
        points_awarded=points_of(name, data),
        ip_address=_text(_dict(context.get("location")).get("ip_address"), MAX_TEXT["ip_address"]),
        user_agent=_text(_dict(context.get("device")).get("user_agent"), 1000),
        received_at=received_at,
    )
    return Processed(row, read_model_changes(name, user_id, data))
