"""Postgres access: asyncpg pools with JSON codecs, and schema migrations owned by Alembic."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Postgres is down, restarting or out of connections: a caller should retry later (503).
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(
    database_url: str, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A pool whose json/jsonb columns read and write Python objects."""
    pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, init=_init_connection, **kwargs
    )
    assert pool is not None
    return pool


def _alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url))
    return config


def sqlalchemy_url(database_url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url[len(prefix) :]
    return database_url


def migrate_sync(database_url: str, revision: str = "heads") -> None:
    """Bring the schema to `revision` (every service's branch head by default)."""
    from alembic import command

    command.upgrade(_alembic_config(database_url), revision)


async def migrate(database_url: str, revision: str = "heads") -> None:
    await asyncio.to_thread(migrate_sync, database_url, revision)


async def pending_migrations(database_url: str) -> list[str]:
    """The migration heads the database has not reached yet (empty when its schema is current)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(database_url))
    heads = set(script.get_heads())
    connection = await asyncpg.connect(database_url)
    try:
        exists = await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        applied = (
            {row["version_num"] for row in await connection.fetch("SELECT version_num FROM alembic_version")}
            if exists
            else set()
        )
    finally:
        await connection.close()
    if any(not _known(script, a) for a in applied):
        return []  # a newer image already migrated past every head this one knows
    reached: set[str] = set()
    for revision in applied:
        reached.update(r.revision for r in script.iterate_revisions(revision, "base"))
    return sorted(heads - reached)


def _known(script: Any, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:
        return False
