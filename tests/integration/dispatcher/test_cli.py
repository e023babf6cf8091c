"""`synergy destinations add|list|disable|enable`: secrets from stdin or a prompt, stored encrypted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from synergy_common.brands import CredentialCipher
from synergy_common.cli import main
from synergy_common.settings import common_settings

from tests.integration.dispatcher.harness import SECRET, DispatcherHarness


@pytest.fixture
def cli(harness: DispatcherHarness, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DATABASE_URL", harness.database_url)
    monkeypatch.setenv("SYNERGY_ENCRYPTION_KEY", harness.encryption_key)
    common_settings.cache_clear()

    async def run(args: list[str], stdin: str | None = None) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, main, args, input=stdin)

    yield run
    common_settings.cache_clear()


async def test_add_list_disable_enable(harness: DispatcherHarness, cli: Any) -> None:
    h = harness
    brand_id, _ = await h.brand()
    slug = await h.pool.fetchval("SELECT slug FROM brands WHERE id = $1", int(brand_id))

    added = await cli(["destinations", "add", "--brand", slug, "--type", "webhook", "--url",
                       "https://hooks.example.com/in", "--secret", "-", "--json"], stdin=SECRET + "\n")
    assert added.exit_code == 0, added.output
    hook = json.loads(added.output)
    assert (hook["brand_id"], hook["type"], hook["name"]) == (brand_id, "webhook", "webhook")

    prompted = await cli(["destinations", "add", "--brand", brand_id, "--type", "posthog", "--api-key",
                          "--json"], stdin="phc_secret_project_key\n")
    assert prompted.exit_code == 0, prompted.output
    assert "phc_secret_project_key" not in prompted.output  # the prompt does not echo
    posthog_id = json.loads(prompted.output.strip().splitlines()[-1])["id"]

    on_argv = await cli(["destinations", "add", "--brand", brand_id, "--type", "webhook", "--name", "x",
                         "--url", "https://x.example.com", "--secret", SECRET])
    assert on_argv.exit_code != 0 and "never argv" in on_argv.output

    rows = {str(r["id"]): r for r in await h.pool.fetch(
        "SELECT id, secrets, settings FROM destinations WHERE brand_id = $1", int(brand_id))}
    assert set(rows) == {hook["id"], posthog_id}
    cipher = CredentialCipher(h.encryption_key)
    assert SECRET not in rows[hook["id"]]["secrets"]
    assert json.loads(cipher.decrypt(rows[hook["id"]]["secrets"])) == {"signing_secrets": [SECRET]}
    assert json.loads(cipher.decrypt(rows[posthog_id]["secrets"])) == {"api_key": "phc_secret_project_key"}
    assert rows[posthog_id]["settings"] == {"host": "https://us.i.posthog.com"}

    disabled = await cli(["destinations", "disable", hook["id"], "--reason", "rotating the endpoint"])
    assert disabled.exit_code == 0, disabled.output
    listed = await cli(["destinations", "list", "--brand", slug, "--json"])
    states = {d["id"]: (d["state"], d["disabled_reason"]) for d in json.loads(listed.output)}
    assert states == {hook["id"]: ("disabled", "rotating the endpoint"), posthog_id: ("active", None)}
    assert SECRET not in listed.output and "phc_secret_project_key" not in listed.output

    enabled = await cli(["destinations", "enable", hook["id"]])
    assert enabled.exit_code == 0
    table = await cli(["destinations", "list", "--brand", brand_id])
    line = next(x for x in table.output.splitlines() if x.strip().startswith(hook["id"] + " "))
    assert "active" in line and "webhook" in line

    unknown = await cli(["destinations", "enable", "999999"])
    assert unknown.exit_code != 0 and "no destination 999999" in unknown.output


async def test_rotating_a_webhook_secret_signs_with_both_until_finished(harness: DispatcherHarness,
                                                                       cli: Any) -> None:
    h = harness
    brand_id, _ = await h.brand()
    added = await cli(["destinations", "add", "--brand", brand_id, "--type", "webhook", "--url",
                       "https://hooks.example.com/in", "--secret", "-", "--json"], stdin=SECRET + "\n")
    destination_id = json.loads(added.output)["id"]
    new = "whsec_" + "bmV3LWRpc3BhdGNoZXItdGVzdC1zZWNyZXQ="  # "new-dispatcher-test-secret"
    rotated = await cli(["destinations", "rotate-secret", destination_id, "--secret", "-"], stdin=new + "\n")
    assert rotated.exit_code == 0, rotated.output
    assert "signs with 2 secrets" in rotated.output and new not in rotated.output
    cipher = CredentialCipher(h.encryption_key)
    stored = await h.pool.fetchval("SELECT secrets FROM destinations WHERE id = $1", int(destination_id))
    assert json.loads(cipher.decrypt(stored)) == {"signing_secrets": [new, SECRET]}
    finished = await cli(["destinations", "rotate-secret", destination_id, "--finish"])
    assert finished.exit_code == 0 and "signs with 1 secret" in finished.output
    stored = await h.pool.fetchval("SELECT secrets FROM destinations WHERE id = $1", int(destination_id))
    assert json.loads(cipher.decrypt(stored)) == {"signing_secrets": [new]}
