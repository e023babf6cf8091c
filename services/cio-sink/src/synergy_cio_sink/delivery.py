"""cio-sink's two functions for the consumer runtime: `prepare` (record -> operation) and `deliver`.

prepare: the envelope mapped by mapping.py for the brand's privacy settings, into one `Work` per
message, keyed by person (snapshots in a lane of their own) and targeted at the brand's workspace.
deliver: one v2 batch request (or one v1 call) per batch; Customer.io's answer as per-item outcomes.
Snapshot coalescing (coalesce.py) and workspace pausing on 401/403 (pauses.py) are decided here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from synergy_streaming import (
    DELIVERED,
    BatchOutcome,
    Failed,
    ItemOutcome,
    RateLimits,
    Reject,
    Retry,
    Skip,
    Source,
    SplitBatch,
    Work,
)

from synergy_cio_sink import metrics
from synergy_cio_sink.batching import MAX_ITEM_BYTES
from synergy_cio_sink.brands import BrandDirectory
from synergy_cio_sink.coalesce import SUPERSEDED, SnapshotCoalescer, Version, Wait, snapshot_version
from synergy_cio_sink.mapping import Delivery, Rejected, Skipped, item_bytes, map_envelope
from synergy_cio_sink.pauses import WorkspacePauses
from synergy_cio_sink.transport import Answer, CustomerIoTransport, Workspace

log = structlog.get_logger(service="cio-sink")

SNAPSHOT_LANE = "#snapshot"
AUTH_REFUSED = (401, 403)


class Target(NamedTuple):
    """Where a batch goes: one Customer.io workspace. Rate limits and pauses are kept per target."""

    base_url: str
    site_id: str


@dataclass(slots=True)
class Operation:
    """A Work item's payload: the mapped operation and what delivery needs to know about it."""

    delivery: Delivery
    body: bytes  # the v2 item, serialised once
    received_at: float | None
    snapshot: Version | None = None  # set for messages of the snapshots topic


