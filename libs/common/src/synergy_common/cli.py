"""The `synergy` console script."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import click
from click.core import ParameterSource

from synergy_common.settings import common_settings

_PROMPT = "\x00prompt"  # what a secret option holds when it is given without a value


def secret_option(*names: str, help: str, envvar: str | None = None) -> Any:
    """A secret never taken on the command line (ps and shell history would show it): `-` reads it
    from standard input, no value prompts without echo, and an environment variable may carry it."""
    suffix = " ('-' reads it from standard input; with no value it is prompted for without echo"
    suffix += f"; or set {envvar})" if envvar else ")"
    return click.option(
        *names, is_flag=False, flag_value=_PROMPT, default=None, envvar=envvar, help=help + suffix
    )


def read_secret(ctx: click.Context, name: str, prompt: str) -> str | None:
    """The secret option `name`, from stdin, the terminal or its envvar; None when not given."""
    value = ctx.params.get(name)
    if value is None:
        return None
    option = "--" + name.replace("_", "-")
    if ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT:
        secret = str(value).strip()
    elif value == _PROMPT:
        secret = click.prompt(prompt, hide_input=True, err=True).strip()
    elif value == "-":
        secret = sys.stdin.readline().strip()
    else:
        raise click.BadParameter(
            "secrets are never taken on the command line (ps and shell history show it): "
            "give '-' to read it from standard input, or no value to be prompted",
            ctx=ctx,
            param_hint=option,
        )
    if not secret:
        raise click.BadParameter("the secret is empty", ctx=ctx, param_hint=option)
    return secret


def _run_with_pool(work: Any) -> Any:
    """Run `await work(pool)` against DATABASE_URL; library errors become one-line CLI errors."""
    from synergy_common.brands import BrandNotFound
    from synergy_common.db import create_pool

    async def run() -> Any:
        pool = await create_pool(common_settings().database_url, min_size=1, max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    except (ValueError, RuntimeError, BrandNotFound) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot reach Postgres at DATABASE_URL: {exc}") from exc


@click.group()
def main() -> None:
    """Synergy Engine administration."""


@main.group()
def db() -> None:
    """The Postgres schema."""


@db.command("migrate")
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    help="defaults to DATABASE_URL; '-' reads it from standard input; a URL with a password is refused here",
)
@click.pass_context
def db_migrate(ctx: click.Context, database_url: str | None) -> None:
    """Apply every pending migration (Alembic, all service branches)."""
    from urllib.parse import urlsplit

    from synergy_common.db import migrate_sync

    if database_url == "-":
        database_url = sys.stdin.readline().strip()
    elif (
        database_url
        and ctx.get_parameter_source("database_url") is ParameterSource.COMMANDLINE
        and urlsplit(database_url).password
    ):
        raise click.BadParameter(
            "a password is never taken on the command line: set DATABASE_URL, or give '-' and the URL on "
            "standard input",
            param_hint="--database-url",
        )
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
@secret_option("--cio-api-key", help="the brand's Customer.io Track API key, stored encrypted")
@click.option("--cio-region", type=click.Choice(["us", "eu"]), default="us")
@click.option("--settings", "settings_json", default=None, help="brand settings as a JSON object")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def brands_create(
    ctx: click.Context,
    name: str,
    cio_site_id: str | None,
    cio_api_key: str | None,
    cio_region: Literal["us", "eu"],
    settings_json: str | None,
    as_json: bool,
) -> None:
    """Create a brand and print its write key. The key is shown this once; only its hash is kept."""
    from synergy_common.brands import CredentialCipher, create_brand

    settings: dict[str, Any] = json.loads(settings_json) if settings_json else {}
    if not isinstance(settings, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--settings")
    api_key = read_secret(ctx, "cio_api_key", "Customer.io API key")
    cipher = CredentialCipher(common_settings().synergy_encryption_key)
    created = _run_with_pool(
        lambda pool: create_brand(pool, name, cipher, cio_site_id, api_key, cio_region, settings)
    )
    if as_json:
        click.echo(
            json.dumps({"brand_id": created.brand_id, "slug": created.slug, "write_key": created.write_key})
        )
        return
    click.echo(f"brand id:  {created.brand_id}")
    click.echo(f"slug:      {created.slug}")
    click.echo(f"write key: {created.write_key}")
    click.echo("Store the write key now: it is not shown again.", err=True)


@brands.command("update")
@click.argument("brand")
@secret_option(
    "--cio-webhook-signing-key",
    help="the signing key of the brand's Customer.io webhooks, stored encrypted; the key it replaces "
    "stays accepted until --drop-previous-webhook-signing-key",
)
@click.option(
    "--drop-previous-webhook-signing-key",
    is_flag=True,
    help="end a rotation: accept only the current webhook signing key",
)
@click.pass_context
def brands_update(ctx: click.Context, brand: str, cio_webhook_signing_key: str | None,
                  drop_previous_webhook_signing_key: bool) -> None:
    """Change a brand's secrets. BRAND is its id or slug. Replicas apply a change within 10 seconds."""
    from synergy_common.brands import CredentialCipher, set_webhook_signing_key
    from synergy_common.brands import drop_previous_webhook_signing_key as drop_previous

    signing_key = read_secret(ctx, "cio_webhook_signing_key", "Customer.io webhook signing key")
    if signing_key is None and not drop_previous_webhook_signing_key:
        raise click.UsageError("nothing to change: give --cio-webhook-signing-key or --drop-previous-...")
    cipher = CredentialCipher(common_settings().synergy_encryption_key)

    async def work(pool: Any) -> int:
        brand_id = 0
        if signing_key is not None:
            brand_id = await set_webhook_signing_key(pool, brand, signing_key, cipher)
        if drop_previous_webhook_signing_key:
            brand_id = await drop_previous(pool, brand)
        return brand_id

    brand_id = _run_with_pool(work)
    if signing_key is not None:
        click.echo(f"brand {brand_id}: webhook signing key set (the previous one is still accepted)")
    if drop_previous_webhook_signing_key:
        click.echo(f"brand {brand_id}: only the current webhook signing key is accepted")


