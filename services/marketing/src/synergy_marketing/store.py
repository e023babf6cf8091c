"""Postgres I/O of the marketing state: a batch's state loaded in a few statements, applied in
memory (state.py), and written back with one statement per table, all in one transaction."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from synergy_marketing.decisions import (
    BrandMarketing,
    Decision,
    History,
    Preferences,
    jsonable,
)
from synergy_marketing.state import (
    ANONYMOUS_PREFIX,
    PRICE_DROPPED,
    WINDOW_TRIGGERS,
    BatchState,
    Cart,
    CartItem,
    Person,
    Product,
    ProductView,
    Timer,
    Watch,
    WindowConfig,
    window_deadlines,
)

VIEW_COLUMNS = (
    "product_id",
    "first_viewed_at",
    "last_viewed_at",
    "product_name",
    "product_price",
    "product_category",
    "image_url",
    "view_id",
    "session_id",
    "view_duration",
    "referrer",
    "device_type",
    "browser",
    "view_count",
    "browse_views",
    "browse_started_at",
    "browse_exited_at",
    "added_to_cart",
    "added_to_cart_at",
    "purchased",
    "purchased_at",
)
VIEW_TYPES = (
    "text",
    "timestamptz",
    "timestamptz",
    "text",
    "numeric",
    "text",
    "text",
    "text",
    "text",
    "int",
    "text",
    "text",
    "text",
    "int",
    "int",
    "timestamptz",
    "timestamptz",
    "bool",
    "timestamptz",
    "bool",
    "timestamptz",
)
ITEM_COLUMNS = (
    "product_id",
    "quantity",
    "added_at",
    "product_name",
    "sku",
    "product_category",
    "price",
    "image_url",
)
ITEM_TYPES = ("text", "int", "timestamptz", "text", "text", "text", "numeric", "text")
WATCH_COLUMNS = (
    "product_id",
    "watched_at",
    "product_name",
    "product_category",
    "image_url",
    "current_price",
    "original_price",
    "target_price",
    "currency",
    "in_stock",
    "notify_on_price_drop",
    "notify_on_restock",
    "notified_price_drop",
    "notified_restock",
)
WATCH_TYPES = (
    "text",
    "timestamptz",
    "text",
    "text",
    "text",
    "numeric",
    "numeric",
    "numeric",
    "text",
    "bool",
    "bool",
    "bool",
    "bool",
    "bool",
)
PRICE_DETAILS = ("old_price", "new_price", "savings", "target_price")


def _unnest(columns: Sequence[str], types: Sequence[str], first: int = 1) -> str:
    args = ", ".join(f"${first + index}::{kind}[]" for index, kind in enumerate(types))
    return f"unnest({args}) AS u({', '.join(columns)})"


def _delete_each(table: str, match: str, with_subject: bool = False) -> str:
    """A DELETE of the rows that one index lookup per key finds (by ctid; OFFSET 0 keeps the lookup from
    being flattened into a join the planner may turn into scans on stale statistics)."""
    keys = (
        "unnest($1::bigint[], $2::text[], $3::text[]) AS k(brand_id, person, subject)"
        if with_subject
        else ("unnest($1::bigint[], $2::text[]) AS k(brand_id, person)")
    )
    return (
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"SELECT x.ctid FROM {keys} CROSS JOIN LATERAL"
        f" (SELECT ctid FROM {table} x WHERE {match} OFFSET 0) x))"
    )


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[index] for row in rows] for index in range(width)]


# --- the consumer's batch --------------------------------------------------------------------------


async def keyed_access_only(conn: asyncpg.Connection) -> None:
    """Every statement of the consumer's and the scheduler's transactions reads or writes rows by key.
    Marketing tables grow in bursts (a campaign, a replay) far faster than autovacuum re-analyzes them,
    and a plan made on "this table is empty" scans it once per key: index lookups only, whatever the
    statistics say."""
    await conn.execute("SET LOCAL enable_seqscan = off")


async def lock_table_slots(conn: asyncpg.Connection) -> int:
    """The nominal size of Postgres's shared lock table, which every transaction's advisory locks share."""
    slots: int = await conn.fetchval(
        "SELECT current_setting('max_locks_per_transaction')::int"
        " * (current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int)"
    )
    return slots


async def try_lock_persons(
    conn: asyncpg.Connection, persons: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The persons whose lock this transaction got without waiting (the scheduler never waits, so it
    cannot deadlock with a consumer batch that waits on a timer row it holds)."""
    keys = sorted({f"{brand}:{person}" for brand, person in persons})
    if not keys:
        return set()
    rows = await conn.fetch(
        "SELECT k FROM unnest($1::text[]) k WHERE pg_try_advisory_xact_lock(hashtextextended(k, 0))", keys
    )
    locked = set()
    for row in rows:
        brand, _, person = row["k"].partition(":")
        locked.add((brand, person))
    return locked


