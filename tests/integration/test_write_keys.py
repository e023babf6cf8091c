"""Write keys against real Postgres: rotation and revocation through the `synergy` CLI, seen by two
replicas; the bounded key cache under a flood of random keys, with Postgres' own count of the queries
it received; failed authentications counted by reason."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from synergy_achievements.api import create_api
from synergy_achievements.rules import default_rules
from synergy_common.brands import CredentialCipher, create_brand, revoke_write_key
from synergy_common.cli import main
from synergy_common.db import create_pool
from synergy_common.http import ProblemError, WriteKeyAuthenticator, authenticate_brand

pytestmark = pytest.mark.integration

FLOOD_KEYS = 100_000
# WriteKeyAuthenticator's defaults, written out: never-seen keys may reach Postgres at 50/s, 100 at once.
UNKNOWN_LOOKUPS_PER_SECOND = 50
UNKNOWN_LOOKUP_BURST = 100
VALID_KEY_TTL_SECONDS = 5


def random_well_formed_key() -> str:
    return "swk_" + secrets.token_urlsafe(32)


async def sessions_ended(connection: asyncpg.Connection, database: str) -> None:
    """Until no session of `database` is left: a backend reports its counts when it exits."""
    deadline = time.monotonic() + 15
    while await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database):
        assert time.monotonic() < deadline, f"sessions of {database} did not end"
        await asyncio.sleep(0.1)
    await connection.execute("SELECT pg_stat_clear_snapshot()")


async def transactions_in(database_url: str, database: str) -> int:
    """Postgres' count of transactions committed or rolled back in `database`, once no session of it
    is left."""
    connection = await asyncpg.connect(database_url)
    try:
        await sessions_ended(connection, database)
        return int(
            await connection.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
            )
        )
    finally:
        await connection.close()


async def write_key_lookups(database_url: str, url: str) -> int:
    """Postgres' own count of the scans of `brand_write_keys` (each key lookup is one) in the database at
    `url`, once no session of it is left. Unlike the database's transaction count, no autovacuum worker
    adds to it: a worker that visits the database runs transactions of its own (a bound of 6 counted 9),
    and neither its vacuums nor its analyzes count as scans."""
    database = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(database_url)
    try:
        await sessions_ended(connection, database)
    finally:
        await connection.close()
    connection = await asyncpg.connect(url)
    try:
        return int(
            await connection.fetchval(
                "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'brand_write_keys'"
            )
        )
    finally:
        await connection.close()


def failures(service: str, reason: str) -> float:
    return REGISTRY.get_sample_value(f"synergy_{service}_auth_failures_total", {"reason": reason}) or 0.0


async def test_a_flood_of_random_keys_keeps_the_valid_key_cached_and_postgres_sees_a_bounded_number_of_queries(
    database_url: str, database_factory: Callable[..., Awaitable[str]]
) -> None:
    flood_url = await database_factory("keyflood")
    database = flood_url.rsplit("/", 1)[1]
    setup = await create_pool(flood_url, min_size=1, max_size=1)
    brand = await create_brand(setup, "Flooded", CredentialCipher(None))
    await setup.close()
    before = await transactions_in(database_url, database)

    pool = await create_pool(flood_url, min_size=1, max_size=4)
    authenticator = WriteKeyAuthenticator(pool, "keyflood")
    assert await authenticate_brand(authenticator, f"Bearer {brand.write_key}") == brand.brand_id
    statuses: dict[int, int] = {}
    valid_answers: list[str] = []
    started = time.monotonic()
    for index in range(FLOOD_KEYS):
        try:
            await authenticate_brand(authenticator, f"Bearer {random_well_formed_key()}")
        except ProblemError as problem:
            statuses[problem.status] = statuses.get(problem.status, 0) + 1
        if index % 1000 == 0:
            valid_answers.append(await authenticate_brand(authenticator, f"Bearer {brand.write_key}"))
    elapsed = time.monotonic() - started
    await pool.close()
    queries = await transactions_in(database_url, database) - before

    assert valid_answers == [brand.brand_id] * (FLOOD_KEYS // 1000)
    assert sum(statuses.values()) == FLOOD_KEYS
    assert set(statuses) == {401, 503}  # unknown (looked up) or not checked (over the budget)
    allowed_lookups = UNKNOWN_LOOKUP_BURST + UNKNOWN_LOOKUPS_PER_SECOND * elapsed
    assert statuses[401] <= allowed_lookups
    # Postgres' own count: two transactions per lookup (the query, and asyncpg's session reset when the
    # connection goes back to the pool) for the unknown keys it was asked about and the valid key's
    # re-checks, plus the pool's connection set-up and close (type introspection and codecs: up to 8
    # transactions for each of 4 connections). A bound in the hundreds, where a cache-less flood is 100,000.
    revalidations = 1 + elapsed / VALID_KEY_TTL_SECONDS
    assert 2 * statuses[401] <= queries <= 2 * (allowed_lookups + revalidations) + 4 * 8, (queries, elapsed)
    assert queries < FLOOD_KEYS / 100


async def test_malformed_and_repeated_unknown_keys_never_reach_postgres_again(
    database_url: str, database_factory: Callable[..., Awaitable[str]]
) -> None:
    url = await database_factory("keyneg")
    before = await write_key_lookups(database_url, url)
    pool = await create_pool(url, min_size=1, max_size=1)
    authenticator = WriteKeyAuthenticator(pool, "keyneg")
    repeated = random_well_formed_key()
    malformed_before = failures("keyneg", "malformed_key")
    unknown_before = failures("keyneg", "unknown_key")
    for _ in range(1000):
        for header in (f"Bearer {repeated}", f"Bearer {secrets.token_hex(20)}", "Bearer swk_short"):
            with pytest.raises(ProblemError) as refused:
                await authenticate_brand(authenticator, header)
            assert refused.value.status == 401
    await pool.close()
    lookups = await write_key_lookups(database_url, url) - before

    # one lookup of the repeated key; the malformed keys never go out
    assert lookups == 1, lookups
    assert failures("keyneg", "malformed_key") - malformed_before == 2000
    assert failures("keyneg", "unknown_key") - unknown_before == 1000


@asynccontextmanager
async def loyalty_replica(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """One replica of a brand-key-authenticated read API (achievements' loyalty), with its own pool."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    app = create_api(pool, lambda brand_id: default_rules(), {})
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            yield client
    finally:
        await pool.close()


async def status_with(client: httpx.AsyncClient, key: str) -> int:
    # An unknown user: 404 once the key is accepted, 401 when it is refused.
    response = await client.get("/v1/users/nobody-here/loyalty", headers={"Authorization": f"Bearer {key}"})
    return response.status_code


def run_synergy(database_url: str, *args: str) -> Any:
    from synergy_common.settings import common_settings

    common_settings.cache_clear()
    try:
        return CliRunner().invoke(main, list(args), env={"DATABASE_URL": database_url})
    finally:
        common_settings.cache_clear()


def synergy(database_url: str, *args: str) -> Any:
    result = run_synergy(database_url, *args)
    assert result.exit_code == 0, result.output
    return result


async def test_rotate_prints_a_new_key_and_revoke_is_refused_within_10_seconds_on_every_replica(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    brand = await create_brand(pool, f"Rotating {secrets.token_hex(3)}", CredentialCipher(None))
    await pool.close()
    old_key = brand.write_key
    revoked_before = failures("achievements", "revoked_key")
    async with loyalty_replica(database_url) as one, loyalty_replica(database_url) as two:
        assert [await status_with(one, old_key), await status_with(two, old_key)] == [404, 404]

        rotated = await asyncio.to_thread(synergy, database_url, "keys", "rotate", "--brand", brand.slug)
        new_key = rotated.stdout.splitlines()[0]
        assert new_key.startswith("swk_") and new_key != old_key
        for replica in (one, two):
            assert await status_with(replica, new_key) == 404
            assert await status_with(replica, old_key) == 404  # the old key works until revoked

        listed = await asyncio.to_thread(synergy, database_url, "keys", "list", "--brand", brand.brand_id)
        assert [line.split()[0] for line in listed.stdout.splitlines()] == [old_key[:10], new_key[:10]]
        assert all(line.endswith("active") for line in listed.stdout.splitlines())

        await asyncio.to_thread(
            synergy, database_url, "keys", "revoke", "--brand", brand.slug, "--prefix", old_key[:10]
        )
        revoked_at = time.monotonic()
        refused_after: dict[str, float] = {}
        while len(refused_after) < 2 and time.monotonic() - revoked_at < 15:
            for name, replica in (("one", one), ("two", two)):
                if name not in refused_after and await status_with(replica, old_key) == 401:
                    refused_after[name] = time.monotonic() - revoked_at
            await asyncio.sleep(0.2)
        assert set(refused_after) == {"one", "two"}
        assert max(refused_after.values()) <= 10, refused_after
        assert [await status_with(one, new_key), await status_with(two, new_key)] == [404, 404]
    assert failures("achievements", "revoked_key") - revoked_before >= 2
    listed = await asyncio.to_thread(synergy, database_url, "keys", "list", "--brand", brand.slug)
    states = {line.split()[0]: line.split()[4] for line in listed.stdout.splitlines()}
    assert states == {old_key[:10]: "revoked", new_key[:10]: "active"}


async def test_revoke_refuses_an_ambiguous_or_unknown_prefix(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    brand = await create_brand(pool, f"Prefixes {secrets.token_hex(3)}", CredentialCipher(None))
    await pool.close()
    unknown = await asyncio.to_thread(
        run_synergy, database_url, "keys", "revoke", "--brand", brand.slug, "--prefix", "swk_zzzzzz"
    )
    assert unknown.exit_code == 1
    assert "no active write key starting with 'swk_zzzzzz'" in unknown.output
    too_short = await asyncio.to_thread(
        run_synergy, database_url, "keys", "revoke", "--brand", brand.slug, "--prefix", "swk_"
    )
    assert too_short.exit_code == 1
    assert "give more of the key" in too_short.output


async def test_a_revoked_key_is_trusted_no_longer_than_the_ttl_after_postgres_confirmed_it(
    database_url: str,
) -> None:
    """The per-key answers remembered for the hot path expire with the cache they mirror: the key is
    accepted up to 5 s after Postgres confirmed it, however often it is used, and refused after."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        brand = await create_brand(pool, "Revoked Soon", CredentialCipher(CredentialCipher.generate_key()))
        now = [1000.0]
        authenticator = WriteKeyAuthenticator(pool, "ttlcheck", ttl_seconds=5.0, clock=lambda: now[0])
        header = f"Bearer {brand.write_key}"
        assert await authenticate_brand(authenticator, header) == brand.brand_id  # Postgres confirms at 1000
        revoked_before = failures("ttlcheck", "revoked_key")
        await revoke_write_key(pool, brand.slug, brand.write_key[:10])
        for at in (1001.0, 1003.0, 1004.9):
            now[0] = at
            assert await authenticate_brand(authenticator, header) == brand.brand_id
        now[0] = 1005.1
        with pytest.raises(ProblemError) as refused:
            await authenticate_brand(authenticator, header)
        assert refused.value.status == 401
        assert failures("ttlcheck", "revoked_key") - revoked_before == 1
        now[0] = 1006.0  # refused from the negative cache now, never accepted again
        with pytest.raises(ProblemError):
            await authenticate_brand(authenticator, header)
    finally:
        await pool.close()
