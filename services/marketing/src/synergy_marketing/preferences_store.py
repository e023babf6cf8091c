"""Postgres I/O of email preferences: read, change (with its audit/outbox row), and the relay that
publishes the outbox to synergy.marketing.v1 in order.

The decision of what a change does is synergy_marketing.email_preferences (pure); this module only loads,
locks, stores and publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from synergy_schemas.envelope import Envelope, Identifiers
from ulid import ULID

from synergy_marketing import preference_metrics as pm
from synergy_marketing.email_preferences import (
    FLAGS,
    AppliedChange,
    ChangeSource,
    EmailPreferences,
    SubscriptionChange,
    apply_change,
    customer_io_attributes,
)
from synergy_marketing.publisher import MarketingPublisher

EMAIL_PREFERENCES_CHANGED = "email_preferences_changed"
SOURCE = "marketing"
# Any two-int key of our own: one relay at a time, so a user's changes are published in their order.
_RELAY_LOCK = (0x6D6B74, 10)
_COLUMNS = ", ".join(("email", *FLAGS, "unsubscribed_at", "created_at", "updated_at"))
logger = structlog.get_logger("marketing.preferences")


def _row_to_preferences(row: Mapping[str, Any]) -> EmailPreferences:
    return EmailPreferences(
        flags={name: bool(row[name]) for name in FLAGS},
        email=row["email"],
        unsubscribed_at=row["unsubscribed_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def user_known(connection: asyncpg.Connection, brand_id: int, user_id: str) -> bool:
    """Whether the brand knows this user at all: a user row, stored preferences, or marketing state.
    A user of another brand is not known here, exactly like one nobody ever saw."""
    return bool(
        await connection.fetchval(
            """SELECT EXISTS (SELECT 1 FROM email_preferences WHERE brand_id = $1 AND user_id = $2)
                   OR EXISTS (SELECT 1 FROM users WHERE brand_id = $1 AND external_id = $2)
                   OR EXISTS (SELECT 1 FROM product_views WHERE brand_id = $1 AND person = $2)
                   OR EXISTS (SELECT 1 FROM carts WHERE brand_id = $1 AND person = $2)
                   OR EXISTS (SELECT 1 FROM watch_list WHERE brand_id = $1 AND user_id = $2)
                   OR EXISTS (SELECT 1 FROM marketing_queue WHERE brand_id = $1 AND user_id = $2)""",
            brand_id,
            user_id,
        )
    )


async def read_preferences(connection: asyncpg.Connection, brand_id: int, user_id: str) -> EmailPreferences:
    """The stored preferences, or the defaults when there is no row; the email falls back to the user's."""
    row = await connection.fetchrow(
        f"""SELECT {_COLUMNS} FROM email_preferences WHERE brand_id = $1 AND user_id = $2""",
        brand_id,
        user_id,
    )
    preferences = EmailPreferences() if row is None else _row_to_preferences(row)
    if preferences.email is None:
        email = await connection.fetchval(
            "SELECT email FROM users WHERE brand_id = $1 AND external_id = $2", brand_id, user_id
        )
        if email:
            preferences = replace(preferences, email=email)
    return preferences


def preferences_changed_envelope(
    brand_id: int, user_id: str, applied: AppliedChange, source: ChangeSource, now: datetime
) -> Envelope:
    """An identify: its data is exactly the person attributes Customer.io should hold (cio-sink maps an
    identify's data to attributes), `unsubscribed` being Customer.io's own unsubscribe attribute.

    Built without validating it again (one per change on the one-click path): every field is made here,
    and the user id was checked where it came in (path, signed token, webhook) and fits the column."""
    event_id = str(ULID.from_datetime(now))
    return Envelope.model_construct(
        event_id=event_id,
        type="identify",
        name=EMAIL_PREFERENCES_CHANGED,
        brand_id=str(brand_id),
        identifiers=Identifiers.model_construct(id=user_id),
        data=customer_io_attributes(applied.after),
        timestamp=now,
        received_at=now,
        source=SOURCE,
        correlation_id=f"email-preferences:{source}:{event_id}",
    )


