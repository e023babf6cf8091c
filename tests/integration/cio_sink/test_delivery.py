"""Kafka -> cio-sink -> the Customer.io fake, counted by event id."""

from __future__ import annotations

from typing import Any

import pytest
from synergy_common.db import create_pool

from tests.integration.cio_sink.harness import SinkHarness, seed_events


async def test_every_seed_event_arrives_in_the_seed_shape(harness: SinkHarness) -> None:
    seeds = seed_events()
    assert len(seeds) >= 8
    envelopes = [harness.envelope(f"seed-{i}", seed["name"], seed["data"]) for i, seed in enumerate(seeds)]
    # as achievements publishes it on the snapshots topic: a track named user_snapshot
    published = {"user_snapshot": seeds[0]["data"]["user_snapshot"],
                 "loyalty": {"state_version": 3, "achievements": {"first_scan": "2024-05-22T18:35:12Z"},
                             "current_streak_days": 2, "as_of": "2024-05-22T18:35:12Z"}}
    snapshot = harness.envelope("seed-0", "user_snapshot", published)
    await harness.start_sink()
    ids = await harness.publish(envelopes)
    await harness.publish([snapshot], topic="snapshots")

    await harness.delivered(ids)
    for envelope in envelopes:
        received = harness.fake.events[envelope["event_id"]]
        assert (received.name, received.data) == (envelope["name"], envelope["data"])
        assert received.person == f"id:{envelope['identifiers']['id']}"
        assert received.timestamp == 1716402912
    await harness.wait_for(lambda: ("site-test", "seed-0") in harness.fake.people, what="snapshot identify")
    attributes = harness.fake.people[("site-test", "seed-0")]
    assert attributes["email"] == seeds[0]["data"]["user_snapshot"]["identity"]["email"]
    assert attributes["points_balance"] == seeds[0]["data"]["user_snapshot"]["economy"]["points_balance"]
    assert all(not isinstance(value, dict | list) for value in attributes.values())
    assert not {"state_version", "first_scan", "achievements_first_scan", "current_streak_days"} & set(attributes)


async def test_anonymous_and_page_events_and_v1_mode(harness: SinkHarness) -> None:
    await harness.start_sink(cio_api="v1")
    envelopes = [harness.envelope(None, "product_viewed", anonymous_id="anon-1"),
                 harness.envelope("u-page", "/rewards", {"title": "Rewards"}, event_type="page"),
                 harness.envelope("u-page", "product_scanned")]
    ids = await harness.publish(envelopes)
    await harness.delivered(ids)
    kinds = [(e.person, e.type, e.api) for e in harness.fake.event_order]
    assert sorted(kinds) == [("anon:anon-1", "event", "v1"), ("id:u-page", "event", "v1"),
                             ("id:u-page", "page", "v1")]
    assert [e.type for e in harness.fake.events_for("id:u-page")] == ["page", "event"]


async def test_poison_goes_to_the_dlq_while_the_rest_flows(
    harness: SinkHarness, consume_all: Any, cio_database_url: str
) -> None:
    good = [harness.envelope(f"u-{i}") for i in range(20)]
    too_long_name = harness.envelope("u-poison", "x" * 101)
    refused_by_cio = harness.envelope("u-poison-2", event_id="NOT-A-ULID-0000000000000000"[:26])
    await harness.start_sink()
    await harness.publish([*good[:10], too_long_name, refused_by_cio, *good[10:]])

    await harness.delivered([e["event_id"] for e in good])
    letters = await consume_all(harness.topics["dlq"], 2, timeout=20)
    by_reason = {r.header("dlq_reason"): r for r in letters}
    assert set(by_reason) == {"event_name_too_long", "invalid_item"}
    assert by_reason["invalid_item"].json()["event_id"] == refused_by_cio["event_id"]
    assert by_reason["event_name_too_long"].header("dlq_source_topic") == harness.topics["events"]
    assert by_reason["event_name_too_long"].header("dlq_source_offset") is not None
    assert refused_by_cio["event_id"] not in harness.fake.events
    pool = await create_pool(cio_database_url)
    try:
        rows = await pool.fetch("SELECT reason, event_id FROM dlq_messages WHERE brand_id = $1",
                                int(harness.brand_id))
    finally:
        await pool.close()
    assert {(r["reason"], r["event_id"]) for r in rows} == {
        ("event_name_too_long", too_long_name["event_id"]), ("invalid_item", refused_by_cio["event_id"])}


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_per_user_order_holds_under_retries(harness: SinkHarness, api: str) -> None:
    harness.fake.force(503, times=3)
    harness.fake.force(429, times=3, retry_after=0.1)
    envelopes = [harness.envelope(f"user-{u}", "product_scanned", {"seq": i})
                 for i in range(15) for u in "ab"]
    await harness.start_sink(cio_api=api)
    await harness.publish(envelopes)

    await harness.delivered([e["event_id"] for e in envelopes], timeout=60)
    for user in ("user-a", "user-b"):
        assert [e.data["seq"] for e in harness.fake.events_for(f"id:{user}")] == list(range(15))
    assert harness.fake.statuses[503] == 3 and harness.fake.statuses[429] == 3


async def test_restart_mid_batch_delivers_nothing_new_twice(harness: SinkHarness) -> None:
    envelopes = [harness.envelope(f"r-{i % 7}", "product_scanned", {"i": i}) for i in range(60)]
    ids = await harness.publish(envelopes)
    harness.fake.faults.slow_next = 1_000  # processed by the fake, answered too late: the sink never hears
    harness.fake.faults.slow_seconds = 3.0
    first = await harness.start_sink(cio_request_timeout=1.0)
    await harness.wait_for(lambda: len(harness.fake.events) > 0, what="the first requests")
    first.offsets.to_commit = dict  # type: ignore[method-assign]  # a crash: nothing more is committed
    await harness.stop_sink(first)
    received_before = set(harness.fake.events)

    harness.fake.clear_faults()
    await harness.start_sink()
    await harness.delivered(ids)
    # The restarted sink re-reads the uncommitted messages and sends them again, same ids...
    await harness.wait_for(lambda: set(harness.fake.duplicates) >= received_before, what="redelivery")

    # ...and the fake counts each event as new exactly once.
    assert len(harness.fake.event_order) == len(harness.fake.events) == len(ids)
    assert set(harness.fake.events) == set(ids)
