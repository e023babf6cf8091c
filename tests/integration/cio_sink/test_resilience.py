"""A revoked key, a bad letter, a misconfiguration or a long outage never wedges or floods delivery.

Real Kafka and Postgres, the Customer.io fake; every test counts what went in against what came out,
by event id: delivered to the fake, or dead-lettered (Postgres `dlq_messages` and `synergy.dlq.v1`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner
from prometheus_client import REGISTRY
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_common.brands import CredentialCipher, create_brand
from synergy_common.cli import main as synergy
from synergy_common.db import create_pool
from synergy_common.testinfra import Infra

from tests.integration.cio_sink.conftest import fresh_topics, new_brand, quick_settings
from tests.integration.cio_sink.harness import API_KEY, SITE_ID, SinkHarness


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def dead_letter_rows(database_url: str, brand_id: str) -> list[dict[str, Any]]:
    pool = await create_pool(database_url)
    try:
        rows = await pool.fetch("SELECT event_id, reason, source_offset, headers, replayed_at FROM dlq_messages "
                                "WHERE brand_id = $1 ORDER BY id", int(brand_id))
    finally:
        await pool.close()
    return [dict(row) for row in rows]


async def set_brand_api_key(harness: SinkHarness, brand_id: str, api_key: str) -> None:
    cipher = CredentialCipher(harness.settings.synergy_encryption_key)
    pool = await create_pool(harness.settings.database_url)
    try:
        await pool.execute("UPDATE brands SET customer_io_api_key = $2 WHERE id = $1", int(brand_id),
                           cipher.encrypt(api_key))
    finally:
        await pool.close()


async def test_a_401_spell_of_20_s_pauses_the_workspace_and_loses_nothing(harness: SinkHarness) -> None:
    """The key is rotated at Customer.io; 20 s later the operator stores the new key in Postgres."""
    fake = harness.fake
    pool = await create_pool(harness.settings.database_url)
    try:
        other = await create_brand(pool, f"cio-other-{uuid.uuid4().hex[:8]}",
                                   CredentialCipher(harness.settings.synergy_encryption_key),
                                   cio_site_id="site-other", cio_api_key="key-other")
    finally:
        await pool.close()
    fake.credentials["site-other"] = "key-other"
    await harness.start_sink(cio_auth_probe_interval=2.0)
    before = await harness.publish([harness.envelope(f"k-{i % 5}", "product_scanned", {"i": i}) for i in range(10)])
    await harness.delivered(before)

    fake.credentials[SITE_ID] = "key-rotated"  # the key the sink holds no longer works
    during = await harness.publish([harness.envelope(f"k-{i % 5}", "reward_redeemed", {"i": i}) for i in range(40)])
    other_envelopes = [{**harness.envelope(f"o-{i}", "product_scanned", {"i": i}), "brand_id": other.brand_id}
                       for i in range(10)]
    await harness.wait_for(lambda: metric("synergy_cio_sink_workspace_paused", workspace=SITE_ID) == 1,
                           timeout=10, what="the workspace paused")
    others = await harness.publish(other_envelopes)
    await harness.delivered(others, timeout=15)  # the other workspace keeps flowing meanwhile
    await asyncio.sleep(20 - 2)
    refused = fake.statuses[401]

    assert not set(during) & set(fake.events)
    assert metric("synergy_cio_sink_workspace_paused", workspace=SITE_ID) == 1
    assert metric("synergy_cio_sink_workspace_paused", workspace="site-other") == 0
    assert refused <= 20 / 2 + 3, "a paused workspace is probed, not hammered"
    await set_brand_api_key(harness, harness.brand_id, "key-rotated")

    await harness.delivered(during, timeout=15)  # picked up by the next probe (every 2 s)
    assert set(fake.events) == set(before) | set(during) | set(others)
    assert [e.data["i"] for e in fake.events_for("id:k-0") if e.name == "reward_redeemed"] == [0, 5, 10, 15, 20,
                                                                                              25, 30, 35]
    # The fake holds a batch's events before the sink has read its answer, which is what resumes the workspace.
    await harness.wait_for(lambda: metric("synergy_cio_sink_workspace_paused", workspace=SITE_ID) == 0,
                           timeout=5, what="the workspace resumed")
    assert await dead_letter_rows(harness.settings.database_url, harness.brand_id) == []
    assert await dead_letter_rows(harness.settings.database_url, other.brand_id) == []


async def test_a_poison_message_with_a_nul_in_a_header_is_dead_lettered_once_and_the_partition_goes_on(
    harness: SinkHarness, consume_all: Any,
) -> None:
    user_key = f"{harness.brand_id}:nul-user".encode()
    first = [harness.envelope("nul-user", "product_scanned", {"i": i}) for i in range(5)]
    after = [harness.envelope("nul-user", "product_scanned", {"i": i}) for i in range(5, 10)]
    topic = harness.topics["events"]
    await harness.start_sink()
    for envelope in first:
        await harness.producer.send_and_wait(topic, json.dumps(envelope).encode(), key=user_key)
    poison = await harness.producer.send_and_wait(
        topic, b'{"event_id": "01HZPOISON", "brand_id": "' + harness.brand_id.encode() + b'", "data": \x00',
        key=user_key, headers=[("trace\x00id", b"a\x00b"), ("name", b"product_scanned")])
    for envelope in after:
        await harness.producer.send_and_wait(topic, json.dumps(envelope).encode(), key=user_key)

    await harness.delivered([e["event_id"] for e in first + after])
    assert [e.data["i"] for e in harness.fake.events_for("id:nul-user")] == list(range(10))
    letters = await consume_all(harness.topics["dlq"], 1, timeout=20)
    await asyncio.sleep(1.0)
    letters = await consume_all(harness.topics["dlq"])  # everything there by now: exactly one letter
    assert [(r.header("dlq_reason"), r.header("dlq_source_offset"), r.header("dlq_service")) for r in letters] == [
        ("malformed_message", str(poison.offset), "cio-sink")]
    assert letters[0].raw_headers[:2] == (("trace\x00id", b"a\x00b"), ("name", b"product_scanned"))
    pool = await create_pool(harness.settings.database_url)
    try:
        rows = await pool.fetch("SELECT reason, source_offset, headers, payload FROM dlq_messages "
                                "WHERE source_topic = $1", topic)
    finally:
        await pool.close()
    assert [(r["reason"], r["source_offset"]) for r in rows] == [("malformed_message", poison.offset)]
    assert rows[0]["headers"][0] == ["trace\\u0000id", "a\\u0000b"]  # escaped, never refused by Postgres
    assert bytes(rows[0]["payload"]).endswith(b"\x00")  # the payload itself is kept byte for byte


async def test_the_dlq_brake_engages_on_a_misconfiguration_and_releases_once_it_is_fixed(
    harness: SinkHarness,
) -> None:
    """Customer.io refuses every request as malformed (a misconfiguration): at most a run of letters, then
    the brake holds the rest back, the sink says it is not ready; once fixed everything is delivered."""
    harness.fake.faults.malformed_all = True
    sink = await harness.start_sink(cio_dlq_brake_consecutive=10, cio_dlq_brake_window=20,
                                    cio_dlq_brake_retry_interval=1.0, cio_batch_max_items=20)
    ids = await harness.publish([harness.envelope(f"b-{i % 30}", "product_scanned", {"i": i}) for i in range(90)])

    await harness.wait_for(lambda: sink.readiness() == {"dlq_brake_released": False}, timeout=30,
                           what="the brake engaged")
    assert metric("synergy_streaming_dlq_brake_engaged", service="cio-sink") == 1
    await asyncio.sleep(3.0)  # held: retried every second, still refused, never dead-lettered
    rows = await dead_letter_rows(harness.settings.database_url, harness.brand_id)
    assert 1 <= len(rows) < 10 and {row["reason"] for row in rows} == {"rejected_400"}
    assert harness.fake.events == {}

    harness.fake.faults.malformed_all = False
    dead = {row["event_id"] for row in rows}
    await harness.delivered(sorted(set(ids) - dead), timeout=30)
    await harness.wait_for(lambda: sink.readiness() == {"dlq_brake_released": True}, timeout=10,
                           what="the brake released")
    assert metric("synergy_streaming_dlq_brake_engaged", service="cio-sink") == 0
    assert set(harness.fake.events) == set(ids) - dead and len(dead) == len(rows)
    assert {row["event_id"] for row in await dead_letter_rows(harness.settings.database_url,
                                                              harness.brand_id)} == dead


async def test_a_400_batch_with_one_bad_item_delivers_the_others(harness: SinkHarness) -> None:
    harness.fake.faults.malformed_marker = "spoils-the-batch"
    envelopes = [harness.envelope(f"s-{i % 10}", "product_scanned", {"i": i}) for i in range(60)]
    bad = harness.envelope("s-bad", "product_scanned", {"note": "spoils-the-batch"})
    envelopes.insert(30, bad)
    dead_before = metric("synergy_cio_sink_dead_lettered_total", reason="rejected_400")
    await harness.start_sink()
    await harness.publish(envelopes)

    good = [e["event_id"] for e in envelopes if e is not bad]
    await harness.delivered(good)
    await harness.wait_for(lambda: metric("synergy_cio_sink_dead_lettered_total", reason="rejected_400") > dead_before,
                           what="the bad item dead-lettered")
    rows = await dead_letter_rows(harness.settings.database_url, harness.brand_id)
    assert [(row["event_id"], row["reason"]) for row in rows] == [(bad["event_id"], "rejected_400")]
    assert set(harness.fake.events) == set(good)
    assert harness.fake.statuses[400] >= 1
    for user in (f"s-{i}" for i in range(10)):
        assert [e.data["i"] for e in harness.fake.events_for(f"id:{user}")] == list(range(int(user[2:]), 60, 10))


def snapshot_envelope(harness: SinkHarness, user: str, state_version: int, points: int,
                      note: str = "") -> dict[str, Any]:
    data = {"user_snapshot": {"economy": {"points_balance": points}, "profile": {"note": note}},
            "loyalty": {"state_version": state_version}}
    envelope = harness.envelope(user, "user_snapshot", data)
    envelope["timestamp"] = f"2024-05-22T18:35:{10 + state_version:02d}Z"
    return envelope


@pytest.fixture
async def harness_of_its_own(
    database_factory: Callable[..., Awaitable[str]], kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]], kafka_producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[SinkHarness]:
    """As `harness`, with a database of its own: `synergy dlq replay` sees this test's letters only."""
    database_url = await database_factory("cioreplay", migrate=True)
    topics = await fresh_topics(topic_factory, monkeypatch)
    key = CredentialCipher.generate_key()
    brand_id = await new_brand(database_url, key)
    fake = CustomerIoFake({SITE_ID: API_KEY})
    async with serve_fake(fake) as url:
        harness = SinkHarness(fake, kafka_producer, brand_id, topics,
                              quick_settings(kafka_bootstrap, database_url, key, url))
        try:
            yield harness
        finally:
            await harness.stop_all()