async def change_preferences(
    pool: asyncpg.Pool,
    brand_id: int,
    user_id: str,
    change: Mapping[str, Any],
    source: ChangeSource,
    now: datetime | None = None,
    *,
    unless_changed_since: bool = False,
) -> AppliedChange:
    """Apply a partial change under a row lock; when anything changed, store it with its outbox row in the
    same transaction. Publishing is the relay's job (`PreferenceChangeRelay.wake`).

    `unless_changed_since`: `now` is when the change happened elsewhere (Customer.io); a field changed
    here at or after that time is left as it is, so a late webhook never undoes a newer choice."""
    now = now or datetime.now(UTC)
    async with pool.acquire(timeout=5) as connection, connection.transaction():
        await connection.execute(
            """INSERT INTO email_preferences (brand_id, user_id) VALUES ($1, $2)
               ON CONFLICT (brand_id, user_id) DO NOTHING""",
            brand_id,
            user_id,
        )
        row = await connection.fetchrow(
            f"""SELECT {_COLUMNS} FROM email_preferences
                WHERE brand_id = $1 AND user_id = $2 FOR UPDATE""",
            brand_id,
            user_id,
        )
        assert row is not None
        if unless_changed_since:
            newer = await connection.fetch(
                """SELECT DISTINCT jsonb_object_keys(changes) AS field FROM email_preference_changes
                   WHERE brand_id = $1 AND user_id = $2 AND changed_at >= $3""",
                brand_id,
                user_id,
                now,
            )
            change = {k: v for k, v in change.items() if k not in {r["field"] for r in newer}}
        applied = apply_change(_row_to_preferences(row), change, now)
        if not applied.any:
            return applied
        after = applied.after
        assignments = ", ".join(f"{name} = ${index + 3}" for index, name in enumerate(FLAGS))
        offset = len(FLAGS) + 3
        await connection.execute(
            f"""UPDATE email_preferences SET {assignments}, email = ${offset},
                    unsubscribed_at = ${offset + 1}
                WHERE brand_id = $1 AND user_id = $2""",
            brand_id,
            user_id,
            *(after.flag(name) for name in FLAGS),
            after.email,
            after.unsubscribed_at,
        )
        envelope = preferences_changed_envelope(brand_id, user_id, applied, source, now)
        changes = {name: [_jsonable(old), _jsonable(new)] for name, (old, new) in applied.changed.items()}
        await connection.execute(
            """INSERT INTO email_preference_changes (brand_id, user_id, source, changes, envelope, changed_at)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            brand_id,
            user_id,
            source,
            changes,
            orjson.loads(envelope.to_json_bytes()),
            now,
        )
    return applied


_UPDATE = (
    "UPDATE email_preferences SET "
    + ", ".join(f"{name} = ${index + 3}" for index, name in enumerate(FLAGS))
    + f", email = ${len(FLAGS) + 3}, unsubscribed_at = ${len(FLAGS) + 4} WHERE brand_id = $1 AND user_id = $2"
)
_INSERT_CHANGE = """
    INSERT INTO email_preference_changes (brand_id, user_id, source, changes, envelope, changed_at)
    VALUES ($1, $2, $3, $4, $5, $6)"""


@dataclass
class PendingChange:
    brand_id: int
    user_id: str
    change: Mapping[str, Any]
    source: ChangeSource
    now: datetime
    future: asyncio.Future[AppliedChange]


_FLAG_ARRAYS = ", ".join(f"${index + 3}::boolean[]" for index in range(len(FLAGS)))
_FLAG_COLUMNS = ", ".join(FLAGS)
# One statement: the changed rows' new values, and their audit/outbox rows (arrays, so one round trip).
_SAVE_BATCH = f"""
    WITH v AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], {_FLAG_ARRAYS},
                             ${len(FLAGS) + 3}::text[], ${len(FLAGS) + 4}::timestamptz[])
            AS v(brand_id, user_id, {_FLAG_COLUMNS}, email, unsubscribed_at)
    ), saved AS (
        UPDATE email_preferences e SET {", ".join(f"{name} = v.{name}" for name in FLAGS)},
               email = v.email, unsubscribed_at = v.unsubscribed_at
        FROM v WHERE e.brand_id = v.brand_id AND e.user_id = v.user_id
    )
    INSERT INTO email_preference_changes (brand_id, user_id, source, changes, envelope, changed_at)
    SELECT a.brand_id, a.user_id, a.source, a.changes::jsonb, a.envelope::jsonb, a.changed_at
    FROM unnest(${len(FLAGS) + 5}::bigint[], ${len(FLAGS) + 6}::text[], ${len(FLAGS) + 7}::text[],
                ${len(FLAGS) + 8}::text[], ${len(FLAGS) + 9}::text[], ${len(FLAGS) + 10}::timestamptz[])
        AS a(brand_id, user_id, source, changes, envelope, changed_at)
