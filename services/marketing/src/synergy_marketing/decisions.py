"""What happens when a deadline is due: the re-check of the trigger's conditions, seed 004's
trigger_data, the suppression decision (in DESIGN.md's order), the template and the discount, and the
message published to synergy.marketing.v1. Pure: no Kafka, HTTP or SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from synergy_schemas.envelope import Envelope, Identifiers, derive_event_id

from synergy_marketing.state import (
    BACK_IN_STOCK,
    BROWSE_ABANDONED,
    CART_ABANDONED,
    PRICE_DROPPED,
    Person,
    Timer,
    Watch,
    WindowConfig,
    browse_candidates,
    most_viewed,
    window_timers,
)

SOURCE = "marketing"
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"

# Seed 004's MarketingQueue.trigger_type for each trigger event.
TRIGGER_TYPES = {
    CART_ABANDONED: "abandoned_cart",
    BROWSE_ABANDONED: "browse_abandonment",
    PRICE_DROPPED: "price_drop",
    BACK_IN_STOCK: "back_in_stock",
}
# EmailPreferences' own switch of each trigger.
PREFERENCE_SWITCHES = {
    CART_ABANDONED: "abandoned_cart_emails",
    BROWSE_ABANDONED: "browse_abandonment_emails",
    PRICE_DROPPED: "price_drop_alerts",
    BACK_IN_STOCK: "back_in_stock_alerts",
}
DEFAULT_TEMPLATES = {
    CART_ABANDONED: "abandoned_cart_v1",
    BROWSE_ABANDONED: "browse_abandonment_v1",
    PRICE_DROPPED: "price_drop_v1",
    BACK_IN_STOCK: "back_in_stock_v1",
}
DEFAULT_DISCOUNTS: dict[str, tuple[str, int] | None] = {
    CART_ABANDONED: ("CART10", 10),
    BROWSE_ABANDONED: ("BROWSE5", 5),
    PRICE_DROPPED: None,
    BACK_IN_STOCK: None,
}
# The suppression reasons, in the order they are checked.
REASONS = ("preferences", "unsubscribed", "frequency_cap", "smart_sending", "stale")


@dataclass(frozen=True)
class SuppressionConfig:
    frequency_cap: timedelta = timedelta(days=7)
    smart_sending: timedelta = timedelta(hours=16)
    stale_after: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class Preferences:
    """Seed 004's EmailPreferences; a user without a row has these defaults."""

    email: str | None = None
    marketing_emails: bool = True
    abandoned_cart_emails: bool = True
    browse_abandonment_emails: bool = True
    price_drop_alerts: bool = True
    back_in_stock_alerts: bool = True
    unsubscribed: bool = False


@dataclass
class History:
    """When the user was last sent a message, per trigger and of any kind."""

    last_sent: dict[str, datetime] = field(default_factory=dict)
    last_sent_any: datetime | None = None

    def record(self, trigger: str, at: datetime) -> None:
        self.last_sent[trigger] = max(at, self.last_sent.get(trigger, at))
        self.last_sent_any = at if self.last_sent_any is None else max(at, self.last_sent_any)


@dataclass(frozen=True)
class BrandMarketing:
    """A brand's marketing settings (brands.settings -> "marketing"): discounts and templates."""

    discounts: Mapping[str, tuple[str, int] | None] = field(default_factory=lambda: dict(DEFAULT_DISCOUNTS))
    templates: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> BrandMarketing:
        """{"marketing": {"discounts": {"cart_abandoned": {"code": "CART15", "amount": 15} | null},
        "templates": {"cart_abandoned": "abandoned_cart_v2"}}}; anything missing keeps its default."""
        marketing = (settings or {}).get("marketing") or {}
        discounts: dict[str, tuple[str, int] | None] = dict(DEFAULT_DISCOUNTS)
        for trigger, value in (marketing.get("discounts") or {}).items():
            if trigger not in DEFAULT_DISCOUNTS:
                continue
            if value is None:
                discounts[trigger] = None
            elif isinstance(value, Mapping) and isinstance(value.get("code"), str):
                amount = value.get("amount")
                if isinstance(amount, int) and not isinstance(amount, bool) and 0 <= amount <= 100:
                    discounts[trigger] = (value["code"], amount)
        templates = dict(DEFAULT_TEMPLATES)
        for trigger, value in (marketing.get("templates") or {}).items():
            if trigger in DEFAULT_TEMPLATES and isinstance(value, str) and value:
                templates[trigger] = value
        return cls(discounts=discounts, templates=templates)


@dataclass(frozen=True)
class Links:
    unsubscribe_url: str
    preferences_url: str
    list_unsubscribe: str


@dataclass(frozen=True)
class Candidate:
    """A due timer whose conditions still hold, with its trigger_data (seed 004's shape)."""

    timer: Timer
    trigger_data: dict[str, Any]
    subject_name: str | None


