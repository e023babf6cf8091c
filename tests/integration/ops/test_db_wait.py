"""`synergy db wait`, the init container of every pod: it holds a service back until the migration Job has
brought the schema to head, and lets it go at once when the schema is current."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from synergy_common.db import migrate


def wait(url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "synergy"), "db", "wait", "--timeout", str(timeout)],
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_wait_fails_on_an_unmigrated_database_and_names_the_pending_heads(
    database_factory: Callable[..., Awaitable[str]],
) -> None:
    url = await database_factory("dbwait", migrate=False)
    started = time.monotonic()
    out = await asyncio.to_thread(wait, url, 3)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "schema not current after 3s" in out.stderr
    assert time.monotonic() - started >= 3


async def test_wait_returns_once_the_migration_job_has_run(
    database_factory: Callable[..., Awaitable[str]],
) -> None:
    url = await database_factory("dbwait", migrate=False)
    waiting = asyncio.create_task(asyncio.to_thread(wait, url, 60))
    await asyncio.sleep(3)
    assert not waiting.done()  # held back while nothing is migrated
    await migrate(url)
    out = await waiting
    assert out.returncode == 0, out.stdout + out.stderr
    assert "database schema is current" in out.stdout


async def test_wait_accepts_a_schema_migrated_by_a_newer_image(
    database_factory: Callable[..., Awaitable[str]],
) -> None:
    url = await database_factory("dbwait", migrate=True)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("DELETE FROM alembic_version")
        await connection.execute("INSERT INTO alembic_version VALUES ('ffff_from_a_newer_image')")
    finally:
        await connection.close()
    out = await asyncio.to_thread(wait, url, 3)
    assert out.returncode == 0, out.stdout + out.stderr
