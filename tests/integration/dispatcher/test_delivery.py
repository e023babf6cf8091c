"""Every event reaches each of its brand's destinations, and the deployment's, in seed 002's shape."""

from __future__ import annotations

import httpx
from synergy_dispatcher.mapping import event_uuid

from tests.fakes.posthog import PostHogFake
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.dispatcher.harness import (
    PREVIOUS_SECRET,
    SECRET,
    DispatcherHarness,
    eventually,
    make_envelope,
    seed_000_events,
)


async def test_every_seed_000_event_reaches_both_destinations_in_seed_002s_shape(
        isolated_harness: DispatcherHarness) -> None:
    h = isolated_harness
    brand_id, _ = await h.brand()
    webhook_id, receiver = await h.webhook(brand_id, secrets=[SECRET, PREVIOUS_SECRET])
    posthog_id, posthog = await h.posthog(brand_id)
    deployment_hook = await WebhookReceiver([SECRET]).start()
    deployment_posthog = await PostHogFake({"phc_deployment"}).start()
    h.fakes += [deployment_hook, deployment_posthog]

    envelopes = []
    for event in seed_000_events():
        envelope = make_envelope(brand_id, event["identifiers"].get("id"), event["name"], event["data"],
                                 timestamp=event["timestamp"])
        envelopes.append(envelope)
    client_events = [e for e in envelopes if e["name"] != "achievement_unlocked"]
    (achievement,) = [e for e in envelopes if e["name"] == "achievement_unlocked"]
    achievement["source"] = "achievements"
    marketing = make_envelope(brand_id, "user-123", "cart_abandoned", {"queue_id": 9, "cart_total": 45.0},
                              source="marketing")
    assert len(client_events) == 7

    async with h.running(domain_event_webhook_url=deployment_hook.url, domain_event_webhook_secret=SECRET,
                         posthog_project_api_key="phc_deployment", posthog_host=deployment_posthog.host):
        await h.publish(client_events)
        await h.publish([achievement], topic="loyalty")
        await h.publish([marketing], topic="marketing")
        everything = [*client_events, achievement, marketing]
        wanted = {e["event_id"] for e in everything}
        await eventually(lambda: set(receiver.accepted_ids()) == wanted, what="the brand's webhook")
        await eventually(lambda: set(deployment_hook.accepted_ids()) == wanted, what="the deployment's webhook")
        await eventually(lambda: set(posthog.events_by_synergy_id()) == wanted, what="the brand's PostHog")
        await eventually(lambda: set(deployment_posthog.events_by_synergy_id()) == wanted,
                         what="the deployment's PostHog")

    assert receiver.refused_signatures == 0 and deployment_hook.refused_signatures == 0
    assert sorted(receiver.accepted_ids()) == sorted(wanted)  # each once
    # Both secrets of the rotation sign every request.
    assert all(len(d.signature_header.split(" ")) == 2 for d in receiver.accepted)

    by_id = {d.event_id: d.payload for d in receiver.accepted}
    scanned = next(e for e in client_events if e["name"] == "product_scanned")
    assert by_id[scanned["event_id"]] == {
        "event_id": scanned["event_id"], "event_name": "product_scanned", "occurred_at": "2024-05-22T18:35:12Z",
        "organization_id": brand_id, "user_id": "user-123", "entity_type": "product", "entity_id": "45",
        "correlation_id": scanned["correlation_id"], "source": "ingest", "schema_version": 1,
        "properties": scanned["data"],
    }
    assert by_id[achievement["event_id"]]["entity_type"] == "achievement"
    assert by_id[achievement["event_id"]]["entity_id"] == "first_scan"
    assert by_id[achievement["event_id"]]["source"] == "achievements"
    assert by_id[marketing["event_id"]]["event_name"] == "cart_abandoned"
    for envelope in everything:
        payload = by_id[envelope["event_id"]]
        assert (payload["event_name"], payload["organization_id"], payload["properties"]) == (
            envelope["name"], brand_id, envelope["data"])

    items = posthog.events_by_synergy_id()
    assert posthog.duplicates == 0
    for envelope in everything:
        item = items[envelope["event_id"]]
        assert item["event"] == envelope["name"]
        assert item["distinct_id"] == envelope["identifiers"]["id"]
        assert item["timestamp"] == envelope["timestamp"]
        assert item["uuid"] == event_uuid(envelope["event_id"])
        assert item["properties"]["$groups"] == {"brand": brand_id}
        assert {k: v for k, v in item["properties"].items()
                if k not in ("$groups", "synergy_event_id", "correlation_id")} == envelope["data"]

    statuses = {s.id: s for s in await _statuses(h, brand_id)}
    assert (statuses[webhook_id].delivered, statuses[webhook_id].state) == (9, "active")
    assert (statuses[posthog_id].delivered, statuses[posthog_id].dead_lettered) == (9, 0)


