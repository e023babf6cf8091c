"""`synergy destinations add|list|disable|enable`: the brands' webhooks and PostHog projects.

Secrets are never taken from the command line: `--secret -` / `--api-key -` read standard input
(for a webhook, one `whsec_` secret per line: several sign side by side during a rotation); without
a value the command prompts without echo. `--generate-secret` makes a webhook secret and prints it once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

T = TypeVar("T")


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    from synergy_common.db import create_pool
    from synergy_common.settings import common_settings

    async def run() -> T:
        pool = await create_pool(common_settings().database_url)
        try:
            return await work(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


PROMPT = "\x00prompt"  # what a secret option holds when given without a value (as synergy_common.cli's)


def secret_option(*names: str, help: str) -> Any:
    suffix = " ('-' reads standard input; no value, or none given, prompts without echo)"
    return click.option(*names, is_flag=False, flag_value=PROMPT, default=None, help=help + suffix)


def read_secret(value: str | None, prompt: str) -> list[str]:
    """`-`: the lines of standard input; None: a prompt without echo. Never the value itself."""
    if value == "-":
        lines = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    elif value is None or value == PROMPT:
        lines = [click.prompt(prompt, hide_input=True).strip()]
    else:
        raise click.BadParameter("secrets are read from standard input (-) or a prompt, never argv")
    if not lines:
        raise click.BadParameter("no secret given")
    return lines


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@click.group("destinations")
def destinations() -> None:
    """Where each brand's events are forwarded (webhooks, PostHog)."""


@destinations.command("add")
@click.option("--brand", required=True, help="the brand's id or slug")
@click.option("--type", "type_", type=click.Choice(["webhook", "posthog"]), required=True)
@click.option("--name", default=None, help="unique per brand; defaults to the type")
@click.option("--url", default=None, help="webhook: the endpoint")
@click.option("--host", default=None, help="posthog: the instance (default https://us.i.posthog.com)")
@secret_option("--secret", help="webhook: the whsec_ signing secret(s), one per line")
@click.option("--generate-secret", is_flag=True, help="webhook: make a secret and print it once")
@secret_option("--api-key", help="posthog: the project API key")
@click.option("--json", "as_json", is_flag=True)
def add(brand: str, type_: str, name: str | None, url: str | None, host: str | None, secret: str | None,
        generate_secret: bool, api_key: str | None, as_json: bool) -> None:
    """Add a destination to a brand; it gets the brand's events within seconds, without a restart."""
    from synergy_common.brands import CredentialCipher
    from synergy_common.settings import common_settings

    from synergy_dispatcher import store
    from synergy_dispatcher.model import DEFAULT_POSTHOG_HOST
    from synergy_dispatcher.signing import InvalidSecret, secret_key

    generated = None
    if type_ == "webhook":
        if not url or not url.startswith(("http://", "https://")):
            raise click.BadParameter("a webhook needs --url http(s)://…", param_hint="--url")
        if generate_secret:
            generated = new_webhook_secret()
            signing = [generated]
        else:
            signing = read_secret(secret, "Signing secret (whsec_…)")
        for s in signing:
            try:
                secret_key(s)
            except InvalidSecret as exc:
                raise click.BadParameter(str(exc), param_hint="--secret") from exc
        settings: dict[str, Any] = {"url": url}
        secret_values: dict[str, Any] = {"signing_secrets": signing}
    else:
        settings = {"host": (host or DEFAULT_POSTHOG_HOST).rstrip("/")}
        secret_values = {"api_key": read_secret(api_key, "PostHog project API key")[0]}
    cipher = CredentialCipher(common_settings().synergy_encryption_key)

    async def work(pool: Any) -> tuple[str, str]:
        brand_id = await store.resolve_brand(pool, brand)
        if brand_id is None:
            raise ValueError(f"no brand {brand!r}")
        destination_id = await store.add_destination(pool, cipher, brand_id, name or type_, type_, settings,
                                                     secret_values)
        return brand_id, destination_id

    brand_id, destination_id = _run(work)
    if as_json:
        click.echo(json.dumps({"id": destination_id, "brand_id": brand_id, "type": type_,
                               "name": name or type_, **({"secret": generated} if generated else {})}))
        return
    click.echo(f"destination {destination_id} ({type_}) added to brand {brand_id}")
    if generated:
        click.echo(f"signing secret: {generated}")
        click.echo("Store the signing secret now: it is not shown again.", err=True)


