"""Small helpers shared by test modules and benchmarks."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

# Service ports are picked below the kernel's ephemeral range (32768-60999 here), as testinfra's Kafka and
# Postgres ports are: a port from that range can become the source port of any outgoing connection (to
# Kafka, Postgres, a fake) between the pick and the service's own bind, which then fails with EADDRINUSE
# (seen in CI: an e2e service's port taken that way). Below 30000 are the suites' fixed ports.
SERVICE_PORTS = range(30000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range, and never
    the same one twice in this process (two picks before either is bound must not collide)."""
    for port in random.sample(SERVICE_PORTS, len(SERVICE_PORTS)):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {SERVICE_PORTS}")


def _threads_not_stopped(pid: int) -> list[str]:
    """The threads of `pid` whose state (/proc/<pid>/task/<tid>/stat) is not stopped (T or t)."""
    running = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended
        if state not in ("T", "t"):
            running.append(stat.parent.name)
    return running


@contextmanager
def frozen_process(pid: int, timeout: float = 5.0) -> Iterator[None]:
    """SIGSTOP `pid` and return only once every one of its threads has stopped; SIGCONT on exit.

    kill() returns before the stop has reached every thread: Linux wakes one thread to take it, and
    the others run on until that one is scheduled (1 to 4 ms for the broker's JVM here, more when the
    machine is loaded). In that window the broker acknowledged a record produced "while frozen" in 2
    of 250 tries; waiting for every thread, 0 of 250.
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout
        while running := _threads_not_stopped(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"threads {running[:5]} of {pid} still run {timeout} s after SIGSTOP")
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@asynccontextmanager
async def service_process(module: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m <module>` with `env` over this process's environment; on exit SIGTERM, and SIGKILL
    if it has not stopped within 20 s."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", module, env={**os.environ, **env})
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def ingest_in_process(
    kafka_bootstrap: str, database_url: str, events_topic: str, publish_timeout: float = 10.0
) -> AsyncIterator[str]:
    """The ingest service under uvicorn in this event loop, publishing to `events_topic`; yields its URL."""
    import uvicorn
    from synergy_common.settings import CommonSettings
    from synergy_ingest.app import create_app
    from synergy_ingest.settings import IngestSettings

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SYNERGY_TOPIC_EVENTS", events_topic)
    port = free_port()
    app = create_app(
        IngestSettings(port=port, publish_timeout_seconds=publish_timeout),
        CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url),
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        monkeypatch.undo()


def metric_label_sets(prefix: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """Every (sample name, labels) this process' Prometheus registry holds for metrics named `prefix...`."""
    from prometheus_client import REGISTRY

    return {
        (sample.name, frozenset(sample.labels.items()))
        for metric in REGISTRY.collect()
        if metric.name.startswith(prefix)
        for sample in metric.samples
    }


def label_values(prefix: str) -> set[str]:
    return {value for _, labels in metric_label_sets(prefix) for _, value in labels}
