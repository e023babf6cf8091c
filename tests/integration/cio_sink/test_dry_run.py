"""No Customer.io credentials anywhere: the sink says so loudly, sends nothing, records what it would send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_cio_sink.service import dry_run_app, ops_app, ops_servers
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
    transport = httpx.ASGITransport(app=dry_run_app(sink, OPERATOR_TOKEN), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ops:
        async def recorded() -> dict[str, object]:
            response = await ops.get("/dry-run", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
            assert response.status_code == 200
            body: dict[str, object] = response.json()
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


OPERATOR_TOKEN = "operator-token-for-the-test"


async def test_dry_run_needs_the_operator_token_on_127_0_0_1_only(dry_harness: SinkHarness) -> None:
    sink = await dry_harness.start_sink(cio_sink_operator_token=OPERATOR_TOKEN, cio_sink_dry_run_port=18013)
    await dry_harness.publish([dry_harness.envelope("dry-secret", "product_scanned", {"email": "a@b.example"})])
    await dry_harness.wait_for(lambda: len(sink.dry_run_log) >= 1, timeout=20, what="a dry-run record")

    servers = ops_servers(sink, sink.settings)
    assert [(config.host, config.port) for config in servers] == [("0.0.0.0", 0), ("127.0.0.1", 18013)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ops_app(sink)), base_url="http://ops") as ops:
        assert (await ops.get("/dry-run")).status_code == 404  # never beside /metrics on the ops port
    transport = httpx.ASGITransport(app=dry_run_app(sink, OPERATOR_TOKEN), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as local:
        anonymous = await local.get("/dry-run")
        wrong = await local.get("/dry-run", headers={"Authorization": "Bearer not-the-token"})
        basic = await local.get("/dry-run", headers={"Authorization": f"Basic {OPERATOR_TOKEN}"})
        operator = await local.get("/dry-run", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    assert (anonymous.status_code, wrong.status_code, basic.status_code) == (401, 401, 401)
    assert "a@b.example" not in anonymous.text + wrong.text + basic.text
    assert operator.status_code == 200
    assert operator.json()["latest"][0]["would_send"]["attributes"] == {"email": "a@b.example"}


async def test_no_dry_run_endpoint_without_an_operator_token(dry_harness: SinkHarness) -> None:
    sink = await dry_harness.start_sink(cio_sink_operator_token=None)
    assert sink.running_dry is True
    assert [(config.host, config.port) for config in ops_servers(sink, sink.settings)] == [("0.0.0.0", 0)]


async def test_no_banner_when_a_brand_has_credentials(harness: SinkHarness,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sink = await harness.start_sink()
    assert "running DRY" not in capsys.readouterr().err
    assert sink.running_dry is False
    with_token = harness.settings.model_copy(update={"cio_sink_operator_token": OPERATOR_TOKEN})
    assert [config.host for config in ops_servers(sink, with_token)] == ["0.0.0.0"]  # not dry: no /dry-run
