"""The whole engine as separate processes, as `make run` starts it, on fresh topics and a fake Customer.io."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SITE_ID, API_KEY = "e2e-site", "e2e-key"
SIGNING_KEY = "e2e-webhook-signing-key"



@dataclass
class Engine:
    urls: dict[str, str]
    topics: dict[str, str]
    brand_id: str
    write_key: str
    fake: CustomerIoFake
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.write_key}"}


async def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while asyncio.get_running_loop().time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{url} exited with {process.returncode}: {log.read_text()[-3000:]}")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout}s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
async def engine(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[..., Awaitable[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    run = uuid.uuid4().hex[:8]
    topics = {
        "EVENTS": await topic_factory(3, prefix="e2e.events"),
        "LOYALTY": await topic_factory(3, prefix="e2e.loyalty"),
        "SNAPSHOTS": await topic_factory(3, prefix="e2e.snapshots", compacted=True),
        "MARKETING": await topic_factory(3, prefix="e2e.marketing"),
        "INSIGHTS": await topic_factory(3, prefix="e2e.insights"),
        "DLQ": await topic_factory(1, prefix="e2e.dlq"),
        "REFERRAL_AWARDS": await topic_factory(3, prefix="e2e.referrals"),
    }
    encryption_key = CredentialCipher.generate_key()
    pool = await create_pool(database_url)
    try:
        brand = await create_brand(pool, f"E2E {run}", CredentialCipher(encryption_key))
    finally:
        await pool.close()
    logs = tmp_path_factory.mktemp("e2e-logs")
    data_dir = tmp_path_factory.mktemp("e2e-achievements")
    ports = {name: free_port() for name in ("ingest", "insights", "cio-sink", "achievements")}
    fake = CustomerIoFake({SITE_ID: API_KEY})
    async with serve_fake(fake) as fake_url:
        common = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("CIO_", "INSIGHTS_", "ACHIEVEMENTS_"))
            },
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "SYNERGY_ENCRYPTION_KEY": encryption_key,
            "PYTHONUNBUFFERED": "1",
            **{f"SYNERGY_TOPIC_{name}": topic for name, topic in topics.items()},
        }
        per_service = {
            "ingest": {"INGEST_PORT": str(ports["ingest"])},
            "insights": {
                "INSIGHTS_PORT": str(ports["insights"]),
                "CIO_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
                "INSIGHTS_DEFAULT_BRAND_ID": brand.brand_id,
            },
            "cio-sink": {
                "OPS_PORT": str(ports["cio-sink"]),
                "CIO_TRACK_URL": fake_url,
                "CIO_SITE_ID": SITE_ID,
                "CIO_API_KEY": API_KEY,
                "CIO_SNAPSHOT_INTERVAL": "1s",
                "CONSUMER_GROUP": f"e2e-cio-{run}",
            },
            "achievements": {
                "ACHIEVEMENTS_HTTP_PORT": str(ports["achievements"]),
                "ACHIEVEMENTS_APP_ID": f"e2e-achievements-{run}",
                "ACHIEVEMENTS_STORE": "memory://",
                "ACHIEVEMENTS_DATA_DIR": str(data_dir),
                "ACHIEVEMENTS_SESSION_TIMEOUT": "10s",
            },
        }
        engine = Engine(
            urls={name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
            topics=topics,
            brand_id=brand.brand_id,
            write_key=brand.write_key,
            fake=fake,
            logs=logs,
        )
        try:
            for name, env in per_service.items():
                log = logs / f"{name}.log"
                module = "synergy_" + name.replace("-", "_")
                engine.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env={**common, **env},
                    cwd=ROOT,
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )
            for name, process in engine.processes.items():
                await _wait_healthy(engine.urls[name], process, logs / f"{name}.log")
            yield engine
        finally:
            for process in engine.processes.values():
                process.terminate()
            for process in engine.processes.values():
                try:
                    await asyncio.to_thread(process.wait, 20)
                except subprocess.TimeoutExpired:
                    process.kill()
