"""A destination that stays down gets a backlog in Postgres: the others, and the consumer's commits, go on.

Counted by event id against real Kafka and Postgres: what each receiver got, what the backlog table
holds, what the consumer group committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import asyncpg
import httpx
import pytest
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY
from synergy_common.cli import main
from synergy_common.settings import common_settings
from synergy_common.testinfra import Infra
from synergy_dispatcher.app import create_app

from tests.integration.dispatcher.harness import (
    Brand,
    DispatcherHarness,
    committed,
    committed_is,
    dispatcher_process,
    event_ids,
    eventually,
    per_user,
    user_events,
)


async def backlog_ids(h: DispatcherHarness, destination_id: str) -> list[str]:
    """The destination's backlog, in the order it will be delivered (seq)."""
    rows = await h.pool.fetch("SELECT event_id FROM destination_backlog WHERE destination_id = $1 ORDER BY seq",
                              int(destination_id))
    return [r["event_id"] for r in rows]


async def _backlog_holds(h: DispatcherHarness, destination_id: str, count: int) -> bool:
    try:
        return len(await backlog_ids(h, destination_id)) == count
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False  # Postgres on its way back


async def destinations_list(h: DispatcherHarness, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    monkeypatch.setenv("DATABASE_URL", h.database_url)
    monkeypatch.setenv("SYNERGY_ENCRYPTION_KEY", h.encryption_key)
    common_settings.cache_clear()
    try:
        return await asyncio.to_thread(CliRunner().invoke, main, ["destinations", "list", *args])
    finally:
        common_settings.cache_clear()


@pytest.mark.timeout(300)
async def test_a_webhook_down_for_long_holds_back_only_itself_while_the_others_get_more_than_the_buffer(
        harness: DispatcherHarness, brand: Brand, monkeypatch: pytest.MonkeyPatch) -> None:
    h, brand_id = harness, brand.brand_id
    down_id, down = await h.webhook(brand_id, name="down", in_maintenance=True)
    up_id, up = await h.webhook(brand_id, name="up")
    _, posthog = await h.posthog(brand_id)
    envelopes = user_events(brand_id, 1000, users=25)
    later = user_events(brand_id, 50, users=25, first=1000)
    ids = event_ids(envelopes)
    label = {"brand_id": brand_id, "destination": f"webhook:{down_id}"}
    async with h.running(dispatcher_max_buffered=200) as running:
        for start in range(0, 1000, 200):  # a steady stream, five times the buffer
            await h.publish(envelopes[start:start + 200])
            await asyncio.sleep(1.0)
        await eventually(lambda: sorted(up.accepted_ids()) == sorted(ids), timeout=30,
                         what="the other webhook, while this one is down")
        await eventually(lambda: len(posthog.order) == 1000, timeout=30, what="PostHog, meanwhile")
        await eventually(lambda: committed_is(h, 1000), timeout=30, what="every offset committed")
        await eventually(lambda: _backlog_holds(h, down_id, 1000), timeout=30, what="the backlog")
        held = await backlog_ids(h, down_id)
        await eventually(lambda: REGISTRY.get_sample_value(
            "synergy_dispatcher_destination_backlog_items", label) == 1000, what="the backlog on /metrics")
        oldest_age = REGISTRY.get_sample_value("synergy_dispatcher_destination_backlog_oldest_age_seconds", label)
        app = create_app(running.dispatcher.settings, running=running)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
            answer = await client.get("/v1/destinations/status",
                                      headers={"Authorization": f"Bearer {brand.write_key}"})
        listed = await destinations_list(h, monkeypatch, "--brand", brand_id, "--json")
        table = await destinations_list(h, monkeypatch, "--brand", brand_id)
        accepted_while_down = len(down.accepted)
        refused_while_down = len(down.answered)

        down.responder = None  # the endpoint is back
        await eventually(lambda: len(down.accepted) >= 1000, timeout=90, what="the backlog delivered")
        await eventually(lambda: _backlog_holds(h, down_id, 0), what="the backlog emptied")
        await eventually(lambda: not running.dispatcher.backlogs.holds(down_id), what="back on the live path")
        await h.publish(later)
        await eventually(lambda: len(down.accepted) == 1050, timeout=30, what="later events, live")
        await eventually(lambda: len(up.accepted) == 1050, timeout=30, what="later events to the other")
        backlog_after = await backlog_ids(h, down_id)
        await eventually(lambda: REGISTRY.get_sample_value(
            "synergy_dispatcher_destination_backlog_items", label) == 0, what="the backlog gauge at 0")

    assert sorted(held) == sorted(ids)  # every one of this destination's items, each once
    assert per_user(held, envelopes) == per_user(ids, envelopes)  # queued in each user's order
    assert accepted_while_down == 0 and refused_while_down >= 25
    assert oldest_age is not None and oldest_age > 0
    assert answer.status_code == 200
    (status,) = [d for d in answer.json()["destinations"] if d["id"] == down_id]
    assert status["backlog"]["items"] == 1000 and status["lag"] == 1000 and status["state"] == "active"
    assert status["backlog"]["oldest_age_seconds"] > 0
    backlogs = {d["id"]: (d["backlog"]["items"], d["lag"]) for d in json.loads(listed.output)}
    assert backlogs[down_id] == (1000, 1000) and backlogs[up_id] == (0, 0)
    (down_row,) = [line.split() for line in table.output.splitlines() if line.split()[:1] == [down_id]]
    assert down_row[3:5] == ["down", "active"] and down_row[8:10] == ["1000", "1000"]  # lag, backlog
    everything = envelopes + later
    all_ids = event_ids(everything)
    assert sorted(down.accepted_ids()) == sorted(all_ids)  # nothing lost, none twice
    assert per_user(down.accepted_ids(), everything) == per_user(all_ids, everything)
    assert per_user(up.accepted_ids(), everything) == per_user(all_ids, everything)
    ingested = [i["properties"]["synergy_event_id"] for i in posthog.order]
    assert posthog.duplicates == 0 and sorted(ingested) == sorted(all_ids)
    assert per_user(ingested, everything) == per_user(all_ids, everything)
    assert backlog_after == []  # after the drain, new events went straight to the endpoint
    assert await h.dead_letters() == []


@pytest.mark.timeout(300)
async def test_a_dispatcher_killed_mid_drain_loses_nothing_and_posthog_counts_nothing_twice(
        harness: DispatcherHarness, brand: Brand) -> None:
    h, brand_id = harness, brand.brand_id
    hook_id, hook = await h.webhook(brand_id, in_maintenance=True)
    posthog_id, posthog = await h.posthog(brand_id)
    posthog.fail_for(3600, 503, retry_after="1")
    envelopes = user_events(brand_id, 200, users=10)
    ids = event_ids(envelopes)
    await h.publish(envelopes)
    env = {"DISPATCHER_BACKLOG_LEASE": "5s", "DISPATCHER_BACKLOG_PER_USER": "5"}
    async with dispatcher_process(h, env) as first:
        await eventually(lambda: committed_is(h, 200), timeout=60, what="every offset committed")
        await eventually(lambda: _backlog_holds(h, hook_id, 200), what="the webhook's backlog")
        await eventually(lambda: _backlog_holds(h, posthog_id, 200), what="PostHog's backlog")
        posthog.faults.clear()
        posthog.hold = 2.0  # PostHog ingests a round, and the answer is still on its way at the kill
        hook.responder = None
        hook.delay = 0.3  # four rounds of five requests per user: ~6 s to drain, the kill comes well before
        await eventually(lambda: 20 <= len(hook.accepted), timeout=30, what="the drain under way")
        await eventually(lambda: len(posthog.order) > 0, timeout=30, what="a PostHog round ingested")
        first.send_signal(signal.SIGKILL)
        await first.wait()
    delivered_before_kill = len(set(hook.accepted_ids()))
    posthog.hold = 0.0
    hook.delay = 0.0
    async with dispatcher_process(h, env):
        await eventually(lambda: set(hook.accepted_ids()) == set(ids), timeout=90, what="the webhook, all")
        await eventually(lambda: set(posthog.events_by_synergy_id()) == set(ids), timeout=60, what="PostHog")
        await eventually(lambda: _backlog_holds(h, hook_id, 0), what="the webhook's backlog empty")
        await eventually(lambda: _backlog_holds(h, posthog_id, 0), what="PostHog's backlog empty")

    assert 20 <= delivered_before_kill < 200
    assert posthog.received_items > 200  # the round in flight at the kill was sent again ...
    assert await committed(h) == 200  # nothing was consumed again: the backlog carried it over
    first_deliveries = list(dict.fromkeys(hook.accepted_ids()))
    assert sorted(first_deliveries) == sorted(ids)
    assert per_user(first_deliveries, envelopes) == per_user(ids, envelopes)
    assert len(posthog.order) == 200  # ... and PostHog counted each event once
    assert len({i["uuid"] for i in posthog.order}) == 200
    ingested = [i["properties"]["synergy_event_id"] for i in posthog.order]
    assert per_user(ingested, envelopes) == per_user(ids, envelopes)
    assert await h.dead_letters() == []


@pytest.mark.timeout(300)
async def test_two_replicas_draining_one_backlog_deliver_each_item_once_in_per_user_order(
        harness: DispatcherHarness, brand: Brand) -> None:
    h, brand_id = harness, brand.brand_id
    hook_id, hook = await h.webhook(brand_id, in_maintenance=True)
    envelopes = user_events(brand_id, 400, users=20)
    ids = event_ids(envelopes)
    small_rounds = {"dispatcher_backlog_users": 2, "dispatcher_backlog_per_user": 5}
    async with h.running(**small_rounds):
        await h.publish(envelopes)
        await eventually(lambda: _backlog_holds(h, hook_id, 400), timeout=60, what="the backlog")
    hook.responder = None
    hook.delay = 0.05  # rounds of 10 items take ~0.25 s: the two replicas interleave
    async with contextlib.AsyncExitStack() as stack:
        one = await stack.enter_async_context(h.running(dispatcher_replica="one", **small_rounds))
        two = await stack.enter_async_context(h.running(dispatcher_replica="two", **small_rounds))
        await eventually(lambda: len(hook.accepted) >= 400, timeout=120, what="the backlog delivered")
        await eventually(lambda: _backlog_holds(h, hook_id, 0), what="the backlog emptied")
        await asyncio.sleep(1.0)  # nothing more arrives
        by_one, by_two = one.dispatcher.backlogs.delivered, two.dispatcher.backlogs.delivered

    assert sorted(hook.accepted_ids()) == sorted(ids)  # each once
    assert per_user(hook.accepted_ids(), envelopes) == per_user(ids, envelopes)
    assert by_one > 0 and by_two > 0 and by_one + by_two == 400  # both drained, together each item once
    assert await h.dead_letters() == []


@pytest.mark.timeout(300)
async def test_postgres_away_while_the_backlog_is_written_loses_nothing(
        harness: DispatcherHarness, brand: Brand, postgres_control: Infra) -> None:
    h, brand_id = harness, brand.brand_id
    down_id, down = await h.webhook(brand_id, name="down", in_maintenance=True)
    _, up = await h.webhook(brand_id, name="up")
    envelopes = user_events(brand_id, 150, users=10)
    ids = event_ids(envelopes)
    async with h.running() as running:
        await h.publish(envelopes[:50])
        await eventually(lambda: _backlog_holds(h, down_id, 50), timeout=30, what="the backlog")
        async with postgres_control.postgres_outage():
            await h.publish(envelopes[50:100])  # consumed while the backlog cannot be written
            await eventually(lambda: len(up.accepted) == 100, timeout=30, what="the other webhook, meanwhile")
            await asyncio.sleep(3.0)
            lag_during_outage = sum(running.processor.lag.values())
        await h.publish(envelopes[100:])
        await eventually(lambda: _backlog_holds(h, down_id, 150), timeout=90, what="the backlog, complete")
        held = await backlog_ids(h, down_id)
        await eventually(lambda: committed_is(h, 150), timeout=30, what="every offset committed")
        down.responder = None
        await eventually(lambda: len(down.accepted) >= 150, timeout=60, what="the backlog delivered")

    assert lag_during_outage > 0  # the unwritten items stayed unsettled: their offsets waited
    assert sorted(held) == sorted(ids)  # the backlog written after the outage holds each event once
    assert per_user(held, envelopes) == per_user(ids, envelopes)
    assert sorted(down.accepted_ids()) == sorted(ids)
    assert per_user(down.accepted_ids(), envelopes) == per_user(ids, envelopes)
    assert sorted(up.accepted_ids()) == sorted(ids)
    assert await h.dead_letters() == []