def _epoch(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def destination_of(target: Hashable) -> str:
    return f"customer.io/{target[1]}" if isinstance(target, Target) else ""


class SinkFunctions:
    def __init__(self, directory: BrandDirectory, transport: CustomerIoTransport, api: str,
                 snapshots_topic: str, coalescer: SnapshotCoalescer, pauses: WorkspacePauses,
                 rate_limits: RateLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory, self.transport, self.api = directory, transport, api
        self.snapshots_topic = snapshots_topic
        self.coalescer, self.pauses, self.rate_limits, self.clock = coalescer, pauses, rate_limits, clock
        self.dry_run_log: deque[dict[str, Any]] = deque(maxlen=10_000)

    # --- prepare ---------------------------------------------------------------------------------

    async def prepare(self, source: Source) -> list[Work] | Skip | Reject:
        envelope: dict[str, Any] = source.payload
        record = source.record
        brand_id = str(envelope["brand_id"])
        brand = await self.directory.delivery_for(brand_id)  # Postgres away: raises, the runtime retries
        from_snapshots = record.partition.topic == self.snapshots_topic
        try:
            result = map_envelope(envelope, brand.privacy, from_snapshots=from_snapshots)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return Reject("malformed_message", repr(exc)[:300])
        if isinstance(result, Skipped):
            metrics.SKIPPED.labels(result.reason).inc()
            return Skip(result.reason)
        if isinstance(result, Rejected):
            return Reject(result.reason, result.detail)
        if brand.workspace is None:
            self.dry_run_log.append({"brand_id": brand_id, "would_send": result.v2_item})
            metrics.DRY_RUN.inc()
            return Skip("dry_run")
        body = item_bytes(result)
        if len(body) > MAX_ITEM_BYTES:
            return Reject("item_too_large", f"the v2 item is {len(body)} bytes, over {MAX_ITEM_BYTES}")
        operation = Operation(result, body, _epoch(envelope.get("received_at")))
        key = result.person_key
        if from_snapshots:
            operation.snapshot = snapshot_version(envelope, record.offset)
            if not self.coalescer.admit(result.person_key, operation.snapshot):
                metrics.STALE_SNAPSHOTS.inc()
                log.info("snapshot older than one already seen or sent; dropped", person=key,
                         event_id=result.event_id)
                return Skip("stale_snapshot")
            key += SNAPSHOT_LANE
        target = Target(brand.workspace.base_url, brand.workspace.site_id)
        return [Work(key=key, target=target, payload=operation, size=len(body) + 1)]

    # --- deliver ---------------------------------------------------------------------------------

    async def deliver(self, target: Hashable, items: Sequence[Work]) -> BatchOutcome:
        assert isinstance(target, Target)
        now = self.clock()
        if self.rate_limits is not None:
            metrics.RATE_LIMIT.labels(target.site_id).set(self.rate_limits.for_target(target).rate)
        paused_for = self.pauses.wait(target, now)
        if paused_for is not None:
            return Retry("workspace_paused", retry_after=paused_for, counts_attempt=False)
        outcomes: list[ItemOutcome | None] = [None] * len(items)
        sending: list[int] = []
        for index, work in enumerate(items):
            operation: Operation = work.payload
            if operation.snapshot is not None:
                decision = self.coalescer.decide(operation.delivery.person_key, operation.snapshot, now)
                if decision is SUPERSEDED:
                    metrics.COALESCED.inc()
                    outcomes[index] = DELIVERED
                    continue
                if isinstance(decision, Wait):
                    outcomes[index] = Retry("snapshot_interval", retry_after=decision.seconds,
                                            counts_attempt=False)
                    continue
            sending.append(index)
        if not sending:
            return [outcome for outcome in outcomes if outcome is not None]
        workspace = await self._workspace(target, [items[i] for i in sending])
        if workspace is None:
            return Retry("no_credentials", retry_after=self.pauses.probe_interval, counts_attempt=False)
        sent = [items[i] for i in sending]
        answers = await self._send(target, workspace, sent)
        if isinstance(answers, Retry | SplitBatch):
            return answers
        for index, outcome in zip(sending, answers, strict=True):
            outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    async def _workspace(self, target: Target, items: Sequence[Work]) -> Workspace | None:
        """The credentials to send with, as Postgres has them now (cached for the brand TTL)."""
        brand = await self.directory.delivery_for(items[0].payload.delivery.brand_id)
        return brand.workspace

    async def _send(self, target: Target, workspace: Workspace,
                    items: Sequence[Work]) -> list[ItemOutcome] | Retry | SplitBatch:
        if self.api == "v1":
            results: list[ItemOutcome] = []
            for work in items:
                answer = await self.transport.send_call(workspace, work.payload.delivery.v1_call)
                metrics.REQUESTS.labels("v1", str(answer.status or answer.reason)).inc()
                refused = self._after_answer(target, [work], answer)
                if refused is not None:
                    return refused
                results.append(self._item_outcome(work, answer))
            return results
        body = b'{"batch":[' + b",".join(work.payload.body for work in items) + b"]}"
        metrics.BATCH_SIZE.observe(len(items))
        answer = await self.transport.send_batch(workspace, body)
        metrics.REQUESTS.labels("v2", str(answer.status or answer.reason)).inc()
        refused = self._after_answer(target, items, answer)
        if refused is not None:
            return refused
        if answer.status is not None and not answer.accepted and not answer.retryable:
            # Customer.io refused the request as a whole (400 malformed, 413, ...): the runtime bisects
            # it until the offending items are found; only those are dead-lettered.
            metrics.FAILED.labels(str(answer.status)).inc(len(items))
            return SplitBatch(f"rejected_{answer.status}", answer.reason)
        return [self._item_outcome(work, answer, index) for index, work in enumerate(items)]

    def _after_answer(self, target: Target, items: Sequence[Work], answer: Answer) -> Retry | None:
        """401/403 pause the target workspace (nothing is dead-lettered); any other answer resumes it.

        The pause is kept by the items' target even when the credentials re-read from Postgres now
        name another workspace, so the probe that works is the one that resumes them."""
        if answer.status in AUTH_REFUSED:
            metrics.FAILED.labels(str(answer.status)).inc(len(items))
            if self.pauses.refused(target, self.clock()):
                metrics.WORKSPACE_PAUSED.labels(target.site_id).set(1)
                log.error("Customer.io refused the workspace's credentials: its deliveries are paused "
                          "until they work again (brand credentials are re-read from Postgres)",
                          workspace=target.site_id, status=answer.status,
                          probe_every=self.pauses.probe_interval)
            self.directory.forget({work.payload.delivery.brand_id for work in items})
            return Retry(f"unauthorized_{answer.status}", retry_after=self.pauses.probe_interval,
                         counts_attempt=False)
        if self.pauses.answered(target):
            metrics.WORKSPACE_PAUSED.labels(target.site_id).set(0)
            log.warning("Customer.io accepts the workspace's credentials again: deliveries resumed",
                        workspace=target.site_id)
        return None

    def _item_outcome(self, work: Work, answer: Answer, index: int | None = None) -> ItemOutcome:
        operation: Operation = work.payload
        if answer.accepted:
            if index is not None and index in answer.item_errors:
                metrics.FAILED.labels("invalid_item").inc()
                return Failed("invalid_item", answer.item_errors[index])
            self._delivered(operation)
            return DELIVERED
        reason = answer.reason.split(":", 1)[0]
        metrics.FAILED.labels(reason).inc()
        if answer.retryable:
            metrics.RETRIED.inc()
            return Retry(reason, retry_after=answer.retry_after, throttled=answer.status == 429)
        return Failed(f"rejected_{reason}", answer.reason)

    def _delivered(self, operation: Operation) -> None:
        metrics.DELIVERED.labels(operation.delivery.kind).inc()
        if operation.snapshot is not None:
            self.coalescer.sent(operation.delivery.person_key, operation.snapshot, self.clock())
        if operation.received_at is not None:
            metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - operation.received_at))
