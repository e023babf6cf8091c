"""Only the batches' transactions commit the events' offsets, never faust.

faust acks a batch as soon as the worker has applied it and handed its transactions to the commit
pipeline (the next batch fills while they commit), and faust commits acked offsets every second. Here the
first transaction with a loyalty output waits 3 s inside the transaction, then fails: if faust committed
the acked offsets in those 3 s, the restarted worker would start after the batch and its users' points
would be lost. Counted by user and state version: every user has all 6 scans, each unlock once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ulid import ULID

from tests.integration.achievements.harness import (
    SIX_SCANS_OF_25,
    assert_users_reached_with_each_unlock_once,
    new_brand,
    produce,
    user_events,
)


async def test_a_batch_acked_by_faust_whose_transaction_fails_late_is_read_again_in_full(
    start_worker: Any,
    achievements_topics: dict[str, str],
    kafka_producer: Any,
    consume_all: Any,
    database_url: str,
    fault_dir: Path,
) -> None:
    brand_id, _ = await new_brand(database_url)
    users = [f"user-{ULID()}" for _ in range(8)]
    events = user_events(brand_id, users, 6, 25)
    failing = start_worker(faults="slow_publish", fault_dir=fault_dir)
    await produce(kafka_producer, achievements_topics["SYNERGY_TOPIC_EVENTS"], events)

    deadline = time.monotonic() + 90
    while failing.poll() is None:
        assert time.monotonic() < deadline, "the slow publish never failed"
        await asyncio.sleep(0.2)
    assert failing.returncode == 70  # the failed commit ended the worker
    assert (fault_dir / "slow_publish.fired").read_text() == str(failing.pid)

    start_worker()  # as the supervisor would
    await assert_users_reached_with_each_unlock_once(
        consume_all, achievements_topics, brand_id, users, SIX_SCANS_OF_25
    )