async def load_identities(
    conn: asyncpg.Connection, anonymous: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    keys = sorted(set(anonymous))
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT x.brand_id, x.anonymous_id, x.user_id"
        " FROM unnest($1::bigint[], $2::text[]) AS k(brand_id, anonymous_id) CROSS JOIN LATERAL"
        " (SELECT * FROM marketing_identities x"
        "  WHERE x.brand_id = k.brand_id AND x.anonymous_id = k.anonymous_id OFFSET 0) x",
        [int(brand) for brand, _ in keys],
        [anon for _, anon in keys],
    )
    return {(str(row["brand_id"]), row["anonymous_id"]): row["user_id"] for row in rows}


async def load_persons(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Person]:
    wanted = sorted(set(keys))
    persons = {key: Person(key[0], key[1]) for key in wanted}
    if not wanted:
        return persons
    brands = [int(brand) for brand, _ in wanted]
    names = [person for _, person in wanted]
    # LATERAL ... OFFSET 0 (a fence the planner cannot flatten): one index lookup per key, whatever the
    # table's statistics say (a table that grew since it was last analyzed would otherwise be scanned
    # once per key).
    each = "unnest($1::bigint[], $2::text[]) AS k(brand_id, person) CROSS JOIN LATERAL"
    match = "WHERE x.brand_id = k.brand_id AND x.person = k.person"
    for row in await conn.fetch(
        f"SELECT x.* FROM {each} (SELECT * FROM product_views x {match} OFFSET 0) x", brands, names
    ):
        person = persons[(str(row["brand_id"]), row["person"])]
        person.views[row["product_id"]] = ProductView(**{name: row[name] for name in VIEW_COLUMNS})
    for row in await conn.fetch(
        f"SELECT x.* FROM {each} (SELECT * FROM carts x {match} OFFSET 0) x", brands, names
    ):
        person = persons[(str(row["brand_id"]), row["person"])]
        person.cart = Cart(
            cart_id=row["cart_id"],
            currency=row["currency"].strip() if row["currency"] else None,
            last_changed_at=row["last_changed_at"],
            last_order_at=row["last_order_at"],
        )
    for row in await conn.fetch(
        f"SELECT x.* FROM {each} (SELECT * FROM cart_items x {match} OFFSET 0) x", brands, names
    ):
        person = persons[(str(row["brand_id"]), row["person"])]
        person.cart.items[row["product_id"]] = CartItem(**{name: row[name] for name in ITEM_COLUMNS})
    return persons


def _watch_from_row(row: asyncpg.Record) -> Watch:
    values = {name: row[name] for name in WATCH_COLUMNS}
    if values["currency"]:
        values["currency"] = values["currency"].strip()
    return Watch(person=row["user_id"], **values)


