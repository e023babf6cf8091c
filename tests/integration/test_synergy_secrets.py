"""Secrets given to the `synergy` CLI never appear on its command line, and are stored encrypted."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import secrets
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import asyncpg
import pytest
from synergy_common.brands import CredentialCipher

pytestmark = pytest.mark.integration

SYNERGY = str(Path(sys.executable).parent / "synergy")


def cli_env(database_url: str, encryption_key: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "SYNERGY_ENCRYPTION_KEY": encryption_key}


def process_listing() -> str:
    return subprocess.run(["ps", "-eo", "pid,args", "--width", "4096"], capture_output=True, text=True,
                          check=True).stdout


async def brand_row(database_url: str, brand: str) -> asyncpg.Record:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow("SELECT * FROM brands WHERE slug = $1 OR id::text = $1", brand)
    finally:
        await connection.close()
    assert row is not None
    return row


async def test_ps_during_brands_create_shows_no_secret_and_the_key_read_from_stdin_is_stored_encrypted(
    database_url: str,
) -> None:
    encryption_key = CredentialCipher.generate_key()
    api_key = f"cio-secret-{secrets.token_hex(8)}"
    name = f"Secret Brand {secrets.token_hex(3)}"
    process = subprocess.Popen(
        [SYNERGY, "brands", "create", "--name", name, "--cio-site-id", "site-7", "--cio-api-key", "-",
         "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(database_url, encryption_key),
    )
    listings = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # while the CLI starts and waits for its standard input
        listings.append(process_listing())
        await asyncio.sleep(0.2)
    assert process.poll() is None, "the CLI did not wait for its standard input"
    own_line = [line for line in listings[-1].splitlines() if line.strip().startswith(str(process.pid))]
    assert own_line and "brands create" in own_line[0] and "--cio-api-key -" in own_line[0]
    assert not any(api_key in listing for listing in listings)

    stdout, stderr = process.communicate(api_key.encode() + b"\n", timeout=60)
    assert process.returncode == 0, stderr.decode()
    created = json.loads(stdout)
    row = await brand_row(database_url, created["slug"])
    assert row["customer_io_site_id"] == "site-7"
    assert row["customer_io_api_key"] != api_key and api_key not in row["customer_io_api_key"]
    assert CredentialCipher(encryption_key).decrypt(row["customer_io_api_key"]) == api_key


def test_a_secret_given_on_the_command_line_is_refused_and_nothing_is_created(database_url: str) -> None:
    name = f"Refused Brand {secrets.token_hex(3)}"
    result = subprocess.run(
        [SYNERGY, "brands", "create", "--name", name, "--cio-site-id", "s", "--cio-api-key", "literal-secret"],
        capture_output=True, text=True, env=cli_env(database_url, CredentialCipher.generate_key()), timeout=60,
    )
    assert result.returncode == 2
    assert "secrets are never taken on the command line" in result.stderr
    assert "--cio-api-key" in result.stderr

    async def count() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM brands WHERE name = $1", name))
        finally:
            await connection.close()

    assert asyncio.run(count()) == 0


def run_on_a_terminal(args: list[str], env: dict[str, str], typed: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its standard streams, type `typed` at its prompt; its
    exit code and everything the terminal showed."""
    controller, terminal = pty.openpty()
    # a session of its own: the pseudo-terminal, not the test's, is where it can prompt
    process = subprocess.Popen(
        args, stdin=terminal, stdout=terminal, stderr=terminal, env=env, start_new_session=True
    )
    os.close(terminal)
    shown = b""
    typed_yet = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            # Type only once the prompt turned echo off: turning it off flushes what was typed before.
            echo_off = not termios.tcgetattr(controller)[3] & termios.ECHO
            if not typed_yet and b"signing key:" in shown and echo_off:
                os.write(controller, typed.encode() + b"\n")
                typed_yet = True
            if process.poll() is not None and not ready:
                break
        return process.wait(timeout=10), shown.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)


async def test_brands_update_prompts_for_the_signing_key_without_echo_and_keeps_the_previous_during_rotation(
    database_url: str,
) -> None:
    encryption_key = CredentialCipher.generate_key()
    env = cli_env(database_url, encryption_key)
    created = subprocess.run(
        [SYNERGY, "brands", "create", "--name", f"Rotating Hooks {secrets.token_hex(3)}", "--json"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )
    slug = json.loads(created.stdout)["slug"]
    first_key = f"whk-first-{secrets.token_hex(6)}"
    second_key = f"whk-second-{secrets.token_hex(6)}"

    code, shown = await asyncio.to_thread(
        run_on_a_terminal, [SYNERGY, "brands", "update", slug, "--cio-webhook-signing-key"], env, first_key
    )
    assert code == 0, shown
    assert "Customer.io webhook signing key:" in shown
    assert first_key not in shown  # typed without echo
    row = await brand_row(database_url, slug)
    cipher = CredentialCipher(encryption_key)
    assert first_key not in row["cio_webhook_signing_key"]
    assert cipher.decrypt(row["cio_webhook_signing_key"]) == first_key
    assert row["cio_webhook_signing_key_previous"] is None

    piped = subprocess.run(
        [SYNERGY, "brands", "update", slug, "--cio-webhook-signing-key", "-"],
        input=second_key + "\n", capture_output=True, text=True, env=env, timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    row = await brand_row(database_url, slug)
    assert cipher.decrypt(row["cio_webhook_signing_key"]) == second_key
    assert cipher.decrypt(row["cio_webhook_signing_key_previous"]) == first_key

    dropped = subprocess.run(
        [SYNERGY, "brands", "update", slug, "--drop-previous-webhook-signing-key"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert dropped.returncode == 0, dropped.stderr
    row = await brand_row(database_url, slug)
    assert cipher.decrypt(row["cio_webhook_signing_key"]) == second_key
    assert row["cio_webhook_signing_key_previous"] is None


def test_events_send_takes_the_write_key_from_its_environment_variable_not_argv(database_url: str) -> None:
    result = subprocess.run(
        [SYNERGY, "events", "send", "/dev/null", "--write-key", "swk_literal"],
        capture_output=True, text=True, env=cli_env(database_url, ""), timeout=60,
    )
    assert result.returncode == 2
    assert "secrets are never taken on the command line" in result.stderr


def test_db_migrate_refuses_a_password_in_its_url_on_the_command_line(database_url: str) -> None:
    result = subprocess.run(
        [SYNERGY, "db", "migrate", "--database-url", "postgresql://synergy:hunter2@127.0.0.1:1/synergy"],
        capture_output=True, text=True, env=cli_env(database_url, ""), timeout=60,
    )
    assert result.returncode == 2
    assert "a password is never taken on the command line" in result.stderr
    piped = subprocess.run(
        [SYNERGY, "db", "migrate", "--database-url", "-"],
        input=database_url + "\n", capture_output=True, text=True, env=cli_env(database_url, ""), timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip() == "database is up to date"
