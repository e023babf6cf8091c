"""Each backlogged destination's drainer, and which destinations hold their new items back.

`Backlogs.holds(d)` is the live path's question: once a destination has a backlog here, its new
items are written behind it (never sent past it), and the consumer's offsets commit as soon as the
rows are in. One drainer task per backlogged destination delivers from Postgres with the same
senders and the same RetryPolicy and dead-letter rules; when the backlog is empty (and no write into
it is under way on this replica) the destination returns to the live path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

import asyncpg
import orjson
import structlog
from synergy_streaming import Failed, ItemOutcome, Work
from synergy_streaming.dlq import DeadLetter, DeadLetterWriter, epoch_to_datetime
from synergy_streaming.retry import RetryPolicy

from synergy_dispatcher import backlog_store
from synergy_dispatcher.backlog import BacklogItem, RoundPlan, plan_round
from synergy_dispatcher.backlog_store import BacklogRow
from synergy_dispatcher.mapping import posthog_item_bytes, webhook_body
from synergy_dispatcher.model import Destination
from synergy_dispatcher.senders import WebhookMessage

log = structlog.get_logger()

Lookup = Callable[[str], Destination | None]
Send = Callable[[str, Destination | None, Sequence[Work]], Awaitable[list[ItemOutcome]]]
RoundDone = Callable[[str, Destination | None, RoundPlan], None]
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
POSTGRES_RETRY = RetryPolicy(base=0.5, cap=10.0).forever()  # the drainer's own troubles, not a destination's


def work_of(destination: Destination | None, destination_id: str, item: BacklogItem) -> Work:
    """The item as the senders take it, mapped again from the stored envelope."""
    envelope = orjson.loads(item.payload)
    if destination is not None and destination.type == "webhook":
        message = WebhookMessage(item.event_id, webhook_body(envelope))
        return Work(item.user_key, destination_id, message, len(message.body))
    payload = posthog_item_bytes(envelope)
    return Work(item.user_key, destination_id, payload, len(payload))


class Backlogs:
    def __init__(self, pool: asyncpg.Pool, replica: str, policy: RetryPolicy, lookup: Lookup, send: Send,
                 dead_letters: DeadLetterWriter | None, label_of: Callable[[str], str],
                 on_round: RoundDone, *, lease_seconds: float, max_users: int = 256, per_user: int = 20,
                 max_items: int = 1000, idle_poll: float = 1.0) -> None:
        self.pool, self.replica, self.policy = pool, replica, policy
        self.lookup, self.send = lookup, send
        self.dead_letters, self.label_of, self.on_round = dead_letters, label_of, on_round
        self.lease_seconds, self.max_users, self.per_user = lease_seconds, max_users, per_user
        self.max_items, self.idle_poll = max_items, idle_poll
        self.held: set[str] = set()
        self.writing: Counter[str] = Counter()  # writes into the backlog under way
        self.written: Counter[str] = Counter()  # writes finished (either way)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.delivered = 0  # items this replica delivered from backlogs
        self._stopping = False

    def holds(self, destination_id: str) -> bool:
        return destination_id in self.held

    def hold(self, destination_id: str) -> None:
        """From now on the destination's new items go behind its backlog; its drainer runs."""
        self.held.add(destination_id)
        if destination_id not in self.tasks and not self._stopping:
            self.tasks[destination_id] = asyncio.create_task(self._drain(destination_id),
                                                             name=f"dispatcher-drain-{destination_id}")

    def adopt(self, destination_ids: Iterable[str]) -> None:
        """Destinations with rows (left by a restart, or written by another replica)."""
        for destination_id in destination_ids:
            self.hold(destination_id)

    async def write(self, destination_id: str, rows: Sequence[BacklogRow]) -> None:
        """Raises when Postgres is away: the caller keeps the items unsettled."""
        self.hold(destination_id)
        self.writing[destination_id] += 1
        try:
            await backlog_store.add(self.pool, rows)
        finally:
            self.writing[destination_id] -= 1
            self.written[destination_id] += 1

    async def close(self, grace: float = 10.0) -> None:
        """Let each drainer finish its round (what it sent gets settled), then hand the claims back."""
        self._stopping = True
        tasks = list(self.tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*DB_ERRORS):
            await backlog_store.release_claims(self.pool, self.replica)

    # --- the drainer -----------------------------------------------------------------------------

    async def _drain(self, destination_id: str) -> None:
        failures = 0
        try:
            while not self._stopping:
                if self.lookup(destination_id) is None:
                    # Not loaded (its secret unreadable, say): its rows wait for it; nothing is sent.
                    self.held.discard(destination_id)
                    return
                snapshot = self.written[destination_id]
                try:
                    items = await backlog_store.claim(self.pool, destination_id, self.replica,
                                                      self.lease_seconds, self.max_users, self.per_user,
                                                      self.max_items)
                    if not items:
                        left, due_in = await backlog_store.remaining(self.pool, destination_id)
                        if (left == 0 and self.writing[destination_id] == 0
                                and self.written[destination_id] == snapshot):
                            self.held.discard(destination_id)
                            log.info("backlog drained; the destination is back on the live path",
                                     destination=self.label_of(destination_id))
                            return
                        wait = self.idle_poll if due_in is None else due_in
                        await asyncio.sleep(min(self.idle_poll, max(0.02, wait)))
                        continue
                    await self._round(destination_id, items)
                    failures = 0
                except Exception as exc:  # Postgres away, mostly: the rows wait, nothing is lost
                    failures += 1
                    delay = POSTGRES_RETRY.backoff(failures)
                    log.warning("backlog drain failed; retrying", destination=self.label_of(destination_id),
                                error=repr(exc), retry_in=round(delay, 2))
                    await asyncio.sleep(delay)
        finally:
            self.tasks.pop(destination_id, None)

    async def _round(self, destination_id: str, items: list[BacklogItem]) -> None:
        destination = self.lookup(destination_id)
        outcomes: list[ItemOutcome | None] = [None] * len(items)
        works: list[Work] = []
        for index, item in enumerate(items):
            try:
                works.append(work_of(destination, destination_id, item))
            except Exception as exc:  # a row no sender can take must not wedge the destination
                outcomes[index] = Failed("backlog_unreadable", repr(exc)[:300])
        sent = iter(await self.send(destination_id, destination, works) if works else [])
        answered = [o if o is not None else next(sent) for o in outcomes]
        plan = plan_round(items, answered, self.policy, time.time())
        if plan.dead_letters and self.dead_letters is not None:
            await self.dead_letters.write_until_durable([
                self._letter(destination_id, letter.item, letter.reason, letter.detail, letter.attempts,
                             letter.first_attempt_at) for letter in plan.dead_letters])
        attempts = 0
        while True:  # what was sent must be settled, or it is sent again once the lease runs out
            try:
                await backlog_store.settle(self.pool, plan.deleted, plan.rescheduled, plan.released)
                break
            except DB_ERRORS as exc:
                attempts += 1
                delay = POSTGRES_RETRY.backoff(attempts)
                log.warning("backlog round not settled; retrying", error=repr(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self.delivered += len(plan.delivered)
        self.on_round(destination_id, destination, plan)

    def _letter(self, destination_id: str, item: BacklogItem, reason: str, detail: str, attempts: int,
                first_attempt_at: float | None) -> DeadLetter:
        envelope_brand = None
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            brand = orjson.loads(item.payload).get("brand_id")
            envelope_brand = str(brand) if brand is not None else None
        return DeadLetter(
            reason=reason, detail=detail, service="dispatcher", source_topic=item.source_topic,
            source_partition=item.source_partition, source_offset=item.source_offset, key=item.message_key,
            value=item.payload, headers=item.headers, attempts=attempts,
            first_attempt_at=epoch_to_datetime(first_attempt_at), destination=self.label_of(destination_id),
            brand_id=envelope_brand, event_id=item.event_id)
