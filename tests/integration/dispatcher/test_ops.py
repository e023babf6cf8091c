"""`python -m synergy_dispatcher` over HTTP: /healthz, /readyz and /metrics as DESIGN.md has them, the
status route's problem+json, and the consumer its lifespan started delivering."""

from __future__ import annotations

import httpx

from tests.integration.dispatcher.harness import (
    Brand,
    DispatcherHarness,
    dispatcher_process,
    event_ids,
    eventually,
    user_events,
)
from tests.support import free_port


async def _answers(client: httpx.AsyncClient, path: str, status: int) -> bool:
    try:
        return (await client.get(path)).status_code == status
    except httpx.TransportError:
        return False  # not listening yet


async def _metrics_show(client: httpx.AsyncClient, line: str) -> bool:
    return line in (await client.get("/metrics")).text.splitlines()


async def test_the_dispatcher_process_is_alive_ready_serves_metrics_and_delivers(
        harness: DispatcherHarness, brand: Brand) -> None:
    h, brand_id = harness, brand.brand_id
    hook_id, hook = await h.webhook(brand_id)
    delivered = (f'synergy_dispatcher_delivered_total{{brand_id="{brand_id}",destination="webhook:{hook_id}",'
                 'type="webhook"} 5.0')
    envelopes = user_events(brand_id, 5, users=2)
    port = free_port()
    async with (dispatcher_process(h, {"DISPATCHER_PORT": str(port)}),
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client):
        await eventually(lambda: _answers(client, "/readyz", 200), timeout=60, what="/readyz 200")
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        await h.publish(envelopes)
        await eventually(lambda: len(hook.accepted) == 5, what="the events, through the started consumer")
        await eventually(lambda: _metrics_show(client, delivered), what="the deliveries on /metrics")
        metrics = await client.get("/metrics")
        anonymous = await client.get("/v1/destinations/status")
        status = await client.get("/v1/destinations/status",
                                  headers={"Authorization": f"Bearer {brand.write_key}"})

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready",
                            "checks": {"postgres": True, "kafka": True, "dlq_brake_released": True}}
    assert sorted(hook.accepted_ids()) == sorted(event_ids(envelopes))
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'synergy_dispatcher_requests_total{route="/readyz",status="200"}' in metrics.text
    assert delivered in metrics.text.splitlines()
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.json()["title"] == "Missing write key"
    assert status.status_code == 200 and status.json()["brand_id"] == brand_id
    assert [d["id"] for d in status.json()["destinations"]] == [hook_id]
