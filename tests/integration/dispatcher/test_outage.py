"""A two-minute webhook outage (first 503s with Retry-After, then nothing listening) loses nothing."""

from __future__ import annotations

import asyncio

import pytest
from synergy_dispatcher import store

from tests.integration.dispatcher.harness import (
    Brand,
    DispatcherHarness,
    event_ids,
    eventually,
    per_user,
    unavailable,
    user_events,
)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_a_two_minute_webhook_outage_loses_nothing_and_keeps_per_user_order(
        harness: DispatcherHarness, brand: Brand) -> None:
    h, brand_id = harness, brand.brand_id
    hook_id, hook = await h.webhook(brand_id)
    hook.responder = lambda _: unavailable(retry_after="5")
    _, posthog = await h.posthog(brand_id)
    envelopes = user_events(brand_id, 300, users=10)
    ids = event_ids(envelopes)
    async with h.running():
        await h.publish(envelopes[:150])
        await asyncio.sleep(60)  # one minute of 503s
        await hook.stop()  # then a minute of connection refused
        await h.publish(envelopes[150:])
        await asyncio.sleep(30)
        (status,) = [s for s in await store.destination_statuses(h.pool, brand_id) if s.id == hook_id]
        lag_during_outage = status.lag
        posthog_during_outage = len(posthog.order)
        await asyncio.sleep(30)
        hook.responder = None
        await hook.restart()
        await eventually(lambda: len(hook.accepted) >= 300, timeout=60, what="every event after the outage")
        await asyncio.sleep(1.0)

    assert lag_during_outage == 300  # its own lag: every event waits for this destination
    assert posthog_during_outage == 300  # the other destination was not held up
    assert hook.accepted_ids().count(ids[0]) == 1
    assert sorted(hook.accepted_ids()) == sorted(ids)  # every event once, none lost
    assert per_user(hook.accepted_ids(), envelopes) == per_user(ids, envelopes)
    assert sum(1 for d in hook.answered if d.status == 503) >= 10
    assert await h.dead_letters() == []
