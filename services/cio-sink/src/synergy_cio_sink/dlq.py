"""Dead letters: to the `synergy.dlq.v1` topic (with reason headers) and into Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from synergy_common.kafka import OutgoingMessage, publish_all
from synergy_schemas import topics

SERVICE = "cio-sink"


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    attempts: int
    brand_id: str | None = None
    event_id: str | None = None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        extra = {
            "dlq_reason": self.reason,
            "dlq_detail": self.detail[:500],
            "dlq_source_topic": self.source_topic,
            "dlq_source_partition": str(self.source_partition),
            "dlq_source_offset": str(self.source_offset),
            "dlq_attempts": str(self.attempts),
            "dlq_service": SERVICE,
        }
        kept = [(k, v) for k, v in self.headers if not k.startswith("dlq_")]
        return kept + [(k, v.encode()) for k, v in extra.items()]


class DeadLetterWriter:
    def __init__(self, producer: AIOKafkaProducer, pool: asyncpg.Pool | None) -> None:
        self._producer = producer
        self._pool = pool

    async def write(self, letters: Sequence[DeadLetter]) -> None:
        """Durable in Kafka (acks=all) and in Postgres before the source offsets may be committed."""
        if not letters:
            return
        await publish_all(self._producer, [
            OutgoingMessage(topics.DLQ.name, (letter.key or b"").decode(errors="replace"), letter.value,
                            letter.kafka_headers())
            for letter in letters
        ])
        if self._pool is not None:
            await self._pool.executemany(
                """INSERT INTO dlq_messages (service, reason, detail, brand_id, event_id, source_topic,
                       source_partition, source_offset, message_key, payload, headers, attempts)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
                [(SERVICE, letter.reason, letter.detail, _brand(letter.brand_id), letter.event_id,
                  letter.source_topic, letter.source_partition, letter.source_offset,
                  (letter.key or b"").decode(errors="replace"), letter.value,
                  [[k, v.decode(errors="replace")] for k, v in letter.headers], letter.attempts)
                 for letter in letters],
            )


def _brand(brand_id: str | None) -> int | None:
    return int(brand_id) if brand_id and brand_id.isdigit() else None


async def list_dead_letters(
    pool: asyncpg.Pool, since: datetime | None = None, reason: str | None = None,
    include_replayed: bool = False, limit: int | None = None,
) -> list[dict[str, Any]]:
    """Dead letters of this service, oldest first. `reason` matches as a prefix."""
    rows = await pool.fetch(
        """SELECT id, reason, detail, brand_id, event_id, source_topic, source_partition, source_offset,
                  message_key, payload, attempts, created_at, replayed_at, replay_attempts, last_replay_error
           FROM dlq_messages
           WHERE service = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
             AND ($3::text IS NULL OR reason LIKE $3 || '%') AND ($4 OR replayed_at IS NULL)
           ORDER BY created_at, id LIMIT $5""",
        SERVICE, since, reason, include_replayed, limit,
    )
    return [dict(row) for row in rows]


async def mark_replayed(pool: asyncpg.Pool, dlq_id: int, error: str | None) -> None:
    await pool.execute(
        """UPDATE dlq_messages SET replay_attempts = replay_attempts + 1, last_replay_error = $2,
                  replayed_at = CASE WHEN $2::text IS NULL THEN now() ELSE replayed_at END
           WHERE id = $1""",
        dlq_id, error,
    )