"""  # a data-modifying WITH runs whether or not the INSERT reads it


def _apply_in_order(
    batch: Sequence[PendingChange], current: dict[tuple[int, str], EmailPreferences]
) -> list[AppliedChange]:
    """Each change on top of the one before it for the same user (updates `current`)."""
    results = []
    for item in batch:
        key = (item.brand_id, item.user_id)
        applied = apply_change(current[key], item.change, item.now)
        current[key] = applied.after
        results.append(applied)
    return results


async def change_preferences_batch(
    connection: asyncpg.Connection, batch: Sequence[PendingChange]
) -> list[AppliedChange]:
    """Many users' changes in one transaction (group commit), each change applied in arrival order on top
    of the one before it.

    Users without a row (most one-click unsubscribes) are inserted with their final values at once; the
    insert's RETURNING tells which keys were new. The others are read FOR UPDATE in key order (no deadlock
    between replicas), their changes applied to what is stored, and updated."""
    keys = sorted({(item.brand_id, item.user_id) for item in batch})
    speculative = {key: EmailPreferences() for key in keys}
    assumed_new = _apply_in_order(batch, speculative)
    inserted = await connection.fetch(
        f"""INSERT INTO email_preferences (brand_id, user_id, {_FLAG_COLUMNS}, email, unsubscribed_at)
            SELECT * FROM unnest($1::bigint[], $2::text[], {_FLAG_ARRAYS},
                                 ${len(FLAGS) + 3}::text[], ${len(FLAGS) + 4}::timestamptz[])
            ORDER BY 1, 2
            ON CONFLICT (brand_id, user_id) DO NOTHING
            RETURNING brand_id, user_id""",
        [key[0] for key in keys],
        [key[1] for key in keys],
        *([speculative[key].flag(name) for key in keys] for name in FLAGS),
        [speculative[key].email for key in keys],
        [speculative[key].unsubscribed_at for key in keys],
    )
    new_keys = {(row["brand_id"], row["user_id"]) for row in inserted}
    existing = [key for key in keys if key not in new_keys]
    stored: dict[tuple[int, str], EmailPreferences] = {}
    if existing:
        rows = await connection.fetch(
            f"""SELECT brand_id, user_id, {_COLUMNS} FROM email_preferences
                WHERE (brand_id, user_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))
                ORDER BY brand_id, user_id FOR UPDATE""",
            [key[0] for key in existing],
            [key[1] for key in existing],
        )
        stored = {(row["brand_id"], row["user_id"]): _row_to_preferences(row) for row in rows}
    on_stored = _apply_in_order([item for item in batch if (item.brand_id, item.user_id) in stored], stored)
    stored_results = iter(on_stored)
    results = [
        next(stored_results) if (item.brand_id, item.user_id) in stored else applied
        for item, applied in zip(batch, assumed_new, strict=True)
    ]
    audit: list[tuple[Any, ...]] = []
    for item, applied in zip(batch, results, strict=True):
        if not applied.any:
            continue
        audit.append(_audit_row(item, applied))
    if audit:
        changed_keys = {(i.brand_id, i.user_id) for i, r in zip(batch, results, strict=True) if r.any}
        changed_rows = sorted((key, prefs) for key, prefs in stored.items() if key in changed_keys)
        await connection.execute(
            _SAVE_BATCH,
            [brand for (brand, _), _ in changed_rows],
            [user for (_, user), _ in changed_rows],
            *([prefs.flag(name) for _, prefs in changed_rows] for name in FLAGS),
            [prefs.email for _, prefs in changed_rows],
            [prefs.unsubscribed_at for _, prefs in changed_rows],
            *([row[column] for row in audit] for column in range(6)),
        )
    return results


def _audit_row(item: PendingChange, applied: AppliedChange) -> tuple[Any, ...]:
    """The audit/outbox row of an applied change: what changed, and the envelope the relay publishes."""
    envelope = preferences_changed_envelope(item.brand_id, item.user_id, applied, item.source, item.now)
    changes = {name: [_jsonable(old), _jsonable(new)] for name, (old, new) in applied.changed.items()}
    return (
        item.brand_id,
        item.user_id,
        item.source,
        orjson.dumps(changes).decode(),
        envelope.to_json_bytes().decode(),
        item.now,
    )


def _placeholders(first: int, types: Sequence[str]) -> str:
    return ", ".join(f"${first + index}::{kind}[]" for index, kind in enumerate(types))


_ROW_TYPES = (*("boolean" for _ in FLAGS), "text", "timestamptz")
_ROW_NAMES = (*FLAGS, "email", "unsubscribed_at")
_AUDIT_TYPES = ("bigint", "text", "text", "text", "text", "timestamptz")


def _audit_insert(first: int, written: str) -> str:
    """The audit/outbox rows (arrays from parameter `first` on) of the keys the CTE `written` returned."""
    return f"""
        INSERT INTO email_preference_changes (brand_id, user_id, source, changes, envelope, changed_at)
        SELECT a.brand_id, a.user_id, a.source, a.changes::jsonb, a.envelope::jsonb, a.changed_at
        FROM unnest({_placeholders(first, _AUDIT_TYPES)}) WITH ORDINALITY
            AS a(brand_id, user_id, source, changes, envelope, changed_at, position)
        JOIN {written} w ON w.brand_id = a.brand_id AND w.user_id = a.user_id
        ORDER BY a.position"""


_NEW_COUNT = 3 + len(_ROW_TYPES)
# One statement (so one round trip and its own transaction): the users without a row get one with their
# change applied to the defaults, with its audit/outbox row; the stored rows are read as they were before
# the statement. Rows are inserted in key order, so concurrent writers never deadlock.
_INSERT_NEW_READ_STORED = f"""
    WITH v AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::boolean[], {_placeholders(4, _ROW_TYPES)})
            AS v(brand_id, user_id, changes_defaults, {", ".join(_ROW_NAMES)})
    ), inserted AS (
        INSERT INTO email_preferences (brand_id, user_id, {", ".join(_ROW_NAMES)})
        SELECT brand_id, user_id, {", ".join(_ROW_NAMES)} FROM v WHERE changes_defaults
        ORDER BY brand_id, user_id
        ON CONFLICT (brand_id, user_id) DO NOTHING
        RETURNING brand_id, user_id
    ), audit AS ({_audit_insert(_NEW_COUNT + 1, "inserted")}
    )
    SELECT v.brand_id, v.user_id,
           EXISTS (SELECT 1 FROM inserted i WHERE i.brand_id = v.brand_id AND i.user_id = v.user_id)
               AS inserted,
           e.brand_id IS NOT NULL AS stored, {", ".join(f"e.{name}" for name in _ROW_NAMES)},
           e.created_at, e.updated_at
    FROM v LEFT JOIN email_preferences e ON e.brand_id = v.brand_id AND e.user_id = v.user_id
