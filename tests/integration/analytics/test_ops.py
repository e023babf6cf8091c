"""`python -m synergy_analytics` over HTTP: /healthz, /readyz and /metrics as DESIGN.md has them, a KPI
route's problem+json without a key, and the consumer its lifespan started logging events."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.analytics.harness import logged_ids, make_brand, publish, wait_for
from tests.support import free_port, service_process

pytestmark = pytest.mark.integration


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False  # not listening yet


async def _logged(db, brand_id: str, count: int) -> bool:
    return len(await logged_ids(db, brand_id)) == count


async def test_the_analytics_process_is_alive_ready_serves_metrics_and_logs_events(
    kafka_bootstrap, database_url, topic_factory, kafka_producer, db
) -> None:
    brand = await make_brand(db)
    topic = await topic_factory(3, prefix="analytics.ops")
    sent = [{"event_id": f"{brand.brand_id}-ops-{i}", "type": "track", "name": "product_scanned",
             "brand_id": brand.brand_id, "identifiers": {"id": f"user-{i}"}, "data": {},
             "timestamp": f"2026-11-20T10:00:0{i}Z", "source": "ingest"} for i in range(3)]
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url,
           "ANALYTICS_TOPICS": topic, "ANALYTICS_GROUP_ID": f"analytics-ops-{uuid.uuid4().hex[:8]}",
           "ANALYTICS_HOST": "127.0.0.1", "ANALYTICS_PORT": str(port), "ANALYTICS_BATCH_WAIT": "20ms",
           "SYNERGY_TOPIC_DLQ": await topic_factory(1, prefix="analytics.dlq"), "LOG_LEVEL": "WARNING"}
    async with (service_process("synergy_analytics", env),
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client):
        await wait_for(lambda: _ready(client), timeout=60)
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        await publish(kafka_producer, topic, sent)
        await wait_for(lambda: _logged(db, brand.brand_id, 3))
        metrics = await client.get("/metrics")
        anonymous = await client.get("/v1/kpis/funnel", params={"steps": "a,b"})
        user = await client.get("/v1/users/user-1/analytics", headers=brand.headers)

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready",
                            "checks": {"postgres": True, "kafka": True, "dlq_brake_released": True}}
    assert await logged_ids(db, brand.brand_id) == sorted(e["event_id"] for e in sent)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'synergy_analytics_requests_total{route="/readyz",status="200"}' in metrics.text
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.json()["title"] == "Missing write key"
    assert user.status_code == 200
    assert user.json()["user_id"] == "user-1" and user.json()["actions"] == {"product_scanned": 1}