async def load_watches(
    conn: asyncpg.Connection,
    keys: Iterable[tuple[str, str, str]],
    products: Iterable[tuple[str, str]],
) -> dict[tuple[str, str, str], Watch | None]:
    """The watches named by (brand, person, product), and every watch of the (brand, product)s."""
    found: dict[tuple[str, str, str], Watch | None] = {}
    wanted = sorted(set(keys))
    if wanted:
        rows = await conn.fetch(
            "SELECT x.* FROM unnest($1::bigint[], $2::text[], $3::text[]) AS k(brand_id, user_id, product_id)"
            " CROSS JOIN LATERAL (SELECT * FROM watch_list x WHERE x.brand_id = k.brand_id"
            "  AND x.user_id = k.user_id AND x.product_id = k.product_id OFFSET 0) x",
            [int(k[0]) for k in wanted],
            [k[1] for k in wanted],
            [k[2] for k in wanted],
        )
        for row in rows:
            found[(str(row["brand_id"]), row["user_id"], row["product_id"])] = _watch_from_row(row)
    by_product = sorted(set(products))
    if by_product:
        rows = await conn.fetch(
            "SELECT x.* FROM unnest($1::bigint[], $2::text[]) AS k(brand_id, product_id) CROSS JOIN LATERAL"
            " (SELECT * FROM watch_list x WHERE x.brand_id = k.brand_id AND x.product_id = k.product_id"
            "  OFFSET 0) x",
            [int(k[0]) for k in by_product],
            [k[1] for k in by_product],
        )
        for row in rows:
            found[(str(row["brand_id"]), row["user_id"], row["product_id"])] = _watch_from_row(row)
    return found


WatchKey = tuple[str, str, str]
TimerIdentity = tuple[str, str, str, str]


@dataclass
class LoadedBatch:
    """What a batch reads, as marketing_load_batch answered it."""

    # The (brand, event_id)s not applied before; None when every event of the batch is new and none of
    # them came twice (the common case: nothing to look up per event).
    fresh: set[tuple[str, str]] | None
    persons: dict[tuple[str, str], Person]
    window_timers: dict[TimerIdentity, tuple[int, datetime]]  # identity -> (timer_id, due_at)
    watches: dict[WatchKey, Watch | None]
    products: dict[tuple[str, str], Product]
    # The persons read that have no view row, no cart row (BatchState.stored_no_views, stored_no_cart).
    without_views: set[tuple[str, str]]
    without_cart: set[tuple[str, str]]


def _from_json_array(position: int, kind: str) -> str:
    # The element order is kept (WITH ORDINALITY): the function pairs its arrays by position.
    return (
        f"ARRAY(SELECT e::{kind} FROM jsonb_array_elements_text(${position}::jsonb)"
        " WITH ORDINALITY AS a(e, i) ORDER BY i)"
    )


# The batch's keys go to marketing_load_batch as JSON arrays, made into Postgres arrays by the call: asyncpg
# encodes a text[] or bigint[] parameter element by element, with one or two isinstance checks against
# collections.abc per element (~1.7 µs an event for the load's arrays); the pool's jsonb codec (orjson)
# encodes each list in one call.
_LOAD_BATCH_TYPES = (
    "text",  # the persons' lock keys
    "bigint", "text",  # the events (brand, event_id)
    "bigint", "text",  # the persons (brand, person)
    "bigint", "text", "text",  # the named watches (brand, person, product)
    "bigint", "text",  # the catalog events' products (brand, product)
    "bigint", "text",  # the products (brand, product)
)  # fmt: skip
_LOAD_BATCH = "SELECT marketing_load_batch({})".format(
    ", ".join(_from_json_array(position, kind) for position, kind in enumerate(_LOAD_BATCH_TYPES, start=1))
)