async def _statuses(h: DispatcherHarness, brand_id: str) -> list:
    from synergy_dispatcher import store

    return await store.destination_statuses(h.pool, brand_id)


async def test_two_brands_get_only_their_own_events_and_a_new_destination_needs_no_restart(
        harness: DispatcherHarness) -> None:
    h = harness
    brand_a, key_a = await h.brand()
    brand_b, key_b = await h.brand()
    hook_a_id, hook_a = await h.webhook(brand_a)
    posthog_a_id, posthog_a = await h.posthog(brand_a)
    async with h.running(dispatcher_port=0) as running:
        first_a = [make_envelope(brand_a, f"u{i % 3}") for i in range(20)]
        first_b = [make_envelope(brand_b, f"u{i % 3}") for i in range(20)]
        await h.publish(first_a + first_b)
        await eventually(lambda: len(hook_a.accepted) == 20, what="brand A's first events")
        # Brand B's destinations are added while the dispatcher runs: they get what comes next.
        hook_b_id, hook_b = await h.webhook(brand_b)
        _, posthog_b = await h.posthog(brand_b)
        await eventually(lambda: hook_b_id in running.dispatcher.registry.by_id, what="the reload")
        later_a = [make_envelope(brand_a, f"u{i % 3}") for i in range(15)]
        later_b = [make_envelope(brand_b, f"u{i % 3}") for i in range(15)]
        await h.publish(later_a + later_b)
        a_ids = {e["event_id"] for e in first_a + later_a}
        b_ids = {e["event_id"] for e in later_b}
        await eventually(lambda: set(hook_a.accepted_ids()) == a_ids, what="brand A's webhook")
        await eventually(lambda: set(posthog_a.events_by_synergy_id()) == a_ids, what="brand A's PostHog")
        await eventually(lambda: set(hook_b.accepted_ids()) == b_ids, what="brand B's webhook")
        await eventually(lambda: set(posthog_b.events_by_synergy_id()) == b_ids, what="brand B's PostHog")
        await eventually(lambda: _delivered(h, hook_a_id, 35), what="brand A's counts")
        app_statuses = await _status_route(running, key_a, key_b, hook_a_id, posthog_a_id, hook_b_id)

    assert {d.payload["organization_id"] for d in hook_a.accepted} == {brand_a}
    assert {d.payload["organization_id"] for d in hook_b.accepted} == {brand_b}
    assert {i["properties"]["$groups"]["brand"] for i in posthog_a.order} == {brand_a}
    assert {i["properties"]["$groups"]["brand"] for i in posthog_b.order} == {brand_b}
    assert len(hook_a.accepted) == 35 and len(hook_b.accepted) == 15
    assert app_statuses


async def _delivered(h: DispatcherHarness, destination_id: str, count: int) -> bool:
    value = await h.pool.fetchval("SELECT delivered_total FROM destinations WHERE id = $1", int(destination_id))
    return value == count


async def _status_route(running, key_a: str, key_b: str, hook_a_id: str, posthog_a_id: str,
                        hook_b_id: str) -> bool:
    """GET /v1/destinations/status answers each brand its own destinations only."""
    from synergy_dispatcher.app import create_app

    app = create_app(running.dispatcher.settings, running=running)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        a = await client.get("/v1/destinations/status", headers={"Authorization": f"Bearer {key_a}"})
        b = await client.get("/v1/destinations/status", headers={"Authorization": f"Bearer {key_b}"})
        anonymous = await client.get("/v1/destinations/status")
        wrong = await client.get("/v1/destinations/status", headers={"Authorization": "Bearer swk_nope"})
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert a.status_code == 200 and b.status_code == 200
    a_rows = {d["id"]: d for d in a.json()["destinations"]}
    b_rows = {d["id"]: d for d in b.json()["destinations"]}
    assert set(a_rows) == {hook_a_id, posthog_a_id}
    assert hook_b_id in b_rows and hook_a_id not in b_rows
    assert a_rows[hook_a_id]["delivered"] == 35 and a_rows[hook_a_id]["state"] == "active"
    assert a_rows[hook_a_id]["type"] == "webhook" and a_rows[hook_a_id]["dead_lettered"] == 0
    return True