@main.group()
def keys() -> None:
    """Secrets the engine needs."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new SYNERGY_ENCRYPTION_KEY for Customer.io credentials at rest."""
    from synergy_common.brands import CredentialCipher

    click.echo(CredentialCipher.generate_key())


@keys.command("rotate")
@click.option("--brand", required=True, help="the brand's id or slug")
def keys_rotate(brand: str) -> None:
    """Print a new write key for BRAND. Its older keys keep working until `synergy keys revoke`."""
    from synergy_common.brands import KEY_PREFIX_LENGTH, rotate_write_key

    write_key = _run_with_pool(lambda pool: rotate_write_key(pool, brand))
    click.echo(write_key)
    click.echo(
        f"Store the write key now: it is not shown again. Its prefix is {write_key[:KEY_PREFIX_LENGTH]}; "
        "revoke the old key with `synergy keys revoke --brand BRAND --prefix PREFIX`.",
        err=True,
    )


@keys.command("revoke")
@click.option("--brand", required=True, help="the brand's id or slug")
@click.option("--prefix", required=True, help="the key's prefix, as `synergy keys list` shows it")
def keys_revoke(brand: str, prefix: str) -> None:
    """Revoke one write key of BRAND. Every replica refuses it within 10 seconds."""
    from synergy_common.brands import list_write_keys, revoke_write_key

    async def work(pool: Any) -> tuple[Any, int]:
        revoked = await revoke_write_key(pool, brand, prefix)
        active = sum(key.revoked_at is None for key in await list_write_keys(pool, brand))
        return revoked, active

    revoked, active = _run_with_pool(work)
    click.echo(f"revoked {revoked.prefix} (created {revoked.created_at:%Y-%m-%d %H:%M:%S}Z)")
    if not active:
        click.echo("The brand has no active write key left: `synergy keys rotate` makes one.", err=True)


@keys.command("list")
@click.option("--brand", required=True, help="the brand's id or slug")
def keys_list(brand: str) -> None:
    """BRAND's write keys by prefix (only prefixes and hashes are stored), oldest first."""
    from synergy_common.brands import list_write_keys

    for key in _run_with_pool(lambda pool: list_write_keys(pool, brand)):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S}Z" if key.revoked_at else "active"
        click.echo(f"{key.prefix}  created {key.created_at:%Y-%m-%d %H:%M:%S}Z  {state}")


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
@secret_option("--write-key", help="the brand's write key", envvar="SYNERGY_WRITE_KEY")
@click.pass_context
def events_send(ctx: click.Context, file: Any, url: str, write_key: str | None) -> None:
    """Post the events in FILE (a JSON event, a JSON array, {"batch": [...]}, or JSON lines)."""
    import httpx

    key = read_secret(ctx, "write_key", "write key")
    if key is None:
        raise click.UsageError("give --write-key - (stdin), --write-key (prompt) or SYNERGY_WRITE_KEY")
    write_key = key
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
    # The consumer runtime owns the dead letters of every service. An image without it lacks them.
    try:
        from synergy_streaming.cli import dlq
    except ModuleNotFoundError as exc:
        if exc.name != "synergy_streaming":
            raise
        return
    main.add_command(dlq, "dlq")


_add_dead_letter_commands()


def _add_destination_commands() -> None:
    # The dispatcher owns the destinations. An image with only one service installed lacks it.
    try:
        from synergy_dispatcher.cli import destinations
    except ModuleNotFoundError as exc:
        if exc.name != "synergy_dispatcher":
            raise
        return
    main.add_command(destinations, "destinations")


_add_destination_commands()