async def load_batch(
    conn: asyncpg.Connection,
    events: Sequence[tuple[str, str]],
    persons: Iterable[tuple[str, str]],
    watch_keys: Iterable[WatchKey],
    catalog: Iterable[tuple[str, str]],
    product_keys: Iterable[tuple[str, str]],
) -> LoadedBatch:
    """One round trip (marketing_load_batch): locks the persons (batches of any replica touching the same
    person are serialised, e.g. through an identify), marks the (brand, event_id)s applied (a redelivery
    changes nothing), and loads the persons' views and carts, their cart and browse timers (fired or not),
    the watches named by (brand, person, product), every watch of the catalog's (brand, product)s, and the
    products."""
    wanted = list(set(persons))
    watches = sorted(set(watch_keys))
    by_product = sorted(set(catalog))
    products = sorted(set(product_keys))
    loaded = await conn.fetchval(
        _LOAD_BATCH,
        [f"{brand}:{person}" for brand, person in wanted],
        [brand for brand, _ in events],
        [event_id for _, event_id in events],
        [brand for brand, _ in wanted],
        [person for _, person in wanted],
        [k[0] for k in watches],
        [k[1] for k in watches],
        [k[2] for k in watches],
        [k[0] for k in by_product],
        [k[1] for k in by_product],
        [k[0] for k in products],
        [k[1] for k in products],
    )
    found = {key: Person(key[0], key[1]) for key in wanted}
    without_views, without_cart = set(found), set(found)
    for row in loaded["views"] or ():
        _decode(row, _VIEW_TIMES, _VIEW_AMOUNTS)
        key = (str(row[0]), row[1])
        found[key].views[row[2]] = ProductView(*row[2:])
        without_views.discard(key)
    for brand, person, cart_id, currency, changed, ordered in loaded["carts"] or ():
        key = (str(brand), person)
        without_cart.discard(key)
        found[key].cart = Cart(
            cart_id=cart_id,
            currency=currency.strip() if currency else None,
            last_changed_at=_time(changed),
            last_order_at=_time(ordered),
        )
    for row in loaded["items"] or ():
        _decode(row, _ITEM_TIMES, _ITEM_AMOUNTS)
        found[(str(row[0]), row[1])].cart.items[row[2]] = CartItem(*row[2:])
    watched: dict[WatchKey, Watch | None] = {}
    for row in loaded["watches"] or ():
        _decode(row, _WATCH_TIMES, _WATCH_AMOUNTS)
        if row[10]:
            row[10] = row[10].strip()  # currency, a CHAR(3)
        watched[(str(row[0]), row[1], row[2])] = Watch(row[1], *row[2:])
    return LoadedBatch(
        fresh=(
            None
            if loaded["fresh"] is None  # every event is new, and none came twice
            else {(str(brand), event_id.strip()) for brand, event_id in loaded["fresh"]}
        ),
        persons=found,
        window_timers={
            (str(brand), person, trigger, subject): (timer_id, datetime.fromisoformat(due_at))
            for timer_id, brand, person, trigger, subject, due_at in loaded["timers"] or ()
        },
        watches=watched,
        products={
            (str(brand), product_id): Product(
                product_id, datetime.fromisoformat(changed), name, _amount(price), in_stock
            )
            for brand, product_id, changed, name, price, in_stock in loaded["products"] or ()
        },
        without_views=without_views,
        without_cart=without_cart,
    )


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _amount(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _positions(columns: Sequence[str], types: Sequence[str], kind: str) -> tuple[int, ...]:
    # The load function's rows are (brand, person, *columns).
    return tuple(2 + index for index, _ in enumerate(columns) if types[index] == kind)


_VIEW_TIMES = _positions(VIEW_COLUMNS, VIEW_TYPES, "timestamptz")
_VIEW_AMOUNTS = _positions(VIEW_COLUMNS, VIEW_TYPES, "numeric")
_ITEM_TIMES = _positions(ITEM_COLUMNS, ITEM_TYPES, "timestamptz")
_ITEM_AMOUNTS = _positions(ITEM_COLUMNS, ITEM_TYPES, "numeric")
_WATCH_TIMES = _positions(WATCH_COLUMNS, WATCH_TYPES, "timestamptz")
_WATCH_AMOUNTS = _positions(WATCH_COLUMNS, WATCH_TYPES, "numeric")


def _decode(row: list[Any], times: Sequence[int], amounts: Sequence[int]) -> None:
    """Timestamps (ISO 8601, UTC) and amounts (text, exact) of a row of the load function, in place."""
    for index in times:
        if row[index] is not None:
            row[index] = datetime.fromisoformat(row[index])
    for index in amounts:
        if row[index] is not None:
            row[index] = Decimal(row[index])


# Views and cart lines travel to marketing_save_batch as arrays in their columns' order (m030): the keys of
# one JSON object per row were two thirds of the document, and parsing it was the save's largest cost.
_VIEW_ROW = operator.attrgetter(*VIEW_COLUMNS)
_ITEM_ROW = operator.attrgetter(*ITEM_COLUMNS)


def _cart_document(cart: Cart) -> dict[str, Any]:
    return {
        "cart_id": cart.cart_id,
        "currency": cart.currency,
        "last_changed_at": cart.last_changed_at,
        "last_order_at": cart.last_order_at,
        "items": {product: _ITEM_ROW(item) for product, item in cart.items.items()},
    }


def _amount_as_text(value: Any) -> Any:
    # Amounts travel as JSON strings, so Postgres reads them exactly into numeric columns.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def save_batch(
    conn: asyncpg.Connection, state: BatchState, config: WindowConfig, conversion_window: timedelta
) -> list[tuple[str, str, Decimal | None]]:
    """One round trip (marketing_save_batch): writes back what the batch changed, one statement per table,
    and converts the orders' queue items: each order converts the sent item its `ref` names, else the
    user's latest sent item within the conversion window before it. Answers the converted items
    (brand, trigger, revenue)."""
    touched = sorted(state.touched | state.merged_away)
    persons = []
    cartless = []
    no_cart_stored = state.stored_no_cart
    for key in touched:
        person = state.persons.get(key)
        cart = person.cart if person is not None else None
        has_cart = cart is not None and (
            cart.last_changed_at is not None or cart.last_order_at is not None or bool(cart.items)
        )
        if not has_cart and key not in no_cart_stored:  # a stored cart to delete, or maybe one
            cartless.append({"brand_id": int(key[0]), "person": key[1]})
        if person is None or (not person.views and not has_cart):
            continue
        persons.append(
            {
                "brand_id": int(key[0]),
                "person": key[1],
                "user_id": key[1] if not key[1].startswith(ANONYMOUS_PREFIX) else None,
                "views": [_VIEW_ROW(view) for view in person.views.values()] if person.views else None,
                "cart": _cart_document(cart) if has_cart else None,
            }
        )
    changed_watches = sorted(state.changed_watches)
    payload = {
        # the persons whose stored views are replaced (those read without any have none to delete)
        "touched": [
            {"brand_id": int(brand), "person": person}
            for brand, person in touched
            if (brand, person) not in state.stored_no_views
        ],
        "persons": persons,
        "cartless": cartless,
        "watch_keys": [{"brand_id": int(b), "person": p, "subject": s} for b, p, s in changed_watches],
        "watches": [
            {"brand_id": int(key[0]), "watch": watch}
            for key in changed_watches
            if (watch := state.watches.get(key)) is not None
        ],
        "products": [
            {"brand_id": int(key[0]), "product": state.products[key]}
            for key in sorted(state.changed_products)
        ],
        "identities": [
            {"brand_id": int(brand), "anonymous_id": anonymous, "user_id": user, "linked_at": at}
            for (brand, anonymous), (user, at) in sorted(state.new_identities.items())
        ],
        **_timer_changes(state, config, touched),
        "orders": [
            {
                "brand_id": int(order.brand_id),
                "user_id": order.user_id,
                "ref": _ref_queue_id(order.ref),
                "order_id": order.order_id,
                "ordered_at": order.ordered_at,
                "total": order.total,
            }
            for order in state.orders
        ],
        "conversion_window_seconds": conversion_window.total_seconds(),
    }
    converted = await conn.fetchval(
        "SELECT marketing_save_batch($1::text::jsonb)",
        orjson.dumps(payload, default=_amount_as_text).decode(),
    )
    return [(str(brand), trigger, _amount(revenue)) for brand, trigger, revenue in converted or ()]


