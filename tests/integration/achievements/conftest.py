"""Achievements workers as subprocesses, wired to fresh topics, against the session's Kafka and Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Record, consume
from tests.support import free_port, ingest_in_process

PARTITIONS = 4
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def achievements_topics(topic_factory: Any) -> dict[str, str]:
    names = {
        "SYNERGY_TOPIC_EVENTS": await topic_factory(PARTITIONS, prefix="ach.events"),
        "SYNERGY_TOPIC_LOYALTY": await topic_factory(PARTITIONS, prefix="ach.loyalty"),
        "SYNERGY_TOPIC_SNAPSHOTS": await topic_factory(PARTITIONS, prefix="ach.snapshots", compacted=True),
        "SYNERGY_TOPIC_REFERRAL_AWARDS": await topic_factory(PARTITIONS, prefix="ach.awards"),
        "SYNERGY_TOPIC_DLQ": await topic_factory(PARTITIONS, prefix="ach.dlq"),
    }
    return names


@pytest.fixture(scope="session")
def consume_all(kafka_bootstrap: str) -> Callable[..., Any]:
    """As the session's `consume_all`, reading read_committed by default, as every reader of the worker's
    outputs does: records of aborted transactions (a batch that failed half-way, a fenced zombie) are not
    seen; `isolation_level="read_uncommitted"` shows them too."""

    async def run(topics: str | list[str], count: int | None = None, **kwargs: Any) -> list[Record]:
        kwargs.setdefault("isolation_level", "read_committed")
        return await consume(kafka_bootstrap, topics, count, **kwargs)

    return run


@pytest.fixture
def start_worker(
    achievements_topics: dict[str, str], kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """`start_worker()` runs `python -m synergy_achievements` with this test's topics and app id;
    `start_worker(faults="publish,persist", fault_dir=...)` runs it with those faults injected once
    (tests/integration/achievements/faulty_worker.py)."""
    app_id = f"ach-test-{uuid.uuid4().hex[:8]}"
    started: list[subprocess.Popen[bytes]] = []

    def start(
        port: int | None = None, *, faults: str | None = None, fault_dir: Path | None = None
    ) -> subprocess.Popen[bytes]:
        module = "synergy_achievements"
        fault_env: dict[str, str] = {}
        if faults:
            module = "tests.integration.achievements.faulty_worker"
            fault_env = {"ACH_FAULTS": faults, "ACH_FAULT_DIR": str(fault_dir or tmp_path)}
        env = {
            **os.environ,
            **achievements_topics,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "ACHIEVEMENTS_APP_ID": app_id,
            "ACHIEVEMENTS_STORE": "memory://",
            "ACHIEVEMENTS_DATA_DIR": str(tmp_path / f"worker-{len(started)}"),
            "ACHIEVEMENTS_HTTP_PORT": str(port or free_port()),
            "LOG_LEVEL": os.environ.get("ACH_TEST_LOG_LEVEL", "WARNING"),
            "ACHIEVEMENTS_SESSION_TIMEOUT": "6s",  # the broker's minimum: a killed worker's partitions move fast
            "ACHIEVEMENTS_RULES_POLL_INTERVAL": "2s",
            "ACHIEVEMENTS_SHUTDOWN_TIMEOUT": "5s",
            **fault_env,
        }
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        started.append(process)
        return process

    start.app_id = app_id  # type: ignore[attr-defined]  # the changelog is `<app id>-user-state-changelog`
    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
async def ingest_client(
    achievements_topics: dict[str, str], kafka_bootstrap: str, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The ingest service in-process under uvicorn, publishing to this test's events topic."""
    events_topic = achievements_topics["SYNERGY_TOPIC_EVENTS"]
    async with ingest_in_process(kafka_bootstrap, database_url, events_topic) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client


@pytest.fixture
def fault_dir(tmp_path: Path) -> Path:
    """Where faulty_worker.py leaves a marker for each fault it fired (each fires once)."""
    directory = tmp_path / "faults"
    directory.mkdir()
    return directory