async def test_a_replayed_older_snapshot_does_not_overwrite_a_newer_one(harness_of_its_own: SinkHarness) -> None:
    harness = harness_of_its_own
    harness.fake.faults.malformed_marker = "refused-once"
    dead_before = metric("synergy_cio_sink_dead_lettered_total", reason="rejected_400")
    await harness.start_sink()
    older = snapshot_envelope(harness, "snap-user", 1, 10, note="refused-once")
    await harness.publish([older], topic="snapshots")
    await harness.wait_for(lambda: metric("synergy_cio_sink_dead_lettered_total", reason="rejected_400") > dead_before,
                           what="the older snapshot dead-lettered")
    harness.fake.faults.malformed_marker = None
    newer = snapshot_envelope(harness, "snap-user", 2, 20)
    await harness.publish([newer], topic="snapshots")
    person = (SITE_ID, "snap-user")
    await harness.wait_for(lambda: person in harness.fake.people, what="the newer snapshot")
    assert harness.fake.people[person]["points_balance"] == 20
    identifies = harness.fake.identify_count
    stale_before = metric("synergy_cio_sink_stale_snapshots_dropped_total")

    env = {"DATABASE_URL": harness.settings.database_url,
           "KAFKA_BOOTSTRAP_SERVERS": harness.settings.kafka_bootstrap_servers}
    replay = await asyncio.to_thread(CliRunner().invoke, synergy,
                                     ["dlq", "replay", "--service", "cio-sink", "--reason", "rejected_400"], env=env)
    assert replay.exit_code == 0, replay.output
    assert "replayed 1, failed 0" in replay.output

    await harness.wait_for(lambda: metric("synergy_cio_sink_stale_snapshots_dropped_total") == stale_before + 1,
                           what="the replayed snapshot dropped as stale")
    later = snapshot_envelope(harness, "snap-user", 3, 30)  # and the person's lane still flows
    await harness.publish([later], topic="snapshots")
    await harness.wait_for(lambda: harness.fake.people[person]["points_balance"] == 30, what="a later snapshot")
    assert harness.fake.identify_count == identifies + 1
    rows = await dead_letter_rows(harness.settings.database_url, harness.brand_id)
    assert [(row["event_id"], row["replayed_at"] is not None) for row in rows] == [(older["event_id"], True)]


