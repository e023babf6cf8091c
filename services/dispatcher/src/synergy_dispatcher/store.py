"""The `destinations` table: what the CLI manages and the dispatcher reloads, with secrets encrypted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from synergy_common.brands import CredentialCipher, EncryptionKeyMissing

from synergy_dispatcher.model import DESTINATION_TYPES, Destination

log = structlog.get_logger()

COLUMNS = """d.id, d.brand_id, d.name, d.type, d.origin, d.settings, d.secrets, d.state, d.disabled_reason,
             d.state_changed_at, d.delivered_total, d.failed_total, d.dead_lettered_total, d.created_at"""


@dataclass(frozen=True)
class DestinationStatus:
    id: str
    brand_id: str | None
    name: str
    type: str
    origin: str
    state: str
    disabled_reason: str | None
    delivered: int
    failed: int
    dead_lettered: int
    lag: int  # consumed and not yet delivered: in the replicas' memory, plus the backlog
    settings: Mapping[str, Any]
    backlog_items: int = 0
    backlog_oldest_age_seconds: float = 0.0
    consumer_lag: int = 0  # the consumer group's lag, shared by every destination

    def as_json(self) -> dict[str, Any]:
        public = {k: v for k, v in self.settings.items() if k in ("url", "host")}
        return {
            "id": self.id, "name": self.name, "type": self.type, "origin": self.origin,
            "state": self.state, "disabled_reason": self.disabled_reason, "delivered": self.delivered,
            "failed": self.failed, "dead_lettered": self.dead_lettered, "lag": self.lag,
            "backlog": {"items": self.backlog_items,
                        "oldest_age_seconds": round(self.backlog_oldest_age_seconds, 3)},
            "consumer_lag": self.consumer_lag, **public,
        }


async def resolve_brand(pool: asyncpg.Pool, brand: str) -> str | None:
    """A brand's id from its id or slug."""
    row = await pool.fetchval(
        "SELECT id FROM brands WHERE slug = $1 OR ($1 ~ '^[0-9]{1,18}$' AND id = $1::bigint)", brand)
    return None if row is None else str(row)


async def add_destination(pool: asyncpg.Pool, cipher: CredentialCipher, brand_id: str, name: str,
                          type_: str, settings: Mapping[str, Any], secrets: Mapping[str, Any]) -> str:
    if type_ not in DESTINATION_TYPES:
        raise ValueError(f"unknown destination type {type_!r}")
    encrypted = cipher.encrypt(orjson.dumps(dict(secrets)).decode()) if secrets else None
    try:
        destination_id = await pool.fetchval(
            """INSERT INTO destinations (brand_id, name, type, origin, settings, secrets)
               VALUES ($1, $2, $3, 'cli', $4, $5) RETURNING id""",
            int(brand_id), name, type_, dict(settings), encrypted)
    except asyncpg.UniqueViolationError as exc:
        raise ValueError(f"the brand already has a destination named {name!r}") from exc
    return str(destination_id)


async def upsert_environment_destination(pool: asyncpg.Pool, name: str, type_: str,
                                         settings: Mapping[str, Any]) -> str:
    """The deployment's own destination: its row carries state and counts; its secret stays in the env."""
    destination_id = await pool.fetchval(
        """INSERT INTO destinations (brand_id, name, type, origin, settings)
           VALUES (NULL, $1, $2, 'environment', $3)
           ON CONFLICT (name) WHERE origin = 'environment'
           DO UPDATE SET settings = EXCLUDED.settings, type = EXCLUDED.type, updated_at = now()
           RETURNING id""",
        name, type_, dict(settings))
    return str(destination_id)


async def load_destinations(pool: asyncpg.Pool, cipher: CredentialCipher,
                            environment_secrets: Mapping[str, Mapping[str, Any]]) -> list[Destination]:
    """Every destination, secrets decrypted; environment ones take theirs from `environment_secrets`."""
    rows = await pool.fetch(f"SELECT {COLUMNS} FROM destinations d ORDER BY d.id")
    loaded = []
    for row in rows:
        if row["origin"] == "environment":
            secrets = environment_secrets.get(row["name"])
            if secrets is None:
                continue  # configured once, no longer in this deployment's environment
        else:
            try:
                secrets = orjson.loads(cipher.decrypt(row["secrets"])) if row["secrets"] else {}
            except EncryptionKeyMissing as exc:
                # One destination's unreadable secret must not stop every other brand's deliveries.
                log.error("destination skipped: its secrets cannot be decrypted", destination_id=row["id"],
                          brand_id=row["brand_id"], error=str(exc))
                continue
        loaded.append(Destination(
            id=str(row["id"]), brand_id=None if row["brand_id"] is None else str(row["brand_id"]),
            name=row["name"], type=row["type"], settings=row["settings"] or {}, secrets=secrets,
            state=row["state"], disabled_reason=row["disabled_reason"]))
    return loaded