"""
_UPDATE_COUNT = 2 + 2 * len(_ROW_TYPES)
# One statement: stored rows get their new values only where they still hold what was read (another
# writer, or another replica, may have changed one since), with their audit/outbox rows; the keys saved
# are returned.
_UPDATE_UNCHANGED = f"""
    WITH v AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], {_placeholders(3, _ROW_TYPES)},
                             {_placeholders(3 + len(_ROW_TYPES), _ROW_TYPES)})
            AS v(brand_id, user_id, {", ".join(f"old_{name}" for name in _ROW_NAMES)},
                 {", ".join(f"new_{name}" for name in _ROW_NAMES)})
    ), saved AS (
        UPDATE email_preferences e SET {", ".join(f"{name} = v.new_{name}" for name in _ROW_NAMES)}
        FROM v
        WHERE e.brand_id = v.brand_id AND e.user_id = v.user_id
          AND {" AND ".join(f"e.{name} IS NOT DISTINCT FROM v.old_{name}" for name in _ROW_NAMES)}
        RETURNING e.brand_id, e.user_id
    ), audit AS ({_audit_insert(_UPDATE_COUNT + 1, "saved")}
    )
    SELECT brand_id, user_id FROM saved
"""


def _row_values(preferences: Sequence[EmailPreferences]) -> list[list[Any]]:
    columns: list[list[Any]] = [[prefs.flag(name) for prefs in preferences] for name in FLAGS]
    columns.append([prefs.email for prefs in preferences])
    columns.append([prefs.unsubscribed_at for prefs in preferences])
    return columns


def _audit_columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [[row[column] for row in rows] for column in range(len(_AUDIT_TYPES))]


# Told each item's applied change (by its index in the batch) as soon as it is in Postgres.
Saved = Callable[[int, AppliedChange], None]


def _nothing_to_tell(index: int, applied: AppliedChange) -> None:
    pass


async def save_changes(
    connection: asyncpg.Connection, batch: Sequence[PendingChange], saved: Saved = _nothing_to_tell
) -> list[AppliedChange | None]:
    """Many users' changes, at most one per user, in one or two statements and no explicit transaction,
    so a batch of one-click unsubscribes of users without a row costs one round trip.

    1. One statement inserts the users without a row (their change applied to the defaults) with their
       audit/outbox rows, and reads the stored rows of the others.
    2. Where a stored row changes, one statement updates it, with its audit/outbox row, only if it still
       holds what step 1 read.

    Each item's applied change, or None where another writer got to the row in between (nothing of that
    item was written; the caller applies it again under a row lock). `saved` hears of each item as soon
    as its statement returned, so when the second statement fails, the first one's are still answered
    as stored (they are)."""
    keys = [(item.brand_id, item.user_id) for item in batch]
    if len(set(keys)) != len(keys):
        raise ValueError("save_changes takes at most one change per user")
    on_defaults = [apply_change(None, item.change, item.now) for item in batch]
    new_audit = [
        _audit_row(item, applied) for item, applied in zip(batch, on_defaults, strict=True) if applied.any
    ]
    rows = await connection.fetch(
        _INSERT_NEW_READ_STORED,
        [key[0] for key in keys],
        [key[1] for key in keys],
        [applied.any for applied in on_defaults],
        *_row_values([applied.after for applied in on_defaults]),
        *_audit_columns(new_audit),
    )
    found = {(row["brand_id"], row["user_id"]): row for row in rows}
    results: list[AppliedChange | None] = []
    to_update: list[tuple[int, EmailPreferences, AppliedChange]] = []
    for index, (item, key, applied) in enumerate(zip(batch, keys, on_defaults, strict=True)):
        row = found[key]
        if row["inserted"]:
            results.append(applied)
        elif row["stored"]:
            stored = _row_to_preferences(row)
            on_stored = apply_change(stored, item.change, item.now)
            results.append(on_stored)
            if on_stored.any:
                to_update.append((index, stored, on_stored))
        else:  # no row when read, yet the insert met one: another writer's, committed meanwhile
            results.append(None if applied.any else applied)
    updating = {index for index, _, _ in to_update}
    for index, result in enumerate(results):
        if result is not None and index not in updating:
            saved(index, result)
    if to_update:
        updated = await connection.fetch(
            _UPDATE_UNCHANGED,
            [keys[index][0] for index, _, _ in to_update],
            [keys[index][1] for index, _, _ in to_update],
            *_row_values([stored for _, stored, _ in to_update]),
            *_row_values([applied.after for _, _, applied in to_update]),
            *_audit_columns([_audit_row(batch[index], applied) for index, _, applied in to_update]),
        )
        updated_keys = {(row["brand_id"], row["user_id"]) for row in updated}
        for index, _, applied in to_update:
            if keys[index] in updated_keys:
                saved(index, applied)
            else:
                results[index] = None
    return results


async def save_batch(
    connection: asyncpg.Connection, batch: Sequence[PendingChange], saved: Saved = _nothing_to_tell
) -> list[AppliedChange]:
    """`save_changes`, then the changes it could not save (another writer got to their rows in between)
    once more in a transaction that reads their rows FOR UPDATE."""
    results = await save_changes(connection, batch, saved)
    raced = [index for index, applied in enumerate(results) if applied is None]
    if raced:
        async with connection.transaction():
            locked = await change_preferences_batch(connection, [batch[index] for index in raced])
        for index, applied in zip(raced, locked, strict=True):
            results[index] = applied
            saved(index, applied)
    return [applied for applied in results if applied is not None]


UserKey = tuple[int, str]


def next_batch(
    waiting: Sequence[PendingChange], in_flight: set[UserKey], max_batch: int
) -> tuple[list[PendingChange], list[PendingChange]]:
    """The batch to write now, and what keeps waiting: at most one change per user, and none for a user
    whose change is still being written, so each user's changes are written one after another in the
    order they came."""
    batch: list[PendingChange] = []
    later: list[PendingChange] = []
    held = set(in_flight)
    for item in waiting:
        user = (item.brand_id, item.user_id)
        (later if user in held or len(batch) >= max_batch else batch).append(item)
        held.add(user)
    return batch, later


def _usable(connection: asyncpg.Connection) -> bool:
    """Whether a connection kept from an earlier batch still works (the pool takes back one whose
    server went away, after which even asking raises)."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


