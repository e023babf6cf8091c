"""The `synergy` console script against real Postgres, Kafka and a running ingest service."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from click.testing import CliRunner
from synergy_common.brands import CredentialCipher
from synergy_common.cli import main

from .conftest import RunningIngest, read_topic

SEEDS = Path(__file__).parents[2] / "fixtures" / "seed_examples"
pytestmark = pytest.mark.integration


async def test_brands_create_prints_the_key_once_and_stores_only_its_hash(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    encryption_key = CredentialCipher.generate_key()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SYNERGY_ENCRYPTION_KEY", encryption_key)
    from synergy_common.settings import common_settings

    common_settings.cache_clear()
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        [
            "brands",
            "create",
            "--name",
            "CLI Brand",
            "--cio-site-id",
            "site-9",
            "--cio-api-key",
            "-",
            "--cio-region",
            "eu",
            "--json",
        ],
        input="secret-9\n",
    )
    common_settings.cache_clear()
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert created["write_key"].startswith("swk_")

    connection = await asyncpg.connect(database_url)
    try:
        brand = await connection.fetchrow("SELECT * FROM brands WHERE id = $1", int(created["brand_id"]))
        keys = await connection.fetch("SELECT * FROM brand_write_keys WHERE brand_id = $1", brand["id"])
    finally:
        await connection.close()
    assert brand["customer_io_region"] == "eu"
    assert brand["customer_io_api_key"] != "secret-9"
    assert CredentialCipher(encryption_key).decrypt(brand["customer_io_api_key"]) == "secret-9"
    assert [k["key_hash"] for k in keys] == [hashlib.sha256(created["write_key"].encode()).hexdigest()]
    stored = json.dumps([dict(brand), [dict(k) for k in keys]], default=str)
    assert created["write_key"] not in stored


async def test_events_send_posts_a_file_to_ingest(
    ingest: RunningIngest, brand_factory: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    brand = await brand_factory()
    events = [
        json.loads(p.read_text())
        for p in sorted(SEEDS.glob("001_[1-6]_*.json"))
        if "achievement" not in p.name
    ]
    events.append({"name": "no_such_event", "identifiers": {"id": "u"}, "data": {}})
    path = tmp_path / "events.json"
    path.write_text(json.dumps(events))

    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["events", "send", str(path), "--url", ingest.url, "--write-key", "-"],
        input=brand.write_key + "\n",
    )
    assert result.exit_code == 1, result.output  # one event was refused
    accepted = [line.split()[-1] for line in result.output.splitlines() if "accepted as" in line]
    assert len(accepted) == len(events) - 1
    assert f"event {len(events) - 1}: name:" in result.output

    records = await read_topic(kafka_bootstrap, ingest.topic, len(accepted))
    landed = {
        orjson.loads(r.value)["event_id"]
        for r in records
        if orjson.loads(r.value)["brand_id"] == brand.brand_id
    }
    assert set(accepted) <= landed