POSTGRES_OUTAGE_SECONDS = 60


@pytest.mark.slow
async def test_a_60_s_postgres_outage_under_load_keeps_the_group_membership_and_delivers_everything(
    harness: SinkHarness, postgres_control: Infra,
) -> None:
    pool = await create_pool(harness.settings.database_url)
    try:
        late = await create_brand(pool, f"cio-late-{uuid.uuid4().hex[:8]}",
                                  CredentialCipher(harness.settings.synergy_encryption_key),
                                  cio_site_id=SITE_ID, cio_api_key=API_KEY)
    finally:
        await pool.close()
    sink = await harness.start_sink(cio_brand_cache_ttl=1.0)
    warm = await harness.publish([harness.envelope(f"pg-{i % 7}", "product_scanned", {"i": i}) for i in range(20)])
    await harness.delivered(warm)
    membership = (sink.processor.assignments, sink.processor.generation)  # rebalances and revocations so far
    assert membership[0] == 1

    ids: list[str] = []
    poison = harness.envelope("pg-poison", "x" * 101)
    poison_before = metric("synergy_cio_sink_dead_lettered_total", reason="event_name_too_long")
    async with postgres_control.postgres_outage():
        for second in range(POSTGRES_OUTAGE_SECONDS):
            batch = [harness.envelope(f"pg-{i % 7}", "reward_redeemed", {"s": second, "i": i}) for i in range(10)]
            if second == 10:
                batch.append({**harness.envelope("pg-late", "product_scanned"), "brand_id": late.brand_id})
            if second == 20:
                batch.append(poison)
            ids += await harness.publish(batch)
            await asyncio.sleep(1.0)
        delivered_during = len(set(ids) & set(harness.fake.events))
    ids.remove(poison["event_id"])

    await harness.delivered(ids, timeout=90)
    assert delivered_during > 0  # brands seen before kept flowing on their last known settings
    assert (sink.processor.assignments, sink.processor.generation) == membership, "no rebalance: still a member"
    assert set(harness.fake.events) == set(warm) | set(ids)
    await harness.wait_for(
        lambda: metric("synergy_cio_sink_dead_lettered_total", reason="event_name_too_long") > poison_before,
        timeout=60, what="the poison dead-lettered once Postgres is back")
    rows = await dead_letter_rows(harness.settings.database_url, harness.brand_id)
    assert [(row["event_id"], row["reason"]) for row in rows] == [(poison["event_id"], "event_name_too_long")]
