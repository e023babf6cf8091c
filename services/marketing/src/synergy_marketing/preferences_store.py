"""Postgres I/O of email preferences: read, change (with its audit/outbox row), and the relay that
publishes the outbox to synergy.marketing.v1 in order.

The decision of what a change does is synergy_marketing.email_preferences (pure); this module only loads,
locks, stores and publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
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
    identify's data to attributes), `unsubscribed` being Customer.io's own unsubscribe attribute."""
    event_id = str(ULID.from_datetime(now))
    return Envelope(
        event_id=event_id,
        type="identify",
        name=EMAIL_PREFERENCES_CHANGED,
        brand_id=str(brand_id),
        identifiers=Identifiers(id=user_id),
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
        envelope = preferences_changed_envelope(item.brand_id, item.user_id, applied, item.source, item.now)
        changes = {name: [_jsonable(old), _jsonable(new)] for name, (old, new) in applied.changed.items()}
        audit.append(
            (
                item.brand_id,
                item.user_id,
                item.source,
                orjson.dumps(changes).decode(),
                envelope.to_json_bytes().decode(),
                item.now,
            )
        )
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


class PreferenceWriter:
    """Queues changes from concurrent requests and writes them in batches, one transaction each, so
    many one-click unsubscribes share a commit. The queue is bounded: when it is full, callers wait
    (backpressure) instead of piling up."""

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

    async def _write(self, batch: list[PendingChange]) -> None:
        try:
            async with self._pool.acquire(timeout=5) as connection, connection.transaction():
                results = await change_preferences_batch(connection, batch)
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except asyncpg.DataError as exc:
            if len(batch) > 1:  # one bad change must not fail the others: each alone
                for item in batch:
                    await self._write([item])
                return
            batch[0].future.set_exception(exc)
            return
        except Exception as exc:  # Postgres away: every caller of the batch is told
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, applied in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(applied)

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def run_forever(self) -> None:
        await asyncio.gather(*(self._write_forever() for _ in range(self._writers)))


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
