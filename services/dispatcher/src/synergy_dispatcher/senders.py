"""HTTP to the destinations: one webhook POST per event, PostHog `/batch/` per batch.

Each sender answers the runtime's outcomes, one per work item, in order. Within a batch a key's items
(one user's, for one destination) go out one after another; different keys go out concurrently, up
to the destination's concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from synergy_streaming import DELIVERED, Delivered, Failed, ItemOutcome, Retry, Work

from synergy_dispatcher import metrics
from synergy_dispatcher.decisions import Decision, Verdict, posthog_decision, webhook_decision
from synergy_dispatcher.mapping import posthog_batch_body, posthog_request_chunks
from synergy_dispatcher.model import Destination
from synergy_dispatcher.signing import secret_key, webhook_headers


@dataclass(frozen=True)
class WebhookMessage:
    event_id: str
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes


WEBHOOK_SECONDS = metrics.REQUEST_SECONDS.labels("webhook")
POSTHOG_SECONDS = metrics.REQUEST_SECONDS.labels("posthog")

StateChange = Callable[[Destination, Decision], Awaitable[None]]


# aiohttp rather than httpx: httpx's connection pool tops out near 200 requests/s on a busy 2-core
# machine, far below the 2,000 webhooks/s wanted here.
HttpClient = aiohttp.ClientSession
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


def http_client(max_connections: int = 512) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=60),
        headers={"user-agent": "synergy-dispatcher/0.1"}, auto_decompress=True)


async def post(client: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes,
               timeout: float) -> Answer:
    async with client.post(url, data=body, headers=headers, allow_redirects=False,
                           timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        content = await response.content.read(2048)
        return Answer(response.status, response.headers.get("retry-after"), content)


def outcome_of(decision: Decision, paused_retry: float) -> ItemOutcome:
    if decision.verdict is Verdict.DELIVERED:
        return DELIVERED
    if decision.verdict in (Verdict.DEAD_LETTER, Verdict.DISABLE, Verdict.SPLIT):
        return Failed(decision.reason, decision.detail)
    if decision.verdict is Verdict.PAUSE:
        return Retry(decision.reason, retry_after=paused_retry, counts_attempt=False)
    return Retry(decision.reason, retry_after=decision.retry_after, throttled=decision.throttled)


def connection_decision(exc: BaseException) -> Decision:
    kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
    return Decision(Verdict.RETRY, f"{kind}_error", f"{type(exc).__name__}: {exc}"[:300])


def runs_of(items: Sequence[Work]) -> list[list[int]]:
    """Indexes of the batch's items, grouped by key, in order (the runtime packs a key's run together)."""
    by_key: dict[str, list[int]] = {}
    for index, work in enumerate(items):
        by_key.setdefault(work.key, []).append(index)
    return list(by_key.values())


class WebhookSender:
    def __init__(self, client: HttpClient, timeout: float, concurrency: int, paused_retry: float,
                 on_state_change: StateChange, clock: Callable[[], float] = time.time) -> None:
        self.client, self.timeout, self.concurrency = client, timeout, concurrency
        self.paused_retry, self.on_state_change, self.clock = paused_retry, on_state_change, clock
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._keys: dict[tuple[str, ...], list[bytes]] = {}

    def _signing_keys(self, destination: Destination) -> list[bytes]:
        secrets = tuple(destination.webhook_secrets)
        keys = self._keys.get(secrets)
        if keys is None:
            keys = self._keys[secrets] = [secret_key(s) for s in secrets]
        return keys

    async def send_one(self, destination: Destination, message: WebhookMessage) -> Decision:
        """Signed afresh on every attempt: the timestamp is the attempt's, as receivers check its age."""
        headers = webhook_headers(self._signing_keys(destination), message.event_id, int(self.clock()),
                                  message.body)
        started = time.perf_counter()
        try:
            answer = await post(self.client, destination.url, headers, message.body, self.timeout)
        except TRANSPORT_ERRORS as exc:
            return connection_decision(exc)
        finally:
            WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        return webhook_decision(answer.status, answer.retry_after, answer.body)

    async def deliver(self, destination: Destination, items: Sequence[Work]) -> list[ItemOutcome]:
        outcomes: list[ItemOutcome | None] = [None] * len(items)
        slots = self._slots.setdefault(destination.id, asyncio.Semaphore(self.concurrency))
        disabled: list[Decision] = []

        async def send_run(indexes: list[int]) -> None:
            for position, index in enumerate(indexes):
                if disabled:
                    outcomes[index] = Failed("destination_disabled", disabled[0].detail,
                                             counts_for_brake=False)
                    continue
                async with slots:
                    decision = await self.send_one(destination, items[index].payload)
                if decision.verdict is Verdict.DISABLE and not disabled:
                    disabled.append(decision)
                    await self.on_state_change(destination, decision)
                outcome = outcome_of(decision, self.paused_retry)
                outcomes[index] = outcome
                if isinstance(outcome, Retry):  # the key waits; its later items are not sent
                    for later in indexes[position + 1:]:
                        outcomes[later] = outcome
                    return

        await asyncio.gather(*(send_run(run) for run in runs_of(items)))
        return [o if o is not None else Retry("not_sent") for o in outcomes]


