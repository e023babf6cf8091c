"""Postgres I/O of the marketing state: a batch's state loaded in a few statements, applied in
memory (state.py), and written back with one statement per table, all in one transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from synergy_marketing.decisions import (
    BrandMarketing,
    Decision,
    History,
    Preferences,
    jsonable,
)
from synergy_marketing.state import (
    PRICE_DROPPED,
    BatchState,
    Cart,
    CartItem,
    Order,
    Person,
    Product,
    ProductView,
    Timer,
    Watch,
    WindowConfig,
    window_timers,
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


async def lock_persons(conn: asyncpg.Connection, persons: Iterable[tuple[str, str]]) -> None:
    """Serialises batches (of any replica) that touch the same person, e.g. through an identify."""
    keys = sorted({f"{brand}:{person}" for brand, person in persons})
    if keys:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h"
            " FROM unnest($1::text[]) k ORDER BY 1) locks",
            keys,
        )


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


async def record_new_events(
    conn: asyncpg.Connection, events: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Marks (brand, event_id) applied; answers those not applied before (a redelivery changes nothing)."""
    if not events:
        return set()
    rows = await conn.fetch(
        "INSERT INTO marketing_applied_events (brand_id, event_id)"
        " SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING RETURNING brand_id, event_id",
        [int(brand) for brand, _ in events],
        [event_id for _, event_id in events],
    )
    return {(str(row["brand_id"]), row["event_id"].strip()) for row in rows}


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