@dataclass(frozen=True)
class Decision:
    """One queue item: sent (with its message) or suppressed with a reason."""

    queue_id: str
    event_id: str
    brand_id: str
    user_id: str
    trigger: str
    trigger_type: str
    due_at: datetime
    reason: str | None
    trigger_data: dict[str, Any]
    message_data: dict[str, Any]
    discount_code: str | None
    discount_amount: int | None
    email_subject: str
    email_template: str
    user_email: str | None

    @property
    def sent(self) -> bool:
        return self.reason is None


# --- the re-check at the deadline ----------------------------------------------------------------


def recheck(
    timer: Timer, person: Person | None, watch: Watch | None, config: WindowConfig
) -> Candidate | None:
    """The timer's trigger as it stands at its deadline, or None when it exited meanwhile (the cart
    changed or was emptied, an order came, the product went to the cart, the watch was removed)."""
    if timer.trigger in (CART_ABANDONED, BROWSE_ABANDONED):
        if person is None:
            return None
        current = [t for t in window_timers(person, config) if t.trigger == timer.trigger]
        if not current or current[0].due_at != timer.due_at:
            return None
        if timer.trigger == CART_ABANDONED:
            return _cart_candidate(timer, person)
        return _browse_candidate(timer, person, config)
    if watch is None:
        return None
    if timer.trigger == PRICE_DROPPED and not watch.notify_on_price_drop:
        return None
    if timer.trigger == BACK_IN_STOCK and not watch.notify_on_restock:
        return None
    return _watch_candidate(timer, watch)


def _cart_candidate(timer: Timer, person: Person) -> Candidate:
    cart = person.cart
    items = [
        _without_none(
            {
                "product_id": item.product_id,
                "product_name": item.product_name,
                "sku": item.sku,
                "product_category": item.product_category,
                "quantity": item.quantity,
                "price": item.price,
                "image_url": item.image_url,
            }
        )
        for item in sorted(cart.items.values(), key=lambda i: (i.added_at, i.product_id))
    ]
    priced = [item for item in cart.items.values() if item.price is not None]
    total = sum((item.price * item.quantity for item in priced if item.price is not None), Decimal(0))
    assert cart.last_changed_at is not None
    data: dict[str, Any] = {
        "cart_items": items,
        "cart_total": total if priced else None,
        "cart_abandoned_at": cart.last_changed_at,
    }
    if cart.currency:
        data["currency"] = cart.currency
    if cart.cart_id:
        data["cart_id"] = cart.cart_id
    return Candidate(timer, _without_none(data), None)


def _browse_candidate(timer: Timer, person: Person, config: WindowConfig) -> Candidate:
    view = most_viewed(browse_candidates(person, config))
    assert view is not None
    product = _without_none(
        {
            "product_id": view.product_id,
            "product_name": view.product_name,
            "product_category": view.product_category,
            "product_price": view.product_price,
            "image_url": view.image_url,
            "view_count": view.browse_views,
            "last_viewed_at": view.last_viewed_at,
        }
    )
    return Candidate(
        timer, {"product": product, "browse_started_at": view.browse_started_at}, view.product_name
    )


def _watch_candidate(timer: Timer, watch: Watch) -> Candidate:
    details = timer.details
    name = details.get("product_name") or watch.product_name
    product = _without_none(
        {
            "product_id": watch.product_id,
            "product_name": name,
            "product_category": watch.product_category,
            "product_price": details.get("new_price")
            if timer.trigger == PRICE_DROPPED
            else watch.current_price,
            "image_url": watch.image_url,
        }
    )
    if timer.trigger == PRICE_DROPPED:
        data = {
            "product": product,
            "old_price": details["old_price"],
            "new_price": details["new_price"],
            "savings": details["savings"],
            "target_price": details.get("target_price"),
            "currency": details.get("currency"),
        }
    else:
        data = {
            "product": product,
            "quantity": details.get("quantity"),
            "restocked_at": details.get("restocked_at"),
            "currency": watch.currency,
        }
    return Candidate(timer, _without_none(data), name)


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


# --- suppression --------------------------------------------------------------------------------


def suppression_reason(
    trigger: str,
    preferences: Preferences,
    history: History,
    due_at: datetime,
    now: datetime,
    config: SuppressionConfig,
) -> str | None:
    """Why this message must not be sent, checked in DESIGN.md's order, or None to send it."""
    if not preferences.marketing_emails or not getattr(preferences, PREFERENCE_SWITCHES[trigger]):
        return "preferences"
    if preferences.unsubscribed:
        return "unsubscribed"
    last_of_type = history.last_sent.get(trigger)
    if last_of_type is not None and now - last_of_type < config.frequency_cap:
        return "frequency_cap"
    if history.last_sent_any is not None and now - history.last_sent_any < config.smart_sending:
        return "smart_sending"
    if now - due_at > config.stale_after:
        return "stale"
    return None


