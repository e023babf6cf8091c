"""Postgres I/O: the webhook log, replay memory, the AI profile upsert and the read query."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from cachetools import LRUCache
from synergy_common.brands import CredentialCipher
from synergy_common.db import DATABASE_UNAVAILABLE as DATABASE_UNAVAILABLE

from synergy_insights.merge import OBSERVED_AT_KEY, PredictionMerger, predictions_view, profile_columns
from synergy_insights.payloads import PredictionWebhook
from synergy_insights.signature import VerifiedSignature
from synergy_insights.summary import (
    SUBSCRIPTION_METRICS,
    MetricCount,
    delivery_metrics,
    is_unsubscribed,
    merged_pending_predictions,
    subscription_change,
)

INVALIDATION_CHANNEL = "synergy_insights_updated"
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class ReplayedSignature(Exception):
    """This exact signed request was accepted before, inside the tolerance window."""


class UnknownUser(Exception):
    def __init__(self, brand_id: int, external_id: str) -> None:
        super().__init__(f"user {external_id!r} of brand {brand_id} is not known yet")


@dataclass(frozen=True)
class RecordedWebhook:
    log_id: int | None  # None when the event_id was logged before: a redelivery
    received_at: datetime | None

    @property
    def duplicate(self) -> bool:
        return self.log_id is None


@dataclass(frozen=True)
class LoggedWebhook:
    log_id: int
    brand_id: int | None  # None until the brand is resolved (see brand_choice)
    payload: Any
    signed_at: datetime
    received_at: datetime
    attempts: int


class WebhookLog:
    """customer_io_webhook_log: every accepted webhook, raw, with its processing outcome."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float = 2.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    async def record(
        self,
        brand_id: int | None,
        webhook_type: str,
        payload: Any,
        event_id: str | None,
        external_user_id: str | None,
        verified: VerifiedSignature,
        retry_after_seconds: float,
        failed_with: str | None = None,
    ) -> RecordedWebhook:
        """Remember the signature and log the webhook in one transaction; durable once this returns."""
        async with self._pool.acquire(timeout=self._acquire_timeout) as connection, connection.transaction():
            fresh = await connection.fetchval(
                """INSERT INTO customer_io_webhook_signatures (signature, signed_at)
                   VALUES ($1, to_timestamp($2)) ON CONFLICT DO NOTHING RETURNING true""",
                verified.signature,
                verified.signed_at,
            )
            if not fresh:
                raise ReplayedSignature(verified.signature)
            if brand_id is None and event_id is not None:
                # The unique (brand_id, event_id) index cannot see NULL brands: deduplicate by hand.
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('cio-unresolved:' || $1, 0))", event_id
                )
                if await connection.fetchval(
                    "SELECT true FROM customer_io_webhook_log WHERE brand_id IS NULL AND event_id = $1",
                    event_id,
                ):
                    return RecordedWebhook(log_id=None, received_at=None)
            row = await connection.fetchrow(
                """INSERT INTO customer_io_webhook_log
                     (brand_id, webhook_type, payload, event_id, external_user_id, signature, signed_at,
                      processed_successfully, error_message, processed_at, next_attempt_at)
                   VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7),
                           CASE WHEN $8::text IS NULL THEN NULL ELSE false END, $8::text,
                           CASE WHEN $8::text IS NULL THEN NULL ELSE now() END,
                           now() + make_interval(secs => $9))
                   ON CONFLICT (brand_id, event_id) WHERE event_id IS NOT NULL DO NOTHING
                   RETURNING id, created_at""",
                brand_id,
                webhook_type,
                payload,
                event_id,
                external_user_id,
                verified.signature,
                verified.signed_at,
                failed_with,
                retry_after_seconds,
            )
        if row is None:
            return RecordedWebhook(log_id=None, received_at=None)
        return RecordedWebhook(log_id=row["id"], received_at=row["created_at"])

    async def claim_due(self, limit: int, base_backoff: float, max_backoff: float) -> list[LoggedWebhook]:
        """Pending rows whose time has come, each pushed back by its backoff so no other replica takes it."""
        rows = await self._pool.fetch(
            """UPDATE customer_io_webhook_log l
               SET attempts = l.attempts + 1,
                   next_attempt_at = now()
                     + make_interval(secs => LEAST($2 * power(2, LEAST(l.attempts, 20)), $3))
               FROM (SELECT id FROM customer_io_webhook_log
                     WHERE processed_successfully IS NULL AND next_attempt_at <= now()
                     ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
               WHERE l.id = due.id
               RETURNING l.id, l.brand_id, l.payload, l.signed_at, l.created_at, l.attempts""",
            limit,
            base_backoff,
            max_backoff,
        )
        return [
            LoggedWebhook(
                log_id=row["id"],
                brand_id=row["brand_id"],
                payload=row["payload"],
                signed_at=row["signed_at"],
                received_at=row["created_at"],
                attempts=row["attempts"],
            )
            for row in rows
        ]

    async def mark_processed(self, log_id: int, user_pk: int | None) -> None:
        """Done; the read API's caches of that user are told (its delivery metrics changed)."""
        await self._pool.execute(
            """WITH done AS (
                 UPDATE customer_io_webhook_log
                 SET processed_successfully = true, error_message = NULL, processed_at = now(),
                     user_id = COALESCE($2, user_id), next_attempt_at = NULL
                 WHERE id = $1
                 RETURNING brand_id, external_user_id)
               SELECT pg_notify($3, brand_id || ':' || external_user_id) FROM done
               WHERE brand_id IS NOT NULL AND external_user_id IS NOT NULL""",
            log_id,
            user_pk,
            INVALIDATION_CHANNEL,
        )

    async def assign_brand(self, log_id: int, brand_id: int) -> bool:
        """Give a brand-less row its brand; False (and the row closed) when that brand already
        logged the same event_id, so the copy changes nothing."""
        try:
            await self._pool.execute(
                "UPDATE customer_io_webhook_log SET brand_id = $2 WHERE id = $1 AND brand_id IS NULL",
                log_id,
                brand_id,
            )
        except asyncpg.UniqueViolationError:
            await self._pool.execute(
                """UPDATE customer_io_webhook_log
                   SET processed_successfully = true, processed_at = now(), next_attempt_at = NULL,
                       error_message = 'duplicate: brand ' || $2::bigint || ' already logged this event_id'
                   WHERE id = $1""",
                log_id,
                brand_id,
            )
            return False
        return True

    async def mark_pending(self, log_id: int, error: str, retry_in_seconds: float | None = None) -> None:
        """Leave for the retry loop, noting why; due again in `retry_in_seconds` (or as claimed)."""
        await self._pool.execute(
            """UPDATE customer_io_webhook_log
               SET error_message = $2,
                   next_attempt_at = CASE WHEN $3::float8 IS NULL THEN next_attempt_at
                                          ELSE now() + make_interval(secs => $3::float8) END
               WHERE id = $1 AND processed_successfully IS NULL""",
            log_id,
            error[:2000],
            retry_in_seconds,
        )

    async def mark_failed(self, log_id: int, error: str) -> None:
        await self._pool.execute(
            """UPDATE customer_io_webhook_log
               SET processed_successfully = false, error_message = $2, processed_at = now(),
                   next_attempt_at = NULL
               WHERE id = $1""",
            log_id,
            error[:2000],
        )

    async def backlog(self) -> int:
        return int(
            await self._pool.fetchval(
                "SELECT count(*) FROM customer_io_webhook_log WHERE processed_successfully IS NULL"
            )
        )

    async def forget_signatures_signed_before(self, cutoff_unix: float) -> int:
        result = await self._pool.execute(
            "DELETE FROM customer_io_webhook_signatures WHERE signed_at < to_timestamp($1)", cutoff_unix
        )
        return int(result.split()[-1])


