"""A dispatcher killed mid-batch (SIGKILL, the batch already in PostHog) redelivers it; PostHog dedupes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.dispatcher.harness import DispatcherHarness, eventually, make_envelope
from tests.support import free_port


async def committed(h: DispatcherHarness) -> int:
    """The consumer group's committed offsets on the events topic, summed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=h.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(h.group_id)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == h.topics["events"] and meta.offset > 0)


async def _all_committed(h: DispatcherHarness) -> bool:
    return await committed(h) == 120


@asynccontextmanager
async def dispatcher_process(h: DispatcherHarness, extra_env: dict[str, str] | None = None,
                             ) -> AsyncIterator[asyncio.subprocess.Process]:
    settings = h.settings()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": h.kafka_bootstrap, "DATABASE_URL": h.database_url,
           "SYNERGY_ENCRYPTION_KEY": h.encryption_key, "DISPATCHER_TOPICS": settings.dispatcher_topics,
           "DISPATCHER_GROUP_ID": h.group_id, "DISPATCHER_PORT": str(free_port()),
           "DISPATCHER_HOST": "127.0.0.1", "DISPATCHER_RETRY_BASE": "200ms", "DISPATCHER_RETRY_CAP": "1s",
           "SYNERGY_TOPIC_DLQ": h.topics["dlq"], "LOG_LEVEL": "WARNING", **(extra_env or {})}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "synergy_dispatcher", env=env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_a_restart_mid_batch_delivers_nothing_twice_that_posthog_counts_as_new(
        harness: DispatcherHarness) -> None:
    h = harness
    brand_id, _ = await h.brand()
    _, posthog = await h.posthog(brand_id)
    envelopes = [make_envelope(brand_id, f"u{i % 7}", data={"n": i}) for i in range(120)]
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
        await eventually(lambda: _all_committed(h), timeout=60, what="every offset committed")
        await eventually(lambda: set(posthog.events_by_synergy_id()) == ids, timeout=10, what="every event")

    assert 0 < ingested_before_restart
    assert posthog.received_items > 120  # the killed batch was sent again ...
    assert len(posthog.order) == 120  # ... and PostHog counted each event once
    assert posthog.duplicates == posthog.received_items - 120
    assert len({i["uuid"] for i in posthog.order}) == 120
