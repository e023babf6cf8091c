"""The `destination_backlog` table: written in one statement per batch, drained by claims.

A drainer claims, per user, the head items of the user's backlog, and only users whose head is due
and unclaimed: a user's items are therefore in one replica's hands at a time, oldest first. Claims
of one destination are serialised by a transaction-scoped advisory lock (a claim takes milliseconds),
so two replicas never both see a user's head free; a claim is a lease, so a replica that died leaves
its users to the others once the lease runs out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
from synergy_common.db_errors import strip_nul

from synergy_dispatcher.backlog import BacklogItem, Reschedule


@dataclass(frozen=True)
class BacklogRow:
    destination_id: str
    user_key: str
    event_id: str
    payload: bytes
    message_key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    source_topic: str
    source_partition: int
    source_offset: int
    attempts: int
    first_attempt_at: float | None
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class Depth:
    items: int
    oldest_age_seconds: float


def _at(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def _headers_json(headers: Sequence[tuple[str, bytes]]) -> str:
    return orjson.dumps([[strip_nul(k), strip_nul(v.decode(errors="replace"))] for k, v in headers]).decode()


INSERT = """
INSERT INTO destination_backlog (destination_id, user_key, event_id, payload, message_key, headers,
    source_topic, source_partition, source_offset, attempts, first_attempt_at, next_attempt_at, last_error)
SELECT d, u, e, p, k, h::jsonb, t, pa, o, a, f, n, l
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::text[], $7::text[],
            $8::int[], $9::bigint[], $10::int[], $11::timestamptz[], $12::timestamptz[], $13::text[])
     WITH ORDINALITY AS r(d, u, e, p, k, h, t, pa, o, a, f, n, l, i)
ORDER BY i
ON CONFLICT (destination_id, event_id) DO NOTHING
"""


async def add(pool: asyncpg.Pool, rows: Sequence[BacklogRow]) -> None:
    """One statement for the batch, in order (a user's items get increasing seqs); a row already
    there (the same event for the same destination, re-consumed after a restart) is kept as it is."""
    if not rows:
        return
    columns: list[list[object]] = [[] for _ in range(13)]
    for r in rows:
        values = (int(r.destination_id), strip_nul(r.user_key), strip_nul(r.event_id), r.payload,
                  r.message_key, _headers_json(r.headers), r.source_topic, r.source_partition,
                  r.source_offset, r.attempts, _at(r.first_attempt_at), _at(r.next_attempt_at),
                  strip_nul(r.last_error) if r.last_error else None)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await pool.execute(INSERT, *columns)


CLAIM = """
WITH heads AS (
  SELECT DISTINCT ON (user_key) user_key, next_attempt_at, claimed_until
  FROM destination_backlog WHERE destination_id = $1
  ORDER BY user_key, seq
), ready AS (
  SELECT user_key FROM heads
  WHERE next_attempt_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
  ORDER BY next_attempt_at LIMIT $2
), ranked AS (
  SELECT b.seq, row_number() OVER (PARTITION BY b.user_key ORDER BY b.seq) AS place
  FROM destination_backlog b JOIN ready r ON r.user_key = b.user_key
  WHERE b.destination_id = $1
), picked AS (
  SELECT seq FROM ranked WHERE place <= $3 ORDER BY seq LIMIT $4
)
UPDATE destination_backlog b SET claimed_by = $5, claimed_until = now() + make_interval(secs => $6)
FROM picked WHERE b.seq = picked.seq
RETURNING b.seq, b.user_key, b.event_id, b.payload, b.message_key, b.headers, b.source_topic,
          b.source_partition, b.source_offset, b.attempts, b.first_attempt_at
"""


async def claim(pool: asyncpg.Pool, destination_id: str, replica: str, lease_seconds: float,
                max_users: int, per_user: int, max_items: int) -> list[BacklogItem]:
    """The due head items of up to `max_users` users (at most `per_user` each), in seq order."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                                 f"destination_backlog:{destination_id}")
        rows = await connection.fetch(CLAIM, int(destination_id), max_users, per_user, max_items, replica,
                                      lease_seconds)
    items = [BacklogItem(
        seq=r["seq"], user_key=r["user_key"], event_id=r["event_id"], payload=bytes(r["payload"]),
        attempts=r["attempts"],
        first_attempt_at=r["first_attempt_at"].timestamp() if r["first_attempt_at"] else None,
        message_key=bytes(r["message_key"]) if r["message_key"] is not None else None,
        headers=[(str(k), str(v).encode()) for k, v in (r["headers"] or [])],
        source_topic=r["source_topic"], source_partition=r["source_partition"],
        source_offset=r["source_offset"]) for r in rows]
    items.sort(key=lambda item: item.seq)
    return items


async def settle(pool: asyncpg.Pool, deleted: Sequence[int], rescheduled: Sequence[Reschedule],
                 released: Sequence[int]) -> None:
    """A drained round's result, in one transaction: delivered (and dead-lettered) rows deleted, the
    waiting heads rescheduled, every claim of the round dropped."""
    async with pool.acquire() as connection, connection.transaction():
        if deleted:
            await connection.execute("DELETE FROM destination_backlog WHERE seq = ANY($1::bigint[])",
                                     list(deleted))
        if rescheduled:
            await connection.execute(
                """UPDATE destination_backlog b
                   SET attempts = r.a, first_attempt_at = r.f, next_attempt_at = r.n, last_error = r.l,
                       claimed_by = NULL, claimed_until = NULL
                   FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::timestamptz[], $5::text[])
                        AS r(s, a, f, n, l)
                   WHERE b.seq = r.s""",
                [r.seq for r in rescheduled], [r.attempts for r in rescheduled],
                [_at(r.first_attempt_at) for r in rescheduled], [_at(r.next_attempt_at) for r in rescheduled],
                [strip_nul(r.last_error)[:500] for r in rescheduled])
        if released:
            await connection.execute(
                """UPDATE destination_backlog SET claimed_by = NULL, claimed_until = NULL
                   WHERE seq = ANY($1::bigint[])""", list(released))


async def release_claims(pool: asyncpg.Pool, replica: str) -> None:
    """A replica stopping hands its claimed users back at once (rather than after the lease)."""
    await pool.execute("""UPDATE destination_backlog SET claimed_by = NULL, claimed_until = NULL
                          WHERE claimed_by = $1""", replica)


async def remaining(pool: asyncpg.Pool, destination_id: str) -> tuple[int, float | None]:
    """(rows left, seconds until the earliest unclaimed row is due; None when all are claimed)."""
    row = await pool.fetchrow(
        """SELECT count(*) AS n,
                  extract(epoch FROM min(next_attempt_at) FILTER (
                      WHERE claimed_until IS NULL OR claimed_until < now()) - now()) AS due_in
           FROM destination_backlog WHERE destination_id = $1""", int(destination_id))
    due_in = row["due_in"]
    return int(row["n"]), float(due_in) if due_in is not None else None


async def depths(pool: asyncpg.Pool) -> Mapping[str, Depth]:
    """Every backlogged destination's item count and the age of its oldest item."""
    rows = await pool.fetch(
        """SELECT destination_id, count(*) AS n,
                  extract(epoch FROM now() - min(coalesce(first_attempt_at, created_at))) AS age
           FROM destination_backlog GROUP BY destination_id""")
    return {str(r["destination_id"]): Depth(int(r["n"]), max(0.0, float(r["age"]))) for r in rows}