class ProfileStore:
    """users.ai_features and user_ai_profiles, updated together under the user's row lock."""

    def __init__(self, pool: asyncpg.Pool, merger: PredictionMerger | None = None) -> None:
        self._pool = pool
        self._merger = merger or PredictionMerger()

    async def apply_predictions(self, brand_id: int, webhook: PredictionWebhook, log_id: int = 0) -> int:
        """Merge the predictions into the user's row; the user's primary key. Raises UnknownUser."""
        async with self._pool.acquire(timeout=2.0) as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT id, ai_features FROM users WHERE brand_id = $1 AND external_id = $2 FOR UPDATE",
                brand_id,
                webhook.user_id,
            )
            if row is None:
                raise UnknownUser(brand_id, webhook.user_id)
            user_pk: int = row["id"]
            result = self._merger.merge(row["ai_features"], webhook, log_id)
            if not result.changed:
                return user_pk
            columns = profile_columns(result.ai_features)
            await connection.execute(
                "UPDATE users SET ai_features = $2 WHERE id = $1", user_pk, result.ai_features
            )
            await connection.execute(
                """INSERT INTO user_ai_profiles
                     (user_id, churn_probability, predicted_lifetime_value, engagement_score,
                      product_affinity_scores, purchase_probability, recommended_segment, next_best_action,
                      ai_insights, calculated_at, last_synced_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
                   ON CONFLICT (user_id) DO UPDATE SET
                     churn_probability = EXCLUDED.churn_probability,
                     predicted_lifetime_value = EXCLUDED.predicted_lifetime_value,
                     engagement_score = EXCLUDED.engagement_score,
                     product_affinity_scores = EXCLUDED.product_affinity_scores,
                     purchase_probability = EXCLUDED.purchase_probability,
                     recommended_segment = EXCLUDED.recommended_segment,
                     next_best_action = EXCLUDED.next_best_action,
                     ai_insights = EXCLUDED.ai_insights,
                     calculated_at = EXCLUDED.calculated_at,
                     last_synced_at = now()""",
                user_pk,
                columns.churn_probability,
                columns.predicted_lifetime_value,
                columns.engagement_score,
                columns.product_affinity_scores,
                columns.purchase_probability,
                columns.recommended_segment,
                columns.next_best_action,
                columns.ai_insights,
                columns.calculated_at,
            )
            await connection.execute(
                "SELECT pg_notify($1, $2)", INVALIDATION_CHANNEL, f"{brand_id}:{webhook.user_id}"
            )
            return user_pk

    async def user_pk(self, brand_id: int, external_id: str) -> int | None:
        value = await self._pool.fetchval(
            "SELECT id FROM users WHERE brand_id = $1 AND external_id = $2", brand_id, external_id
        )
        return None if value is None else int(value)

    async def read_insights(self, brand_id: int, external_id: str) -> dict[str, Any] | None:
        """The user's predictions (with pending prediction webhooks merged over the stored ones) and
        delivery metrics; None when the brand knows nothing of them. `user_known`: the user has a row."""
        async with self._pool.acquire(timeout=2.0) as connection:
            row = await connection.fetchrow(
                """SELECT u.ai_features, p.calculated_at, p.last_synced_at
                   FROM users u LEFT JOIN user_ai_profiles p ON p.user_id = u.id
                   WHERE u.brand_id = $1 AND u.external_id = $2""",
                brand_id,
                external_id,
            )
            counts = await connection.fetch(
                """SELECT payload->>'object_type' AS object_type, payload->>'metric' AS metric, count(*) AS n
                   FROM customer_io_webhook_log
                   WHERE brand_id = $1 AND external_user_id = $2 AND processed_successfully
                     AND webhook_type <> 'prediction_update'
                   GROUP BY 1, 2""",
                brand_id,
                external_id,
            )
            changes = await connection.fetch(
                """SELECT id, payload, signed_at FROM customer_io_webhook_log
                   WHERE brand_id = $1 AND external_user_id = $2 AND processed_successfully
                     AND webhook_type <> 'prediction_update' AND payload->>'metric' = ANY($3::text[])""",
                brand_id,
                external_id,
                list(SUBSCRIPTION_METRICS),
            )
            pending = await connection.fetch(
                """SELECT id, payload, signed_at FROM customer_io_webhook_log
                   WHERE brand_id = $1 AND external_user_id = $2 AND processed_successfully IS NULL
                     AND webhook_type = 'prediction_update'
                   ORDER BY id""",
                brand_id,
                external_id,
            )
        if row is None and not counts and not pending:
            return None
        features = merged_pending_predictions(
            ((r["id"], r["payload"], r["signed_at"]) for r in pending),
            stored=row["ai_features"] if row is not None else None,
        )
        subscription = (subscription_change(r["id"], r["payload"], r["signed_at"]) for r in changes)
        return {
            "user_id": external_id,
            "brand_id": str(brand_id),
            "user_known": row is not None,
            "predictions": predictions_view(features),
            "observed_at": dict(features.get(OBSERVED_AT_KEY) or {}),
            "calculated_at": _iso(row["calculated_at"]) if row is not None else None,
            "last_synced_at": _iso(row["last_synced_at"]) if row is not None else None,
            "delivery_metrics": delivery_metrics(
                MetricCount(r["object_type"], r["metric"], r["n"]) for r in counts
            ),
            "unsubscribed": is_unsubscribed(change for change in subscription if change is not None),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


@dataclass(frozen=True)
class KnownBrand:
    brand_id: int
    encrypted_signing_keys: tuple[str, ...]  # the brand's own, current first; empty: the global key serves it


class BrandDirectory:
    """Active brands by slug and id, with their own webhook signing keys, read from Postgres at most
    every `ttl_seconds` (one query for all brands, however many webhooks arrive), so a new key or a
    deactivated brand reaches every replica within that time. Keys are decrypted once per ciphertext."""

    def __init__(self, pool: asyncpg.Pool, cipher: CredentialCipher, ttl_seconds: float = 5.0) -> None:
        self._pool = pool
        self._cipher = cipher
        self._ttl = ttl_seconds
        self._by_name: dict[str, KnownBrand] = {}
        self._loaded_at = -math.inf
        self._refresh_lock = asyncio.Lock()
        self._plaintexts: LRUCache[str, str] = LRUCache(10_000)

    async def _brands(self) -> dict[str, KnownBrand]:
        if time.monotonic() - self._loaded_at < self._ttl:
            return self._by_name
        async with self._refresh_lock:
            if time.monotonic() - self._loaded_at >= self._ttl:
                rows = await self._pool.fetch(
                    """SELECT id, slug, cio_webhook_signing_key, cio_webhook_signing_key_previous
                       FROM brands WHERE is_active"""
                )
                by_name: dict[str, KnownBrand] = {}
                for row in rows:
                    keys = (row["cio_webhook_signing_key"], row["cio_webhook_signing_key_previous"])
                    brand = KnownBrand(int(row["id"]), tuple(key for key in keys if key))
                    by_name[str(row["id"])] = brand
                    by_name.setdefault(row["slug"], brand)
                self._by_name = by_name
                self._loaded_at = time.monotonic()
        return self._by_name

    async def brand(self, slug_or_id: str) -> KnownBrand | None:
        return (await self._brands()).get(slug_or_id)

    async def brand_id(self, slug_or_id: str) -> int | None:
        found = await self.brand(slug_or_id)
        return None if found is None else found.brand_id

    def signing_keys(self, brand: KnownBrand) -> list[str]:
        """The brand's own signing keys in plain text. Raises EncryptionKeyMissing."""
        keys = []
        for ciphertext in brand.encrypted_signing_keys:
            if ciphertext not in self._plaintexts:
                self._plaintexts[ciphertext] = self._cipher.decrypt(ciphertext)
            keys.append(self._plaintexts[ciphertext])
        return keys

    async def brands_knowing_user(self, external_id: str) -> list[int]:
        """Active brands without their own signing key that have a user of that external id (at most
        two: more is just as ambiguous). A brand with its own key is only ever written through its
        own path, so the deployment's key can never reach it by a guess."""
        rows = await self._pool.fetch(
            # one probe of users' (brand_id, external_id) index per brand; brands are few
            """SELECT b.id FROM brands b
               WHERE b.is_active AND b.cio_webhook_signing_key IS NULL
                 AND EXISTS (SELECT 1 FROM users u WHERE u.brand_id = b.id AND u.external_id = $1)
               LIMIT 2""",
            external_id,
        )
        return [int(row["id"]) for row in rows]

    async def active_brands(self) -> list[int]:
        """Active brand ids without their own signing key (at most two: all choose_brand needs to
        know is whether there is one)."""
        rows = await self._pool.fetch(
            """SELECT id FROM brands WHERE is_active AND cio_webhook_signing_key IS NULL
               ORDER BY id LIMIT 2"""
        )
        return [int(row["id"]) for row in rows]