class PreferenceWriter:
    """Queues changes from concurrent requests and writes them in batches (group commit): a request is
    answered once its change is committed, so a 200 still means it is in Postgres.

    - Up to `writers` batches are written at once, each on a pooled connection its writer keeps. A free
      writer takes everything waiting (`next_batch`), so a change waits for a free writer, never for a
      particular one, and the busier it gets, the more changes share a statement.
    - A batch is `save_batch`: one statement for users without a row, a second one for stored rows that
      change; the rare change whose row another writer touched in between is applied again under a lock.
    - The queue is bounded: when it is full, callers wait (backpressure) instead of piling up."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 200, writers: int = 2, max_queued: int = 5_000):
        self._pool = pool
        self._max_batch = max_batch
        self._writers = writers
        self._queue: asyncio.Queue[PendingChange] = asyncio.Queue(maxsize=max_queued)

    async def change(
        self,
        brand_id: int,
        user_id: str,
        change: Mapping[str, Any],
        source: ChangeSource,
        now: datetime | None = None,
    ) -> AppliedChange:
        now = now or datetime.now(UTC)
        apply_change(None, change, now)  # refuses unknown fields here, before they reach a batch
        future: asyncio.Future[AppliedChange] = asyncio.get_running_loop().create_future()
        await self._queue.put(PendingChange(brand_id, user_id, change, source, now, future))
        return await future

    async def _write(
        self, connection: asyncpg.Connection | None, batch: list[PendingChange]
    ) -> asyncpg.Connection | None:
        """Writes the batch and answers its callers; the connection to keep (None when it may be broken)."""
        try:
            if connection is not None and not _usable(connection):  # Postgres restarted since the last batch
                await self._release(connection)
                connection = None
            if connection is None:
                connection = await self._pool.acquire(timeout=5)

            def answer(index: int, applied: AppliedChange) -> None:
                if not batch[index].future.done():
                    batch[index].future.set_result(applied)

            await save_batch(connection, batch, answer)
        except asyncio.CancelledError:  # shutting down: the statement may be half way, so the connection goes
            for item in batch:
                item.future.cancel()
            if connection is not None:
                connection.terminate()
                await self._release(connection)
            raise
        except asyncpg.DataError as exc:
            if len(batch) > 1:  # one bad change must not fail the others: each alone (those not yet saved)
                for item in batch:
                    if not item.future.done():
                        connection = await self._write(connection, [item])
            elif not batch[0].future.done():
                batch[0].future.set_exception(exc)
        except Exception as exc:  # Postgres away: every caller of the batch not yet answered is told
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            broken = not isinstance(exc, asyncpg.PostgresError) or (
                connection is not None and not _usable(connection)
            )
            if broken:  # a new connection for the next batch
                await self._release(connection)
                return None
        return connection

    async def _release(self, connection: asyncpg.Connection | None) -> None:
        if connection is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(connection, timeout=2)

    async def run_forever(self) -> None:
        idle: asyncio.Queue[asyncpg.Connection | None] = asyncio.Queue()
        for _ in range(self._writers):
            idle.put_nowait(None)  # a free writer; it takes its connection from the pool when first used
        in_flight: set[UserKey] = set()
        written = asyncio.Event()
        writing: set[asyncio.Task[asyncpg.Connection | None]] = set()
        waiting: list[PendingChange] = []  # taken from the queue, not yet written, in arrival order

        def finished(task: asyncio.Task[asyncpg.Connection | None], users: set[UserKey]) -> None:
            writing.discard(task)
            in_flight.difference_update(users)
            idle.put_nowait(None if task.cancelled() or task.exception() else task.result())
            written.set()

        try:
            while True:
                if not waiting:
                    waiting.append(await self._queue.get())
                connection = await idle.get()  # what arrives meanwhile joins this batch
                while len(waiting) < self._max_batch and not self._queue.empty():
                    waiting.append(self._queue.get_nowait())
                batch, waiting = next_batch(waiting, in_flight, self._max_batch)
                if not batch:  # every waiting change is of a user whose change is being written
                    idle.put_nowait(connection)
                    written.clear()
                    await written.wait()
                    continue
                users = {(item.brand_id, item.user_id) for item in batch}
                in_flight.update(users)
                task = asyncio.create_task(self._write(connection, batch))
                writing.add(task)
                task.add_done_callback(functools.partial(finished, users=users))
        finally:
            for task in list(writing):
                task.cancel()
            await asyncio.gather(*writing, return_exceptions=True)
            while not idle.empty():
                await self._release(idle.get_nowait())


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _stored_envelope(stored: Mapping[str, Any]) -> Envelope:
    """An envelope this service validated when it stored it: rebuilt without validating it again."""
    return Envelope.model_construct(
        **{**stored, "identifiers": Identifiers.model_construct(**stored["identifiers"])}
    )


class PreferenceChangeRelay:
    """Publishes unpublished preference changes in id order, then stamps them published.

    Woken after each change, and every `interval` seconds anyway, so changes made while Kafka was away
    go out once it is back. A batch that fails to publish stays unpublished and is retried whole (the
    envelopes keep their event ids, so a consumer that saw part of it deduplicates).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: MarketingPublisher,
        interval: float = 2.0,
        batch: int = 500,
        gather: float = 0.02,
    ) -> None:
        self._gather = gather
        self._pool = pool
        self._publisher = publisher
        self._interval = interval
        self._batch = batch
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def publish_pending(self) -> int:
        """One pass: how many changes it published (0 when another relay holds the lock)."""
        published = 0
        while True:
            async with self._pool.acquire(timeout=5) as connection, connection.transaction():
                if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", *_RELAY_LOCK):
                    return published
                rows = await connection.fetch(
                    """SELECT change_id, envelope FROM email_preference_changes
                       WHERE published_at IS NULL ORDER BY change_id LIMIT $1""",
                    self._batch,
                )
                if not rows:
                    return published
                envelopes = [_stored_envelope(row["envelope"]) for row in rows]
                await self._publisher.publish_many(envelopes)
                await connection.execute(
                    "UPDATE email_preference_changes SET published_at = now() WHERE change_id = ANY($1)",
                    [row["change_id"] for row in rows],
                )
                published += len(rows)
            if len(rows) < self._batch:
                return published

    async def run_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                # let the changes of concurrent requests gather: one pass (one transaction) for all
                await asyncio.sleep(self._gather)
            self._wake.clear()
            try:
                await self.publish_pending()
                pm.CHANGES_UNPUBLISHED.set(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or Postgres away: the rows wait for the next pass
                logger.warning("preference_changes_not_published", error=repr(exc))
                with contextlib.suppress(Exception):
                    pm.CHANGES_UNPUBLISHED.set(
                        await self._pool.fetchval(
                            "SELECT count(*) FROM email_preference_changes WHERE published_at IS NULL",
                            timeout=2,
                        )
                    )
                await asyncio.sleep(min(self._interval, 1.0))


async def apply_subscription_change(pool: asyncpg.Pool, change: SubscriptionChange) -> AppliedChange:
    """Customer.io's report that the person unsubscribed (or subscribed again), as of when it happened."""
    return await change_preferences(
        pool,
        change.brand_id,
        change.user_id,
        {"unsubscribed": change.unsubscribed},
        "customer_io",
        change.occurred_at,
        unless_changed_since=True,
    )