class PostHogSender:
    def __init__(self, client: HttpClient, timeout: float, max_event_bytes: int,
                 max_request_bytes: int, paused_retry: float, on_state_change: StateChange) -> None:
        self.client, self.timeout = client, timeout
        self.max_event_bytes, self.max_request_bytes = max_event_bytes, max_request_bytes
        self.paused_retry, self.on_state_change = paused_retry, on_state_change

    async def send_batch(self, destination: Destination, payloads: list[bytes]) -> Decision:
        body = posthog_batch_body(destination.api_key, payloads)
        started = time.perf_counter()
        try:
            answer = await post(self.client, destination.posthog_host + "/batch/",
                                {"content-type": "application/json"}, body, self.timeout)
        except TRANSPORT_ERRORS as exc:
            return connection_decision(exc)
        finally:
            POSTHOG_SECONDS.observe(time.perf_counter() - started)
        return posthog_decision(answer.status, answer.retry_after, answer.body, len(payloads))

    async def deliver(self, destination: Destination, items: Sequence[Work]) -> list[ItemOutcome]:
        outcomes: list[ItemOutcome | None] = [None] * len(items)
        held: dict[str, ItemOutcome] = {}  # keys with an item to retry: their later items wait
        sendable = []
        for index, work in enumerate(items):
            if work.size > self.max_event_bytes:
                outcomes[index] = Failed("posthog_event_too_large",
                                         f"{work.size} bytes; PostHog takes at most {self.max_event_bytes}")
            else:
                sendable.append(index)
        chunks = posthog_request_chunks([items[i].payload for i in sendable], self.max_request_bytes)
        for chunk in chunks:
            await self._send(destination, items, [sendable[j] for j in chunk], outcomes, held)
        return [o if o is not None else Retry("not_sent") for o in outcomes]

    async def _send(self, destination: Destination, items: Sequence[Work], indexes: list[int],
                    outcomes: list[ItemOutcome | None], held: dict[str, ItemOutcome]) -> None:
        """One request; a 400/413 for the whole request is bisected down to the offending items."""
        ready = []
        for index in indexes:
            if items[index].key in held:
                outcomes[index] = held[items[index].key]
            else:
                ready.append(index)
        if not ready:
            return
        decision = await self.send_batch(destination, [items[i].payload for i in ready])
        if decision.verdict is Verdict.SPLIT:
            middle = len(ready) // 2
            await self._send(destination, items, ready[:middle], outcomes, held)
            await self._send(destination, items, ready[middle:], outcomes, held)
            return
        await self.on_state_change(destination, decision)
        outcome = outcome_of(decision, self.paused_retry)
        for index in ready:
            outcomes[index] = outcome
            if isinstance(outcome, Retry):
                held.setdefault(items[index].key, outcome)


def is_delivered(outcome: Any) -> bool:
    return isinstance(outcome, Delivered)
