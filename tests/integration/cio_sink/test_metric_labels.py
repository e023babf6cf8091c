"""Free event names (page and screen names) reach Customer.io as they are, but never metric labels."""

from __future__ import annotations

import secrets

from tests.integration.cio_sink.harness import SinkHarness
from tests.support import label_values, metric_label_sets


async def test_a_hundred_free_page_and_screen_names_add_no_metric_label(harness: SinkHarness) -> None:
    await harness.start_sink()
    warm_up = [harness.envelope("u-warm", name=f"warm-{secrets.token_hex(3)}", event_type=kind)
               for kind in ("page", "screen")]
    await harness.delivered(await harness.publish(warm_up))
    # The lag gauge of the topic (a bounded label) is exported a commit interval after the warm-up is
    # delivered: settled means it is there too, or it shows up later as a "new" label set.
    lag = ("synergy_cio_sink_consumer_lag_messages", frozenset({("topic", harness.topics["events"])}))
    await harness.wait_for(lambda: lag in metric_label_sets("synergy_cio_sink_"), what="the sink's lag gauge")
    settled = metric_label_sets("synergy_cio_sink_")
    names = [f"free-name-{secrets.token_hex(6)}" for _ in range(100)]
    envelopes = [harness.envelope(f"u-{index % 7}", name=name, event_type=("page", "screen")[index % 2])
                 for index, name in enumerate(names)]
    event_ids = await harness.publish(envelopes)
    await harness.delivered(event_ids)

    delivered_names = {harness.fake.events[event_id].name for event_id in event_ids}
    assert delivered_names == set(names)
    assert metric_label_sets("synergy_cio_sink_") == settled
    assert not set(names) & label_values("synergy_")
