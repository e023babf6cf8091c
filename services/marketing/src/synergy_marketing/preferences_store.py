"""Postgres I/O of email preferences: read, change (with its audit/outbox row), and the relay that
publishes the outbox to synergy.marketing.v1 in order.

The decision of what a change does is synergy_marketing.email_preferences (pure); this module only loads,
locks, stores and publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from synergy_schemas.envelope import Envelope, Identifiers
from ulid import ULID

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


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class PreferenceChangeRelay:
    """Publishes unpublished preference changes in id order, then stamps them published.

    Woken after each change, and every `interval` seconds anyway, so changes made while Kafka was away
    go out once it is back. A batch that fails to publish stays unpublished and is retried whole (the
    envelopes keep their event ids, so a consumer that saw part of it deduplicates).
    """

    def __init__(
        self, pool: asyncpg.Pool, publisher: MarketingPublisher, interval: float = 2.0, batch: int = 500
    ) -> None:
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
                envelopes = [Envelope.model_validate(row["envelope"]) for row in rows]
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
            self._wake.clear()
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or Postgres away: the rows wait for the next pass
                logger.warning("preference_changes_not_published", error=repr(exc))
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