def _timer_changes(
    state: BatchState, config: WindowConfig, touched: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Cart and browse deadlines follow the touched persons' state: new ones are made, moved ones
    re-armed, ones no longer called for (the cart emptied, an order) deleted. A deadline that fired
    and did not move stays fired. Catalog triggers add one timer per watch; a removed watch drops its
    pending ones."""
    existing = state.window_timers
    # Only the persons this batch changed: a redelivered event's person keeps its deadlines as they are.
    unwanted: list[int] = []
    timers: list[dict[str, Any]] = []
    for key in touched:
        person = state.persons.get(key)
        wanted = dict(window_deadlines(person, config)) if person is not None else {}
        brand, name = key
        for trigger in WINDOW_TRIGGERS:
            stored = existing.get((brand, name, trigger, ""))
            due_at = wanted.get(trigger)
            if due_at is None:
                if stored is not None:
                    unwanted.append(stored[0])  # no longer called for
            elif stored is None or stored[1] != due_at:  # new, or moved
                timers.append({"brand_id": int(brand), "person": name, "trigger": trigger, "subject": "",
                               "due_at": due_at, "details": {}})
    latest: dict[TimerIdentity, Timer] = {timer.identity: timer for timer in state.catalog_timers}
    timers.extend(
        {
            "brand_id": int(t.brand_id),
            "person": t.person,
            "trigger": t.trigger,
            "subject": t.subject,
            "due_at": t.due_at,
            "details": jsonable(dict(t.details)) if t.details else {},
        }
        for t in latest.values()
    )
    return {
        "unwanted_timers": unwanted,
        "dropped_watch_timers": [
            {"brand_id": int(b), "person": p, "subject": s} for b, p, s in sorted(state.dropped_watch_timers)
        ],
        "timers": timers,
    }


# --- conversions and engagement ------------------------------------------------------------------


def _ref_queue_id(ref: str | None) -> str | None:
    # Seed 004's links carry ?ref=email_queue_xxx for the queue item queue_xxx.
    if ref and ref.startswith("email_queue_"):
        return ref[len("email_") :]
    return ref


async def mark_engagements(
    conn: asyncpg.Connection, marks: Sequence[tuple[str, str, str, datetime]]
) -> list[asyncpg.Record]:
    """Customer.io's opens and clicks, (brand, trigger event id, "opened"|"clicked", at), in one
    statement; a click also counts as an open. Answers the items marked for the first time."""
    if not marks:
        return []
    return list(
        await conn.fetch(
            """
            WITH marks AS (
              SELECT brand_id, event_id, bool_or(kind = 'clicked') AS clicked, min(at) AS at
              FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[])
                   AS u(brand_id, event_id, kind, at)
              GROUP BY brand_id, event_id
            ), before AS (
              SELECT m.queue_id, m.opened, m.clicked FROM marks k CROSS JOIN LATERAL (
                SELECT q.queue_id, q.opened, q.clicked FROM marketing_queue q
                WHERE q.brand_id = k.brand_id AND q.event_id = k.event_id AND q.status <> 'suppressed'
                OFFSET 0 FOR UPDATE
              ) m
            )
            UPDATE marketing_queue m SET opened = TRUE, opened_at = COALESCE(m.opened_at, k.at),
                   clicked = m.clicked OR k.clicked,
                   clicked_at = CASE WHEN k.clicked THEN COALESCE(m.clicked_at, k.at) ELSE m.clicked_at END
            FROM marks k, before b
            WHERE m.brand_id = k.brand_id AND m.event_id = k.event_id AND b.queue_id = m.queue_id
            RETURNING m.brand_id, m.event_name, NOT b.opened AS first_open,
                      (k.clicked AND NOT b.clicked) AS first_click
            """,
            [int(m[0]) for m in marks],
            [m[1] for m in marks],
            [m[2] for m in marks],
            [m[3] for m in marks],
        )
    )


# --- the scheduler ---------------------------------------------------------------------------------


@dataclass
class DueTimer:
    timer_id: int
    timer: Timer


def _details_from_json(trigger: str, details: dict[str, Any]) -> dict[str, Any]:
    parsed = dict(details)
    if trigger == PRICE_DROPPED:
        for name in PRICE_DETAILS:
            if parsed.get(name) is not None:
                parsed[name] = Decimal(str(parsed[name]))
    if isinstance(parsed.get("restocked_at"), str):
        parsed["restocked_at"] = datetime.fromisoformat(parsed["restocked_at"].replace("Z", "+00:00"))
    return parsed


async def claim_due_timers(conn: asyncpg.Connection, limit: int) -> list[DueTimer]:
    """Due, unfired timers, locked for this transaction; other replicas skip them."""
    rows = await conn.fetch(
        "SELECT timer_id, brand_id, person, trigger, subject, due_at, details FROM marketing_timers"
        " WHERE fired_at IS NULL AND due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [
        DueTimer(
            row["timer_id"],
            Timer(
                str(row["brand_id"]),
                row["person"],
                row["trigger"],
                row["subject"],
                row["due_at"],
                _details_from_json(row["trigger"], row["details"] or {}),
            ),
        )
        for row in rows
    ]


async def load_preferences(
    conn: asyncpg.Connection, users: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Preferences]:
    if not users:
        return {}
    rows = await conn.fetch(
        "SELECT k.brand_id, k.user_id, p.email, p.marketing_emails, p.abandoned_cart_emails,"
        " p.browse_abandonment_emails, p.price_drop_alerts, p.back_in_stock_alerts, p.unsubscribed,"
        " u.email AS user_email"
        " FROM unnest($1::bigint[], $2::text[]) AS k(brand_id, user_id)"
        " LEFT JOIN LATERAL (SELECT * FROM email_preferences x"
        "  WHERE x.brand_id = k.brand_id AND x.user_id = k.user_id OFFSET 0) p ON TRUE"
        " LEFT JOIN LATERAL (SELECT y.email FROM users y"
        "  WHERE y.brand_id = k.brand_id AND y.external_id = k.user_id LIMIT 1) u ON TRUE",
        [int(b) for b, _ in users],
        [u for _, u in users],
    )
    found: dict[tuple[str, str], Preferences] = {}
    for row in rows:
        brand = str(row["brand_id"])
        if row["marketing_emails"] is None:
            found[(brand, row["user_id"])] = Preferences(email=row["user_email"])
            continue
        found[(brand, row["user_id"])] = Preferences(
            email=row["email"] or row["user_email"],
            marketing_emails=row["marketing_emails"],
            abandoned_cart_emails=row["abandoned_cart_emails"],
            browse_abandonment_emails=row["browse_abandonment_emails"],
            price_drop_alerts=row["price_drop_alerts"],
            back_in_stock_alerts=row["back_in_stock_alerts"],
            unsubscribed=row["unsubscribed"],
        )
    return found


async def load_histories(
    conn: asyncpg.Connection, users: Sequence[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], History]:
    if not users:
        return {}
    rows = await conn.fetch(
        "SELECT k.brand_id, k.user_id, m.event_name, m.last_sent"
        " FROM unnest($1::bigint[], $2::text[]) AS k(brand_id, user_id) CROSS JOIN LATERAL"
        " (SELECT q.event_name, max(q.sent_at) AS last_sent FROM marketing_queue q"
        "  WHERE q.brand_id = k.brand_id AND q.user_id = k.user_id AND q.sent AND q.sent_at >= $3"
        "  GROUP BY q.event_name) m",
        [int(b) for b, _ in users],
        [u for _, u in users],
        since,
    )
    histories: dict[tuple[str, str], History] = {}
    for row in rows:
        history = histories.setdefault((str(row["brand_id"]), row["user_id"]), History())
        history.record(row["event_name"], row["last_sent"])
    return histories


async def load_brands(conn: asyncpg.Connection, brand_ids: Iterable[str]) -> dict[str, BrandMarketing]:
    ids = sorted({int(b) for b in brand_ids})
    rows = await conn.fetch("SELECT id, settings FROM brands WHERE id = ANY($1::bigint[])", ids)
    return {str(row["id"]): BrandMarketing.from_settings(row["settings"]) for row in rows}


async def save_decisions(
    conn: asyncpg.Connection, decisions: Sequence[Decision], fired: Sequence[int], now: datetime
) -> None:
    """The queue items (idempotent by queue id) and the timers marked fired, in the caller's transaction."""
    if decisions:
        rows = [
            (
                d.queue_id,
                int(d.brand_id),
                d.user_id,
                d.user_email,
                d.trigger_type,
                d.trigger,
                d.event_id,
                jsonable(d.trigger_data),
                jsonable(d.message_data),
                d.discount_code,
                d.discount_amount,
                d.due_at,
                "sent" if d.sent else "suppressed",
                d.reason,
                d.sent,
                now if d.sent else None,
                d.email_subject,
                d.email_template,
            )
            for d in decisions
        ]
        await conn.execute(
            "INSERT INTO marketing_queue (queue_id, brand_id, user_id, user_email, trigger_type, event_name,"
            " event_id, trigger_data, message_data, discount_code, discount_amount, scheduled_send_time,"
            " status, reason, sent, sent_at, email_subject, email_template)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],"
            " $7::text[], $8::jsonb[], $9::jsonb[], $10::text[], $11::int[], $12::timestamptz[], $13::text[],"
            " $14::text[], $15::bool[], $16::timestamptz[], $17::text[], $18::text[])"
            " ON CONFLICT (queue_id) DO NOTHING",
            *_columns(rows, 18),
        )
    if fired:
        await conn.execute(
            "UPDATE marketing_timers SET fired_at = $2 WHERE timer_id = ANY($1::bigint[])", list(fired), now
        )


