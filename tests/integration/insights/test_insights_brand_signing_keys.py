"""Each brand's own Customer.io signing keys: a brand with keys is verified with them only, the
deployment's key serves the rest, and a key change reaches every replica within 10 seconds."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest
from click.testing import CliRunner
from synergy_common.brands import CredentialCipher
from synergy_common.cli import main
from synergy_common.settings import common_settings

from tests.integration.insights.insights_harness import (
    SIGNING_KEY,
    Brand,
    Insights,
    insights_settings,
    make_brand,
    make_user,
    new_topic,
    running_insights,
)

pytestmark = pytest.mark.integration

ENCRYPTION_KEY = CredentialCipher.generate_key()


def prediction(user_id: str, churn: float = 0.25) -> dict:
    # a fresh nonce keeps every signed body unique (the same signed request twice is a replay)
    return {"user_id": user_id, "predictions": {"churn_probability": churn, "nonce": secrets.token_hex(6)}}


def set_brand_signing_key(database_url: str, brand: str, key: str) -> None:
    """`synergy brands update BRAND --cio-webhook-signing-key -`, the key on standard input."""
    common_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            main,
            ["brands", "update", brand, "--cio-webhook-signing-key", "-"],
            input=key + "\n",
            env={"DATABASE_URL": database_url, "SYNERGY_ENCRYPTION_KEY": ENCRYPTION_KEY},
        )
    finally:
        common_settings.cache_clear()
    assert result.exit_code == 0, result.output


def drop_previous_signing_key(database_url: str, brand: str) -> None:
    common_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            main,
            ["brands", "update", brand, "--drop-previous-webhook-signing-key"],
            env={"DATABASE_URL": database_url, "SYNERGY_ENCRYPTION_KEY": ENCRYPTION_KEY},
        )
    finally:
        common_settings.cache_clear()
    assert result.exit_code == 0, result.output


async def replica(stack: AsyncExitStack, database_url: str, kafka_bootstrap: str, brand: Brand) -> Insights:
    settings = insights_settings(database_url, kafka_bootstrap, synergy_encryption_key=ENCRYPTION_KEY)
    return await stack.enter_async_context(running_insights(settings, brand, await new_topic(kafka_bootstrap)))


@pytest.fixture
async def keyed_brand(db: asyncpg.Pool, database_url: str) -> AsyncIterator[Brand]:
    brand = await make_brand(db, "Own Key")
    yield brand
    # Brand-less rows this module left (the guessing path refused to pick this brand) wait forever.
    await db.execute(
        """UPDATE customer_io_webhook_log SET processed_successfully = false, next_attempt_at = NULL,
           error_message = 'test cleanup' WHERE brand_id IS NULL AND processed_successfully IS NULL
           AND external_user_id LIKE 'ownkey-%'"""
    )


async def churn_of(db: asyncpg.Pool, brand: Brand, user: str) -> float | None:
    features = await db.fetchval(
        "SELECT ai_features FROM users WHERE brand_id = $1 AND external_id = $2", brand.pk, user
    )
    return (features or {}).get("churn_probability")


async def test_a_brand_with_its_own_key_is_verified_with_it_only_and_the_global_key_serves_the_rest(
    db: asyncpg.Pool, database_url: str, kafka_bootstrap: str, keyed_brand: Brand
) -> None:
    own_key = f"own-{secrets.token_hex(8)}"
    await asyncio.to_thread(set_brand_signing_key, database_url, keyed_brand.slug, own_key)
    keyless = await make_brand(db, "Global Key")
    # A second brand without a key of its own, so that the guess below is ambiguous however many
    # brands earlier tests left: with a single candidate, rule 3 would pick it (and wait for the user).
    await make_brand(db, "Global Key Too")
    keyed_user = await make_user(db, keyed_brand, f"ownkey-{secrets.token_hex(4)}")
    keyless_user = await make_user(db, keyless, f"globalkey-{secrets.token_hex(4)}")

    async with AsyncExitStack() as stack:
        insights = await replica(stack, database_url, kafka_bootstrap, keyed_brand)
        path = f"/webhooks/customer-io/{keyed_brand.slug}"

        with_global = await insights.post(prediction(keyed_user, 0.9), path, key=SIGNING_KEY)
        assert with_global.status_code == 401
        assert with_global.json()["reason"] == "bad_signature"
        assert await churn_of(db, keyed_brand, keyed_user) is None

        with_own = await insights.post(prediction(keyed_user, 0.31), path, key=own_key)
        assert with_own.status_code == 200, with_own.text
        assert with_own.json()["status"] == "processed"
        assert await churn_of(db, keyed_brand, keyed_user) == 0.31
        by_id = await insights.post(
            prediction(keyed_user, 0.32), f"/api/webhooks/customer-io/{keyed_brand.brand_id}", key=own_key
        )
        assert by_id.status_code == 200, by_id.text
        assert await churn_of(db, keyed_brand, keyed_user) == 0.32

        # The unbranded path (the deployment's key) never reaches a brand with its own key by a guess.
        guessed = await insights.post(prediction(keyed_user, 0.99), "/webhooks/customer-io", key=SIGNING_KEY)
        assert guessed.status_code == 202, guessed.text
        assert guessed.json()["status"] == "waiting_for_brand"
        logged_brand = await db.fetchval(
            "SELECT brand_id FROM customer_io_webhook_log WHERE id = $1", guessed.json()["log_id"]
        )
        assert logged_brand is None
        await asyncio.sleep(1.0)  # the retry loop runs every 200 ms here: it must not pick the brand either
        assert await churn_of(db, keyed_brand, keyed_user) == 0.32

        own_elsewhere = await insights.post(
            prediction(keyless_user, 0.5), f"/webhooks/customer-io/{keyless.slug}", key=own_key
        )
        assert own_elsewhere.status_code == 401  # one brand's key is nothing to another brand
        keyless_answer = await insights.post(
            prediction(keyless_user, 0.41), f"/webhooks/customer-io/{keyless.slug}", key=SIGNING_KEY
        )
        assert keyless_answer.status_code == 200, keyless_answer.text
        assert await churn_of(db, keyless, keyless_user) == 0.41


async def test_an_unknown_brand_in_the_path_is_only_revealed_to_a_signed_request(
    database_url: str, kafka_bootstrap: str, keyed_brand: Brand
) -> None:
    async with AsyncExitStack() as stack:
        insights = await replica(stack, database_url, kafka_bootstrap, keyed_brand)
        path = f"/webhooks/customer-io/no-such-brand-{secrets.token_hex(3)}"
        unsigned = await insights.client.post(
            path, content=b'{"user_id": "x", "predictions": {"a": 1}}', headers={"Content-Type": "application/json"}
        )
        assert unsigned.status_code == 401
        assert unsigned.json()["reason"] == "missing_signature"
        signed_answer = await insights.post(prediction("x"), path, key=SIGNING_KEY)
        assert signed_answer.status_code == 404
        assert signed_answer.json()["field"] == "brand"


async def accepted_everywhere(replicas: list[Insights], path: str, user: str, key: str, timeout: float) -> float:
    """Seconds until every replica accepts a webhook signed with `key` (polled every 200 ms)."""
    started = time.monotonic()
    pending = list(replicas)
    while pending and time.monotonic() - started < timeout:
        pending = [r for r in pending if (await r.post(prediction(user), path, key=key)).status_code != 200]
        await asyncio.sleep(0.2)
    assert not pending, f"{len(pending)} replica(s) still refuse the key after {timeout}s"
    return time.monotonic() - started


async def refused_everywhere(replicas: list[Insights], path: str, user: str, key: str, timeout: float) -> float:
    started = time.monotonic()
    pending = list(replicas)
    while pending and time.monotonic() - started < timeout:
        pending = [r for r in pending if (await r.post(prediction(user), path, key=key)).status_code != 401]
        await asyncio.sleep(0.2)
    assert not pending, f"{len(pending)} replica(s) still accept the key after {timeout}s"
    return time.monotonic() - started


async def test_a_signing_key_change_takes_effect_within_10_seconds_on_every_replica(
    db: asyncpg.Pool, database_url: str, kafka_bootstrap: str, keyed_brand: Brand
) -> None:
    first, second = f"first-{secrets.token_hex(8)}", f"second-{secrets.token_hex(8)}"
    user = await make_user(db, keyed_brand, f"ownkey-{secrets.token_hex(4)}")
    path = f"/webhooks/customer-io/{keyed_brand.slug}"
    async with AsyncExitStack() as stack:
        replicas = [await replica(stack, database_url, kafka_bootstrap, keyed_brand) for _ in range(2)]
        for insights in replicas:  # no key of its own yet: the deployment's serves it
            assert (await insights.post(prediction(user), path, key=SIGNING_KEY)).status_code == 200

        await asyncio.to_thread(set_brand_signing_key, database_url, keyed_brand.slug, first)
        assert await accepted_everywhere(replicas, path, user, first, timeout=10) <= 10
        assert await refused_everywhere(replicas, path, user, SIGNING_KEY, timeout=10) <= 10

        await asyncio.to_thread(set_brand_signing_key, database_url, keyed_brand.slug, second)
        assert await accepted_everywhere(replicas, path, user, second, timeout=10) <= 10
        for insights in replicas:  # during the rotation the replaced key is still accepted
            assert (await insights.post(prediction(user), path, key=first)).status_code == 200

        await asyncio.to_thread(drop_previous_signing_key, database_url, keyed_brand.slug)
        assert await refused_everywhere(replicas, path, user, first, timeout=10) <= 10
        for insights in replicas:
            assert (await insights.post(prediction(user), path, key=second)).status_code == 200
