"""Postgres edges: rules in (achievement_configs, ranks), the loyalty read model out; idempotent writes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import orjson
import structlog

from synergy_achievements.metrics import PERSISTED, RULES_RELOADS
from synergy_achievements.rules import RuleCatalog

log = structlog.get_logger("synergy_achievements.persistence")
RULES_CHANNEL = "synergy_achievement_rules"

# SQLSTATE classes of data Postgres refuses whatever the moment: 22 data exception (22021: a NUL in
# text), 23 integrity constraint violation. What is worth retrying is synergy_common.db_errors' call.
REJECTED_SQLSTATE_CLASSES = frozenset({"22", "23"})


def is_data_rejected(exc: BaseException) -> bool:
    """Postgres refuses the data itself: it will refuse it every time, so the record goes to the DLQ.
    Other failures that are not retryable (a missing table, a bug) are not the record's fault: they
    end the worker instead of dead-lettering every record."""
    if isinstance(exc, asyncpg.DataError):
        return True
    return _sqlstate_class(exc) in REJECTED_SQLSTATE_CLASSES


def _sqlstate_class(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return str(sqlstate or "")[:2]


async def load_catalog(pool: asyncpg.Pool) -> RuleCatalog:
    configs = await pool.fetch(
        """SELECT id, brand_id, name, description, achievement_key, achievement_type, criteria, rewards,
                  visibility, metadata, is_active
           FROM achievement_configs"""
    )
    ranks = await pool.fetch(
        "SELECT brand_id, key, name, points_required, point_multiplier, is_active FROM ranks"
    )
    return RuleCatalog([dict(row) for row in configs], [dict(row) for row in ranks])


class RuleStore:
    """Holds the current RuleCatalog; reloads it on NOTIFY and, as a fallback, on a poll of updated_at."""

    def __init__(self, poll_seconds: float = 30.0) -> None:
        self.catalog = RuleCatalog()
        self.loaded = asyncio.Event()
        self._poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self._fingerprint: Any = None

    async def reload(self, pool: asyncpg.Pool) -> None:
        try:
            catalog = await load_catalog(pool)
        except (OSError, asyncpg.PostgresError) as exc:
            RULES_RELOADS.labels("error").inc()
            log.warning("rules_reload_failed", error=repr(exc))
            return
        for error in catalog.errors:
            log.warning("achievement_config_invalid", error=error)
        self.catalog = catalog
        self.loaded.set()
        RULES_RELOADS.labels("ok").inc()

    async def _fingerprint_now(self, pool: asyncpg.Pool) -> Any:
        return await pool.fetchrow(
            """SELECT (SELECT max(updated_at) FROM achievement_configs),
                      (SELECT count(*) FROM achievement_configs),
                      (SELECT max(updated_at) FROM ranks), (SELECT count(*) FROM ranks)"""
        )

    async def watch(self, pool: asyncpg.Pool) -> None:
        """Run forever: LISTEN for changes, poll as a fallback (e.g. after a lost connection)."""
        listener: asyncpg.Connection | None = None
        while True:
            try:
                if listener is None or listener.is_closed():
                    listener = await pool.acquire()
                    await listener.add_listener(RULES_CHANNEL, lambda *_: self._changed.set())
                    await self.reload(pool)
                    self._fingerprint = await self._fingerprint_now(pool)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_seconds):
                        await self._changed.wait()
                if self._changed.is_set():
                    self._changed.clear()
                    await self.reload(pool)
                    continue
                fingerprint = await self._fingerprint_now(pool)
                if fingerprint != self._fingerprint:
                    self._fingerprint = fingerprint
                    await self.reload(pool)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("rules_watch_error", error=repr(exc))
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await pool.release(listener)
                listener = None
                await asyncio.sleep(min(self._poll_seconds, 5.0))


UPSERT_SNAPSHOTS = """
WITH input AS (
  SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],
                       $7::bigint[], $8::text[], $9::text[])
    AS t(brand_id, external_id, balance, lifetime, spent, rank_key, version, snapshot, loyalty)
), upserted AS (
  INSERT INTO users AS u (brand_id, external_id, points_balance, lifetime_points, points_spent_total,
                          current_rank_key, loyalty_state_version)
  SELECT brand_id, external_id, balance, lifetime, spent, rank_key, version FROM input
  ON CONFLICT (brand_id, external_id) DO UPDATE SET
    points_balance = EXCLUDED.points_balance, lifetime_points = EXCLUDED.lifetime_points,
    points_spent_total = EXCLUDED.points_spent_total, current_rank_key = EXCLUDED.current_rank_key,
    loyalty_state_version = EXCLUDED.loyalty_state_version
  WHERE u.loyalty_state_version <= EXCLUDED.loyalty_state_version
  RETURNING u.id, u.brand_id, u.external_id
)
INSERT INTO user_loyalty_state AS s (user_id, state_version, user_snapshot, loyalty)
SELECT upserted.id, input.version, input.snapshot::jsonb, input.loyalty::jsonb
FROM upserted JOIN input USING (brand_id, external_id)
ON CONFLICT (user_id) DO UPDATE SET state_version = EXCLUDED.state_version,
  user_snapshot = EXCLUDED.user_snapshot, loyalty = EXCLUDED.loyalty, updated_at = now()
