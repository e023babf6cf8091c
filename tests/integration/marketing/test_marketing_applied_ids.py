"""Idempotency by event id on the real server: marketing_load_batch records a batch's ids with a plain
INSERT of those it finds absent (m040); an id another transaction records at the same moment still counts
once, and the batch that lost the race treats it as applied before."""

from __future__ import annotations

import asyncio

from synergy_common.db import create_pool
from synergy_marketing import store

FIRST = "01JAAAAAAAAAAAAAAAAAAAAAA1"
SECOND = "01JAAAAAAAAAAAAAAAAAAAAAA2"
THIRD = "01JAAAAAAAAAAAAAAAAAAAAAA3"


async def test_an_id_recorded_meanwhile_by_another_transaction_is_applied_once(database_factory) -> None:
    url = await database_factory("mktids")
    pool = await create_pool(url, min_size=2, max_size=2)
    try:
        async with pool.acquire() as one, pool.acquire() as other:
            winner = one.transaction()
            await winner.start()
            # Two batches of different persons (no advisory lock in common, as for catalog events), both
            # carrying FIRST.
            loaded = await store.load_batch(one, [("7", FIRST), ("7", SECOND)], {("7", "anna")}, (), (), ())
            assert loaded.fresh is None  # every id new

            async def losing_batch() -> set[tuple[str, str]] | None:
                async with other.transaction():
                    late = await store.load_batch(other, [("7", FIRST), ("7", THIRD)], {("7", "bob")}, (), (), ())
                return late.fresh

            late = asyncio.create_task(losing_batch())
            await asyncio.sleep(0.5)
            assert not late.done()  # it waits on the first transaction's uncommitted FIRST
            await winner.commit()
            assert await asyncio.wait_for(late, 10) == {("7", THIRD)}  # FIRST was applied by the other batch
        rows = await pool.fetch("SELECT event_id FROM marketing_applied_events ORDER BY event_id")
        assert [row["event_id"] for row in rows] == [FIRST, SECOND, THIRD]
    finally:
        await pool.close()


async def test_an_id_twice_in_one_batch_is_recorded_once_and_applied_once(database_factory) -> None:
    url = await database_factory("mktids")
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            loaded = await store.load_batch(
                conn, [("7", FIRST), ("7", FIRST), ("7", SECOND)], {("7", "anna")}, (), (), ())
        assert loaded.fresh == {("7", FIRST), ("7", SECOND)}
        async with pool.acquire() as conn, conn.transaction():
            again = await store.load_batch(conn, [("7", SECOND), ("7", THIRD)], {("7", "anna")}, (), (), ())
        assert again.fresh == {("7", THIRD)}  # SECOND was applied before
        assert await pool.fetchval("SELECT count(*) FROM marketing_applied_events") == 3
    finally:
        await pool.close()
