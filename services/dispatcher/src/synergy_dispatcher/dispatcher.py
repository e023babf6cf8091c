"""The dispatcher on the consumer runtime: each event fans out to one work item per destination.

    prepare: envelope -> [Work(key="destination:brand:user", target=destination id)] for the brand's
             destinations and the deployment's
    deliver: one batch of one destination -> webhook POSTs or a PostHog /batch/; what the destination
             cannot take at once (and, from then on, everything of that destination until it drains)
             goes to its backlog in Postgres, and counts as settled once written there
    drain:   one task per backlogged destination delivers from the backlog (drainer.Backlogs)

The destinations are reloaded from Postgres every few seconds; a destination's state changes (410
disables, a refused PostHog key pauses, a success resumes) are written back at once. Counts and
each destination's lag go to Postgres (for `synergy destinations list` and the status route) and
to /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import asyncpg
import structlog
from synergy_common.brands import CredentialCipher
from synergy_streaming import (
    DELIVERED,
    DeadLetterWriter,
    Delivered,
    Failed,
    ItemOutcome,
    Retry,
    RetryPolicy,
    Skip,
    Source,
    StreamConfig,
    StreamProcessor,
    Work,
)
from synergy_streaming.dlq import REPLAY_DESTINATION, DeadLetter

from synergy_dispatcher import backlog_store, metrics, store
from synergy_dispatcher.backlog import RoundPlan, first_schedule
from synergy_dispatcher.backlog_store import BacklogRow
from synergy_dispatcher.decisions import Decision, Verdict
from synergy_dispatcher.drainer import Backlogs
from synergy_dispatcher.mapping import order_key, posthog_item_bytes, webhook_body
from synergy_dispatcher.model import Destination, State, destinations_for
from synergy_dispatcher.senders import HttpClient, PostHogSender, WebhookMessage, WebhookSender
from synergy_dispatcher.settings import DispatcherSettings

log = structlog.get_logger()

ENVIRONMENT_WEBHOOK = "deployment-webhook"
ENVIRONMENT_POSTHOG = "deployment-posthog"


def brand_label(destination: Destination) -> str:
    return destination.brand_id if destination.brand_id is not None else "deployment"


class Registry:
    """The destinations in memory, as last loaded; state changes apply here and in Postgres."""

    def __init__(self, pool: asyncpg.Pool, cipher: CredentialCipher, settings: DispatcherSettings) -> None:
        self.pool, self.cipher, self.settings = pool, cipher, settings
        self.by_id: dict[str, Destination] = {}
        self._by_brand: dict[str, list[Destination]] = {}
        self.environment_secrets: dict[str, dict[str, Any]] = {}

    async def register_environment(self) -> None:
        s = self.settings
        if s.domain_event_webhook_url:
            await store.upsert_environment_destination(self.pool, ENVIRONMENT_WEBHOOK, "webhook",
                                                       {"url": s.domain_event_webhook_url})
            secrets = [s.domain_event_webhook_secret] if s.domain_event_webhook_secret else []
            if not secrets:
                log.warning("DOMAIN_EVENT_WEBHOOK_SECRET is not set: the deployment's webhook goes unsigned")
            self.environment_secrets[ENVIRONMENT_WEBHOOK] = {"signing_secrets": secrets}
        if s.posthog_project_api_key:
            await store.upsert_environment_destination(self.pool, ENVIRONMENT_POSTHOG, "posthog",
                                                       {"host": s.posthog_host})
            self.environment_secrets[ENVIRONMENT_POSTHOG] = {"api_key": s.posthog_project_api_key}

    async def reload(self) -> None:
        loaded = await store.load_destinations(self.pool, self.cipher, self.environment_secrets)
        self.by_id = {d.id: d for d in loaded}
        self._by_brand = {}
        for d in loaded:
            metrics.DESTINATION_DISABLED.labels(brand_label(d), d.label).set(int(d.state == "disabled"))
            metrics.DESTINATION_PAUSED.labels(brand_label(d), d.label).set(int(d.state == "paused"))

    def get(self, destination_id: str) -> Destination | None:
        return self.by_id.get(destination_id)

    def for_brand(self, brand_id: str) -> list[Destination]:
        cached = self._by_brand.get(brand_id)
        if cached is None:
            cached = self._by_brand[brand_id] = destinations_for(brand_id, self.by_id.values())
        return cached

    async def change_state(self, destination: Destination, state: State, reason: str | None,
                           only_from: Sequence[str] | None = None) -> None:
        current = self.by_id.get(destination.id, destination)
        if current.state == state or (only_from is not None and current.state not in only_from):
            return
        self.by_id[destination.id] = Destination(
            current.id, current.brand_id, current.name, current.type, current.settings, current.secrets,
            state, reason)
        self._by_brand = {}
        labels = (brand_label(current), current.label)
        metrics.DESTINATION_DISABLED.labels(*labels).set(int(state == "disabled"))
        metrics.DESTINATION_PAUSED.labels(brand_label(current), current.label).set(int(state == "paused"))
        await store.set_state(self.pool, destination.id, state, reason, only_from)
        level = log.info if state == "active" else log.error
        level("destination state changed", destination=current.label, brand_id=current.brand_id,
              state=state, reason=reason)


class DeliveryStats:
    """Per destination: counts not yet written to Postgres, and the offsets still pending (its lag)."""

    def __init__(self) -> None:
        self.deltas: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.pending: dict[str, dict[tuple[str, int], set[int]]] = defaultdict(lambda: defaultdict(set))

    def consumed(self, destination_id: str, topic: str, partition: int, offset: int) -> None:
        self.pending[destination_id][(topic, partition)].add(offset)

    def settled(self, destination_id: str, work: Work) -> None:
        if work.source is not None:
            record = work.source.record
            self.pending[destination_id][(record.partition.topic, record.partition.partition)].discard(
                record.offset)

    def prune(self, committed: dict[tuple[str, int], int], assigned: set[tuple[str, int]]) -> None:
        """Forget offsets the consumer has committed past (settled some way), or no longer owns."""
        for partitions in self.pending.values():
            for tp in list(partitions):
                if tp not in assigned:
                    del partitions[tp]
                    continue
                below = committed.get(tp)
                if below is not None:
                    partitions[tp] = {o for o in partitions[tp] if o >= below}

    def lag(self, destination_id: str) -> int:
        return sum(len(offsets) for offsets in self.pending.get(destination_id, {}).values())

    def take_deltas(self) -> dict[str, tuple[int, int, int]]:
        taken = {d: (c[0], c[1], c[2]) for d, c in self.deltas.items() if any(c)}
        self.deltas.clear()
        return taken


BACKLOG_UNAVAILABLE_RETRY = 2.0  # seconds between attempts to write a backlog while Postgres is away


class Dispatcher:
    def __init__(self, settings: DispatcherSettings, pool: asyncpg.Pool, registry: Registry,
                 client: HttpClient, retry: RetryPolicy | None = None,
                 dead_letters: DeadLetterWriter | None = None) -> None:
        self.settings, self.pool, self.registry = settings, pool, registry
        self.retry = retry or RetryPolicy()
        self.stats = DeliveryStats()
        per_user = settings.dispatcher_backlog_per_user
        self.backlogs = Backlogs(
            pool, settings.replica, self.retry, registry.get, self._send, dead_letters, self.destination_of,
            self._drained_round,
            lease_seconds=settings.seconds("dispatcher_backlog_lease"),
            max_users=settings.dispatcher_backlog_users, per_user=per_user,
            max_items=settings.dispatcher_posthog_batch_items)
        self.depths: dict[str, backlog_store.Depth] = {}
        paused_retry = settings.seconds("dispatcher_paused_retry")
        self.webhooks = WebhookSender(client, settings.seconds("dispatcher_webhook_timeout"),
                                      settings.dispatcher_webhook_concurrency, paused_retry,
                                      self._state_change)
        self.posthog = PostHogSender(client, settings.seconds("dispatcher_posthog_timeout"),
                                     settings.dispatcher_posthog_max_event_bytes,
                                     settings.dispatcher_posthog_max_request_bytes, paused_retry,
                                     self._state_change)
        self.processor: StreamProcessor | None = None

    def stream_config(self) -> StreamConfig:
        s = self.settings
        return StreamConfig(
            service="dispatcher", topics=s.topic_names, max_buffered=s.dispatcher_max_buffered,
            max_batch_items=s.dispatcher_posthog_batch_items,
            # A batch of one PostHog destination is one request: its items' bytes stay under 5 MB.
            max_batch_bytes=s.dispatcher_posthog_max_request_bytes - 1024,
            max_in_flight=s.dispatcher_max_in_flight, read_ahead=s.dispatcher_read_ahead, max_batch_wait=0.05)

    # --- prepare: which destinations get the event --------------------------------------------

    def prepare(self, source: Source) -> list[Work] | Skip:
        envelope = source.payload
        destinations = self.registry.for_brand(str(envelope["brand_id"]))
        replay_for = source.record.header(REPLAY_DESTINATION)
        if replay_for:
            destinations = [d for d in destinations if d.label == replay_for.decode(errors="replace")]
        if not destinations:
            return Skip("no_destination")
        record = source.record
        works = []
        webhook: WebhookMessage | None = None
        posthog: bytes | None = None
        for destination in destinations:
            if destination.type == "webhook":
                webhook = webhook or WebhookMessage(str(envelope["event_id"]), webhook_body(envelope))
                works.append(Work(order_key(destination.id, envelope), destination.id, webhook,
                                  len(webhook.body)))
            else:
                posthog = posthog or posthog_item_bytes(envelope)
                works.append(Work(order_key(destination.id, envelope), destination.id, posthog, len(posthog)))
            self.stats.consumed(destination.id, record.partition.topic, record.partition.partition,
                                record.offset)
        return works

    # --- deliver: one batch for one destination ------------------------------------------------

    async def deliver(self, target: Hashable, items: Sequence[Work]) -> list[ItemOutcome]:
        destination_id = str(target)
        destination = self.registry.get(destination_id)
        live = destination is not None and destination.state != "disabled"
        if live and self.backlogs.holds(destination_id):
            return await self._to_backlog(destination_id, items, None)
        outcomes = await self._send(destination_id, destination, items)
        self._count(destination_id, destination, items, outcomes)
        if live and any(type(o) is Retry for o in outcomes):
            return await self._to_backlog(destination_id, items, outcomes)
        return outcomes

    async def _send(self, destination_id: str, destination: Destination | None,
                    items: Sequence[Work]) -> list[ItemOutcome]:
        """The same senders for the live path and the drainers."""
        if destination is None or destination.state == "disabled":
            reason = destination.disabled_reason if destination else "the destination was removed"
            disabled = Failed("destination_disabled", reason or "", counts_for_brake=False)
            return [disabled] * len(items)
        if destination.type == "webhook":
            return await self.webhooks.deliver(destination, items)
        return await self.posthog.deliver(destination, items)

    async def _to_backlog(self, destination_id: str, items: Sequence[Work],
                          outcomes: list[ItemOutcome] | None) -> list[ItemOutcome]:
        """Items behind the destination's backlog (`outcomes` None), or those it just failed to take:
        written, then settled, so the consumer never waits for this destination. Postgres away: the
        items stay unsettled and the runtime tries them again (never dead-letters them for it)."""
        now = time.time()
        moved: list[int] = []
        rows: list[BacklogRow] = []
        tried: set[str] = set()
        for index, work in enumerate(items):
            outcome = outcomes[index] if outcomes is not None else None
            if outcomes is not None and type(outcome) is not Retry:
                continue
            source = work.source
            if source is None:
                continue
            # A user's later items after the failed one were not tried: they carry no attempt.
            attempted = outcome if work.key not in tried else None
            tried.add(work.key)
            # The runtime counts an attempt once it has failed: this one is not in `work.attempts` yet.
            attempts, first, next_at = first_schedule(attempted, work.attempts + 1, work.first_attempt_wall,
                                                      self.retry, now)
            record = source.record
            # The runtime keeps the decoded envelope on the source until it settles (no second parse).
            rows.append(BacklogRow(
                destination_id, work.key, str(source.payload["event_id"]), record.value, record.key,
                record.headers, record.partition.topic, record.partition.partition, record.offset,
                attempts, first, next_at, outcome.reason if isinstance(outcome, Retry) else None))
            moved.append(index)
        answered: list[ItemOutcome] = (list(outcomes) if outcomes is not None
                                       else [Retry("not_written", counts_attempt=False)] * len(items))
        try:
            await self.backlogs.write(destination_id, rows)
        except Exception as exc:
            log.warning("backlog not written; the items stay unsettled and are tried again",
                        destination=self.destination_of(destination_id), items=len(rows), error=repr(exc))
            if outcomes is not None:
                return outcomes
            return [Retry("backlog_unavailable", retry_after=BACKLOG_UNAVAILABLE_RETRY,
                          counts_attempt=False)] * len(items)
        for index in moved:
            answered[index] = DELIVERED
            self.stats.settled(destination_id, items[index])
        return answered

    def _drained_round(self, destination_id: str, destination: Destination | None, plan: RoundPlan) -> None:
        deltas = self.stats.deltas[destination_id]
        failed = len(plan.rescheduled) + len(plan.dead_letters)
        deltas[0] += len(plan.delivered)
        deltas[1] += failed
        deltas[2] += len(plan.dead_letters)
        if destination is not None:
            labels = (destination.type, brand_label(destination), destination.label)
            if plan.delivered:
                metrics.DELIVERED.labels(*labels).inc(len(plan.delivered))
            if failed:
                metrics.FAILED.labels(*labels).inc(failed)
            if plan.dead_letters:
                metrics.DEAD_LETTERED.labels(*labels).inc(len(plan.dead_letters))

    async def adopt_backlogs(self) -> None:
        """Drain the backlogs already in Postgres (a restart, another replica's): their destinations'
        new items go behind them."""
        self.depths = dict(await backlog_store.depths(self.pool))
        self.backlogs.adopt(d for d in self.depths if d in self.registry.by_id)

    def _count(self, destination_id: str, destination: Destination | None, items: Sequence[Work],
               outcomes: Sequence[ItemOutcome]) -> None:
        delivered = sum(1 for o in outcomes if isinstance(o, Delivered))
        failed = len(outcomes) - delivered
        deltas = self.stats.deltas[destination_id]
        deltas[0] += delivered
        deltas[1] += failed
        for work, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                self.stats.settled(destination_id, work)
        if destination is not None:
            labels = (destination.type, brand_label(destination), destination.label)
            if delivered:
                metrics.DELIVERED.labels(*labels).inc(delivered)
            if failed:
                metrics.FAILED.labels(*labels).inc(failed)

    def destination_of(self, target: Hashable) -> str:
        """The dead letter's destination."""
        destination = self.registry.get(str(target))
        return destination.label if destination is not None else f"destination:{target}"

    def dead_lettered(self, work: Work | None, letter: DeadLetter) -> None:
        """Counted once the letter is durable (the runtime's hook); records that never became work
        (undecodable) belong to no destination."""
        if work is None:
            return
        self.stats.deltas[str(work.target)][2] += 1
        destination = self.registry.get(str(work.target))
        if destination is not None:
            metrics.DEAD_LETTERED.labels(destination.type, brand_label(destination), destination.label).inc()

    async def _state_change(self, destination: Destination, decision: Decision) -> None:
        if decision.verdict is Verdict.DISABLE:
            await self.registry.change_state(destination, "disabled", decision.detail)
        elif decision.verdict is Verdict.PAUSE:
            await self.registry.change_state(destination, "paused", decision.detail, only_from=("active",))
        elif decision.verdict is Verdict.DELIVERED and self._state_of(destination) == "paused":
            await self.registry.change_state(destination, "active", None, only_from=("paused",))

    def _state_of(self, destination: Destination) -> str:
        current = self.registry.get(destination.id)
        return current.state if current else destination.state

    # --- status: counts and lag to Postgres and /metrics ---------------------------------------

    async def flush_status(self) -> None:
        processor = self.processor
        if processor is not None:
            tracker = processor.commits.tracker
            assigned = {(p.topic, p.partition) for p in processor.assigned}
            committed = {tp: c for tp in assigned if (c := tracker.last_committed(tp)) is not None}
            self.stats.prune(committed, assigned)
        deltas = self.stats.take_deltas()
        try:
            if deltas:
                known = {d: c for d, c in deltas.items() if d in self.registry.by_id}
                await store.add_counts(self.pool, known)
            lags = {d.id: self.stats.lag(d.id) for d in self.registry.by_id.values()}
            for d in self.registry.by_id.values():
                metrics.DESTINATION_LAG.labels(brand_label(d), d.label).set(lags[d.id])
            consumer_lag = sum(processor.lag.values()) if processor is not None else 0
            if lags:
                await store.record_lag(self.pool, self.settings.replica, lags, consumer_lag)
            await self.adopt_backlogs()
            for d in self.registry.by_id.values():
                depth = self.depths.get(d.id)
                metrics.BACKLOG_ITEMS.labels(brand_label(d), d.label).set(depth.items if depth else 0)
                metrics.BACKLOG_OLDEST_AGE.labels(brand_label(d), d.label).set(
                    depth.oldest_age_seconds if depth else 0)
        except Exception as exc:  # Postgres away, mostly: the loop goes on
            for d, c in deltas.items():  # keep the counts for the next flush
                for i in range(3):
                    self.stats.deltas[d][i] += c[i]
            log.warning("destination status not written; will retry", error=repr(exc))

    async def status_loop(self) -> None:
        reload_every = self.settings.seconds("dispatcher_reload_interval")
        status_every = self.settings.seconds("dispatcher_status_interval")
        loop = asyncio.get_running_loop()
        next_reload = loop.time() + reload_every
        while True:
            await asyncio.sleep(min(reload_every, status_every))
            if loop.time() >= next_reload:
                next_reload = loop.time() + reload_every
                try:
                    await self.registry.reload()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("destinations not reloaded; keeping the last ones", error=repr(exc))
            await self.flush_status()

    async def close(self) -> None:
        await self.backlogs.close(self.settings.seconds("dispatcher_webhook_timeout"))
        with contextlib.suppress(Exception):
            await self.flush_status()
