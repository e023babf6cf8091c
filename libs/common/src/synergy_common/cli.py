"""The `synergy` console script."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import click

from synergy_common.settings import common_settings


@click.group()
def main() -> None:
    """Synergy Engine administration."""


@main.group()
def db() -> None:
    """The Postgres schema."""


@db.command("migrate")
@click.option("--database-url", envvar="DATABASE_URL", default=None, help="defaults to DATABASE_URL")
def db_migrate(database_url: str | None) -> None:
    """Apply every pending migration (Alembic, all service branches)."""
    from synergy_common.db import migrate_sync

    url = database_url or common_settings().database_url
    migrate_sync(url)
    click.echo("database is up to date")


@db.command("wait")
@click.option("--database-url", envvar="DATABASE_URL", default=None, help="defaults to DATABASE_URL")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait before giving up")
def db_wait(database_url: str | None, timeout: float) -> None:
    """Wait until every migration is applied (a pod's init container, while the migration Job runs)."""
    import asyncpg

    from synergy_common.db import pending_migrations

    url = database_url or common_settings().database_url
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = asyncio.run(pending_migrations(url))
        except (OSError, asyncpg.PostgresError) as exc:
            pending = [f"database not reachable: {exc}"]
        if not pending:
            click.echo("database schema is current")
            return
        if time.monotonic() > deadline:
            click.echo(f"schema not current after {timeout:.0f}s: {', '.join(pending)}", err=True)
            sys.exit(1)
        time.sleep(2)


@main.group()
def brands() -> None:
    """Brands (tenants) and their write keys."""


@brands.command("create")
@click.option("--name", required=True)
@click.option("--cio-site-id", default=None)
@click.option("--cio-api-key", default=None)
@click.option("--cio-region", type=click.Choice(["us", "eu"]), default="us")
@click.option("--settings", "settings_json", default=None, help="brand settings as a JSON object")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def brands_create(
    name: str,
    cio_site_id: str | None,
    cio_api_key: str | None,
    cio_region: Literal["us", "eu"],
    settings_json: str | None,
    as_json: bool,
) -> None:
    """Create a brand and print its write key. The key is shown this once; only its hash is kept."""
    from synergy_common.brands import CredentialCipher, create_brand
    from synergy_common.db import create_pool

    settings: dict[str, Any] = json.loads(settings_json) if settings_json else {}
    if not isinstance(settings, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--settings")

    async def run() -> Any:
        pool = await create_pool(common_settings().database_url)
        try:
            cipher = CredentialCipher(common_settings().synergy_encryption_key)
            return await create_brand(
                pool,
                name,
                cipher,
                cio_site_id,
                cio_api_key,
                cio_region,
                settings,
            )
        finally:
            await pool.close()

    try:
        created = asyncio.run(run())
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(
            json.dumps({"brand_id": created.brand_id, "slug": created.slug, "write_key": created.write_key})
        )
        return
    click.echo(f"brand id:  {created.brand_id}")
    click.echo(f"slug:      {created.slug}")
    click.echo(f"write key: {created.write_key}")
    click.echo("Store the write key now: it is not shown again.", err=True)


@main.group()
def keys() -> None:
    """Secrets the engine needs."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new SYNERGY_ENCRYPTION_KEY for Customer.io credentials at rest."""
    from synergy_common.brands import CredentialCipher

    click.echo(CredentialCipher.generate_key())


@main.group()
def schemas() -> None:
    """Event JSON Schemas."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write one versioned JSON Schema per event into DIRECTORY."""
    from synergy_schemas.export import export_json_schemas

    written = export_json_schemas(directory)
    click.echo(f"wrote {len(written)} schemas to {directory}")


@main.group()
def events() -> None:
    """Send events to a running ingest service."""


@events.command("send")
@click.argument("file", type=click.File("rb"))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="the ingest service")
@click.option("--write-key", envvar="SYNERGY_WRITE_KEY", required=True, help="the brand's write key")
def events_send(file: Any, url: str, write_key: str) -> None:
    """Post the events in FILE (a JSON event, a JSON array, {"batch": [...]}, or JSON lines)."""
    import httpx

    raw = file.read()
    try:
        parsed: Any = json.loads(raw)
        batch = parsed["batch"] if isinstance(parsed, dict) and "batch" in parsed else parsed
        items = batch if isinstance(batch, list) else [batch]
    except json.JSONDecodeError:
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]
    failures = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {write_key}"}, timeout=30) as client:
        for start in range(0, len(items), 500):
            response = client.post("/v1/events/batch", json={"batch": items[start : start + 500]})
            if response.status_code >= 500:
                raise click.ClickException(f"ingest answered {response.status_code}: {response.text}")
            body = response.json()
            for error in body.get("errors", []):
                failures += 1
                click.echo(f"event {start + error['index']}: {error['field']}: {error['message']}", err=True)
            for accepted in body.get("accepted", []):
                click.echo(f"event {start + accepted['index']}: accepted as {accepted['event_id']}")
    if failures:
        sys.exit(1)


@main.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
@click.option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", default=None, help="defaults to the env")
@click.option("--partitions", default=12, show_default=True)
def topics_create(bootstrap: str | None, partitions: int) -> None:
    """Create every topic of DESIGN.md (idempotent); synergy.snapshots.v1 is compacted."""
    from synergy_common.localinfra import create_topics, wait_for_kafka

    servers = bootstrap or common_settings().kafka_bootstrap_servers

    async def run() -> list[str]:
        await wait_for_kafka(servers, timeout=120)
        return await create_topics(servers, partitions)

    created = asyncio.run(run())
    click.echo(f"topics ready ({len(created)} created)")


@main.command("infra", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def infra(ctx: click.Context) -> None:
    """Local Kafka and Postgres without Docker: `synergy infra up|down|status [options]`."""
    from synergy_common.localinfra import main as localinfra_main

    sys.exit(localinfra_main(list(ctx.args)))


def _add_dead_letter_commands() -> None:
    # The cio-sink owns the dead letters. An image with only one service installed lacks it.
    try:
        from synergy_cio_sink.cli import dlq
    except ModuleNotFoundError as exc:
        if exc.name != "synergy_cio_sink":
            raise
        return
    main.add_command(dlq, "dlq")


_add_dead_letter_commands()
