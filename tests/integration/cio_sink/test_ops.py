"""The ops endpoints (:8003): /healthz, /readyz against real Kafka and Postgres, /metrics after deliveries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.service import ops_app
from synergy_cio_sink.sink import CioSink
from synergy_common.testinfra import Infra

from tests.integration.cio_sink.harness import SITE_ID, SinkHarness


def ops_client(sink: CioSink) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=ops_app(sink)), base_url="http://cio-sink")


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def test_ops_listen_on_port_8003_by_default() -> None:
    assert SinkSettings().ops_port == 8003


async def test_healthz_and_readyz_with_kafka_and_postgres_up(harness: SinkHarness) -> None:
    sink = await harness.start_sink()
    async with ops_client(sink) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready",
                            "checks": {"kafka": True, "postgres": True, "dlq_brake_released": True}}


async def test_metrics_after_a_delivery(harness: SinkHarness) -> None:
    m = "synergy_cio_sink_"
    events_topic = harness.topics["events"]
    sink = await harness.start_sink()
    async with ops_client(sink) as client:
        before = await scrape(client)
        harness.fake.force(503, times=1)
        now = datetime.now(UTC).isoformat()
        good = [{**harness.envelope(f"m-{i % 2}", "product_scanned", {"i": i}), "received_at": now}
                for i in range(5)]
        poison = harness.envelope("m-poison", "x" * 101)
        await harness.publish([*good, poison])
        await harness.delivered([e["event_id"] for e in good])

        async def settled() -> Scrape:
            while True:
                current = await scrape(client)
                dead = current.value(f"{m}dead_lettered_total", reason="event_name_too_long")
                if dead > before.value(f"{m}dead_lettered_total", reason="event_name_too_long") and \
                        current.value(f"{m}consumer_lag_messages", topic=events_topic) == 0 and \
                        current.has(f"{m}consumer_lag_messages", topic=events_topic):
                    return current
                await asyncio.sleep(0.1)

        after = await asyncio.wait_for(settled(), 15)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta(f"{m}delivered_total", kind="event") == 5
    assert delta(f"{m}dead_lettered_total", reason="event_name_too_long") == 1
    assert delta(f"{m}requests_total", api="v2", status="503") == 1
    assert delta(f"{m}requests_total", api="v2", status="200") >= 1
    assert delta(f"{m}failed_total", reason="503") >= 1  # the items of the refused request
    assert delta(f"{m}retried_total") == delta(f"{m}failed_total", reason="503")
    batches = delta(f"{m}batch_size_items_count")
    assert batches == delta(f"{m}requests_total", api="v2", status="503") + delta(
        f"{m}requests_total", api="v2", status="200")
    assert delta(f"{m}batch_size_items_sum") == 5 + delta(f"{m}failed_total", reason="503")
    assert 0 < after.value(f"{m}rate_limit_requests_per_second", site_id=SITE_ID) <= 100
    assert after.value(f"{m}consumer_lag_messages", topic=events_topic) == 0
    latency_count = delta(f"{m}delivery_latency_seconds_count")
    assert latency_count == 5
    assert 0 < delta(f"{m}delivery_latency_seconds_sum") / latency_count < 30
    assert delta(f"{m}delivery_latency_seconds_bucket", le="60.0") == 5


async def test_readyz_is_503_while_the_broker_is_unreachable(harness: SinkHarness, kafka_control: Infra) -> None:
    sink = await harness.start_sink()
    async with ops_client(sink) as client:
        assert (await client.get("/readyz")).status_code == 200

        async def readiness_becomes(status: int) -> dict[str, Any]:
            while (response := await client.get("/readyz")).status_code != status:  # noqa: ASYNC110 - HTTP poll
                await asyncio.sleep(0.2)
            body: dict[str, Any] = response.json()
            return body

        async with kafka_control.kafka_outage():
            down = await asyncio.wait_for(readiness_becomes(503), 10)
            assert down == {"status": "unavailable",
                            "checks": {"kafka": False, "postgres": True, "dlq_brake_released": True}}
            assert (await client.get("/healthz")).status_code == 200
        await asyncio.wait_for(readiness_becomes(200), 60)
