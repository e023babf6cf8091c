"""The Kafka and PostgreSQL the tests run against, picked in DESIGN.md's order.

1. `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL`, each on its own, when set;
2. testcontainers, when a Docker engine answers;
3. the local launcher (synergy_common.localinfra), instance `test`: Kafka 29092/29093, PostgreSQL 25432,
   below the ephemeral port range, so no client's source port can take them.

`SYNERGY_TEST_INFRA=local|testcontainers` forces step 2 or 3 for whatever step 1 leaves open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from synergy_common.localinfra import LocalInfra, _file_lock, _pid_alive, create_topics, wait_for_kafka

log = logging.getLogger("synergy.testinfra")

LOCAL_NAME = "test"
LOCAL_KAFKA_PORT = 29092
LOCAL_CONTROLLER_PORT = 29093
LOCAL_PG_PORT = 25432

TC_KAFKA_IMAGE = "confluentinc/cp-kafka:8.0.0"  # Apache Kafka 4.0
TC_POSTGRES_IMAGE = "postgres:15-alpine"


class InfraNotControlled(RuntimeError):
    """This session did not start the server, so it cannot stop or start it."""


def docker_engine_answers(timeout: float = 3.0) -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(timeout))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class Infra:
    """Where the tests' Kafka and PostgreSQL are, and, for the local launcher, how to stop and start them."""

    bootstrap_servers: str
    database_url: str
    kafka_source: str
    postgres_source: str
    local: LocalInfra | None = None
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def controls_kafka(self) -> bool:
        return self.kafka_control_reason() is None

    @property
    def controls_postgres(self) -> bool:
        return self.postgres_control_reason() is None

    @property
    def controls_processes(self) -> bool:
        """True when this session can stop and start both Kafka and PostgreSQL."""
        return self.controls_kafka and self.controls_postgres

    def kafka_control_reason(self) -> str | None:
        """None when this session can stop and start Kafka, else why not."""
        if self.kafka_source == "local" and self.local is not None:
            return None
        return f"Kafka comes from {self.kafka_source}; only the local launcher's broker can be stopped"

    def postgres_control_reason(self) -> str | None:
        if self.postgres_source == "local" and self.local is not None:
            return None
        return f"PostgreSQL comes from {self.postgres_source}; only the local launcher's can be stopped"

    def _controlled(self, reason: str | None) -> LocalInfra:
        if reason is not None or self.local is None:
            raise InfraNotControlled(reason)
        return self.local

    def stop_kafka(self, *, kill: bool = False) -> None:
        self._controlled(self.kafka_control_reason()).stop_kafka(kill=kill)

    def start_kafka(self) -> None:
        self._controlled(self.kafka_control_reason()).start_kafka()

    def stop_postgres(self, *, kill: bool = False) -> None:
        self._controlled(self.postgres_control_reason()).stop_postgres(kill=kill)

    def start_postgres(self) -> None:
        self._controlled(self.postgres_control_reason()).start_postgres()

    async def astop_kafka(self, *, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop_kafka, kill=kill)

    async def astart_kafka(self) -> None:
        await asyncio.to_thread(self.start_kafka)

    async def astop_postgres(self, *, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop_postgres, kill=kill)

    async def astart_postgres(self) -> None:
        await asyncio.to_thread(self.start_postgres)

    @contextlib.asynccontextmanager
    async def kafka_outage(self, *, kill: bool = False) -> AsyncIterator[None]:
        """Kafka is down inside the block and up again (same data) after it."""
        await self.astop_kafka(kill=kill)
        try:
            yield
        finally:
            await self.astart_kafka()

    @contextlib.asynccontextmanager
    async def postgres_outage(self, *, kill: bool = False) -> AsyncIterator[None]:
        await self.astop_postgres(kill=kill)
        try:
            yield
        finally:
            await self.astart_postgres()

    async def create_database(self, name: str) -> str:
        """Create database `name` (if missing) next to the main one; returns its URL."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"invalid database name {name!r}")
        import asyncpg

        conn = await asyncpg.connect(self.database_url, timeout=30)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return with_database(self.database_url, name)

    async def drop_database(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"invalid database name {name!r}")
        import asyncpg

        conn = await asyncpg.connect(self.database_url, timeout=30)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        """Stop whatever this session started (containers, local processes that were not running)."""
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception:
                log.exception("infrastructure cleanup failed")


def _start_containers(infra: Infra, need_kafka: bool, need_pg: bool) -> None:
    if need_kafka:
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer
        kafka = KafkaContainer(os.environ.get("SYNERGY_TEST_KAFKA_IMAGE", TC_KAFKA_IMAGE)).with_kraft()
        kafka.start(timeout=180)
        infra._cleanups.append(kafka.stop)
        infra.bootstrap_servers = kafka.get_bootstrap_server()
        infra.kafka_source = "testcontainers"
    if need_pg:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer

        pg = PostgresContainer(
            os.environ.get("SYNERGY_TEST_POSTGRES_IMAGE", TC_POSTGRES_IMAGE),
            username="synergy",
            password="synergy",
            dbname="synergy",
            driver=None,
        )
        pg.start()
        infra._cleanups.append(pg.stop)
        infra.database_url = pg.get_connection_url()
        infra.postgres_source = "testcontainers"


def _live_leases(leases: Path) -> list[Path]:
    live = []
    for lease in leases.glob("[0-9]*"):
        if lease.name != str(os.getpid()) and _pid_alive(int(lease.name)):
            live.append(lease)
        elif lease.name != str(os.getpid()):
            lease.unlink(missing_ok=True)
    return live


def _start_local(infra: Infra, need_kafka: bool, need_pg: bool, keep_running: bool) -> None:
    """Start what is missing of the shared `test` instance and hold a lease on it.

    Several pytest sessions may share the instance. A server a session starts gets an autostop marker;
    the last session to end stops the marked servers. `keep_running` (and `localinfra up`) drop the marker.
    """
    local = LocalInfra(
        os.environ.get("SYNERGY_TEST_INSTANCE", LOCAL_NAME),
        int(os.environ.get("SYNERGY_TEST_KAFKA_PORT", LOCAL_KAFKA_PORT)),
        int(os.environ.get("SYNERGY_TEST_CONTROLLER_PORT", LOCAL_CONTROLLER_PORT)),
        int(os.environ.get("SYNERGY_TEST_PG_PORT", LOCAL_PG_PORT)),
    )
    infra.local = local
    leases = local.dir / "sessions"
    leases.mkdir(parents=True, exist_ok=True)
    lease = leases / str(os.getpid())
    wanted = [w for w, needed in (("postgres", need_pg), ("kafka", need_kafka)) if needed]

    def release() -> None:
        with _file_lock(local.dir / ".sessions.lock"):
            lease.unlink(missing_ok=True)
            if _live_leases(leases):
                return
            for what in ("kafka", "postgres"):
                marker = local.autostop_marker(what)
                if marker.exists():
                    (local.stop_postgres if what == "postgres" else local.stop_kafka)()
                    marker.unlink(missing_ok=True)

    with _file_lock(local.dir / ".sessions.lock"):
        lease.touch()
        infra._cleanups.append(release)
        for what in wanted:
            pid = local.postgres_pid() if what == "postgres" else local.kafka_pid()
            if keep_running:
                local.autostop_marker(what).unlink(missing_ok=True)
            elif pid is None:
                local.autostop_marker(what).touch()
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futures = [
                ex.submit(local.start_postgres if w == "postgres" else local.start_kafka) for w in wanted
            ]
            for f in futures:
                f.result()
    if need_pg:
        infra.database_url = local.database_url()
        infra.postgres_source = "local"
    if need_kafka:
        infra.bootstrap_servers = local.bootstrap_servers
        infra.kafka_source = "local"


def acquire(*, keep_running: bool | None = None) -> Infra:
    """Find or start the test infrastructure (blocking).

    `Infra.close()` stops the containers and the local servers this call started, unless another session
    still uses them or `keep_running` (default: env `SYNERGY_KEEP_INFRA=1`) is set. Servers that were
    already running are left alone.
    """
    if keep_running is None:
        keep_running = os.environ.get("SYNERGY_KEEP_INFRA", "") not in ("", "0")
    kafka_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    db_env = os.environ.get("DATABASE_URL", "").strip()
    infra = Infra(kafka_env, db_env, "env KAFKA_BOOTSTRAP_SERVERS", "env DATABASE_URL")
    need_kafka, need_pg = not kafka_env, not db_env
    if need_kafka or need_pg:
        mode = os.environ.get("SYNERGY_TEST_INFRA", "auto")
        if mode not in ("auto", "local", "testcontainers"):
            raise ValueError(f"SYNERGY_TEST_INFRA must be auto, local or testcontainers, not {mode!r}")
        try:
            if mode == "testcontainers" or (mode == "auto" and docker_engine_answers()):
                _start_containers(infra, need_kafka, need_pg)
            else:
                _start_local(infra, need_kafka, need_pg, keep_running)
        except BaseException:
            infra.close()
            raise
    log.info(
        "test infrastructure: Kafka %s (%s), PostgreSQL %s (%s)",
        infra.bootstrap_servers,
        infra.kafka_source,
        infra.database_url,
        infra.postgres_source,
    )
    return infra


async def aacquire(*, keep_running: bool | None = None, partitions: int = 12) -> Infra:
    """`acquire` from async code; also waits for Kafka and creates every topic."""
    infra = await asyncio.to_thread(acquire, keep_running=keep_running)
    try:
        await wait_for_kafka(infra.bootstrap_servers, timeout=120)
        await create_topics(infra.bootstrap_servers, partitions)
    except BaseException:
        await asyncio.to_thread(infra.close)
        raise
    return infra
