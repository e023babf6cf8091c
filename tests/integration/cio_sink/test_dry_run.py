"""No Customer.io credentials anywhere: the sink says so loudly, sends nothing, records what it would send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_cio_sink.service import ops_app
from synergy_common.brands import CredentialCipher

from tests.integration.cio_sink.conftest import fresh_topics, new_brand, quick_settings
from tests.integration.cio_sink.harness import SinkHarness


@pytest.fixture
async def dry_harness(
    database_factory: Callable[..., Awaitable[str]], kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]], kafka_producer: AIOKafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[SinkHarness]:
    """A database where no brand has credentials, no default credentials; a fake listening at CIO_TRACK_URL."""
    database_url = await database_factory("ciodry", migrate=True)
    topics = await fresh_topics(topic_factory, monkeypatch)
    key = CredentialCipher.generate_key()
    brand_id = await new_brand(database_url, key, with_credentials=False)
    fake = CustomerIoFake()  # accepts any credentials: anything sent would show
    async with serve_fake(fake) as url:
        harness = SinkHarness(fake, kafka_producer, brand_id, topics,
                              quick_settings(kafka_bootstrap, database_url, key, url))
        try:
            yield harness
        finally:
            await harness.stop_all()


async def test_dry_run_says_so_sends_nothing_and_records_what_it_would_send(
    dry_harness: SinkHarness, capsys: pytest.CaptureFixture[str],
) -> None:
    events = [dry_harness.envelope(f"dry-{i}", "product_scanned", {"i": i}) for i in range(4)]
    snapshot = dry_harness.envelope("dry-0", "user_snapshot",
                                    {"user_snapshot": {"economy": {"points_balance": 10}}, "loyalty": {}})

    sink = await dry_harness.start_sink()
    banner = capsys.readouterr().err
    await dry_harness.publish(events)
    await dry_harness.publish([snapshot], topic="snapshots")

    assert "running DRY" in banner and "Nothing is sent to Customer.io" in banner
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ops_app(sink)), base_url="http://ops") as ops:
        async def recorded() -> dict[str, object]:
            body: dict[str, object] = (await ops.get("/dry-run")).json()
            return body

        await dry_harness.wait_for(lambda: len(sink.dry_run_log) >= 5, timeout=20, what="5 dry-run records")
        body = await recorded()
    assert body["dry_run"] is True and body["recorded"] == 5
    latest = body["latest"]
    assert isinstance(latest, list)
    by_id = {entry["would_send"]["id"]: entry for entry in latest}
    assert set(by_id) == {e["event_id"] for e in [*events, snapshot]}
    assert all(entry["brand_id"] == dry_harness.brand_id for entry in latest)
    first = by_id[events[0]["event_id"]]["would_send"]
    assert (first["action"], first["name"], first["identifiers"], first["attributes"]) == (
        "event", "product_scanned", {"id": "dry-0"}, {"i": 0})
    identify = by_id[snapshot["event_id"]]["would_send"]
    assert (identify["action"], identify["attributes"]) == ("identify", {"points_balance": 10})
    assert dry_harness.fake.requests == 0


async def test_no_banner_when_a_brand_has_credentials(harness: SinkHarness,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sink = await harness.start_sink()
    assert "running DRY" not in capsys.readouterr().err
    assert sink.running_dry is False