async def set_state(pool: asyncpg.Pool, destination_id: str, state: str, reason: str | None,
                    only_from: Sequence[str] | None = None) -> bool:
    """Move a destination to `state`; with `only_from`, only when it is in one of those states."""
    result = await pool.execute(
        """UPDATE destinations SET state = $2, disabled_reason = $3, state_changed_at = now(),
                  updated_at = now()
           WHERE id = $1 AND ($4::text[] IS NULL OR state = ANY($4::text[]))""",
        int(destination_id), state, reason, list(only_from) if only_from is not None else None)
    return result.endswith(" 1")


async def secrets_of(pool: asyncpg.Pool, cipher: CredentialCipher, destination_id: str,
                     ) -> tuple[str, dict[str, Any]] | None:
    """(type, decrypted secrets) of a destination the CLI manages; None when there is no such one."""
    row = await pool.fetchrow("SELECT type, secrets FROM destinations WHERE id = $1 AND origin = 'cli'",
                              int(destination_id))
    if row is None:
        return None
    return row["type"], (orjson.loads(cipher.decrypt(row["secrets"])) if row["secrets"] else {})


async def set_secrets(pool: asyncpg.Pool, cipher: CredentialCipher, destination_id: str,
                      secrets: Mapping[str, Any]) -> None:
    await pool.execute("UPDATE destinations SET secrets = $2, updated_at = now() WHERE id = $1",
                       int(destination_id), cipher.encrypt(orjson.dumps(dict(secrets)).decode()))


async def add_counts(pool: asyncpg.Pool, counts: Mapping[str, tuple[int, int, int]]) -> None:
    """Add (delivered, failed, dead-lettered) to each destination's totals."""
    await pool.executemany(
        """UPDATE destinations SET delivered_total = delivered_total + $2, failed_total = failed_total + $3,
                  dead_lettered_total = dead_lettered_total + $4 WHERE id = $1""",
        [(int(d), *c) for d, c in counts.items()])


async def record_lag(pool: asyncpg.Pool, replica: str, lags: Mapping[str, int],
                     consumer_lag: int = 0) -> None:
    """This replica's in-memory lag per destination, and the consumer lag of its partitions."""
    await pool.executemany(
        """INSERT INTO destination_lag (destination_id, replica, lag, consumer_lag, updated_at)
           VALUES ($1, $2, $3, $4, now())
           ON CONFLICT (destination_id, replica) DO UPDATE
           SET lag = EXCLUDED.lag, consumer_lag = EXCLUDED.consumer_lag, updated_at = now()""",
        [(int(d), replica, lag, consumer_lag) for d, lag in lags.items()])


async def destination_statuses(pool: asyncpg.Pool, brand_id: str | None,
                               include_environment: bool = False,
                               lag_fresh_seconds: float = 60.0) -> list[DestinationStatus]:
    """The brand's destinations (`None`: every destination) with counts, the replicas' summed lag, and
    the backlog (count, age of the oldest)."""
    rows = await pool.fetch(
        f"""SELECT {COLUMNS}, l.lag, l.consumer_lag, coalesce(b.items, 0) AS backlog_items,
                   coalesce(b.age, 0) AS backlog_age
            FROM destinations d
            LEFT JOIN LATERAL (
              SELECT coalesce(sum(x.lag), 0) AS lag, coalesce(sum(x.consumer_lag), 0) AS consumer_lag
              FROM destination_lag x WHERE x.destination_id = d.id
                AND x.updated_at > now() - make_interval(secs => $3)) l ON true
            LEFT JOIN LATERAL (
              SELECT count(*) AS items,
                     extract(epoch FROM now() - min(coalesce(y.first_attempt_at, y.created_at))) AS age
              FROM destination_backlog y WHERE y.destination_id = d.id) b ON true
            WHERE ($1::bigint IS NULL OR d.brand_id = $1 OR ($2 AND d.brand_id IS NULL))
            ORDER BY d.id""",
        None if brand_id is None else int(brand_id), include_environment, lag_fresh_seconds)
    return [DestinationStatus(
        id=str(r["id"]), brand_id=None if r["brand_id"] is None else str(r["brand_id"]), name=r["name"],
        type=r["type"], origin=r["origin"], state=r["state"], disabled_reason=r["disabled_reason"],
        delivered=r["delivered_total"], failed=r["failed_total"], dead_lettered=r["dead_lettered_total"],
        lag=int(r["lag"]) + int(r["backlog_items"]), settings=r["settings"] or {},
        backlog_items=int(r["backlog_items"]), backlog_oldest_age_seconds=max(0.0, float(r["backlog_age"])),
        consumer_lag=int(r["consumer_lag"])) for r in rows]
