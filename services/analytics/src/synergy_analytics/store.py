"""Postgres writes of analytics: month partitions, the action log (one statement per batch), read models."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from synergy_analytics.records import (
    BalanceSeen,
    LogRow,
    Processed,
    ReadModelChange,
    ReferralConverted,
    ReferralInitiated,
    WishlistAdded,
    WishlistRemoved,
)

# The COPY row: a LogRow's fields, then the topic the event came from.
LOG_COLUMNS = (*LogRow._fields, "source_topic")
LOG_TYPES = (
    *("text", "timestamptz", "int8", "text", "text", "text", "text", "bool"),
    *("text", "text", "int4", "text", "text", "timestamptz", "text"),
)
_ARRAYS = ", ".join(f"${n}::{t}[]" for n, t in enumerate(LOG_TYPES, start=1))
_NAMES = ", ".join(LOG_COLUMNS)
_VALUES = ", ".join("action_data::jsonb" if c == "action_data" else c for c in LOG_COLUMNS)
# The same rows as one statement that skips the ids already logged (a redelivery).
INSERT_LOG = f"""
INSERT INTO user_action_log ({_NAMES})
SELECT {_VALUES} FROM unnest({_ARRAYS}) AS t({_NAMES})
ON CONFLICT DO NOTHING
RETURNING event_id
"""

LogRecord = tuple[object, ...]  # a LogRow's fields, then the source topic: LOG_COLUMNS


def log_record(row: LogRow, topic: str) -> LogRecord:
    return (*row, topic)


def month_of(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def add_months(month: datetime, months: int) -> datetime:
    index = month.year * 12 + month.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


class Partitions:
    """Which months have a partition; makes the missing ones (in their own short transaction)."""

    def __init__(self) -> None:
        self.known: set[datetime] = set()

    async def ensure(self, pool: asyncpg.Pool, months: set[datetime]) -> int:
        missing = sorted(months - self.known)
        made = 0
        for month in missing:
            made += int(await pool.fetchval("SELECT analytics_ensure_partitions($1, $1)", month))
            self.known.add(month)
        return made

    async def premake(self, pool: asyncpg.Pool, now: datetime, ahead: int) -> int:
        made = int(
            await pool.fetchval(
                "SELECT analytics_ensure_partitions($1, $2)",
                add_months(month_of(now), -1),
                add_months(month_of(now), ahead),
            )
        )
        self.known.update(add_months(month_of(now), m) for m in range(-1, ahead + 1))
        return made

    async def drop_before(self, pool: asyncpg.Pool, cutoff: datetime) -> list[str]:
        """Drop every partition whose months all lie before `cutoff` (rounded down to its month)."""
        dropped = [
            r[0] for r in await pool.fetch("SELECT analytics_drop_partitions_before($1)", month_of(cutoff))
        ]
        self.known = {m for m in self.known if m >= month_of(cutoff)}
        return dropped


async def log_connection_init(conn: asyncpg.Connection) -> None:
    """The log writer's connections take action_data as JSON text, in COPY's binary form (a version byte)."""
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda text: b"\x01" + text.encode(),
        decoder=lambda data: data[1:].decode(),
        schema="pg_catalog",
        format="binary",
    )


async def create_log_pool(database_url: str, max_size: int = 4) -> asyncpg.Pool:
    return await asyncpg.create_pool(database_url, min_size=1, max_size=max_size, init=log_connection_init)


async def write_batch(pool: asyncpg.Pool, batch: Sequence[tuple[LogRecord, Processed]]) -> set[str]:
    """The batch's rows into the log, and the read-model changes of the events that were new, in one
    transaction. Returns the ids of the events written now (not before).

    The rows go in with one COPY: a batch without read-model changes is that one statement, committed on
    its own (one round trip). A redelivered event makes the COPY fail on the primary key, which writes
    nothing; the batch is then written again with one INSERT ... ON CONFLICT DO NOTHING, which skips it.
    `pool` must be a log pool (`create_log_pool`)."""
    records = [record for record, _ in batch]
    changing = [processed for _, processed in batch if processed.changes]
    async with pool.acquire() as conn:
        copied = False
        try:
            async with conn.transaction() if changing else contextlib.nullcontext():
                await conn.copy_records_to_table("user_action_log", records=records, columns=LOG_COLUMNS)
                copied = True
                inserted = {processed.row.event_id for _, processed in batch}
                await apply_changes(conn, changing, inserted)
            return inserted
        except asyncpg.UniqueViolationError:
            if copied:
                raise
        async with conn.transaction():
            inserted = {r[0] for r in await conn.fetch(INSERT_LOG, *zip(*records, strict=True))}
            await apply_changes(conn, changing, inserted)
        return inserted


async def apply_changes(conn: asyncpg.Connection, changing: Sequence[Processed], inserted: set[str]) -> None:
    for processed in changing:
        if processed.row.event_id in inserted:
            for change in processed.changes:
                await apply_change(conn, processed.row, change)


USER_PK = """
WITH made AS (
  INSERT INTO users (brand_id, external_id) VALUES ($1, $2)
  ON CONFLICT (brand_id, external_id) DO NOTHING RETURNING id)
