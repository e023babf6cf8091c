"""Real Kafka and PostgreSQL on this machine, without Docker.

Kafka 4.x runs in KRaft combined mode from the `org.apache.kafka:kafka_2.13` jars that Maven fetches from
Maven Central (deploy/local/pom.xml); PostgreSQL runs from the machine's binaries. Each instance lives in
`<repo>/.local/<name>/`:

    instance.json            ports of the instance
    kafka/server.properties  rendered from deploy/local/kafka/server.properties.template
    kafka/data/              KRaft metadata and topic logs
    kafka.pid
    pgdata/                  PostgreSQL cluster (owned by the `postgres` OS user when run as root)
    pg-superuser.pw          password of the `postgres` database superuser
    logs/kafka.log, logs/postgres.log

With `--brokers 3` the instance runs a KRaft cluster of three nodes, each broker and controller (a
quorum of three): node N listens on kafka-port + N - 1 and controller-port + N - 1, keeps its files in
kafka/node-N/ and logs to logs/kafka-node-N.log. Internal topics get replication 3 and min.insync 2.

    python -m synergy_common.localinfra up|down|status [--name run] [--kafka-port 9092] [--pg-port 5432]
        [--brokers 1|3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("synergy.localinfra")

T = TypeVar("T")

DEFAULT_NAME = "run"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_PG_PORT = 5432
DEFAULT_PARTITIONS = 12

PG_ROLE = "synergy"
PG_PASSWORD = "synergy"
PG_DATABASE = "synergy"
PG_SUPERUSER = "postgres"

KAFKA_HEAP_OPTS = "-Xmx512m -Xms128m"
MAVEN_TIMEOUT_S = 900.0
_TOPIC_EXISTS = 36

# Processes this interpreter spawned; kept so they are reaped and not garbage-collected while running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class InfraError(RuntimeError):
    """Local infrastructure could not be fetched, started or stopped. The message says where to look."""


# --------------------------------------------------------------------------------------------- locations


def repo_root() -> Path:
    """The repository root: `SYNERGY_HOME`, else the nearest directory holding deploy/local/pom.xml."""
    env = os.environ.get("SYNERGY_HOME")
    if env:
        return Path(env).expanduser().resolve()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for d in (start, *start.parents):
            if (d / "deploy" / "local" / "pom.xml").is_file():
                return d
    raise InfraError(
        "cannot find the repository root (a directory with deploy/local/pom.xml); set SYNERGY_HOME"
    )


def kafka_version(root: Path | None = None) -> str:
    """The Kafka version deploy/local/pom.xml fetches."""
    pom = (root or repo_root()) / "deploy" / "local" / "pom.xml"
    m = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if not m:
        raise InfraError(f"{pom} defines no <kafka.version>")
    return m.group(1)


def kafka_libs_dir(root: Path | None = None) -> Path:
    root = root or repo_root()
    return root / "deploy" / "local" / ".cache" / f"kafka-{kafka_version(root)}" / "libs"


# --------------------------------------------------------------------------------------- system tools


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _apt_install(packages: Sequence[str], what: str) -> None:
    hint = f"{what} is missing; install it with: apt-get update && apt-get install -y {' '.join(packages)}"
    if os.environ.get("SYNERGY_NO_INSTALL") or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfraError(hint)
    log.info("%s is missing: installing %s with apt-get", what, " ".join(packages))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Debian's postgresql package starts a system-wide cluster on 5432 unless policy-rc.d forbids it.
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        ):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
            if r.returncode != 0:
                raise InfraError(
                    f"{shlex.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}\n{hint}"
                )
    finally:
        if created:
            policy.unlink(missing_ok=True)


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        _apt_install(["default-jre-headless"], "Java (17 or newer)")
        java = shutil.which("java")
    if not java:
        raise InfraError("java not found after installation")
    return java


def find_mvn() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        _apt_install(["maven"], "Maven")
        mvn = shutil.which("mvn")
    if not mvn:
        raise InfraError("mvn not found after installation")
    return mvn


_PG_TOOLS = ("postgres", "initdb", "pg_isready", "psql")


def pg_bindir(install: bool = True) -> Path:
    """The directory with the PostgreSQL server binaries: `SYNERGY_PG_BINDIR`, Debian's layout, or PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("SYNERGY_PG_BINDIR"):
        candidates.append(Path(env))

    def major(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    for tool in ("postgres", "initdb"):
        if found := shutil.which(tool):
            candidates.append(Path(found).resolve().parent)
    for c in candidates:
        if all((c / t).exists() for t in _PG_TOOLS):
            return c
    if install:
        _apt_install(["postgresql"], "PostgreSQL")
        return pg_bindir(install=False)
    raise InfraError(
        "PostgreSQL binaries (postgres, initdb, pg_isready, psql) not found; install them with "
        "`apt-get update && apt-get install -y postgresql` or set SYNERGY_PG_BINDIR"
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_kafka_jars(root: Path | None = None, timeout: float = MAVEN_TIMEOUT_S) -> Path:
    """Fetch the Kafka broker jars with Maven once; returns the directory that holds them."""
    root = root or repo_root()
    version = kafka_version(root)
    libs = kafka_libs_dir(root)
    done = libs.parent / ".complete"
    if done.exists():
        return libs
    with _file_lock(libs.parent.parent / ".fetch.lock"):
        if done.exists():
            return libs
        mvn = find_mvn()
        libs.parent.mkdir(parents=True, exist_ok=True)
        partial = libs.parent / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        mvn_log = libs.parent / "mvn.log"
        cmd = [
            mvn, "-q", "-B", "-f", str(root / "deploy" / "local" / "pom.xml"),
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={partial}",
        ]  # fmt: skip
        log.info("fetching Kafka %s jars from Maven Central (once)", version)
        started = time.monotonic()
        with mvn_log.open("wb") as out:
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            except subprocess.TimeoutExpired as e:
                raise InfraError(f"mvn did not finish within {timeout:.0f}s; see {mvn_log}") from e
        if rc.returncode != 0 or not (partial / f"kafka_2.13-{version}.jar").exists():
            raise InfraError(
                f"mvn could not fetch Kafka {version} (exit {rc.returncode}); "
                f"see {mvn_log}:\n{_tail(mvn_log)}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        done.write_text(f"{version}\n")
        log.info("fetched Kafka %s jars in %.0fs", version, time.monotonic() - started)
    return libs


# ------------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            _CHILDREN.pop(pid, None)
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None


def _terminate(pid: int, sig: signal.Signals, timeout: float, what: str, logfile: Path) -> None:
    """Send `sig`, wait up to `timeout`, then SIGKILL the whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid) or sig == signal.SIGKILL:
        if _pid_alive(pid):
            log.warning("%s (pid %d) ignored %s for %.0fs; sending SIGKILL", what, pid, sig.name, timeout)
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill()
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            raise InfraError(f"{what} (pid {pid}) survived SIGKILL; see {logfile}")
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on `port`.

    Our ports lie in Linux's ephemeral range, so a connect to a closed one can pick that very port as its
    source and connect to itself; such a socket would also keep the server from binding, so it is closed
    at once and counts as closed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) != 0:
            return False
        return bool(s.getsockname() != s.getpeername())


def _bind_conflict(logfile: Path, offset: int) -> bool:
    try:
        with logfile.open("rb") as f:
            f.seek(offset)
            return b"Address already in use" in f.read()
    except OSError:
        return False


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when the caller's thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(lambda: asyncio.run(factory())).result()


# --------------------------------------------------------------------------------------- Kafka client


async def kafka_ready(bootstrap: str, timeout: float = 10.0, brokers: int = 1) -> bool:
    """True when `brokers` brokers answer metadata and every partition of every topic has a leader."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            cluster = await admin.describe_cluster()
            if len(cluster.get("brokers") or ()) < brokers:
                return False
            topics = await admin.list_topics()
            if topics:
                for t in await admin.describe_topics(list(topics)):
                    if t["error_code"] or any(p["error_code"] or p["leader"] < 0 for p in t["partitions"]):
                        return False
            return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def wait_for_kafka(bootstrap: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await kafka_ready(bootstrap, timeout=min(10.0, max(1.0, deadline - time.monotonic()))):
            return
        await asyncio.sleep(0.3)
    raise InfraError(f"Kafka at {bootstrap} did not become ready within {timeout:.0f}s")


async def _create(
    bootstrap: str,
    topics: Sequence[tuple[str, int, dict[str, str]]],
    timeout: float,
    replication: int = 1,
) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, p, replication, topic_configs=c) for n, p, c in topics if n not in existing]
        created: list[str] = []
        if new:
            resp = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
            for topic, code, message in resp.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != _TOPIC_EXISTS:
                    raise InfraError(f"cannot create topic {topic}: error {code}: {message}")
        names = [n for n, _, _ in topics]
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(names)
            if all(
                not t["error_code"] and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return created
            if time.monotonic() > deadline:
                raise InfraError(f"topics {names} have no leaders {timeout:.0f}s after creation")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def topic_durability(replication: int | None = None, min_insync: int | None = None) -> tuple[int, int]:
    """Replication factor and min.insync.replicas of new topics: the arguments, else
    SYNERGY_TOPIC_REPLICATION and SYNERGY_TOPIC_MIN_INSYNC, else 1 and 1."""
    if replication is None:
        replication = int(os.environ.get("SYNERGY_TOPIC_REPLICATION") or 1)
    if min_insync is None:
        min_insync = int(os.environ.get("SYNERGY_TOPIC_MIN_INSYNC") or 1)
    if not 1 <= min_insync <= replication:
        raise InfraError(f"min.insync.replicas {min_insync} must lie between 1 and replication {replication}")
    return replication, min_insync


async def create_topics(
    bootstrap: str,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    specs: Iterable[Any] | None = None,
    timeout: float = 30.0,
    replication: int | None = None,
    min_insync: int | None = None,
) -> list[str]:
    """Create every topic of synergy_schemas.topics.ALL_TOPICS (or `specs`) that is missing.

    Compacted topics get cleanup.policy=compact; every topic gets `replication` replicas and
    min.insync.replicas `min_insync` (see topic_durability). Returns the names it created; existing ones
    are left as they are.
    """
    if specs is None:
        from synergy_schemas.topics import ALL_TOPICS

        specs = ALL_TOPICS
    replication, min_insync = topic_durability(replication, min_insync)
    durability = {"min.insync.replicas": str(min_insync)}
    wanted = [
        (s.name, partitions, {**durability, **({"cleanup.policy": "compact"} if s.compacted else {})})
        for s in specs
    ]
    return await _create(bootstrap, wanted, timeout, replication)


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
    replication: int = 1,
) -> bool:
    """Create one topic if it is missing and wait until it has leaders; True when it was created."""
    return bool(await _create(bootstrap, [(name, partitions, dict(config or {}))], timeout, replication))


# ------------------------------------------------------------------------------------------ instances


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node (broker and controller) of an instance, and where its files live."""

    node_id: int
    kafka_port: int
    controller_port: int
    config: Path
    data_dir: Path
    pid_file: Path
    log: Path

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"


@dataclass(frozen=True)
class _PgUser:
    uid: int
    gid: int
    name: str


def _pg_os_user() -> _PgUser | None:
    """The unprivileged OS user PostgreSQL runs as; None means the current user (we are not root)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("SYNERGY_PG_OS_USER", "postgres")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        return _PgUser(pw.pw_uid, pw.pw_gid, pw.pw_name)
    r = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise InfraError(f"PostgreSQL refuses to run as root and creating OS user {name} failed: {r.stderr}")
    pw = pwd.getpwnam(name)
    return _PgUser(pw.pw_uid, pw.pw_gid, pw.pw_name)


def _traversable(path: Path, user: _PgUser) -> bool:
    groups = {user.gid} | {g for g in os.getgrouplist(user.name, user.gid)}
    for d in path.parents:
        try:
            st = d.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


class LocalInfra:
    """One named instance of local Kafka + PostgreSQL. Every method is idempotent and blocking.

    The `a*` variants run the same work in a thread so that async tests keep their loop responsive.
    """

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        kafka_port: int = DEFAULT_KAFKA_PORT,
        controller_port: int = DEFAULT_CONTROLLER_PORT,
        pg_port: int = DEFAULT_PG_PORT,
        root: Path | None = None,
        brokers: int = 1,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"invalid instance name {name!r}")
        if brokers < 1:
            raise ValueError(f"brokers must be 1 or more, not {brokers}")
        self.name = name
        self.brokers = brokers
        self.kafka_port = kafka_port
        self.controller_port = controller_port
        self.pg_port = pg_port
        self.root = (root or repo_root()).resolve()
        self.dir = self.root / ".local" / name
        self.logs_dir = self.dir / "logs"
        self.kafka_log = self.logs_dir / "kafka.log"
        self.postgres_log = self.logs_dir / "postgres.log"
        self.kafka_config = self.dir / "kafka" / "server.properties"
        self.kafka_data_dir = self.dir / "kafka" / "data"
        self.kafka_pid_file = self.dir / "kafka.pid"
        self._pg_data_dir: Path | None = None
        if brokers == 1:
            self.nodes = [
                KafkaNode(1, kafka_port, controller_port, self.kafka_config, self.kafka_data_dir,
                          self.kafka_pid_file, self.kafka_log)
            ]  # fmt: skip
        else:
            self.nodes = [
                KafkaNode(
                    n,
                    kafka_port + n - 1,
                    controller_port + n - 1,
                    self.dir / "kafka" / f"node-{n}" / "server.properties",
                    self.dir / "kafka" / f"node-{n}" / "data",
                    self.dir / f"kafka-node-{n}.pid",
                    self.logs_dir / f"kafka-node-{n}.log",
                )
                for n in range(1, brokers + 1)
            ]

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_NAME,
        root: Path | None = None,
        *,
        kafka_port: int | None = None,
        controller_port: int | None = None,
        pg_port: int | None = None,
        brokers: int | None = None,
    ) -> LocalInfra:
        """An instance with the ports (and broker count) it was last started with, unless given here."""
        root = root or repo_root()
        saved: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads((root / ".local" / name / "instance.json").read_text())
        return cls(
            name,
            kafka_port or saved.get("kafka_port", DEFAULT_KAFKA_PORT),
            controller_port or saved.get("controller_port", DEFAULT_CONTROLLER_PORT),
            pg_port or saved.get("pg_port", DEFAULT_PG_PORT),
            root,
            brokers or saved.get("brokers", 1),
        )

    def __repr__(self) -> str:
        return (
            f"LocalInfra({self.name!r}, kafka_port={self.kafka_port}, "
            f"controller_port={self.controller_port}, pg_port={self.pg_port}, brokers={self.brokers})"
        )

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def database_url(self, database: str = PG_DATABASE) -> str:
        return f"postgresql://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/{database}"

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """Serialises starts and stops of one server of this instance across processes."""
        with _file_lock(self.dir / f".{what}.lock"):
            yield

    def autostop_marker(self, what: str) -> Path:
        """Present while test sessions own `what` (kafka or postgres) and the last to end should stop it."""
        return self.dir / f"autostop-{what}"

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        data = {
            "kafka_port": self.kafka_port,
            "controller_port": self.controller_port,
            "pg_port": self.pg_port,
            "brokers": self.brokers,
        }
        (self.dir / "instance.json").write_text(json.dumps(data, indent=2) + "\n")

    def _spawn(self, cmd: list[str], logfile: Path, user: _PgUser | None = None) -> tuple[int, int]:
        """Start `cmd` detached, output appended to `logfile`; returns its pid and where its output starts."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with logfile.open("ab") as out:
            offset = out.tell()
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            out.flush()
            extra: dict[str, Any] = {}
            if user is not None:
                extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd="/", **extra,
            )  # fmt: skip
        _CHILDREN[proc.pid] = proc
        return proc.pid, offset

    # ----------------------------------------------------------------------------------------- Kafka

    def kafka_pid(self, node: int = 1) -> int | None:
        """The pid of node `node` (1 unless the instance runs a cluster), None when it is not running."""
        kafka = self.node(node)
        try:
            pid = int(kafka.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmd = _cmdline(pid)
        if cmd is not None and ("kafka.Kafka" not in cmd or str(kafka.config) not in cmd):
            return None
        return pid

    def _render_kafka_config(self, kafka: KafkaNode) -> None:
        template = self.root / "deploy" / "local" / "kafka" / "server.properties.template"
        # A cluster of three or more keeps internal topics (offsets, transactions) writable with a node down.
        replication = min(3, self.brokers)
        text = string.Template(template.read_text()).substitute(
            node_id=kafka.node_id,
            quorum_voters=",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes),
            kafka_port=kafka.kafka_port,
            controller_port=kafka.controller_port,
            data_dir=kafka.data_dir,
            replication=replication,
            min_insync=max(1, replication - 1),
        )
        kafka.config.parent.mkdir(parents=True, exist_ok=True)
        kafka.config.write_text(text)

    def _java_cmd(self, java: str, libs: Path, main: str, *args: str, heap: str) -> list[str]:
        return [
            # The parallel collector: less CPU per request than G1 on a small heap (services/ingest/README.md)
            java, *heap.split(), "-XX:+UseParallelGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / 'deploy' / 'local' / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.logs_dir}", "-cp", f"{libs}/*", main, *args,
        ]  # fmt: skip

    def _cluster_id(self) -> str:
        id_file = self.dir / "kafka" / "cluster-id"
        try:
            return id_file.read_text().strip()
        except OSError:
            cluster_id = "-"
            while cluster_id.startswith("-"):
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(cluster_id + "\n")
            return cluster_id

    def _format_kafka_storage(self, java: str, libs: Path, kafka: KafkaNode) -> None:
        cmd = self._java_cmd(
            java, libs, "kafka.tools.StorageTool",
            "format", "--ignore-formatted", "-t", self._cluster_id(), "-c", str(kafka.config),
            heap="-Xmx256m",
        )  # fmt: skip
        with kafka.log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            out.flush()
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False)
        if r.returncode != 0:
            raise InfraError(f"formatting Kafka storage failed; see {kafka.log}:\n{_tail(kafka.log)}")

    def start_kafka(self, timeout: float = 120.0, *, node: int | None = None) -> None:
        """Start the broker, every node of a cluster, or only `node` (or find them running), and wait until
        the cluster serves metadata with all its brokers."""
        with self.lock("kafka"):
            self._start_kafka(timeout, node)

    def _start_kafka(self, timeout: float = 120.0, only: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        nodes = [self.node(only)] if only else self.nodes
        pids: dict[int, int | None] = {n.node_id: self.kafka_pid(n.node_id) for n in nodes}
        attempts = dict.fromkeys(pids, 0)
        offsets = dict.fromkeys(pids, 0)
        while True:
            for kafka in nodes:
                pid = pids[kafka.node_id]
                if pid is None:
                    attempts[kafka.node_id] += 1
                    pid, offsets[kafka.node_id] = self._spawn_kafka(kafka)
                    pids[kafka.node_id] = pid
                if not _pid_alive(pid):
                    kafka.pid_file.unlink(missing_ok=True)
                    tries = attempts[kafka.node_id]
                    if tries and tries < 5 and _bind_conflict(kafka.log, offsets[kafka.node_id]):
                        log.warning(
                            "Kafka could not bind its port (a client connected to itself on it); retrying"
                        )
                        pids[kafka.node_id] = None
                        time.sleep(1)
                        continue
                    raise InfraError(f"Kafka exited during startup; see {kafka.log}:\n{_tail(kafka.log)}")
            if all(_port_open(n.kafka_port) for n in nodes) and _run_blocking(
                lambda: kafka_ready(self.bootstrap_servers, 5.0, brokers=self.brokers)
            ):
                return
            if time.monotonic() > deadline:
                raise InfraError(
                    f"Kafka did not become ready within {timeout:.0f}s; "
                    f"see {', '.join(str(n.log) for n in nodes)}"
                )
            time.sleep(0.2)

    def _spawn_kafka(self, kafka: KafkaNode) -> tuple[int, int]:
        for port in (kafka.kafka_port, kafka.controller_port):
            if _port_open(port):
                raise InfraError(
                    f"port {port} is in use by another process; stop it or pick other ports "
                    f"(--kafka-port/--controller-port)"
                )
        libs = ensure_kafka_jars(self.root)
        java = find_java()
        self._save()
        self._render_kafka_config(kafka)
        kafka.data_dir.mkdir(parents=True, exist_ok=True)
        if not (kafka.data_dir / "meta.properties").exists():
            self._format_kafka_storage(java, libs, kafka)
        heap = os.environ.get("SYNERGY_KAFKA_HEAP_OPTS", KAFKA_HEAP_OPTS)
        pid, offset = self._spawn(
            self._java_cmd(java, libs, "kafka.Kafka", str(kafka.config), heap=heap), kafka.log
        )
        kafka.pid_file.write_text(f"{pid}\n")
        log.info("Kafka node %d starting (pid %d, log %s)", kafka.node_id, pid, kafka.log)
        return pid, offset

    def stop_kafka(self, timeout: float = 60.0, *, kill: bool = False, node: int | None = None) -> None:
        """SIGTERM (controlled shutdown) and wait, with a SIGKILL fallback; `kill=True` crashes it at once.
        `node` stops that node of a cluster only."""
        with self.lock("kafka"):
            self._stop_kafka(timeout, kill=kill, only=node)

    def _stop_kafka(self, timeout: float = 60.0, *, kill: bool = False, only: int | None = None) -> None:
        sig = signal.SIGKILL if kill else signal.SIGTERM

        def stop(kafka: KafkaNode) -> None:
            pid = self.kafka_pid(kafka.node_id)
            if pid is not None:
                log.info("Kafka node %d stopping (pid %d)", kafka.node_id, pid)
                _terminate(pid, sig, timeout, "Kafka", kafka.log)
            kafka.pid_file.unlink(missing_ok=True)

        nodes = [self.node(only)] if only else self.nodes
        # A cluster stops all at once: a node stopped after its peers would wait for a quorum that is gone.
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as ex:
            for future in [ex.submit(stop, kafka) for kafka in nodes]:
                future.result()

    def kafka_running_version(self) -> str | None:
        """The Kafka version of a running node (from its class path), None when none is running."""
        pid = next((p for n in self.nodes if (p := self.kafka_pid(n.node_id))), None)
        m = re.search(r"/kafka-([^/\s]+)/libs/", _cmdline(pid) or "") if pid else None
        return m.group(1) if m else None

    # ------------------------------------------------------------------------------------ PostgreSQL

    @property
    def pg_data_dir(self) -> Path:
        """`.local/<name>/pgdata`, or a dir under the temp dir when the PostgreSQL user cannot reach that."""
        if self._pg_data_dir is None:
            data = self.dir / "pgdata"
            user = _pg_os_user()
            if user is not None and not (data / "PG_VERSION").exists() and not _traversable(data, user):
                digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:10]
                data = Path(tempfile.gettempdir()) / f"synergy-{digest}" / self.name / "pgdata"
            self._pg_data_dir = data
        return self._pg_data_dir

    def postgres_pid(self) -> int | None:
        try:
            pid = int((self.pg_data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmd = _cmdline(pid)
        if cmd is not None and "postgres" not in cmd:
            return None
        return pid

    @property
    def pg_superuser_password_file(self) -> Path:
        return self.pg_data_dir.parent / "pg-superuser.pw"

    def _superuser_password(self) -> str:
        return self.pg_superuser_password_file.read_text().strip()

    def _psql(self, sql: str, database: str = "postgres") -> str:
        psql = pg_bindir() / "psql"
        env = {
            **os.environ,
            "PGPASSWORD": self._superuser_password(),
            "PGCONNECT_TIMEOUT": "10",
            "PGAPPNAME": "synergy-localinfra",
        }
        cmd = [
            str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", PG_SUPERUSER, "-d", database,
        ]  # fmt: skip
        r = subprocess.run(cmd, input=sql, env=env, capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise InfraError(f"psql failed on {self.name} (port {self.pg_port}): {r.stderr.strip()}")
        return r.stdout

    def _initdb(self, bindir: Path, user: _PgUser | None) -> None:
        data = self.pg_data_dir
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True, mode=0o700)
        self.pg_superuser_password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.pg_superuser_password_file.chmod(0o600)
        if user is not None:
            os.chown(data, user.uid, user.gid)
            os.chown(self.pg_superuser_password_file, user.uid, user.gid)
        cmd = [
            str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "-E", "UTF8", "--no-locale",
            "--auth-local=peer", "--auth-host=scram-sha-256", f"--pwfile={self.pg_superuser_password_file}",
        ]  # fmt: skip
        extra: dict[str, Any] = {}
        if user is not None:
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
        with self.postgres_log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            out.flush()
            r = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd="/", timeout=180, check=False, **extra
            )
        if r.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise InfraError(f"initdb failed; see {self.postgres_log}:\n{_tail(self.postgres_log)}")

    def _pg_accepting(self, bindir: Path) -> bool:
        r = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.pg_port), "-t", "2"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        return r.returncode == 0

    def start_postgres(self, timeout: float = 90.0) -> None:
        """Start PostgreSQL (or find it running), wait until it accepts connections, ensure role and DB."""
        with self.lock("postgres"):
            self._start_postgres(timeout)

    def _start_postgres(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        bindir = pg_bindir()
        pid = self.postgres_pid()
        attempts, offset = 0, 0
        while True:
            if pid is None:
                attempts += 1
                pid, offset = self._spawn_postgres(bindir)
            if not _pid_alive(pid):
                if attempts and attempts < 5 and _bind_conflict(self.postgres_log, offset):
                    log.warning("PostgreSQL could not bind its port (a client connected to itself); retrying")
                    pid = None
                    time.sleep(1)
                    continue
                raise InfraError(
                    f"PostgreSQL exited during startup; see {self.postgres_log}:\n{_tail(self.postgres_log)}"
                )
            if _port_open(self.pg_port) and self._pg_accepting(bindir):
                break
            if time.monotonic() > deadline:
                raise InfraError(
                    f"PostgreSQL (pid {pid}) did not accept connections within {timeout:.0f}s; "
                    f"see {self.postgres_log}"
                )
            time.sleep(0.1)
        self._psql(
            f"SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '{PG_ROLE}', '{PG_PASSWORD}') "
            f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_ROLE}') \\gexec\n"
        )
        self.create_database(PG_DATABASE)

    def _spawn_postgres(self, bindir: Path) -> tuple[int, int]:
        if _port_open(self.pg_port):
            raise InfraError(
                f"port {self.pg_port} is in use by another process; stop it or pick another (--pg-port)"
            )
        self._save()
        user = _pg_os_user()
        if not (self.pg_data_dir / "PG_VERSION").exists() or not self.pg_superuser_password_file.exists():
            log.info("initialising PostgreSQL cluster in %s", self.pg_data_dir)
            self._initdb(bindir, user)
        # fsync off: these clusters hold test and demo data only; a process crash still loses nothing.
        cmd = [
            str(bindir / "postgres"), "-D", str(self.pg_data_dir), "-p", str(self.pg_port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
            "-c", "max_locks_per_transaction=256", "-c", "logging_collector=off",
        ]  # fmt: skip
        pid, offset = self._spawn(cmd, self.postgres_log, user)
        log.info("PostgreSQL starting (pid %d, log %s)", pid, self.postgres_log)
        return pid, offset

    def stop_postgres(self, timeout: float = 60.0, *, kill: bool = False) -> None:
        """Fast shutdown (SIGINT) and wait, with a SIGKILL fallback; `kill=True` crashes it at once."""
        with self.lock("postgres"):
            self._stop_postgres(timeout, kill=kill)

    def _stop_postgres(self, timeout: float = 60.0, *, kill: bool = False) -> None:
        pid = self.postgres_pid()
        if pid is not None:
            log.info("PostgreSQL stopping (pid %d)", pid)
            _terminate(
                pid, signal.SIGKILL if kill else signal.SIGINT, timeout, "PostgreSQL", self.postgres_log
            )

    def create_database(self, name: str, owner: str = PG_ROLE) -> str:
        """Create database `name` owned by `owner` unless it exists; returns its URL (role synergy)."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"invalid database name {name!r}")
        self._psql(
            f"SELECT format('CREATE DATABASE %I OWNER %I', '{name}', '{owner}') "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}') \\gexec\n"
        )
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"invalid database name {name!r}")
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);\n')

    def database_exists(self, name: str = PG_DATABASE) -> bool:
        return self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';\n").strip() == "1"

    # -------------------------------------------------------------------------------------------- both

    def start(self, timeout: float = 180.0) -> None:
        """Start PostgreSQL and Kafka side by side."""
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futures = [ex.submit(self.start_postgres, timeout), ex.submit(self.start_kafka, timeout)]
            errors = [f.exception() for f in futures]
        if first := next((e for e in errors if e is not None), None):
            raise first

    def stop(self, timeout: float = 60.0) -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futures = [ex.submit(self.stop_postgres, timeout), ex.submit(self.stop_kafka, timeout)]
            errors = [f.exception() for f in futures]
        if first := next((e for e in errors if e is not None), None):
            raise first

    def purge(self) -> None:
        """Stop and delete every file of the instance."""
        self.stop()
        if self.pg_data_dir.parent != self.dir:
            shutil.rmtree(self.pg_data_dir.parent, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        node_pids = {n.node_id: self.kafka_pid(n.node_id) for n in self.nodes}
        kafka_pid, pg_pid = node_pids[1], self.postgres_pid()
        return {
            "name": self.name,
            "dir": str(self.dir),
            "kafka": {
                "running": kafka_pid is not None,
                "pid": kafka_pid,
                "version": self.kafka_running_version() if kafka_pid else kafka_version(self.root),
                "bootstrap_servers": self.bootstrap_servers,
                "controller_port": self.controller_port,
                "log": str(self.kafka_log),
                "brokers": self.brokers,
                "nodes": [
                    {
                        "node_id": n.node_id,
                        "running": node_pids[n.node_id] is not None,
                        "pid": node_pids[n.node_id],
                        "bootstrap_servers": n.bootstrap_servers,
                        "controller_port": n.controller_port,
                        "log": str(n.log),
                    }
                    for n in self.nodes
                ],
            },
            "postgres": {
                "running": pg_pid is not None,
                "pid": pg_pid,
                "database_url": self.database_url(),
                "data_dir": str(self.pg_data_dir),
                "log": str(self.postgres_log),
            },
        }

    async def astart_kafka(self, timeout: float = 120.0, *, node: int | None = None) -> None:
        await asyncio.to_thread(self.start_kafka, timeout, node=node)

    async def astop_kafka(
        self, timeout: float = 60.0, *, kill: bool = False, node: int | None = None
    ) -> None:
        await asyncio.to_thread(self.stop_kafka, timeout, kill=kill, node=node)

    async def astart_postgres(self, timeout: float = 90.0) -> None:
        await asyncio.to_thread(self.start_postgres, timeout)

    async def astop_postgres(self, timeout: float = 60.0, *, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop_postgres, timeout, kill=kill)

    async def astart(self, timeout: float = 180.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.stop, timeout)


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synergy_common.localinfra",
        description="Local Kafka (KRaft, from Maven Central) and PostgreSQL, without Docker.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--name", default=DEFAULT_NAME, help="instance name (.local/<name>); default: run")
    parser.add_argument(
        "--kafka-port", type=int, help=f"default {DEFAULT_KAFKA_PORT}, or the instance's last"
    )
    parser.add_argument("--controller-port", type=int, help=f"default {DEFAULT_CONTROLLER_PORT}")
    parser.add_argument("--pg-port", type=int, help=f"default {DEFAULT_PG_PORT}")
    parser.add_argument(
        "--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions per topic (up)"
    )
    parser.add_argument(
        "--brokers",
        type=int,
        choices=[1, 3],
        help="Kafka nodes (KRaft, each broker and controller); default 1",
    )
    parser.add_argument("--only", choices=["kafka", "postgres"], help="act on one of the two only")
    parser.add_argument("--purge", action="store_true", help="down: also delete the instance's data")
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    try:
        infra = LocalInfra.load(
            args.name,
            kafka_port=args.kafka_port,
            controller_port=args.controller_port,
            pg_port=args.pg_port,
            brokers=args.brokers,
        )
        if args.command == "up":
            for what in ("kafka", "postgres"):
                if args.only in (None, what):
                    infra.autostop_marker(what).unlink(missing_ok=True)
            if args.only == "kafka":
                infra.start_kafka()
            elif args.only == "postgres":
                infra.start_postgres()
            else:
                infra.start()
            if args.only != "postgres":
                # A cluster replicates the topics three times with min.insync.replicas 2 unless
                # SYNERGY_TOPIC_REPLICATION / SYNERGY_TOPIC_MIN_INSYNC say otherwise.
                cluster = infra.brokers >= 3
                replication, min_insync = topic_durability(
                    None if os.environ.get("SYNERGY_TOPIC_REPLICATION") or not cluster else 3,
                    None if os.environ.get("SYNERGY_TOPIC_MIN_INSYNC") or not cluster else 2,
                )
                created = asyncio.run(
                    create_topics(
                        infra.bootstrap_servers,
                        args.partitions,
                        replication=replication,
                        min_insync=min_insync,
                    )
                )
                if created:
                    log.info("created topics: %s", ", ".join(created))
                version = infra.kafka_running_version()
                logs = ", ".join(str(n.log) for n in infra.nodes)
                print(f"Kafka {version} on {infra.bootstrap_servers}, {infra.brokers} node(s) (log {logs})")
            if args.only != "kafka":
                print(f"PostgreSQL on 127.0.0.1:{infra.pg_port} (log {infra.postgres_log})")
            print(f"KAFKA_BOOTSTRAP_SERVERS={infra.bootstrap_servers}")
            print(f"DATABASE_URL={infra.database_url()}")
        elif args.command == "down":
            if args.purge:
                infra.purge()
            elif args.only == "kafka":
                infra.stop_kafka()
            elif args.only == "postgres":
                infra.stop_postgres()
            else:
                infra.stop()
        else:
            st = infra.status()
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                k, p = st["kafka"], st["postgres"]
                print(f"instance {st['name']} ({st['dir']})")
                print(
                    f"  kafka     {'running' if k['running'] else 'stopped':8} pid={k['pid']} "
                    f"{k['bootstrap_servers']} version={k['version']}"
                )
                state = "running" if p["running"] else "stopped"
                print(f"  postgres  {state:8} pid={p['pid']} {p['database_url']}")
            return 0 if st["kafka"]["running"] and st["postgres"]["running"] else 3
    except InfraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
