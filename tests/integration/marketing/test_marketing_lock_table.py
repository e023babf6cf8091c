"""Postgres's lock table, read as marketing reads it at start, on the real server."""

from __future__ import annotations

import asyncpg
from synergy_common.db import create_pool
from synergy_marketing import store
from synergy_marketing.consumer import warn_when_locks_may_run_out

from tests.integration.marketing.harness import settings_for


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


async def test_start_warns_only_when_the_servers_lock_table_is_too_small_for_the_batches(
    database_factory, kafka_bootstrap: str
) -> None:
    url = await database_factory("mktlock", migrate=False)
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        # 2 x 10,000,000 person locks: more than half of any server's table
        huge = settings_for(url, kafka_bootstrap, marketing_consumer_batch=10_000_000, marketing_consumer_in_flight=2)
        assert await warn_when_locks_may_run_out(pool, huge) is True
        small = settings_for(url, kafka_bootstrap, marketing_consumer_batch=10, marketing_consumer_in_flight=1)
        assert await warn_when_locks_may_run_out(pool, small) is False
    finally:
        await pool.close()