SELECT id FROM made UNION ALL SELECT id FROM users WHERE brand_id = $1 AND external_id = $2 LIMIT 1
"""

# On event time: a goal is met once both its points (as of the balance seen) and its referrals are; events of
# different users (a referee's conversion, the referrer's balance) may be processed in either order.
COMPLETE_GOALS = """
UPDATE user_goals SET completed_at = greatest($2, coalesce(balance_as_of, $2)), is_active = FALSE
WHERE user_id = $1 AND is_active AND completed_at IS NULL
  AND current_points >= coalesce(target_points, 0) AND current_referrals >= coalesce(target_referrals, 0)
"""

# Referrals converted by the time of the event at hand (event time, whatever order events arrive in).
CONVERTED_REFERRALS = """SELECT count(*) FROM referrals
WHERE referrer_user_id = $1 AND status = 'converted' AND converted_at <= $2"""


async def user_pk(conn: asyncpg.Connection, brand_id: int, external_id: str) -> int:
    return int(await conn.fetchval(USER_PK, brand_id, external_id))


async def apply_change(conn: asyncpg.Connection, row: LogRow, change: ReadModelChange) -> None:
    brand, at, event_id = row.brand_id, row.occurred_at, row.event_id
    if isinstance(change, WishlistAdded):
        user = await user_pk(conn, brand, change.user_id)
        product = (
            await conn.fetchval(
                "SELECT id FROM products WHERE brand_id = $1 AND sku = $2", brand, change.product_ref
            )
            if change.product_ref
            else None
        )
        await conn.execute(
            """INSERT INTO wishlists (user_id, product_id, wishlist_item_id, product_ref, points_needed,
                                      referrals_needed, added_at, source_event_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (user_id, wishlist_item_id) DO UPDATE SET
                 product_id = EXCLUDED.product_id, product_ref = EXCLUDED.product_ref,
                 points_needed = EXCLUDED.points_needed, referrals_needed = EXCLUDED.referrals_needed,
                 added_at = EXCLUDED.added_at, source_event_id = EXCLUDED.source_event_id
               WHERE wishlists.added_at <= EXCLUDED.added_at""",
            user,
            product,
            change.wishlist_item_id,
            change.product_ref,
            change.points_needed,
            change.referrals_needed,
            at,
            event_id,
        )
        referrals = int(await conn.fetchval(CONVERTED_REFERRALS, user, at))
        await conn.execute(
            """INSERT INTO user_goals (user_id, product_id, goal_type, target_points, target_referrals,
                                       current_points, current_referrals, goal_name, wishlist_item_id,
                                       product_ref, started_at, balance_as_of)
               SELECT $1, $2, 'wishlist_item', $3, $4,
                      greatest(coalesce(seen.current_points, u.points_balance), 0),
                      $5, $6, $7, $8, $9, seen.balance_as_of
               FROM users u LEFT JOIN LATERAL (
                 SELECT g.current_points, g.balance_as_of FROM user_goals g
                 WHERE g.user_id = u.id AND g.balance_as_of IS NOT NULL
                 ORDER BY g.balance_as_of DESC LIMIT 1) seen ON TRUE
               WHERE u.id = $1
               ON CONFLICT (user_id, wishlist_item_id) DO UPDATE SET
                 target_points = EXCLUDED.target_points, target_referrals = EXCLUDED.target_referrals,
                 is_active = user_goals.completed_at IS NULL""",
            user,
            product,
            change.points_needed,
            change.referrals_needed,
            referrals,
            f"wishlist {change.wishlist_item_id}"[:255],
            change.wishlist_item_id,
            change.product_ref,
            at,
        )
        await conn.execute(COMPLETE_GOALS, user, at)
    elif isinstance(change, WishlistRemoved):
        user = await user_pk(conn, brand, change.user_id)
        matches = "user_id = $1 AND (wishlist_item_id = $2 OR ($2::text IS NULL AND product_ref = $3))"
        await conn.execute(
            f"DELETE FROM wishlists WHERE {matches} AND added_at <= $4",
            user,
            change.wishlist_item_id,
            change.product_ref,
            at,
        )
        await conn.execute(
            f"UPDATE user_goals SET is_active = FALSE WHERE {matches} AND completed_at IS NULL "
            "AND started_at <= $4",
            user,
            change.wishlist_item_id,
            change.product_ref,
            at,
        )
    elif isinstance(change, ReferralInitiated):
        referrer = await user_pk(conn, brand, change.referrer_user_id)
        if change.code:
            await conn.execute(
                """INSERT INTO referral_codes (user_id, brand_id, code, created_at, source_event_id)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (brand_id, code) DO NOTHING""",
                referrer,
                brand,
                change.code,
                at,
                event_id,
            )
        # Events of different users may be processed in either order: a conversion seen first (the
        # referee's key) left a converted row without its initiation; the initiation completes it.
        attached = await conn.fetchval(
            """UPDATE referrals SET initiated_event_id = $6, created_at = least(created_at, $5),
                 email = coalesce(email, $4)
               WHERE id = (SELECT id FROM referrals
                           WHERE brand_id = $1 AND referrer_user_id = $2 AND referral_code = $3
                             AND status = 'converted' AND initiated_event_id IS NULL AND converted_at >= $5
                           ORDER BY converted_at, id LIMIT 1 FOR UPDATE)
                 AND NOT EXISTS (SELECT 1 FROM referrals WHERE initiated_event_id = $6)
               RETURNING id""",
            brand,
            referrer,
            change.code or "",
            change.email,
            at,
            event_id,
        )
        if attached is None:
            await conn.execute(
                """INSERT INTO referrals (brand_id, referrer_user_id, referral_code, email, status,
                                          created_at,
                                          initiated_event_id)
                   VALUES ($1, $2, $3, $4, 'pending', $5, $6) ON CONFLICT (initiated_event_id) DO NOTHING""",
                brand,
                referrer,
                change.code or "",
                change.email,
                at,
                event_id,
            )
    elif isinstance(change, ReferralConverted):
        await convert_referral(conn, row, change)
    elif isinstance(change, BalanceSeen):
        user = await user_pk(conn, brand, change.user_id)
        referrals = change.referrals_completed
        if referrals is None:
            referrals = int(await conn.fetchval(CONVERTED_REFERRALS, user, at))
        await conn.execute(
            """UPDATE user_goals SET current_points = greatest($2, 0), current_referrals = $3,
                 balance_as_of = $4
               WHERE user_id = $1 AND is_active AND (balance_as_of IS NULL OR balance_as_of <= $4)""",
            user,
            change.points_balance,
            referrals,
            at,
        )
        await conn.execute(COMPLETE_GOALS, user, at)


async def convert_referral(conn: asyncpg.Connection, row: LogRow, change: ReferralConverted) -> None:
    brand, at = row.brand_id, row.occurred_at
    referrer: int | None = None
    if change.code:
        referrer = await conn.fetchval(
            "SELECT user_id FROM referral_codes WHERE brand_id = $1 AND code = $2", brand, change.code
        )
    if referrer is None and change.referrer_user_id:
        referrer = await user_pk(conn, brand, change.referrer_user_id)
    if referrer is None:
        return
    referee = await user_pk(conn, brand, change.referee_user_id)
    updated = await conn.fetchval(
        """UPDATE referrals SET status = 'converted', referee_user_id = $3, converted_at = $5,
             points_awarded_to_referrer = $6, converted_event_id = $7
           WHERE id = (SELECT id FROM referrals
                       WHERE brand_id = $1 AND referrer_user_id = $2 AND status = 'pending'
                         AND ($4::text IS NULL OR referral_code IN ($4, ''))
                         AND (email IS NULL OR $8::text IS NULL OR email = $8)
                       ORDER BY (referral_code = coalesce($4, '')) DESC, created_at, id
                       LIMIT 1 FOR UPDATE)
           RETURNING id""",
        brand,
        referrer,
        referee,
        change.code,
        at,
        change.points_awarded_to_referrer,
        row.event_id,
        change.email,
    )
    if updated is None:
        await conn.execute(
            """INSERT INTO referrals (brand_id, referrer_user_id, referee_user_id, referral_code, email,
                 status, converted_at, points_awarded_to_referrer, created_at, converted_event_id)
               VALUES ($1, $2, $3, $4, $5, 'converted', $6, $7, $6, $8)
               ON CONFLICT (converted_event_id) DO NOTHING""",
            brand,
            referrer,
            referee,
            change.code or "",
            change.email,
            at,
            change.points_awarded_to_referrer,
            row.event_id,
        )
    await conn.execute(
        """UPDATE user_goals SET current_referrals = (SELECT count(*) FROM referrals
             WHERE referrer_user_id = $1 AND status = 'converted')
           WHERE user_id = $1 AND is_active""",
        referrer,
    )
    await conn.execute(COMPLETE_GOALS, referrer, at)
