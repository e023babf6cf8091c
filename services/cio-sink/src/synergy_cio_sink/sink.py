"""The sink: cio-sink's prepare and deliver (delivery.py) on the consumer runtime (libs/streaming).

The runtime does the rest: per-person order, batching, the rate limit per workspace, retries,
dead letters and their brake, and commits of the done prefix only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from synergy_schemas import topics
from synergy_streaming import (
    Consumer,
    DeadLetter,
    DeadLetterWriter,
    DlqBrake,
    RateLimits,
    RetryPolicy,
    StreamConfig,
    StreamProcessor,
)
from synergy_streaming.offsets import OffsetTracker

from synergy_cio_sink import metrics
from synergy_cio_sink.batching import MAX_REQUEST_BYTES, batch_body
from synergy_cio_sink.brands import BrandDirectory
from synergy_cio_sink.coalesce import SnapshotCoalescer
from synergy_cio_sink.config import SinkSettings
from synergy_cio_sink.delivery import SinkFunctions, destination_of
from synergy_cio_sink.pauses import WorkspacePauses
from synergy_cio_sink.transport import CustomerIoTransport

SERVICE = "cio-sink"
SOURCE_TOPICS = (topics.EVENTS, topics.LOYALTY, topics.MARKETING, topics.SNAPSHOTS)
V2_MAX_IN_FLIGHT = 8
V2_MAX_PER_USER = 50


class CountingDeadLetterWriter(DeadLetterWriter):
    """The runtime's writer, also counting cio-sink's own `dead_lettered_total{reason}`."""

    async def write_until_durable(self, letters: Any) -> None:
        await super().write_until_durable(letters)
        for letter in letters:
            metrics.DEAD_LETTERED.labels(letter.reason.split(":", 1)[0]).inc()


def stream_config(settings: SinkSettings) -> StreamConfig:
    v1 = settings.cio_api == "v1"
    return StreamConfig(
        service=SERVICE,
        topics=[topic.name for topic in SOURCE_TOPICS],
        max_buffered=settings.cio_max_buffered,
        max_batch_items=1 if v1 else settings.cio_batch_max_items,
        max_batch_bytes=MAX_REQUEST_BYTES - len(batch_body([])),
        max_batch_wait=0.0 if v1 else settings.cio_batch_linger,
        max_run_per_key=1 if v1 else V2_MAX_PER_USER,
        max_in_flight=settings.cio_v1_concurrency if v1 else V2_MAX_IN_FLIGHT,
        max_pending_per_key=settings.cio_max_pending_per_user,
        commit_interval=settings.commit_interval,
        brake=DlqBrake(max_share=settings.cio_dlq_brake_max_share, window=settings.cio_dlq_brake_window,
                       max_consecutive=settings.cio_dlq_brake_consecutive,
                       retry_interval=settings.cio_dlq_brake_retry_interval),
    )


class CioSink:
    def __init__(self, settings: SinkSettings, consumer: Consumer, directory: BrandDirectory,
                 dead_letters: DeadLetterWriter | None, transport: CustomerIoTransport) -> None:
        self.settings = settings
        self.consumer = consumer
        self.directory = directory
        self.rate_limits = RateLimits(settings.cio_rate_limit, settings.cio_rate_limit_min)
        self.functions = SinkFunctions(
            directory, transport, settings.cio_api, topics.SNAPSHOTS.name,
            SnapshotCoalescer(settings.cio_snapshot_interval, settings.cio_snapshot_memory),
            WorkspacePauses(settings.cio_auth_probe_interval), self.rate_limits,
        )
        self.processor = StreamProcessor(
            stream_config(settings), consumer, self.functions.prepare, self.functions.deliver,
            dead_letters=dead_letters,
            retry=RetryPolicy(settings.cio_max_attempts, settings.cio_max_retry_window,
                              settings.cio_backoff_base, settings.cio_backoff_max),
            rate_limits=self.rate_limits, destination_of=destination_of,
        )
        self.running_dry = False  # no credentials anywhere at start (service.running_sink)

    @property
    def source_topics(self) -> list[str]:
        return list(self.processor.config.topics)

    @property
    def dry_run_log(self) -> deque[dict[str, Any]]:
        return self.functions.dry_run_log

    @property
    def offsets(self) -> OffsetTracker:
        return self.processor.commits.tracker

    def readiness(self) -> dict[str, bool]:
        return self.processor.readiness()

    async def run(self) -> None:
        """Until stop(): consume, deliver, commit (and export lag per topic meanwhile)."""
        exporter = asyncio.create_task(self._export_gauges())
        try:
            await self.processor.run()
        finally:
            exporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exporter

    def stop(self) -> None:
        self.processor.stop()

    async def _export_gauges(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval)
            metrics.BUFFERED.set(self.processor.commits.tracker.outstanding)
            by_topic: dict[str, int] = {}
            for partition, lag in list(self.processor.lag.items()):
                by_topic[partition.topic] = by_topic.get(partition.topic, 0) + lag
            for topic, lag in by_topic.items():
                metrics.CONSUMER_LAG.labels(topic).set(lag)


__all__ = ["CioSink", "CountingDeadLetterWriter", "DeadLetter"]
