"""Dead letters: the one format of the whole system, and the writer every service uses.

A letter goes to Postgres (`dlq_messages`) first, then to `synergy.dlq.v1` with the headers below.
The Postgres insert is keyed by (service, destination, source topic, partition, offset), so a write
retried after a failure never duplicates the letter. Text that Postgres cannot store (a NUL byte) is
escaped, so a letter is never refused for its content.

Headers, on every letter of every service:
  dlq_reason, dlq_detail, dlq_service, dlq_destination, dlq_source_topic, dlq_source_partition,
  dlq_source_offset, dlq_attempts, dlq_first_attempt_at (ISO 8601 UTC, empty when never attempted)
A replayed letter is published back to its source topic with `dlq_replay_for` = the service (and
`dlq_replay_destination`), so only the consumer that dead-lettered it processes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from synergy_common.db_errors import strip_nul
from synergy_common.kafka import OutgoingMessage, publish_all
from synergy_schemas import topics

from synergy_streaming import metrics
from synergy_streaming.retry import RetryPolicy

log = structlog.get_logger()

HEADER_PREFIX = "dlq_"
REPLAY_FOR = "dlq_replay_for"
REPLAY_DESTINATION = "dlq_replay_destination"
REPLAY_OF = "dlq_replay_of"


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    service: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()
    attempts: int = 0
    first_attempt_at: datetime | None = None
    destination: str = ""
    brand_id: str | None = None
    event_id: str | None = None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        extra = {
            "dlq_reason": self.reason,
            "dlq_detail": self.detail[:500],
            "dlq_service": self.service,
            "dlq_destination": self.destination,
            "dlq_source_topic": self.source_topic,
            "dlq_source_partition": str(self.source_partition),
            "dlq_source_offset": str(self.source_offset),
            "dlq_attempts": str(self.attempts),
            "dlq_first_attempt_at": self.first_attempt_at.isoformat() if self.first_attempt_at else "",
        }
        kept = [(k, v) for k, v in self.headers if not k.startswith(HEADER_PREFIX)]
        return kept + [(k, v.encode()) for k, v in extra.items()]

    def row(self) -> tuple[Any, ...]:
        """The `dlq_messages` columns, with text Postgres can store."""
        return (
            self.service, strip_nul(self.reason)[:128], strip_nul(self.detail), _brand(self.brand_id),
            strip_nul(self.event_id)[:64] if self.event_id else None, self.source_topic,
            self.source_partition, self.source_offset,
            strip_nul((self.key or b"").decode(errors="replace")), self.value,
            [[strip_nul(k), strip_nul(v.decode(errors="replace"))] for k, v in self.headers],
            self.attempts, self.destination, self.first_attempt_at,
        )


def event_fields(value: bytes) -> tuple[str | None, str | None]:
    """(brand_id, event_id) of an envelope, when the value is one; for the letter's columns."""
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(envelope, dict):
        return None, None
    brand, event = envelope.get("brand_id"), envelope.get("event_id")
    return (str(brand) if brand is not None else None, str(event) if event is not None else None)


def _brand(brand_id: str | None) -> int | None:
    return int(brand_id) if brand_id and brand_id.isdigit() and len(brand_id) < 19 else None


def epoch_to_datetime(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


INSERT = """
INSERT INTO dlq_messages (service, reason, detail, brand_id, event_id, source_topic, source_partition,
    source_offset, message_key, payload, headers, attempts, destination, first_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (service, destination, source_topic, source_partition, source_offset) DO NOTHING
"""


class DeadLetterWriter:
    """Durable in Postgres, then in Kafka (acks=all), before the source offsets may be committed."""

    def __init__(self, producer: AIOKafkaProducer | None, pool: asyncpg.Pool | None,
                 retry: RetryPolicy | None = None) -> None:
        self._producer = producer
        self._pool = pool
        self._retry = (retry or RetryPolicy(base=0.5, cap=30.0)).forever()

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        if self._pool is not None:
            await self._pool.executemany(INSERT, [letter.row() for letter in letters])
        if self._producer is not None:
            await publish_all(self._producer, [
                OutgoingMessage(topics.DLQ.name, (letter.key or b"").decode(errors="replace"), letter.value,
                                letter.kafka_headers())
                for letter in letters
            ])

    async def write_until_durable(self, letters: Sequence[DeadLetter]) -> None:
        """Retried with backoff until both writes succeed; each retry repeats nothing already stored."""
        attempts = 0
        while True:
            try:
                await self.write(letters)
            except Exception as exc:
                attempts += 1
                metrics.DLQ_WRITE_FAILURES.labels(letters[0].service).inc()
                delay = self._retry.backoff(attempts)
                log.error("dead-letter write failed; retrying", error=repr(exc), count=len(letters),
                          retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            for letter in letters:
                metrics.DEAD_LETTERS.labels(letter.service, letter.reason.split(":", 1)[0]).inc()
            log.warning("dead-lettered", service=letters[0].service, reason=letters[0].reason,
                        count=len(letters), event_ids=[letter.event_id for letter in letters[:10]])
            return


async def list_dead_letters(
    pool: asyncpg.Pool, service: str | None = None, since: datetime | None = None, reason: str | None = None,
    include_replayed: bool = False, limit: int | None = None,
) -> list[dict[str, Any]]:
    """Dead letters, oldest first; `service` None lists every service's, `reason` matches as a prefix."""
    rows = await pool.fetch(
        """SELECT id, service, destination, reason, detail, brand_id, event_id, source_topic,
                  source_partition, source_offset, message_key, payload, headers, attempts, first_attempt_at,
                  created_at,
                  replayed_at, replay_attempts, last_replay_error
           FROM dlq_messages
           WHERE ($1::text IS NULL OR service = $1) AND ($2::timestamptz IS NULL OR created_at >= $2)
             AND ($3::text IS NULL OR reason LIKE $3 || '%') AND ($4 OR replayed_at IS NULL)
           ORDER BY created_at, id LIMIT $5""",
        service, since, reason, include_replayed, limit,
    )
    return [dict(row) for row in rows]


def replay_message(row: dict[str, Any]) -> OutgoingMessage:
    """The letter back on its source topic, for its own service (and destination) only."""
    headers = [(str(k), str(v).encode()) for k, v in row["headers"] if not str(k).startswith(HEADER_PREFIX)]
    headers += [(REPLAY_FOR, row["service"].encode()),
                (REPLAY_DESTINATION, (row["destination"] or "").encode()),
                (REPLAY_OF, str(row["id"]).encode())]
    return OutgoingMessage(row["source_topic"], row["message_key"] or "", bytes(row["payload"]), headers)


async def mark_replayed(pool: asyncpg.Pool, dlq_id: int, error: str | None) -> None:
    await pool.execute(
        """UPDATE dlq_messages SET replay_attempts = replay_attempts + 1, last_replay_error = $2,
                  replayed_at = CASE WHEN $2::text IS NULL THEN now() ELSE replayed_at END
           WHERE id = $1""",
        dlq_id, error,
    )
