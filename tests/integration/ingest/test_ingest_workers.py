"""INGEST_WORKERS=2: two processes on one port (SO_REUSEPORT) both serve, and all they accept is in Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from ulid import ULID

from tests.support import free_port

from .conftest import read_topic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def worker_processes(pid: int) -> list[int]:
    """The children that multiprocessing spawned to serve (not its resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in found if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def served_requests(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('synergy_ingest_requests_total{route="/v1/events"')
    )


async def test_two_workers_share_the_port_and_every_accepted_event_is_in_kafka(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[..., Awaitable[str]], brand_factory: Any
) -> None:
    topic = await topic_factory(partitions=3)
    brand = await brand_factory()
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "SYNERGY_TOPIC_EVENTS": topic,
        "INGEST_PORT": str(port),
        "INGEST_WORKERS": "2",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "synergy_ingest"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as probe:
            for _ in range(300):
                try:
                    if (await probe.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        assert len(worker_processes(process.pid)) == 2

        ids = [str(ULID()) for _ in range(40)]

        async def post(event_id: str) -> int:
            # A connection of its own each time, so the kernel picks a process for each.
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                answer = await client.post(
                    "/v1/events",
                    json={"type": "identify", "identifiers": {"id": "w-user"}, "event_id": event_id},
                    headers={"Authorization": f"Bearer {brand.write_key}"},
                )
                return answer.status_code

        assert await asyncio.gather(*(post(i) for i in ids)) == [202] * len(ids)
        readings = []
        for _ in range(20):  # /metrics answers for whichever process the connection reached
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                readings.append(served_requests((await client.get("/metrics")).text))
        # Each process counts only what it served: neither served nothing, neither served everything.
        assert all(0 < reading < len(ids) for reading in readings), readings
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 30)
    assert exit_code == 0

    records = await read_topic(kafka_bootstrap, topic, len(ids))
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(ids)