async def timer_backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    """Pending timers, and how far past due the oldest due one is (seconds, 0 when none is due)."""
    row = await pool.fetchrow(
        "SELECT count(*) AS pending, EXTRACT(EPOCH FROM now() - min(due_at) FILTER (WHERE due_at <= now()))"
        " AS lateness FROM marketing_timers WHERE fired_at IS NULL"
    )
    assert row is not None
    return int(row["pending"]), max(0.0, float(row["lateness"] or 0.0))


async def purge_expired(pool: asyncpg.Pool) -> None:
    """Seed 004's retention: views 90 days after the last, queue items 30 days after sending
    (suppressed ones 30 days after deciding), applied event ids after 90 days."""
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM product_views WHERE last_viewed_at < now() - interval '90 days'")
        await conn.execute(
            "DELETE FROM marketing_queue WHERE (sent AND sent_at < now() - interval '30 days')"
            " OR (NOT sent AND created_at < now() - interval '30 days')"
        )
        await conn.execute(
            "DELETE FROM marketing_applied_events WHERE applied_at < now() - interval '90 days'"
        )


async def kpis(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Seed 004's KPI counts per brand and trigger over the retained queue."""
    return list(
        await pool.fetch(
            "SELECT brand_id, event_name, count(*) FILTER (WHERE sent) AS sent,"
            " count(*) FILTER (WHERE sent AND opened) AS opened,"
            " count(*) FILTER (WHERE sent AND clicked) AS clicked,"
            " count(*) FILTER (WHERE converted) AS converted,"
            " COALESCE(sum(conversion_revenue) FILTER (WHERE converted), 0) AS revenue"
            " FROM marketing_queue GROUP BY brand_id, event_name"
        )
    )


# The tables whose plans follow their statistics. marketing_applied_events is not one of them: it is only
# ever probed by its primary key (ON CONFLICT) and purged by date, and analyzing it, the largest and
# fastest-growing of them, was most of the analysis's cost (about 250 ms per 5,000 events in the bench).
MARKETING_TABLES = (
    "product_views",
    "carts",
    "cart_items",
    "watch_list",
    "marketing_timers",
    "marketing_queue",
    "marketing_identities",
    "marketing_products",
    "email_preferences",
)


async def analyze_grown_tables(pool: asyncpg.Pool) -> list[str]:
    """ANALYZE the marketing tables that hold rows but were never analyzed, and those that changed by a
    fifth (and at least 1,000 rows) since their last analysis. They grow in bursts (a campaign, a replay, a
    backfill) much faster than autovacuum's naptime, and plans made on "this table is nearly empty" are
    slow for every batch meanwhile; on a table never analyzed, the planner cannot tell a lookup by brand
    from one by brand and person (one analysis of a few hundred rows is enough to tell them apart)."""
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.relname = ANY($1::text[]) AND c.relkind = 'r'"
        " AND c.relnamespace = current_schema()::regnamespace"
        " AND ((c.reltuples < 0 AND pg_relation_size(c.oid) > 0)"
        "      OR s.n_mod_since_analyze > GREATEST(1000, 0.2 * s.n_live_tup))",
        list(MARKETING_TABLES),
    )
    analyzed = []
    for row in rows:
        await pool.execute(f'ANALYZE "{row["relname"]}"')
        analyzed.append(row["relname"])
    return analyzed