# --- ids, subjects, messages --------------------------------------------------------------------


def queue_id_for(timer: Timer) -> str:
    """Seed 004's `queue_YYYYMMDD_<hex>`, the same every time for the same deadline."""
    identity = "\x00".join((*timer.identity, timer.due_at.isoformat()))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return f"queue_{timer.due_at:%Y%m%d}_{digest}"


def email_subject(trigger: str, product_name: str | None) -> str:
    name = product_name or "an item you liked"
    if trigger == CART_ABANDONED:
        return "You left items in your cart! \U0001f6d2"
    if trigger == BROWSE_ABANDONED:
        return f"Still interested in {name}? \U0001f914"
    if trigger == PRICE_DROPPED:
        return f"\U0001f389 Price Drop Alert: {name}"
    return f"Back in stock: {name}"


def decide(
    candidates: Iterable[Candidate],
    preferences: Mapping[tuple[str, str], Preferences],
    histories: Mapping[tuple[str, str], History],
    brands: Mapping[str, BrandMarketing],
    links: Callable[[str, str], Links],
    now: datetime,
    config: SuppressionConfig,
) -> list[Decision]:
    """Decides each candidate in deadline order; a message sent earlier in the same call counts for
    the frequency cap and Smart Sending of the later ones. The histories passed in are not changed."""
    working: dict[tuple[str, str], History] = {}
    decisions: list[Decision] = []
    for candidate in sorted(candidates, key=lambda c: (c.timer.due_at, c.timer.identity)):
        timer = candidate.timer
        user = (timer.brand_id, timer.person)
        history = working.get(user)
        if history is None:
            given = histories.get(user) or History()
            history = working[user] = History(dict(given.last_sent), given.last_sent_any)
        prefs = preferences.get(user) or Preferences()
        reason = suppression_reason(timer.trigger, prefs, history, timer.due_at, now, config)
        if reason is None:
            history.record(timer.trigger, now)
        decisions.append(
            _decision(candidate, reason, prefs, brands.get(timer.brand_id) or BrandMarketing(), links)
        )
    return decisions


def _decision(
    candidate: Candidate,
    reason: str | None,
    prefs: Preferences,
    brand: BrandMarketing,
    links: Callable[[str, str], Links],
) -> Decision:
    timer = candidate.timer
    queue_id = queue_id_for(timer)
    discount = brand.discounts.get(timer.trigger)
    template = brand.templates.get(timer.trigger) or DEFAULT_TEMPLATES[timer.trigger]
    subject = email_subject(timer.trigger, candidate.subject_name)
    message: dict[str, Any] = dict(candidate.trigger_data)
    if discount is not None:
        message["discount_code"], message["discount_amount"] = discount
    message.update(
        queue_id=queue_id,
        trigger_type=TRIGGER_TYPES[timer.trigger],
        email_template=template,
        email_subject=subject,
    )
    if reason is None:
        link = links(timer.brand_id, timer.person)
        message.update(
            unsubscribe_url=link.unsubscribe_url,
            preferences_url=link.preferences_url,
            list_unsubscribe=link.list_unsubscribe,
            list_unsubscribe_post=LIST_UNSUBSCRIBE_POST,
        )
    return Decision(
        queue_id=queue_id,
        event_id=derive_event_id(timer.brand_id, queue_id),
        brand_id=timer.brand_id,
        user_id=timer.person,
        trigger=timer.trigger,
        trigger_type=TRIGGER_TYPES[timer.trigger],
        due_at=timer.due_at,
        reason=reason,
        trigger_data=candidate.trigger_data,
        message_data=message,
        discount_code=discount[0] if discount else None,
        discount_amount=discount[1] if discount else None,
        email_subject=subject,
        email_template=template,
        user_email=prefs.email,
    )


def trigger_envelope(decision: Decision, now: datetime) -> Envelope:
    """The synergy.marketing.v1 message of a sent decision: keyed brand:user, named for the trigger,
    its event time the deadline."""
    return Envelope(
        event_id=decision.event_id,
        type="track",
        name=decision.trigger,
        brand_id=decision.brand_id,
        identifiers=Identifiers(id=decision.user_id),
        data=decision.message_data,
        timestamp=decision.due_at,
        received_at=now,
        source=SOURCE,
        correlation_id=decision.queue_id,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def jsonable(value: Any) -> Any:
    """Decimals and datetimes as JSON numbers and ISO strings (Z), for Postgres jsonb columns."""
    return orjson.loads(orjson.dumps(value, default=_json_default, option=orjson.OPT_UTC_Z))