@destinations.command("list")
@click.option("--brand", default=None, help="only this brand's (id or slug)")
@click.option("--json", "as_json", is_flag=True)
def list_(brand: str | None, as_json: bool) -> None:
    """Each destination: state (and why), delivered, failed, dead-lettered, lag, backlog (items, oldest)."""
    from synergy_dispatcher import store

    async def work(pool: Any) -> list[store.DestinationStatus]:
        brand_id = None
        if brand is not None:
            brand_id = await store.resolve_brand(pool, brand)
            if brand_id is None:
                raise ValueError(f"no brand {brand!r}")
        return await store.destination_statuses(pool, brand_id, include_environment=brand is None)

    statuses = _run(work)
    if as_json:
        click.echo(json.dumps([{"brand_id": s.brand_id, **s.as_json()} for s in statuses]))
        return
    header = f"{'id':>5} {'brand':>8} {'type':8} {'name':20} {'state':9} {'delivered':>10} {'failed':>8} " \
             f"{'dead':>6} {'lag':>6} {'backlog':>8} {'oldest':>8} {'consumer':>8}  reason"
    click.echo(header)
    for s in statuses:
        click.echo(f"{s.id:>5} {s.brand_id or 'all':>8} {s.type:8} {s.name[:20]:20} {s.state:9} "
                   f"{s.delivered:>10} {s.failed:>8} {s.dead_lettered:>6} {s.lag:>6} {s.backlog_items:>8} "
                   f"{_age(s.backlog_oldest_age_seconds):>8} {s.consumer_lag:>8}  "
                   f"{s.disabled_reason or ''}")


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@destinations.command("rotate-secret")
@click.argument("destination_id")
@secret_option("--secret", help="webhook: the new whsec_ secret")
@click.option("--generate-secret", is_flag=True, help="webhook: make the new secret and print it once")
@secret_option("--api-key", help="posthog: the new project API key")
@click.option("--finish", is_flag=True, help="webhook: drop the previous secret (the receiver has switched)")
def rotate_secret(destination_id: str, secret: str | None, generate_secret: bool, api_key: str | None,
                  finish: bool) -> None:
    """A new secret: a webhook signs with the new and the previous one until `--finish`."""
    from synergy_common.brands import CredentialCipher
    from synergy_common.settings import common_settings

    from synergy_dispatcher import store
    from synergy_dispatcher.signing import InvalidSecret, secret_key

    cipher = CredentialCipher(common_settings().synergy_encryption_key)
    if not destination_id.isdigit():
        raise click.ClickException(f"no destination {destination_id}")

    async def current(pool: Any) -> tuple[str, dict[str, Any]] | None:
        return await store.secrets_of(pool, cipher, destination_id)

    found = _run(current)
    if found is None:
        raise click.ClickException(f"no destination {destination_id} managed here")
    type_, secrets_now = found
    generated = None
    if type_ == "webhook":
        previous = [str(s) for s in secrets_now.get("signing_secrets", [])]
        if finish:
            if not previous:
                raise click.ClickException("the destination has no secret")
            updated: dict[str, Any] = {"signing_secrets": previous[:1]}
        else:
            if generate_secret:
                new = generated = new_webhook_secret()
            else:
                new = read_secret(secret, "New signing secret (whsec_…)")[0]
            try:
                secret_key(new)
            except InvalidSecret as exc:
                raise click.BadParameter(str(exc), param_hint="--secret") from exc
            updated = {"signing_secrets": [new, *previous[:1]]}
    else:
        updated = {"api_key": read_secret(api_key, "New PostHog project API key")[0]}

    async def write(pool: Any) -> None:
        await store.set_secrets(pool, cipher, destination_id, updated)

    _run(write)
    if type_ == "webhook":
        count = len(updated["signing_secrets"])
        click.echo(f"destination {destination_id} signs with {count} secret{'s' if count > 1 else ''}")
    else:
        click.echo(f"destination {destination_id} has a new API key")
    if generated:
        click.echo(f"signing secret: {generated}")
        click.echo("Store the signing secret now: it is not shown again.", err=True)


def _set_state(destination_id: str, state: str, reason: str | None) -> None:
    from synergy_dispatcher import store

    async def work(pool: Any) -> bool:
        return await store.set_state(pool, destination_id, state, reason)

    if not destination_id.isdigit() or not _run(work):
        raise click.ClickException(f"no destination {destination_id}")
    click.echo(f"destination {destination_id} is {state}")


@destinations.command("disable")
@click.argument("destination_id")
@click.option("--reason", default="disabled by hand")
def disable(destination_id: str, reason: str) -> None:
    """Stop forwarding to a destination (what is queued for it is dead-lettered, replayable)."""
    _set_state(destination_id, "disabled", reason)


@destinations.command("enable")
@click.argument("destination_id")
def enable(destination_id: str) -> None:
    """Forward to a destination again (after a 410, a revoked key, or `disable`)."""
    _set_state(destination_id, "active", None)
