"""Every metric a dashboard panel or an alert names is one a service exports: the services run, each
/metrics is scraped, and a name that no service serves fails the test.

Some names belong to code that is not in the tree yet (marketing, dispatcher, analytics) or not wired yet
(the libs/streaming runtime, before a service consumes with it). OWNERS says which directory exports each
name; a name whose directory does not exist yet is skipped, and becomes mandatory the moment that directory
lands. The runtime's synergy_streaming_* names are mandatory once any service depends on synergy-streaming,
and ON_THE_RUNTIME names once their own service does. A service directory that exists but that LAUNCH
cannot start fails the test too, so a new service cannot slip past it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from synergy_common.brands import CredentialCipher

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Which directory exports a metric, by name prefix; the longest matching prefix wins.
OWNERS = {
    "synergy_ingest_": "services/ingest",
    "synergy_insights_": "services/insights",
    "synergy_cio_sink_": "services/cio-sink",
    "synergy_achievements_": "services/achievements",
    "synergy_marketing_": "services/marketing",
    "synergy_dispatcher_": "services/dispatcher",
    "synergy_analytics_": "services/analytics",
    "synergy_streaming_": "libs/streaming",
}
# Names a service exports once it consumes with libs/streaming: cio-sink pauses a workspace on a 401 when it
# moves onto the runtime (issue 8).
ON_THE_RUNTIME = {"synergy_cio_sink_workspace_paused"}
# Series Prometheus makes itself for every target.
PROMETHEUS_MADE = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

# How to start each service: module, the variable of its HTTP port, its own settings. topics and fake
# Customer.io settings are filled in by the fixture.
LAUNCH: dict[str, tuple[str, str]] = {
    "ingest": ("synergy_ingest", "INGEST_PORT"),
    "insights": ("synergy_insights", "INSIGHTS_PORT"),
    "cio-sink": ("synergy_cio_sink", "OPS_PORT"),
    "achievements": ("synergy_achievements", "ACHIEVEMENTS_HTTP_PORT"),
    "marketing": ("synergy_marketing", "MARKETING_PORT"),
    "dispatcher": ("synergy_dispatcher", "DISPATCHER_PORT"),
    "analytics": ("synergy_analytics", "ANALYTICS_PORT"),
}

_METRIC = re.compile(r"(?<![\w:])[a-zA-Z_][a-zA-Z0-9_]*(?![\w:]|\s*\()")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "le",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or recording rules)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {n for n in _METRIC.findall(text) if n not in _WORDS and not re.fullmatch(r"\d.*|Inf|NaN", n)}


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def recorded() -> set[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def dashboard_exprs() -> dict[str, str]:
    exprs = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                exprs[f"{path.stem}: {panel['title']} ({target['refId']})"] = target["expr"]
    return exprs


def owner(name: str) -> str | None:
    prefixes = [p for p in OWNERS if name.startswith(p)]
    return OWNERS[max(prefixes, key=len)] if prefixes else None


def on_the_runtime(service: Path) -> bool:
    """True when the service consumes with libs/streaming (lists synergy-streaming as a dependency)."""
    project = service / "pyproject.toml"
    return project.exists() and '"synergy-streaming' in project.read_text()


def required(name: str, root: Path = ROOT) -> bool:
    """Whether the code that exports `name` is in the tree (and wired), so a scrape must find it."""
    directory = owner(name)
    if name in PROMETHEUS_MADE or directory is None or not (root / directory).exists():
        return False
    if name.startswith("synergy_streaming_"):
        return any(on_the_runtime(s) for s in (root / "services").glob("*"))
    if name in ON_THE_RUNTIME:
        return on_the_runtime(root / directory)
    return True


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page can carry, from its TYPE lines (labelled metrics that never
    counted yet have no sample, but do have their TYPE)."""
    names = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = kind_line
        if kind == "counter":
            base = name.removesuffix("_total")
            names |= {base + "_total", base + "_created"}
        elif kind == "histogram":
            names |= {name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif kind == "summary":
            names |= {name, name + "_sum", name + "_count", name + "_created"}
        else:
            names.add(name)
    return names


def test_metric_names_are_read_from_promql_as_prometheus_would() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(synergy_a_seconds_bucket{status=~"5..", x="y_z"}[5m])))'
    ) == {"synergy_a_seconds_bucket"}
    assert metric_names("service:synergy_lag:sum > 1000 and deriv(service:synergy_lag:sum[10m]) > 0") == set()
    assert metric_names('up{service=~"a|b"} == 0 or label_replace(sum(m_total), "service", "x", "", "")') == {
        "up", "m_total",
    }  # fmt: skip


