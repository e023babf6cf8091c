"""With Postgres stopped, every service answers a problem+json that tells the caller to retry and
which correlation id to quote, and carries no exception text; the log has the error under that id.

cio-sink serves no route that reads Postgres but /readyz (the shared ops router): it answers 503
naming the failed check, without the exception text."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from synergy_achievements.api import create_api
from synergy_achievements.rules import default_rules
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.service import ops_app, running_sink
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.db import create_pool
from synergy_common.testinfra import Infra
from synergy_insights.app import create_app as create_insights_app

from tests.integration.insights.insights_harness import insights_settings, new_topic, signed
from tests.support import ingest_in_process

pytestmark = pytest.mark.integration
SEEDS = Path(__file__).parents[1] / "fixtures" / "seed_examples"

# What exception text looks like: library names, errno text, addresses, reprs, tracebacks.
INTERNALS = re.compile(
    r"asyncpg|psycopg|Errno|errno|Connect call failed|Connection refused|ConnectionRefused|OSError|"
    r"Traceback|Exception|Error\(|127\.0\.0\.1|localhost|\bport\b|socket|sqlstate",
)


@dataclass
class Services:
    ingest: httpx.AsyncClient
    insights: httpx.AsyncClient
    achievements: httpx.AsyncClient
    cio_sink: httpx.AsyncClient
    brand_slug: str
    used_key: str  # cached by every service before Postgres stopped
    unused_key: str  # valid, but never presented: checking it needs Postgres
    events_topic: str


@pytest.fixture(scope="module")
async def services_without_postgres(
    infra: Infra, database_url: str, kafka_bootstrap: str, topic_factory: Any
) -> AsyncIterator[Services]:
    if reason := infra.postgres_control_reason():
        pytest.skip(reason)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    brand = await create_brand(pool, f"No Postgres {secrets.token_hex(3)}", CredentialCipher(None))
    unused = await create_brand(pool, f"No Postgres Unused {secrets.token_hex(3)}", CredentialCipher(None))
    insights_app = create_insights_app(
        insights_settings(database_url, kafka_bootstrap), insights_topic=await new_topic(kafka_bootstrap)
    )
    auth = {"Authorization": f"Bearer {brand.write_key}"}
    events_topic = await topic_factory(1)
    sink_settings = SinkSettings(
        kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url, cio_site_id=None, cio_api_key=None,
        cio_track_url="http://127.0.0.1:9", consumer_group=f"no-postgres-{secrets.token_hex(4)}", ops_port=0,
    )
    async with (
        running_sink(sink_settings) as sink,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=ops_app(sink)), base_url="http://cio-sink") as cio_sink,
        ingest_in_process(kafka_bootstrap, database_url, events_topic) as ingest_url,
        httpx.AsyncClient(base_url=ingest_url, timeout=30) as ingest,
        insights_app.router.lifespan_context(insights_app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=insights_app), base_url="http://insights") as insights,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_api(pool, lambda brand_id: default_rules(), {})),
            base_url="http://achievements",
        ) as achievements,
    ):
        # Warm up: each service has checked the key and holds connections.
        assert (await cio_sink.get("/readyz")).status_code == 200
        assert (await insights.get("/v1/users/nobody/insights", headers=auth)).status_code == 404
        assert (await achievements.get("/v1/users/nobody/loyalty", headers=auth)).status_code == 404
        event = {"name": "user_session_started", "identifiers": {"id": "u-1"},
                 "data": {"event_context": {"session_id": "s-1"}}}
        first = await ingest.post("/v1/events", json=event, headers=auth)
        assert first.status_code in (202, 422), first.text  # authenticated either way

        await infra.astop_postgres()
        try:
            yield Services(
                ingest, insights, achievements, cio_sink, brand.slug, brand.write_key, unused.write_key,
                events_topic,
            )
        finally:
            await infra.astart_postgres()
    await pool.close()


def assert_no_internals(answer: httpx.Response, logs: list[dict[str, Any]]) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers.get("retry-after")
    problem = answer.json()
    assert not INTERNALS.search(answer.text), answer.text
    assert "retry later" in problem["detail"]
    correlation_id = problem["correlation_id"]
    assert correlation_id in problem["detail"]
    assert answer.headers["x-correlation-id"] == correlation_id
    logged = [entry for entry in logs if entry.get("correlation_id") == correlation_id]
    assert logged, f"nothing logged under {correlation_id}"
    assert any(("error" in entry or "exc_info" in entry) for entry in logged), logged


async def test_ingest_answers_a_key_check_without_postgres_with_no_exception_text(
    services_without_postgres: Services,
) -> None:
    s = services_without_postgres
    with structlog.testing.capture_logs() as logs:
        answer = await s.ingest.post(
            "/v1/events",
            json={"name": "user_session_started", "identifiers": {"id": "u-2"}, "data": {}},
            headers={"Authorization": f"Bearer {s.unused_key}", "X-Correlation-ID": "ingest-corr-1"},
        )
    assert_no_internals(answer, logs)
    assert answer.json()["correlation_id"] == "ingest-corr-1"


async def test_insights_answers_reads_and_webhooks_without_postgres_with_no_exception_text(
    services_without_postgres: Services,
) -> None:
    s = services_without_postgres
    await asyncio.sleep(5.5)  # past the brand directory's refresh interval: the webhook must ask Postgres
    with structlog.testing.capture_logs() as logs:
        read = await s.insights.get(
            "/v1/users/someone/insights", headers={"Authorization": f"Bearer {s.used_key}"}
        )
        raw, headers = signed({"user_id": "someone", "predictions": {"churn_probability": 0.5}})
        webhook = await s.insights.post(f"/webhooks/customer-io/{s.brand_slug}", content=raw, headers=headers)
        unknown_key = await s.insights.get(
            "/v1/users/someone/insights", headers={"Authorization": f"Bearer {s.unused_key}"}
        )
        ready = await s.insights.get("/readyz")
    for answer in (read, webhook, unknown_key):
        assert_no_internals(answer, logs)
    assert ready.status_code == 503
    assert ready.json()["checks"]["postgres"] is False
    assert not INTERNALS.search(ready.text)


async def test_achievements_answers_a_loyalty_read_without_postgres_with_no_exception_text(
    services_without_postgres: Services,
) -> None:
    s = services_without_postgres
    with structlog.testing.capture_logs() as logs:
        answer = await s.achievements.get(
            "/v1/users/someone/loyalty", headers={"Authorization": f"Bearer {s.used_key}"}
        )
    assert_no_internals(answer, logs)
    assert answer.json()["title"] == "Service unavailable"


async def test_ingest_keeps_accepting_a_key_it_knew_while_postgres_is_down(
    services_without_postgres: Services, consume_all: Any
) -> None:
    s = services_without_postgres
    await asyncio.sleep(5.5)  # past the valid-key TTL: the re-check cannot reach Postgres
    event = json.loads((SEEDS / "000_1_product_scanned.json").read_text())
    answer = await s.ingest.post("/v1/events", json=event, headers={"Authorization": f"Bearer {s.used_key}"})
    assert answer.status_code == 202, answer.text
    event_id = answer.json()["event_id"]
    records = await consume_all(s.events_topic, 1, where=lambda r: r.json()["event_id"] == event_id)
    assert [record.json()["event_id"] for record in records] == [event_id]


async def test_cio_sink_readiness_without_postgres_names_the_check_and_no_exception_text(
    services_without_postgres: Services,
) -> None:
    answer = await services_without_postgres.cio_sink.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable",
                             "checks": {"kafka": True, "postgres": False, "dlq_brake_released": True}}
