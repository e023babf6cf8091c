"""Seed 004's EmailPreferences: the fields, their defaults, and how a change is applied. Pure: no I/O.

Every opt-in defaults to true and `unsubscribed` to false, so a user without a stored row gets mail
until they say otherwise. A change names only the fields it changes; `unsubscribed_at` follows
`unsubscribed` (set when it turns true, cleared on a resubscribe).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

# The opt-ins, in seed 004's order. `marketing_emails` is the master switch.
OPT_INS: tuple[str, ...] = (
    "marketing_emails",
    "abandoned_cart_emails",
    "browse_abandonment_emails",
    "price_drop_alerts",
    "back_in_stock_alerts",
    "product_recommendations",
    "newsletter",
    "promotional_emails",
)
FLAGS: tuple[str, ...] = (*OPT_INS, "unsubscribed")
DEFAULTS: dict[str, bool] = {**dict.fromkeys(OPT_INS, True), "unsubscribed": False}

# The preference centre's topic checkboxes with their labels: seed 004's five, then the two other opt-ins
# of its EmailPreferences table. The master switch and unsubscribe-from-all are shown apart.
TOPIC_CHECKBOXES: tuple[tuple[str, str], ...] = (
    ("abandoned_cart_emails", "Abandoned cart reminders"),
    ("price_drop_alerts", "Price drop alerts"),
    ("back_in_stock_alerts", "Back in stock notifications"),
    ("product_recommendations", "Product recommendations"),
    ("newsletter", "Newsletter"),
    ("browse_abandonment_emails", "Reminders about products you looked at"),
    ("promotional_emails", "Promotions and special offers"),
)
MASTER_SWITCH = ("marketing_emails", "Send me marketing email")
UNSUBSCRIBE_ALL = ("unsubscribed", "Unsubscribe from all marketing email")

# Where a change came from: the brand's API, the preference centre, the one-click link, or Customer.io.
ChangeSource = Literal["api", "preference_centre", "one_click", "customer_io"]


@dataclass(frozen=True)
class EmailPreferences:
    flags: Mapping[str, bool] = field(default_factory=lambda: dict(DEFAULTS))
    email: str | None = None
    unsubscribed_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def flag(self, name: str) -> bool:
        return bool(self.flags.get(name, DEFAULTS[name]))

    @property
    def unsubscribed(self) -> bool:
        return self.flag("unsubscribed")


@dataclass(frozen=True)
class AppliedChange:
    before: EmailPreferences
    after: EmailPreferences
    # field -> (old, new), only for the fields whose value changed
    changed: dict[str, tuple[Any, Any]]

    @property
    def any(self) -> bool:
        return bool(self.changed)


def apply_change(current: EmailPreferences | None, change: Mapping[str, Any], now: datetime) -> AppliedChange:
    """The preferences after `change` (a partial set of FLAGS and `email`), and what actually changed.

    A change equal to what is stored changes nothing, not even `updated_at`.
    """
    before = current or EmailPreferences()
    unknown = set(change) - set(FLAGS) - {"email"}
    if unknown:
        raise ValueError(f"unknown email preference fields: {sorted(unknown)}")
    flags = {name: before.flag(name) for name in FLAGS}
    changed: dict[str, tuple[Any, Any]] = {}
    for name in FLAGS:
        if name in change and bool(change[name]) != flags[name]:
            changed[name] = (flags[name], bool(change[name]))
            flags[name] = bool(change[name])
    email = before.email
    if "email" in change and change["email"] is not None and change["email"] != before.email:
        changed["email"] = (before.email, change["email"])
        email = change["email"]
    if not changed:
        return AppliedChange(before, before, {})
    unsubscribed_at = before.unsubscribed_at
    if "unsubscribed" in changed:
        unsubscribed_at = now if flags["unsubscribed"] else None
        changed["unsubscribed_at"] = (before.unsubscribed_at, unsubscribed_at)
    after = replace(
        before,
        flags=flags,
        email=email,
        unsubscribed_at=unsubscribed_at,
        created_at=before.created_at or now,
        updated_at=now,
    )
    return AppliedChange(before, after, changed)


def change_from_form(checked: Iterable[str]) -> dict[str, bool]:
    """The preference centre's form as a full change: a box that was not sent is unticked."""
    names = set(checked)
    boxes = [MASTER_SWITCH[0], *(name for name, _ in TOPIC_CHECKBOXES), UNSUBSCRIBE_ALL[0]]
    return {name: name in names for name in boxes}


def customer_io_attributes(preferences: EmailPreferences) -> dict[str, Any]:
    """The person attributes Customer.io keeps for these preferences. `unsubscribed` is Customer.io's own
    attribute: true stops every campaign and newsletter to the person there too."""
    attributes: dict[str, Any] = {name: preferences.flag(name) for name in FLAGS}
    attributes["unsubscribed_at"] = (
        preferences.unsubscribed_at.isoformat() if preferences.unsubscribed_at else None
    )
    return attributes


def as_api_body(preferences: EmailPreferences, user_id: str) -> dict[str, Any]:
    """Seed 004's EmailPreferences shape (the links are added by the caller)."""
    body: dict[str, Any] = {"user_id": user_id, "email": preferences.email}
    body.update({name: preferences.flag(name) for name in FLAGS})
    for name in ("unsubscribed_at", "created_at", "updated_at"):
        value: datetime | None = getattr(preferences, name)
        body[name] = value.isoformat().replace("+00:00", "Z") if value else None
    return body


@dataclass(frozen=True)
class SubscriptionChange:
    """Customer.io reported that a person unsubscribed (or subscribed again)."""

    brand_id: int
    user_id: str
    unsubscribed: bool
    occurred_at: datetime


def subscription_change_from_insight(envelope: Mapping[str, Any]) -> SubscriptionChange | None:
    """A synergy.insights.v1 envelope as a subscription change, or None when it is not one.

    Insights names reporting webhooks `<object_type>_<metric>` and keeps both in `data`: a `customer`
    or `email` `unsubscribed` unsubscribes; a `customer` `subscribed` resubscribes. People Customer.io
    knows only by email or cio_id (anonymous here) cannot be matched to a user and are left out.
    """
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        return None
    object_type, metric = data.get("object_type"), data.get("metric")
    if metric == "unsubscribed" and object_type in ("customer", "email"):
        unsubscribed = True
    elif metric == "subscribed" and object_type == "customer":
        unsubscribed = False
    else:
        return None
    identifiers = envelope.get("identifiers")
    user_id = identifiers.get("id") if isinstance(identifiers, Mapping) else None
    brand_id = str(envelope.get("brand_id", ""))
    if not isinstance(user_id, str) or not user_id or len(user_id) > 150 or not brand_id.isdigit():
        return None
    timestamp = envelope.get("timestamp")
    if not isinstance(timestamp, str):
        return None
    try:
        occurred_at = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if occurred_at.tzinfo is None:
        return None
    return SubscriptionChange(int(brand_id), user_id, unsubscribed, occurred_at)