def test_every_name_is_owned_by_a_directory_or_made_by_prometheus() -> None:
    names = set().union(*map(metric_names, [*alert_exprs().values(), *dashboard_exprs().values()]))
    assert names  # the dashboards and alerts do read metrics
    assert not {n for n in names if owner(n) is None and n not in PROMETHEUS_MADE}


@pytest.fixture(scope="module")
async def pages(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[..., Awaitable[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, str]]:
    """Every service in the tree, started as `make run` does, asked GET /healthz and GET of an unknown
    path, then scraped: its /metrics page, by service."""
    present = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
    unknown = set(present) - set(LAUNCH)
    assert not unknown, f"add {sorted(unknown)} to LAUNCH so its metrics are checked"
    run = uuid.uuid4().hex[:8]
    topics = {
        name: await topic_factory(1, prefix=f"metrics.{name.lower()}", compacted=name == "SNAPSHOTS")
        for name in ("EVENTS", "LOYALTY", "SNAPSHOTS", "MARKETING", "INSIGHTS", "DLQ", "REFERRAL_AWARDS")
    }
    logs = tmp_path_factory.mktemp("metrics-logs")
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CIO_", "INSIGHTS_", "ACHIEVEMENTS_"))},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "SYNERGY_ENCRYPTION_KEY": CredentialCipher.generate_key(),
        "CIO_WEBHOOK_SIGNING_KEY": "metrics-signing-key",
        "CIO_TRACK_URL": "http://127.0.0.1:9",  # dry run: no credentials, nothing is sent
        "CONSUMER_GROUP": f"metrics-{run}",
        "ACHIEVEMENTS_APP_ID": f"metrics-achievements-{run}",
        "ACHIEVEMENTS_STORE": "memory://",
        "ACHIEVEMENTS_DATA_DIR": str(tmp_path_factory.mktemp("metrics-achievements")),
        "PYTHONUNBUFFERED": "1",
        **{f"SYNERGY_TOPIC_{name}": topic for name, topic in topics.items()},
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    urls = {}
    try:
        for service in present:
            module, port_env = LAUNCH[service]
            port = free_port()
            urls[service] = f"http://127.0.0.1:{port}"
            processes[service] = subprocess.Popen(
                [sys.executable, "-m", module],
                env={**common, port_env: str(port)},
                cwd=ROOT,
                stdout=(logs / f"{service}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient(timeout=5) as client:
            for service, url in urls.items():
                await scrape(client, url, processes[service], logs / f"{service}.log")
                # answers for every service to count: one under a route template, one unmatched
                assert (await client.get(f"{url}/healthz")).status_code == 200
                assert (await client.get(f"{url}/no/such/path/7")).status_code == 404
            yield {service: (await client.get(f"{url}/metrics")).text for service, url in urls.items()}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def scraped(pages: dict[str, str]) -> set[str]:
    """The union of the names the services export."""
    return set().union(*map(exported_names, pages.values()))


async def scrape(client: httpx.AsyncClient, url: str, process: subprocess.Popen[bytes], log: Path) -> str:
    for _ in range(240):
        assert process.poll() is None, f"{url} exited: {log.read_text()[-3000:]}"
        try:
            answer = await client.get(f"{url}/metrics")
            if answer.status_code == 200 and "# TYPE synergy_" in answer.text:
                return answer.text
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"{url}/metrics never answered: {log.read_text()[-3000:]}")


def wanted(exprs: dict[str, str], root: Path = ROOT) -> dict[str, set[str]]:
    """For each expression, the names it reads whose exporting directory is in the tree."""
    return {where: {n for n in metric_names(expr) if required(n, root)} for where, expr in exprs.items()}


def test_names_of_code_not_in_the_tree_yet_are_skipped_and_the_others_are_required(tmp_path: Path) -> None:
    (tmp_path / "services" / "cio-sink").mkdir(parents=True)
    exprs = {
        "made up": "rate(synergy_cio_sink_made_up_total[5m])",
        "marketing": "histogram_quantile(0.99, sum by (le) (rate(synergy_marketing_timer_lateness_seconds_bucket[5m])))",
        "paused": "max by (workspace) (synergy_cio_sink_workspace_paused)",
        "up": "up == 0",
    }
    exprs["lag"] = "sum by (service) (synergy_streaming_consumer_lag)"
    assert wanted(exprs, tmp_path) == {
        "made up": {"synergy_cio_sink_made_up_total"}, "marketing": set(), "paused": set(), "up": set(), "lag": set(),
    }  # fmt: skip
    (tmp_path / "services" / "marketing").mkdir()
    (tmp_path / "libs" / "streaming").mkdir(parents=True)
    assert wanted(exprs, tmp_path)["marketing"] == {"synergy_marketing_timer_lateness_seconds_bucket"}
    assert wanted(exprs, tmp_path)["lag"] == set()  # the runtime is in the tree, no service consumes with it
    (tmp_path / "services" / "marketing" / "pyproject.toml").write_text(
        'dependencies = ["synergy-streaming"]'
    )
    assert wanted(exprs, tmp_path)["lag"] == {"synergy_streaming_consumer_lag"}
    assert wanted(exprs, tmp_path)["paused"] == set()  # cio-sink is not on the runtime yet
    (tmp_path / "services" / "cio-sink" / "pyproject.toml").write_text(
        'dependencies = ["synergy-streaming>=0.1"]'
    )
    assert wanted(exprs, tmp_path)["paused"] == {"synergy_cio_sink_workspace_paused"}


def test_every_dashboard_panel_reads_metrics_a_service_exports(scraped: set[str]) -> None:
    assert {"synergy_ingest_requests_total", "synergy_cio_sink_delivered_total"} <= scraped
    missing = {
        where: names - scraped for where, names in wanted(dashboard_exprs()).items() if names - scraped
    }
    assert not missing, f"dashboards read metrics no service exports: {missing}"


# Each service's count of its HTTP answers (synergy_common.http.answers_counter).
ANSWERS = {
    "ingest": "synergy_ingest_requests_total",
    "insights": "synergy_insights_requests_total",
    "cio-sink": "synergy_cio_sink_served_requests_total",
    "achievements": "synergy_achievements_requests_total",
    "marketing": "synergy_marketing_requests_total",
    "dispatcher": "synergy_dispatcher_requests_total",
    "analytics": "synergy_analytics_requests_total",
}


def test_every_service_counts_its_answers_by_route_template_and_status(pages: dict[str, str]) -> None:
    assert set(ANSWERS) == set(LAUNCH)
    for service, page in pages.items():
        answers = {
            (sample.labels["route"], sample.labels["status"]): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
            if sample.name == ANSWERS[service]
        }
        assert answers.get(("/healthz", "200")) == 1.0, (service, answers)
        assert answers.get(("other", "404")) == 1.0, (service, answers)
        assert not [route for route, _ in answers if "no/such" in route], (service, answers)


def test_every_alert_reads_metrics_a_service_exports(scraped: set[str]) -> None:
    missing = {where: names - scraped for where, names in wanted(alert_exprs()).items() if names - scraped}
    assert not missing, f"alerts read metrics no service exports: {missing}"


def test_every_service_has_a_dashboard_and_the_overview_reads_the_recording_rules() -> None:
    boards = {p.stem: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
    assert set(boards) == {*LAUNCH, "overview"}
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    overview = " ".join(t["expr"] for p in boards["overview"]["panels"] for t in p["targets"])
    assert recorded() <= set(re.findall(r"[\w:]+:[\w:]+", overview))


def test_the_runtime_defines_every_synergy_streaming_name_read_before_a_service_exports_it() -> None:
    """A misspelt runtime metric is caught now, not once the first consumer moves onto libs/streaming."""
    import importlib

    from prometheus_client import REGISTRY, generate_latest

    importlib.import_module("synergy_streaming.metrics")
    defined = exported_names(generate_latest(REGISTRY).decode())
    read = set().union(*map(metric_names, [*alert_exprs().values(), *dashboard_exprs().values()]))
    streaming = {n for n in read if n.startswith("synergy_streaming_")}
    assert streaming >= {"synergy_streaming_consumer_lag", "synergy_streaming_dlq_brake_engaged"}
    assert streaming <= defined, sorted(streaming - defined)