WHERE s.state_version <= EXCLUDED.state_version
"""

INSERT_UNLOCKS = """
WITH input AS (
  SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::int[])
    AS t(brand_id, external_id, achievement_key, completed_at, points)
), known_users AS (
  INSERT INTO users (brand_id, external_id)
  SELECT DISTINCT brand_id, external_id FROM input
  ON CONFLICT (brand_id, external_id) DO UPDATE SET external_id = EXCLUDED.external_id
  RETURNING id, brand_id, external_id
), configs AS (
  SELECT DISTINCT ON (input.brand_id, input.achievement_key) input.brand_id, input.achievement_key, c.id
  FROM input JOIN achievement_configs c
    ON c.achievement_key = input.achievement_key AND (c.brand_id = input.brand_id OR c.brand_id IS NULL)
  ORDER BY input.brand_id, input.achievement_key, c.brand_id NULLS LAST
)
INSERT INTO user_achievements (user_id, achievement_config_id, progress, completed, completed_at,
                               points_rewarded)
SELECT known_users.id, configs.id, 1, TRUE, input.completed_at, input.points
FROM input
JOIN known_users USING (brand_id, external_id)
JOIN configs USING (brand_id, achievement_key)
ON CONFLICT (user_id, achievement_config_id) DO NOTHING
"""


def _parse_time(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class LoyaltyWriter:
    """Writes a batch of our own loyalty/snapshot messages to Postgres; replays change nothing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def write(self, envelopes: list[dict[str, Any]]) -> None:
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        unlocks: list[dict[str, Any]] = []
        for envelope in envelopes:
            if not str(envelope.get("brand_id", "")).isdigit():
                continue
            user_id = (envelope.get("identifiers") or {}).get("id")
            if not user_id:
                continue
            if envelope.get("name") == "user_snapshot":
                key = (envelope["brand_id"], user_id)
                version = envelope["data"]["loyalty"]["state_version"]
                current = latest.get(key)
                if current is None or current["data"]["loyalty"]["state_version"] <= version:
                    latest[key] = envelope
            elif envelope.get("name") == "achievement_unlocked":
                unlocks.append(envelope)
        async with self._pool.acquire() as connection, connection.transaction():
            if latest:
                await self._write_snapshots(connection, list(latest.values()))
            if unlocks:
                await self._write_unlocks(connection, unlocks)

    @staticmethod
    async def _write_snapshots(connection: asyncpg.Connection, snapshots: list[dict[str, Any]]) -> None:
        columns: list[list[Any]] = [[] for _ in range(9)]
        for envelope in sorted(snapshots, key=lambda e: (e["brand_id"], e["identifiers"]["id"])):
            snapshot = envelope["data"]["user_snapshot"]
            loyalty = envelope["data"]["loyalty"]
            row = (
                int(envelope["brand_id"]), envelope["identifiers"]["id"],
                snapshot["economy"]["points_balance"], snapshot["economy"]["lifetime_points"],
                snapshot["economy"]["points_spent_total"], snapshot["status"]["rank_key"],
                loyalty["state_version"], orjson.dumps(snapshot).decode(), orjson.dumps(loyalty).decode(),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        await connection.execute(UPSERT_SNAPSHOTS, *columns)
        PERSISTED.labels("snapshot").inc(len(snapshots))

    @staticmethod
    async def _write_unlocks(connection: asyncpg.Connection, unlocks: list[dict[str, Any]]) -> None:
        columns: list[list[Any]] = [[] for _ in range(5)]
        for envelope in sorted(unlocks, key=lambda e: (e["brand_id"], e["identifiers"]["id"])):
            achievement = envelope["data"]["achievement_data"]
            row = (
                int(envelope["brand_id"]), envelope["identifiers"]["id"], achievement["achievement_id"],
                _parse_time(envelope["timestamp"]), int(achievement.get("points_reward") or 0),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        await connection.execute(INSERT_UNLOCKS, *columns)
        PERSISTED.labels("unlock").inc(len(unlocks))


async def read_loyalty(pool: asyncpg.Pool, brand_id: str, user_id: str) -> dict[str, Any] | None:
    user = await pool.fetchrow(
        """SELECT u.id, u.points_balance, u.lifetime_points, u.points_spent_total, u.current_rank_key,
                  s.user_snapshot, s.loyalty
           FROM users u LEFT JOIN user_loyalty_state s ON s.user_id = u.id
           WHERE u.brand_id = $1 AND u.external_id = $2""",
        int(brand_id), user_id,
    )
    if user is None:
        return None
    unlocked = await pool.fetch(
        """SELECT c.achievement_key, c.name, c.description, c.rewards, c.metadata, ua.completed_at,
                  ua.points_rewarded
           FROM user_achievements ua JOIN achievement_configs c ON c.id = ua.achievement_config_id
           WHERE ua.user_id = $1 AND ua.completed ORDER BY ua.completed_at, c.achievement_key""",
        user["id"],
    )
    return {"user": dict(user), "unlocked": [dict(row) for row in unlocked]}
