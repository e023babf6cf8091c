"""Postgres's lock table, read as marketing reads it at start, on the real server."""

from __future__ import annotations

import asyncpg
from synergy_marketing import store


async def test_lock_table_slots_are_the_servers_settings_multiplied(database_factory) -> None:
    url = await database_factory("mktlock", migrate=False)
    conn = await asyncpg.connect(url)
    try:
        locks = int(await conn.fetchval("SHOW max_locks_per_transaction"))
        connections = int(await conn.fetchval("SHOW max_connections"))
        prepared = int(await conn.fetchval("SHOW max_prepared_transactions"))
        assert await store.lock_table_slots(conn) == locks * (connections + prepared)
    finally:
        await conn.close()


async def test_one_transaction_can_hold_a_default_batch_of_person_locks(database_factory) -> None:
    """8,000 advisory locks (two default batches of distinct persons) in one transaction: Postgres answers
    "out of shared memory" when its lock table is too small for them."""
    url = await database_factory("mktlock", migrate=False)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            keys = [f"brand:person-{i}" for i in range(8000)]
            taken = await conn.fetchval(
                "SELECT count(*) FROM unnest($1::text[]) k WHERE pg_try_advisory_xact_lock(hashtextextended(k, 0))",
                keys,
            )
            assert taken == 8000
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert held == 8000
    finally:
        await conn.close()
