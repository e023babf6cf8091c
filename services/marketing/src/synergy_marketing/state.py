"""What the events mean for marketing: the pure state of views, carts and watches, and the windows'
deadlines derived from it. No Kafka, HTTP or SQL here; `store.py` loads and saves these objects.

Everything runs on event time (the events' `timestamp`). A person is `identifiers.id`, or
`anon:<anonymous_id>` until an identify joins it to a user.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, NamedTuple, TypeGuard

ANONYMOUS_PREFIX = "anon:"
CART_ABANDONED = "cart_abandoned"
BROWSE_ABANDONED = "browse_abandoned"
PRICE_DROPPED = "price_dropped"
BACK_IN_STOCK = "back_in_stock"
TRIGGERS = (CART_ABANDONED, BROWSE_ABANDONED, PRICE_DROPPED, BACK_IN_STOCK)
WINDOW_TRIGGERS = (CART_ABANDONED, BROWSE_ABANDONED)

PERSON_EVENTS = frozenset(
    {
        "product_viewed",
        "cart_item_added",
        "cart_item_removed",
        "order_completed",
        "watchlist_item_added",
        "watchlist_item_removed",
    }
)
CATALOG_EVENTS = frozenset({"product_price_changed", "product_stock_changed"})


class InvalidEvent(ValueError):
    """The event cannot mean anything to marketing (a missing id, a wrong type): dead-lettered."""


@dataclass(frozen=True)
class WindowConfig:
    cart_abandon_after: timedelta = timedelta(hours=24)
    browse_abandon_after: timedelta = timedelta(hours=48)
    browse_min_views: int = 3


class Event(NamedTuple):
    """The part of an envelope marketing reads (a named tuple: immutable, and made once per event, so
    cheaply: a frozen dataclass's __init__ costs a microsecond more per event)."""

    event_id: str
    brand_id: str
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    data: Mapping[str, Any]

    @property
    def person(self) -> str:
        return person_of(self.user_id, self.anonymous_id)


def person_of(user_id: str | None, anonymous_id: str | None) -> str:
    if user_id:
        return user_id
    if anonymous_id:
        return ANONYMOUS_PREFIX + anonymous_id
    raise InvalidEvent("identifiers has neither id nor anonymous_id")


def is_identified(person: str) -> bool:
    return not person.startswith(ANONYMOUS_PREFIX)


# --- state -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ProductView:
    """Seed 004's ProductViews row, one per (person, product), with the current browse cycle: the
    views since the product was last added to the cart or an order was placed."""

    product_id: str
    first_viewed_at: datetime
    last_viewed_at: datetime
    product_name: str | None = None
    product_price: Decimal | None = None
    product_category: str | None = None
    image_url: str | None = None
    view_id: str | None = None
    session_id: str | None = None
    view_duration: int = 0
    referrer: str | None = None
    device_type: str | None = None
    browser: str | None = None
    view_count: int = 0
    browse_views: int = 0
    browse_started_at: datetime | None = None
    browse_exited_at: datetime | None = None
    added_to_cart: bool = False
    added_to_cart_at: datetime | None = None
    purchased: bool = False
    purchased_at: datetime | None = None


@dataclass(slots=True)
class CartItem:
    product_id: str
    quantity: int
    added_at: datetime
    product_name: str | None = None
    sku: str | None = None
    product_category: str | None = None
    price: Decimal | None = None
    image_url: str | None = None


@dataclass(slots=True)
class Cart:
    items: dict[str, CartItem] = field(default_factory=dict)
    cart_id: str | None = None
    currency: str | None = None
    last_changed_at: datetime | None = None
    last_order_at: datetime | None = None


@dataclass(slots=True)
class Person:
    brand_id: str
    person: str
    views: dict[str, ProductView] = field(default_factory=dict)
    cart: Cart = field(default_factory=Cart)


@dataclass(slots=True)
class Watch:
    """Seed 004's WatchList row."""

    person: str
    product_id: str
    watched_at: datetime
    product_name: str | None = None
    product_category: str | None = None
    image_url: str | None = None
    current_price: Decimal | None = None
    original_price: Decimal | None = None
    target_price: Decimal | None = None
    currency: str | None = None
    in_stock: bool | None = None
    notify_on_price_drop: bool = True
    notify_on_restock: bool = True
    notified_price_drop: bool = False
    notified_restock: bool = False


@dataclass(slots=True)
class Product:
    """The last catalog facts seen for a product of the brand."""

    product_id: str
    changed_at: datetime
    product_name: str | None = None
    price: Decimal | None = None
    in_stock: bool | None = None


@dataclass(frozen=True, slots=True)
class Timer:
    """A deadline: at `due_at` the trigger is re-checked and decided. Unique per (brand, person,
    trigger, subject); `details` carries what a catalog event said (prices, the product)."""

    brand_id: str
    person: str
    trigger: str
    subject: str
    due_at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return (self.brand_id, self.person, self.trigger, self.subject)


@dataclass(frozen=True, slots=True)
class Order:
    """An order_completed, for conversion attribution."""

    brand_id: str
    user_id: str
    order_id: str
    ordered_at: datetime
    total: Decimal | None
    ref: str | None


@dataclass
class BatchState:
    """The state one batch of events reads and changes, keyed by brand."""

    persons: dict[tuple[str, str], Person] = field(default_factory=dict)
    watches: dict[tuple[str, str, str], Watch | None] = field(default_factory=dict)
    products: dict[tuple[str, str], Product] = field(default_factory=dict)
    # (brand, anonymous_id) -> user_id
    identities: dict[tuple[str, str], str] = field(default_factory=dict)
    new_identities: dict[tuple[str, str], tuple[str, datetime]] = field(default_factory=dict)
    # persons merged into a user by an identify: their rows are deleted
    merged_away: set[tuple[str, str]] = field(default_factory=set)
    touched: set[tuple[str, str]] = field(default_factory=set)
    changed_watches: set[tuple[str, str, str]] = field(default_factory=set)
    changed_products: set[tuple[str, str]] = field(default_factory=set)
    catalog_timers: list[Timer] = field(default_factory=list)
    # (brand, person, product) whose pending watch timers are dropped (the watch was removed)
    dropped_watch_timers: set[tuple[str, str, str]] = field(default_factory=set)
    orders: list[Order] = field(default_factory=list)
    # The touched persons' cart and browse timers as stored: identity -> (timer_id, due_at).
    window_timers: dict[tuple[str, str, str, str], tuple[int, datetime]] = field(default_factory=dict)
    # Persons the batch's load read and found without a view, without a cart: the save has none of their
    # rows to delete (a person not among them may have some).
    stored_no_views: set[tuple[str, str]] = field(default_factory=set)
    stored_no_cart: set[tuple[str, str]] = field(default_factory=set)

    def person(self, brand_id: str, person: str) -> Person:
        key = (brand_id, person)
        found = self.persons.get(key)
        if found is None:
            found = self.persons[key] = Person(brand_id, person)
        return found

    def resolve(self, event: Event) -> str:
        """The event's person, through an earlier identify when it names only an anonymous id."""
        if event.user_id:
            return event.user_id
        assert event.anonymous_id is not None
        linked = self.identities.get((event.brand_id, event.anonymous_id))
        return linked if linked else ANONYMOUS_PREFIX + event.anonymous_id


# --- reading event data ----------------------------------------------------------------------------

# The named tuples of the hot path (Event, Viewed, LineItem, CartAdded) are made with tuple.__new__ on their
# fields in order: a named tuple's generated __new__ is a Python call with one argument per field, ~0.4 us
# more per tuple (three tuples an event). The fields are then not checked by name: their order is the class's.
new_tuple = tuple.__new__


@functools.lru_cache(maxsize=4096)
def _decimal_of_positive_float(value: float) -> Decimal:
    """A catalog's prices repeat from event to event: each one's Decimal is made once (a Decimal is
    immutable, so one can be shared)."""
    return Decimal(str(value))


def money(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    kind = type(value)
    if kind is float:
        if 0 < value < math.inf:
            return _decimal_of_positive_float(value)
        if value == 0:
            return Decimal(str(value))
    if kind is int and value >= 0:
        return Decimal(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise InvalidEvent(f"{name} must be a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidEvent(f"{name} must be a number") from exc
    if not amount.is_finite() or amount < 0:
        raise InvalidEvent(f"{name} must be a non-negative number")
    return amount


def text(data: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = data.get(name)
    if type(value) is str and value:  # the common case first: this runs for every field of every event
        return value
    if value is None or value == "":
        if required:
            raise InvalidEvent(f"data.{name} is required")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidEvent(f"data.{name} must be a string")
    return value


def _optional_text(data: Mapping[str, Any], name: str) -> str | None:
    """text(data, name), with the common cases (a non-empty string, absent) answered inline."""
    value = data.get(name)
    if value is None:
        return None
    if type(value) is str and value:
        return value
    return text(data, name)


def flag(data: Mapping[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidEvent(f"data.{name} must be true or false")
    return value


def count(data: Mapping[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"data.{name} must be a non-negative integer")
    return value


_NO_SNAPSHOT: Mapping[str, Any] = MappingProxyType({})


def _snapshot(data: Mapping[str, Any]) -> Mapping[str, Any]:
    snapshot = data.get("product_snapshot")
    if snapshot is None:
        return _NO_SNAPSHOT
    return snapshot if isinstance(snapshot, Mapping) else _NO_SNAPSHOT


def _product_name(data: Mapping[str, Any]) -> str | None:
    return _optional_text(data, "product_name") or _optional_str(_snapshot(data).get("name"))


def _category(data: Mapping[str, Any]) -> str | None:
    return _optional_text(data, "product_category") or _optional_str(_snapshot(data).get("category"))


def _image(data: Mapping[str, Any]) -> str | None:
    return _optional_text(data, "image_url") or _optional_str(_snapshot(data).get("image_url"))


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def _earlier(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


# --- reading an event's data once --------------------------------------------------------------------
#
# parse_change() reads and checks an event's data (InvalidEvent for what it cannot use) into a small
# immutable record; apply_event() applies that record to the batch's state. The consumer parses in its
# prepare step, where a bad event is dead-lettered before any batch depends on it, and the batch applies
# what was parsed: the data is read once per event.


class LineItem(NamedTuple):
    product_id: str
    quantity: int
    product_name: str | None
    sku: str | None
    product_category: str | None
    price: Decimal | None
    image_url: str | None

    def cart_item(self, at: datetime) -> CartItem:
        return CartItem(
            self.product_id,
            self.quantity,
            at,
            self.product_name,
            self.sku,
            self.product_category,
            self.price,
            self.image_url,
        )


class CartChange(NamedTuple):
    """What every cart event says about the cart as a whole (cart_items replaces its lines)."""

    cart_id: str | None
    currency: str | None
    cart_items: tuple[LineItem, ...] | None


class Viewed(NamedTuple):
    product_id: str
    view_duration: int
    price: Decimal | None
    product_name: str | None
    product_category: str | None
    image_url: str | None
    view_id: str | None
    session_id: str | None
    referrer: str | None
    device_type: str | None
    browser: str | None


class CartAdded(NamedTuple):
    item: LineItem
    cart: CartChange


class CartRemoved(NamedTuple):
    product_id: str
    quantity: int
    cart: CartChange


class Ordered(NamedTuple):
    order_id: str
    total: Decimal | None
    bought: frozenset[str]


class WatchAdded(NamedTuple):
    product_id: str
    current_price: Decimal | None
    in_stock: bool | None
    product_name: str | None
    product_category: str | None
    image_url: str | None
    original_price: Decimal | None
    target_price: Decimal | None
    currency: str | None
    notify_on_price_drop: bool | None
    notify_on_restock: bool | None


class WatchRemoved(NamedTuple):
    product_id: str


class PriceChanged(NamedTuple):
    product_id: str
    product_name: str | None
    new_price: Decimal
    old_price: Decimal | None


class StockChanged(NamedTuple):
    product_id: str
    product_name: str | None
    in_stock: bool
    was_in_stock: bool | None


Change = Viewed | CartAdded | CartRemoved | Ordered | WatchAdded | WatchRemoved | PriceChanged | StockChanged


def _required_text(data: Mapping[str, Any], name: str) -> str:
    value = text(data, name, required=True)
    assert value is not None
    return value


def _line_item(raw: Any, where: str, with_product_fallbacks: bool = False) -> LineItem:
    """A line of a cart or an order; an added item falls back on the product snapshot's name, category
    and image."""
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise InvalidEvent(f"{where} must be an object")
    product_id = _required_text(raw, "product_id")
    quantity = count(raw, "quantity", 1)
    name = _optional_text(raw, "product_name")
    sku = _optional_text(raw, "sku")
    category = _optional_text(raw, "product_category")
    price = money(raw.get("price"), f"{where}.price")
    image = _optional_text(raw, "image_url")
    if with_product_fallbacks:
        name = name if name is not None else _product_name(raw)
        image = image if image is not None else _image(raw)
        category = category if category is not None else _category(raw)
    return LineItem(product_id, quantity, name, sku, category, price, image)


def _cart_change(data: Mapping[str, Any]) -> CartChange:
    cart_id = _optional_text(data, "cart_id")
    currency = _optional_text(data, "currency")
    whole = data.get("cart_items")
    items = None
    if whole is not None:
        if not isinstance(whole, list):
            raise InvalidEvent("data.cart_items must be a list")
        items = tuple(_line_item(raw, f"data.cart_items[{index}]") for index, raw in enumerate(whole))
    return CartChange(cart_id, currency, items)


# The fields an event's data usually leaves out. When a data object has none of them (checked in one C-level
# pass), they are all None and the usual fields are read inline; otherwise the strict readers read everything.
_VIEW_RARE = frozenset(
    {"image_url", "view_id", "session_id", "referrer", "device_type", "browser", "product_snapshot"}
)
_CART_ADD_RARE = frozenset({"sku", "image_url", "product_snapshot", "cart_id", "currency", "cart_items"})


def _plain_text(value: Any) -> TypeGuard[str]:
    return type(value) is str and value != ""


def _plain_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _plain_product(data: Mapping[str, Any], rare: frozenset[str], amount_key: str,
                   amount_default: int) -> tuple[str, int, str | None, str | None] | None:
    """The common shape's product id, amount (a count), name and category, when no rare field is
    present and each has its plain type; None leaves the event to the strict reader."""
    if type(data) is not dict or not rare.isdisjoint(data):
        return None
    product_id = data.get("product_id")
    amount = data.get(amount_key, amount_default)
    name = data.get("product_name")
    category = data.get("product_category")
    if (
        _plain_text(product_id)
        and _plain_count(amount)
        and (name is None or _plain_text(name))
        and (category is None or _plain_text(category))
    ):
        return product_id, amount, name, category
    return None


def _parse_view(data: Mapping[str, Any]) -> Viewed:
    plain = _plain_product(data, _VIEW_RARE, "view_duration", 0)
    if plain is not None:
        product_id, duration, name, category = plain
        return new_tuple(Viewed, (
            product_id, duration, money(data.get("product_price"), "data.product_price"), name, category,
            None, None, None, None, None, None,
        ))  # fmt: skip
    return _parse_view_strictly(data)


def _parse_view_strictly(data: Mapping[str, Any]) -> Viewed:
    product_id = _required_text(data, "product_id")
    duration = count(data, "view_duration", 0)
    price = data["product_price"] if "product_price" in data else _snapshot(data).get("price")
    return Viewed(
        product_id,
        duration,
        money(price, "data.product_price"),
        _product_name(data),
        _category(data),
        _image(data),
        _optional_text(data, "view_id"),
        _optional_text(data, "session_id"),
        _optional_text(data, "referrer"),
        _optional_text(data, "device_type"),
        _optional_text(data, "browser"),
    )


_NO_CART_CHANGE = CartChange(None, None, None)


def _parse_cart_add(data: Mapping[str, Any]) -> CartAdded:
    plain = _plain_product(data, _CART_ADD_RARE, "quantity", 1)
    if plain is not None:
        product_id, quantity, name, category = plain
        price = money(data.get("price"), "data.price")
        line = new_tuple(LineItem, (product_id, quantity, name, None, category, price, None))
        return new_tuple(CartAdded, (line, _NO_CART_CHANGE))
    return _parse_cart_add_strictly(data)


def _parse_cart_add_strictly(data: Mapping[str, Any]) -> CartAdded:
    return CartAdded(_line_item(data, "data", with_product_fallbacks=True), _cart_change(data))


def _parse_cart_remove(data: Mapping[str, Any]) -> CartRemoved:
    product_id = _required_text(data, "product_id")
    quantity = count(data, "quantity", 1)
    return CartRemoved(product_id, quantity, _cart_change(data))


def _parse_order(data: Mapping[str, Any]) -> Ordered:
    order_id = _required_text(data, "order_id")
    total = money(data.get("order_total"), "data.order_total")
    items = data.get("items")
    bought: frozenset[str] = frozenset()
    if isinstance(items, list):
        bought = frozenset(
            _line_item(raw, f"data.items[{index}]").product_id for index, raw in enumerate(items)
        )
    return Ordered(order_id, total, bought)


def _parse_watch_add(data: Mapping[str, Any]) -> WatchAdded:
    product_id = _required_text(data, "product_id")
    snapshot_price = money(_snapshot(data).get("price"), "data.product_snapshot.price")
    current = money(data.get("current_price"), "data.current_price") or snapshot_price
    in_stock = flag(data, "in_stock")
    return WatchAdded(
        product_id,
        current,
        in_stock,
        _product_name(data),
        _category(data),
        _image(data),
        money(data.get("original_price"), "data.original_price"),
        money(data.get("target_price"), "data.target_price"),
        text(data, "currency"),
        flag(data, "notify_on_price_drop"),
        flag(data, "notify_on_restock"),
    )


def _parse_catalog(name: str, data: Mapping[str, Any]) -> PriceChanged | StockChanged:
    product_id = _required_text(data, "product_id")
    product_name = _product_name(data)
    if name == "product_price_changed":
        new_price = money(data.get("new_price"), "data.new_price")
        if new_price is None:
            raise InvalidEvent("data.new_price is required")
        old_price = money(data.get("old_price"), "data.old_price")
        return PriceChanged(product_id, product_name, new_price, old_price)
    in_stock = flag(data, "in_stock")
    if in_stock is None:
        raise InvalidEvent("data.in_stock is required")
    return StockChanged(product_id, product_name, in_stock, flag(data, "was_in_stock"))


def parse_change(event: Event) -> Change | None:
    """The event's data read and checked (InvalidEvent when marketing cannot use it); None for an
    event whose data marketing does not read (an identify, an event of no interest)."""
    name = event.name
    data = event.data
    if event.type == "identify":
        return None
    if name == "product_viewed":
        return _parse_view(data)
    if name == "cart_item_added":
        return _parse_cart_add(data)
    if name == "cart_item_removed":
        return _parse_cart_remove(data)
    if name == "order_completed":
        return _parse_order(data)
    if name == "watchlist_item_added":
        return _parse_watch_add(data)
    if name == "watchlist_item_removed":
        return WatchRemoved(_required_text(data, "product_id"))
    if name in CATALOG_EVENTS:
        return _parse_catalog(name, data)
    return None


# --- applying events -------------------------------------------------------------------------------

_UNPARSED: Any = object()


def apply_event(state: BatchState, event: Event, change: Change | None = _UNPARSED) -> None:
    """Applies one event to the batch's state, with its data as parse_change() read it (read here when
    not given). Raises InvalidEvent for data it cannot use."""
    if change is _UNPARSED:
        change = parse_change(event)
    if event.type == "identify":
        if event.user_id and event.anonymous_id:
            _identify(state, event.brand_id, event.user_id, event.anonymous_id, event.timestamp)
        return
    if change is None:
        return
    kind = type(change)
    if kind is PriceChanged or kind is StockChanged:
        _apply_catalog(state, event, change)  # type: ignore[arg-type]
        return
    brand_id = event.brand_id
    person_key = (brand_id, event.user_id or state.resolve(event))
    person = state.persons.get(person_key)
    if person is None:
        person = state.persons[person_key] = Person(brand_id, person_key[1])
    state.touched.add(person_key)
    at = event.timestamp
    if kind is Viewed:
        _view(person, change, at)  # type: ignore[arg-type]
    elif kind is CartAdded:
        _cart_add(person, change, at)  # type: ignore[arg-type]
    elif isinstance(change, CartRemoved):
        _cart_remove(person, change, at)
    elif isinstance(change, Ordered):
        _order(state, person, change, event.data, at)
    elif isinstance(change, WatchAdded):
        _watch_add(state, event.brand_id, person.person, change, at)
    elif isinstance(change, WatchRemoved):
        key = (event.brand_id, person.person, change.product_id)
        state.watches[key] = None
        state.changed_watches.add(key)
        state.dropped_watch_timers.add(key)


def _view(person: Person, seen: Viewed, at: datetime) -> None:
    product_id = seen.product_id
    view = person.views.get(product_id)
    if view is None:
        view = person.views[product_id] = ProductView(product_id, first_viewed_at=at, last_viewed_at=at)
    view.first_viewed_at = _earlier(view.first_viewed_at, at)
    newest = at >= view.last_viewed_at
    view.last_viewed_at = _later(view.last_viewed_at, at)
    view.view_count += 1
    view.view_duration += seen.view_duration
    refresh = newest or view.product_name is None
    if refresh:
        view.product_name = seen.product_name or view.product_name
        view.product_price = seen.price if seen.price is not None else view.product_price
        view.product_category = seen.product_category or view.product_category
    if refresh and seen[5:] != _NO_RARE_VIEW_FIELDS:  # the fields a plain view leaves out (all None)
        view.image_url = seen.image_url or view.image_url
        view.view_id = seen.view_id or view.view_id
        view.session_id = seen.session_id or view.session_id
        view.referrer = seen.referrer or view.referrer
        view.device_type = seen.device_type or view.device_type
        view.browser = seen.browser or view.browser
    # A view from before the product's last exit (cart add, order) belongs to an ended cycle.
    if view.browse_exited_at is None or at > view.browse_exited_at:
        view.browse_views += 1
        view.browse_started_at = _earlier(view.browse_started_at, at)


# A Viewed's image_url, view_id, session_id, referrer, device_type and browser, as a plain view has them.
_NO_RARE_VIEW_FIELDS = (None,) * 6


def _exit_browse(view: ProductView, at: datetime) -> None:
    view.browse_exited_at = _later(view.browse_exited_at, at)
    if view.browse_started_at is not None and view.browse_started_at <= at:
        view.browse_views = 0
        view.browse_started_at = None


def _cart_changed(person: Person, change: CartChange, at: datetime) -> None:
    cart = person.cart
    cart.last_changed_at = _later(cart.last_changed_at, at)
    cart.cart_id = change.cart_id or cart.cart_id
    cart.currency = change.currency or cart.currency
    if change.cart_items is not None:
        previous = cart.items
        cart.items = {}
        for line in change.cart_items:
            if line.quantity <= 0:
                continue
            item = line.cart_item(at)
            kept = previous.get(item.product_id)
            if kept is not None:
                item.added_at = kept.added_at
            cart.items[item.product_id] = item


def _cart_add(person: Person, added: CartAdded, at: datetime) -> None:
    line = added.item
    existing = person.cart.items.get(line.product_id)
    if existing is None:
        if line.quantity > 0:
            person.cart.items[line.product_id] = line.cart_item(at)
    else:
        existing.quantity += line.quantity
        existing.price = line.price if line.price is not None else existing.price
        existing.product_name = line.product_name or existing.product_name
        existing.image_url = line.image_url or existing.image_url
    _cart_changed(person, added.cart, at)
    view = person.views.get(line.product_id)
    if view is not None:
        view.added_to_cart = True
        view.added_to_cart_at = _later(view.added_to_cart_at, at)
        _exit_browse(view, at)


def _cart_remove(person: Person, removed: CartRemoved, at: datetime) -> None:
    existing = person.cart.items.get(removed.product_id)
    if existing is not None:
        existing.quantity -= removed.quantity
        if existing.quantity <= 0:
            del person.cart.items[removed.product_id]
    _cart_changed(person, removed.cart, at)


def _order(state: BatchState, person: Person, order: Ordered, data: Mapping[str, Any], at: datetime) -> None:
    cart = person.cart
    cart.last_order_at = _later(cart.last_order_at, at)
    # The order exits the cart flow when it comes after the last cart change; the cart is then spent.
    if cart.last_changed_at is None or at >= cart.last_changed_at:
        cart.items = {}
        cart.last_changed_at = _later(cart.last_changed_at, at)
    for view in person.views.values():
        _exit_browse(view, at)
        if view.product_id in order.bought:
            view.purchased = True
            view.purchased_at = _later(view.purchased_at, at)
    if is_identified(person.person):
        ref = text(data, "ref")  # read only for an identified buyer: an anonymous order converts nothing
        state.orders.append(Order(person.brand_id, person.person, order.order_id, at, order.total, ref))


def _watch_add(state: BatchState, brand_id: str, person: str, added: WatchAdded, at: datetime) -> None:
    product_id = added.product_id
    key = (brand_id, person, product_id)
    product = state.products.get((brand_id, product_id))
    current = added.current_price
    if current is None and product is not None:
        current = product.price
    in_stock = added.in_stock
    if in_stock is None and product is not None:
        in_stock = product.in_stock
    watch = state.watches.get(key)
    if watch is None:
        watch = Watch(person=person, product_id=product_id, watched_at=at)
    watch.product_name = added.product_name or watch.product_name
    watch.product_category = added.product_category or watch.product_category
    watch.image_url = added.image_url or watch.image_url
    watch.current_price = current if current is not None else watch.current_price
    watch.original_price = added.original_price or watch.original_price or current
    watch.target_price = added.target_price if added.target_price is not None else watch.target_price
    watch.currency = added.currency or watch.currency
    watch.in_stock = in_stock if in_stock is not None else watch.in_stock
    if added.notify_on_price_drop is not None:
        watch.notify_on_price_drop = added.notify_on_price_drop
    if added.notify_on_restock is not None:
        watch.notify_on_restock = added.notify_on_restock
    state.watches[key] = watch
    state.changed_watches.add(key)


def _watchers(state: BatchState, brand_id: str, product_id: str) -> list[tuple[tuple[str, str, str], Watch]]:
    return [
        (key, watch)
        for key, watch in state.watches.items()
        if watch is not None and key[0] == brand_id and key[2] == product_id
    ]


def _apply_catalog(state: BatchState, event: Event, change: PriceChanged | StockChanged) -> None:
    data = event.data
    brand_id = event.brand_id
    product_id = change.product_id
    at = event.timestamp
    product = state.products.get((brand_id, product_id)) or Product(product_id, changed_at=at)
    product.product_name = change.product_name or product.product_name
    product.changed_at = _later(product.changed_at, at)
    if isinstance(change, PriceChanged):
        new_price = change.new_price
        old_price = change.old_price
        for key, watch in _watchers(state, brand_id, product_id):
            before = watch.current_price if watch.current_price is not None else old_price
            if before is None:
                before = product.price
            threshold = watch.target_price if watch.target_price is not None else before
            if (
                watch.notify_on_price_drop
                and not watch.notified_price_drop
                and threshold is not None
                and before is not None
                and new_price < threshold
                and new_price < before
            ):
                watch.notified_price_drop = True
                state.catalog_timers.append(
                    Timer(
                        brand_id,
                        watch.person,
                        PRICE_DROPPED,
                        product_id,
                        at,
                        {
                            "old_price": before,
                            "new_price": new_price,
                            "savings": before - new_price,
                            "target_price": watch.target_price,
                            "currency": text(data, "currency") or watch.currency,
                            "product_name": product.product_name or watch.product_name,
                            "event_id": event.event_id,
                        },
                    )
                )
                watch.current_price = new_price
                state.changed_watches.add(key)
        product.price = new_price
    else:
        in_stock = change.in_stock
        was_in_stock = change.was_in_stock
        for key, watch in _watchers(state, brand_id, product_id):
            known_before = watch.in_stock if watch.in_stock is not None else product.in_stock
            was_out = known_before is False or (known_before is None and was_in_stock is False)
            if in_stock and was_out and watch.notify_on_restock and not watch.notified_restock:
                watch.notified_restock = True
                state.catalog_timers.append(
                    Timer(
                        brand_id,
                        watch.person,
                        BACK_IN_STOCK,
                        product_id,
                        at,
                        {
                            "quantity": data.get("quantity"),
                            "restocked_at": at,
                            "product_name": product.product_name or watch.product_name,
                            "event_id": event.event_id,
                        },
                    )
                )
            if watch.in_stock != in_stock:
                watch.in_stock = in_stock
                state.changed_watches.add(key)
        product.in_stock = in_stock
    state.products[(brand_id, product_id)] = product
    state.changed_products.add((brand_id, product_id))


def _identify(state: BatchState, brand_id: str, user_id: str, anonymous_id: str, at: datetime) -> None:
    anonymous = (brand_id, ANONYMOUS_PREFIX + anonymous_id)
    if state.identities.get((brand_id, anonymous_id)) is None:
        state.new_identities[(brand_id, anonymous_id)] = (user_id, at)
    state.identities[(brand_id, anonymous_id)] = user_id
    source = state.persons.get(anonymous)
    target = state.person(brand_id, user_id)
    state.touched.add((brand_id, user_id))
    if source is None:
        return
    merge_person(source, target)
    state.persons[anonymous] = Person(brand_id, anonymous[1])
    state.merged_away.add(anonymous)
    state.touched.discard(anonymous)


def merge_person(source: Person, target: Person) -> None:
    """An anonymous visitor's views and cart join the identified user's."""
    for product_id, view in source.views.items():
        mine = target.views.get(product_id)
        if mine is None:
            target.views[product_id] = replace(view)
            continue
        mine.view_count += view.view_count
        mine.view_duration += view.view_duration
        mine.first_viewed_at = min(mine.first_viewed_at, view.first_viewed_at)
        if view.last_viewed_at > mine.last_viewed_at:
            mine.last_viewed_at = view.last_viewed_at
            for name in (
                "product_name",
                "product_price",
                "product_category",
                "image_url",
                "view_id",
                "session_id",
                "referrer",
                "device_type",
                "browser",
            ):
                value = getattr(view, name)
                if value is not None:
                    setattr(mine, name, value)
        mine.browse_views += view.browse_views
        if view.browse_started_at is not None:
            mine.browse_started_at = _earlier(mine.browse_started_at, view.browse_started_at)
        mine.added_to_cart = mine.added_to_cart or view.added_to_cart
        if view.added_to_cart_at is not None:
            mine.added_to_cart_at = _later(mine.added_to_cart_at, view.added_to_cart_at)
        mine.purchased = mine.purchased or view.purchased
        if view.purchased_at is not None:
            mine.purchased_at = _later(mine.purchased_at, view.purchased_at)
        if view.browse_exited_at is not None:
            _exit_browse(mine, view.browse_exited_at)
    cart, theirs = target.cart, source.cart
    for product_id, item in theirs.items.items():
        mine_item = cart.items.get(product_id)
        if mine_item is None:
            cart.items[product_id] = replace(item)
        else:
            mine_item.quantity += item.quantity
    if theirs.last_changed_at is not None:
        cart.last_changed_at = _later(cart.last_changed_at, theirs.last_changed_at)
    if theirs.last_order_at is not None:
        cart.last_order_at = _later(cart.last_order_at, theirs.last_order_at)
    cart.cart_id = cart.cart_id or theirs.cart_id
    cart.currency = cart.currency or theirs.currency


# --- the windows' deadlines --------------------------------------------------------------------------


def window_timers(person: Person, config: WindowConfig) -> list[Timer]:
    """The cart and browse deadlines this person's state calls for now (none for an anonymous one)."""
    return [
        Timer(person.brand_id, person.person, trigger, "", due_at)
        for trigger, due_at in window_deadlines(person, config)
    ]


def window_deadlines(person: Person, config: WindowConfig) -> list[tuple[str, datetime]]:
    """window_timers' (trigger, due_at)s: the cart deadline first, then the browse one."""
    if not is_identified(person.person):
        return []
    deadlines: list[tuple[str, datetime]] = []
    cart = person.cart
    if cart.items and cart.last_changed_at is not None and not _ordered_after_change(cart):
        deadlines.append((CART_ABANDONED, cart.last_changed_at + config.cart_abandon_after))
    browsed = browse_candidates(person, config)
    if browsed:
        last = max(view.last_viewed_at for view in browsed)
        deadlines.append((BROWSE_ABANDONED, last + config.browse_abandon_after))
    return deadlines


def _ordered_after_change(cart: Cart) -> bool:
    return (
        cart.last_order_at is not None
        and cart.last_changed_at is not None
        and cart.last_order_at >= cart.last_changed_at
    )


def browse_candidates(person: Person, config: WindowConfig) -> list[ProductView]:
    """Products viewed at least `browse_min_views` times in their current cycle."""
    return [
        view
        for view in person.views.values()
        if view.browse_views >= config.browse_min_views and view.browse_started_at is not None
    ]


def most_viewed(views: Iterable[ProductView]) -> ProductView | None:
    """The most viewed product of the cycle; the latest viewed among equals, then the smallest id."""
    ordered = sorted(views, key=lambda v: (-v.browse_views, -v.last_viewed_at.timestamp(), v.product_id))
    return ordered[0] if ordered else None
