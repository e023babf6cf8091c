"""A dispatcher killed mid-batch (SIGKILL, the batch already in PostHog) redelivers it; PostHog dedupes."""

from __future__ import annotations

import signal

from tests.integration.dispatcher.harness import (
    Brand,
    DispatcherHarness,
    committed,
    committed_is,
    dispatcher_process,
    eventually,
    user_events,
)


async def test_a_restart_mid_batch_delivers_nothing_twice_that_posthog_counts_as_new(
        harness: DispatcherHarness, brand: Brand) -> None:
    h, brand_id = harness, brand.brand_id
    _, posthog = await h.posthog(brand_id)
    envelopes = user_events(brand_id, 120, users=7)
    ids = {e["event_id"] for e in envelopes}
    await h.publish(envelopes)
    posthog.hold = 30.0  # PostHog takes the batch in, and the answer never reaches this dispatcher
    async with dispatcher_process(h) as first:
        await eventually(lambda: len(posthog.order) > 0, timeout=60, what="a batch in PostHog")
        first.send_signal(signal.SIGKILL)
        await first.wait()
    ingested_before_restart = len(posthog.order)
    posthog.hold = 0.0
    assert await committed(h) == 0  # the killed dispatcher never saw the answer, so never committed
    async with dispatcher_process(h):
        await eventually(lambda: committed_is(h, 120), timeout=60, what="every offset committed")
        await eventually(lambda: set(posthog.events_by_synergy_id()) == ids, timeout=10, what="every event")

    assert 0 < ingested_before_restart
    assert posthog.received_items > 120  # the killed batch was sent again ...
    assert len(posthog.order) == 120  # ... and PostHog counted each event once
    assert posthog.duplicates == posthog.received_items - 120
    assert len({i["uuid"] for i in posthog.order}) == 120