async def load_window_timers(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str, str, str], tuple[int, datetime]]:
    """The persons' cart and browse timers (fired or not): identity -> (timer_id, due_at)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT x.timer_id, x.brand_id, x.person, x.trigger, x.subject, x.due_at"
        " FROM unnest($1::bigint[], $2::text[]) AS k(brand_id, person) CROSS JOIN LATERAL"
        " (SELECT * FROM marketing_timers x WHERE x.brand_id = k.brand_id AND x.person = k.person"
        "  AND x.trigger IN ('cart_abandoned', 'browse_abandoned') AND x.subject = '' OFFSET 0) x",
        [int(b) for b, _ in wanted],
        [p for _, p in wanted],
    )
    return {
        (str(row["brand_id"]), row["person"], row["trigger"], row["subject"]): (
            row["timer_id"],
            row["due_at"],
        )
        for row in rows
    }


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


async def load_products(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Product]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT x.* FROM unnest($1::bigint[], $2::text[]) AS k(brand_id, product_id) CROSS JOIN LATERAL"
        " (SELECT * FROM marketing_products x"
        "  WHERE x.brand_id = k.brand_id AND x.product_id = k.product_id OFFSET 0) x",
        [int(k[0]) for k in wanted],
        [k[1] for k in wanted],
    )
    return {
        (str(row["brand_id"]), row["product_id"]): Product(
            row["product_id"], row["changed_at"], row["product_name"], row["price"], row["in_stock"]
        )
        for row in rows
    }


async def save_batch(conn: asyncpg.Connection, state: BatchState, config: WindowConfig) -> None:
    """Writes back what the batch changed, one statement per table."""
    touched = sorted(state.touched | state.merged_away)
    await _save_views(conn, state, touched)
    await _save_carts(conn, state, touched)
    await _save_watches(conn, state)
    await _save_products(conn, state)
    await _save_identities(conn, state)
    await _save_timers(conn, state, config)


async def _save_views(
    conn: asyncpg.Connection, state: BatchState, touched: Sequence[tuple[str, str]]
) -> None:
    if not touched:
        return
    await conn.execute(
        _delete_each("product_views", "x.brand_id = k.brand_id AND x.person = k.person"),
        [int(b) for b, _ in touched],
        [p for _, p in touched],
    )
    rows = []
    for key in touched:
        person = state.persons.get(key)
        if person is None:
            continue
        for view in person.views.values():
            rows.append(
                (
                    int(key[0]),
                    key[1],
                    key[1] if not key[1].startswith("anon:") else None,
                    *tuple(getattr(view, name) for name in VIEW_COLUMNS),
                )
            )
    if not rows:
        return
    columns = ("brand_id", "person", "user_id", *VIEW_COLUMNS)
    types = ("bigint", "text", "text", *VIEW_TYPES)
    await conn.execute(
        f"INSERT INTO product_views ({', '.join(columns)}) SELECT * FROM {_unnest(columns, types)}",
        *_columns(rows, len(columns)),
    )


async def _save_carts(
    conn: asyncpg.Connection, state: BatchState, touched: Sequence[tuple[str, str]]
) -> None:
    if not touched:
        return
    await conn.execute(
        _delete_each("carts", "x.brand_id = k.brand_id AND x.person = k.person"),
        [int(b) for b, _ in touched],
        [p for _, p in touched],
    )
    carts = []
    items = []
    for key in touched:
        person = state.persons.get(key)
        if person is None:
            continue
        cart = person.cart
        if cart.last_changed_at is None and cart.last_order_at is None and not cart.items:
            continue
        carts.append(
            (int(key[0]), key[1], cart.cart_id, cart.currency, cart.last_changed_at, cart.last_order_at)
        )
        for item in cart.items.values():
            items.append((int(key[0]), key[1], *tuple(getattr(item, name) for name in ITEM_COLUMNS)))
    if carts:
        columns = ("brand_id", "person", "cart_id", "currency", "last_changed_at", "last_order_at")
        types = ("bigint", "text", "text", "text", "timestamptz", "timestamptz")
        await conn.execute(
            f"INSERT INTO carts ({', '.join(columns)}) SELECT * FROM {_unnest(columns, types)}",
            *_columns(carts, len(columns)),
        )
    if items:
        item_columns = ("brand_id", "person", *ITEM_COLUMNS)
        item_types = ("bigint", "text", *ITEM_TYPES)
        await conn.execute(
            f"INSERT INTO cart_items ({', '.join(item_columns)})"
            f" SELECT * FROM {_unnest(item_columns, item_types)}",
            *_columns(items, len(item_columns)),
        )


async def _save_watches(conn: asyncpg.Connection, state: BatchState) -> None:
    changed = sorted(state.changed_watches)
    if not changed:
        return
    await conn.execute(
        _delete_each(
            "watch_list",
            "x.brand_id = k.brand_id AND x.user_id = k.person AND x.product_id = k.subject",
            with_subject=True,
        ),
        [int(k[0]) for k in changed],
        [k[1] for k in changed],
        [k[2] for k in changed],
    )
    rows = []
    for key in changed:
        watch = state.watches.get(key)
        if watch is not None:
            rows.append((int(key[0]), key[1], *tuple(getattr(watch, name) for name in WATCH_COLUMNS)))
    if rows:
        columns = ("brand_id", "user_id", *WATCH_COLUMNS)
        types = ("bigint", "text", *WATCH_TYPES)
        await conn.execute(
            f"INSERT INTO watch_list ({', '.join(columns)}) SELECT * FROM {_unnest(columns, types)}",
            *_columns(rows, len(columns)),
        )


async def _save_products(conn: asyncpg.Connection, state: BatchState) -> None:
    changed = sorted(state.changed_products)
    if not changed:
        return
    rows = []
    for key in changed:
        product = state.products[key]
        rows.append(
            (int(key[0]), key[1], product.product_name, product.price, product.in_stock, product.changed_at)
        )
    columns = ("brand_id", "product_id", "product_name", "price", "in_stock", "changed_at")
    types = ("bigint", "text", "text", "numeric", "bool", "timestamptz")
    await conn.execute(
        f"INSERT INTO marketing_products ({', '.join(columns)}) SELECT * FROM {_unnest(columns, types)}"
        " ON CONFLICT (brand_id, product_id) DO UPDATE SET product_name = EXCLUDED.product_name,"
        " price = EXCLUDED.price, in_stock = EXCLUDED.in_stock, changed_at = EXCLUDED.changed_at",
        *_columns(rows, len(columns)),
    )


async def _save_identities(conn: asyncpg.Connection, state: BatchState) -> None:
    if not state.new_identities:
        return
    rows = [(int(b), anon, user, at) for (b, anon), (user, at) in sorted(state.new_identities.items())]
    await conn.execute(
        "INSERT INTO marketing_identities (brand_id, anonymous_id, user_id, linked_at)"
        " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[])"
        " ON CONFLICT DO NOTHING",
        *_columns(rows, 4),
    )


async def _save_timers(conn: asyncpg.Connection, state: BatchState, config: WindowConfig) -> None:
    """Cart and browse deadlines follow the touched persons' state: new ones are made, moved ones
    re-armed, ones no longer called for (the cart emptied, an order) deleted. A deadline that fired
    and did not move stays fired. Catalog triggers add one timer per watch."""
    touched = sorted(state.touched | state.merged_away)
    desired: list[Timer] = []
    for key in touched:
        person = state.persons.get(key)
        if person is not None:
            desired.extend(window_timers(person, config))
    wanted = {timer.identity for timer in desired}
    existing = state.window_timers
    # Only the persons this batch changed: a redelivered event's person keeps its deadlines as they are.
    touched_set = set(touched)
    unwanted = [
        timer_id
        for identity, (timer_id, _) in existing.items()
        if identity not in wanted and (identity[0], identity[1]) in touched_set
    ]
    if unwanted:
        await conn.execute("DELETE FROM marketing_timers WHERE timer_id = ANY($1::bigint[])", unwanted)
    changed = [t for t in desired if t.identity not in existing or existing[t.identity][1] != t.due_at]
    dropped = sorted(state.dropped_watch_timers)
    if dropped:
        await conn.execute(
            _delete_each(
                "marketing_timers",
                "x.brand_id = k.brand_id AND x.person = k.person AND x.subject = k.subject"
                " AND x.trigger IN ('price_dropped', 'back_in_stock') AND x.fired_at IS NULL",
                with_subject=True,
            ),
            [int(d[0]) for d in dropped],
            [d[1] for d in dropped],
            [d[2] for d in dropped],
        )
    timers = changed + state.catalog_timers
    if timers:
        await upsert_timers(conn, timers)


async def upsert_timers(conn: asyncpg.Connection, timers: Sequence[Timer]) -> None:
    # A deadline that moved (or a watch's new trigger) is armed again; an unchanged one keeps its state.
    latest: dict[tuple[str, str, str, str], Timer] = {}
    for timer in timers:
        latest[timer.identity] = timer
    rows = [
        (int(t.brand_id), t.person, t.trigger, t.subject, t.due_at, jsonable(dict(t.details)))
        for t in latest.values()
    ]
    await conn.execute(
        "INSERT INTO marketing_timers (brand_id, person, trigger, subject, due_at, details)"
        " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],"
        " $6::jsonb[])"
        " ON CONFLICT (brand_id, person, trigger, subject) DO UPDATE SET due_at = EXCLUDED.due_at,"
        " details = EXCLUDED.details, fired_at = NULL"
        " WHERE marketing_timers.due_at IS DISTINCT FROM EXCLUDED.due_at"
        " OR marketing_timers.details IS DISTINCT FROM EXCLUDED.details",
        *_columns(rows, 6),
    )


# --- conversions and engagement ------------------------------------------------------------------


async def convert_orders(
    conn: asyncpg.Connection, orders: Sequence[Order], window: timedelta
) -> list[asyncpg.Record]:
    """Each order converts the sent item its `ref` names, else the user's latest sent item within the
    conversion window before it. Answers the converted items (brand, trigger_type, revenue)."""
    if not orders:
        return []
    return list(
        await conn.fetch(
            """
            WITH orders AS (
              SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                   $6::numeric[]) AS o(brand_id, user_id, ref, order_id, ordered_at, total)
            ), picked AS (
              SELECT DISTINCT ON (q.queue_id) q.queue_id, o.order_id, o.ordered_at, o.total
              FROM orders o
              JOIN LATERAL (
                SELECT m.queue_id, m.sent_at FROM marketing_queue m
                WHERE m.brand_id = o.brand_id AND m.status = 'sent'
                  AND ((o.ref IS NOT NULL AND m.queue_id = o.ref)
                       OR (m.user_id = o.user_id AND m.sent_at <= o.ordered_at + interval '5 minutes'
                           AND m.sent_at >= o.ordered_at - $7::interval))
                ORDER BY (m.queue_id = o.ref) DESC NULLS LAST, m.sent_at DESC
                LIMIT 1
              ) q ON TRUE
              ORDER BY q.queue_id, o.ordered_at
            )
            UPDATE marketing_queue m SET status = 'converted', converted = TRUE, converted_at = p.ordered_at,
                   conversion_order_id = p.order_id, conversion_revenue = p.total
            FROM picked p WHERE m.queue_id = p.queue_id AND NOT m.converted
            RETURNING m.brand_id, m.event_name, m.conversion_revenue
            """,
            [int(o.brand_id) for o in orders],
            [o.user_id for o in orders],
            [_ref_queue_id(o.ref) for o in orders],
            [o.order_id for o in orders],
            [o.ordered_at for o in orders],
            [o.total for o in orders],
            window,
        )
    )


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


MARKETING_TABLES = (
    "product_views",
    "carts",
    "cart_items",
    "watch_list",
    "marketing_timers",
    "marketing_queue",
    "marketing_applied_events",
    "marketing_identities",
    "marketing_products",
    "email_preferences",
)


async def analyze_grown_tables(pool: asyncpg.Pool) -> list[str]:
    """ANALYZE the marketing tables that changed by a fifth (and at least 1,000 rows) since their last
    analysis. They grow in bursts (a campaign, a replay, a backfill) much faster than autovacuum's
    naptime, and plans made on "this table is nearly empty" are slow for every batch meanwhile."""
    rows = await pool.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY($1::text[])"
        " AND n_mod_since_analyze > GREATEST(1000, 0.2 * n_live_tup)",
        list(MARKETING_TABLES),
    )
    analyzed = []
    for row in rows:
        await pool.execute(f'ANALYZE "{row["relname"]}"')
        analyzed.append(row["relname"])
    return analyzed
