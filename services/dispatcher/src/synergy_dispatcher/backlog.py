"""The per-destination backlog's rules. Pure: claimed items and the senders' outcomes in, a plan out.

A destination that cannot take an item at once (a retryable failure, a refused key) gets a backlog
in Postgres; from then on every new item of that destination goes behind it until it drains, so a
user's items reach the destination in order and the consumer never waits for it. A drainer claims
the head items of each user, sends them with the same senders, and settles the round by this plan:

    delivered            -> delete
    failed (dead letter) -> dead letter, then delete
    retry                -> the user's head keeps its place: attempts + 1 and a next attempt per the
                            RetryPolicy (given up once both budgets are spent: dead letter, delete);
                            a retry that does not count (paused key) only moves the next attempt
    the user's later items after a retry -> released untouched, behind the head
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from synergy_streaming import Delivered, Failed, ItemOutcome, Retry
from synergy_streaming.retry import GiveUp, RetryPolicy


@dataclass(frozen=True)
class BacklogItem:
    seq: int
    user_key: str
    event_id: str
    payload: bytes  # the source record's value: the envelope
    attempts: int = 0
    first_attempt_at: float | None = None  # epoch seconds
    message_key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    source_topic: str = ""
    source_partition: int = 0
    source_offset: int = 0


@dataclass(frozen=True)
class Reschedule:
    seq: int
    attempts: int
    first_attempt_at: float
    next_attempt_at: float
    last_error: str


@dataclass(frozen=True)
class Letter:
    item: BacklogItem
    reason: str
    detail: str
    attempts: int
    first_attempt_at: float | None


@dataclass
class RoundPlan:
    delivered: list[int] = field(default_factory=list)  # seqs
    dead_letters: list[Letter] = field(default_factory=list)
    rescheduled: list[Reschedule] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # seqs, claim dropped, untouched

    @property
    def deleted(self) -> list[int]:
        return self.delivered + [letter.item.seq for letter in self.dead_letters]


def plan_round(items: Sequence[BacklogItem], outcomes: Sequence[ItemOutcome], policy: RetryPolicy,
               now: float) -> RoundPlan:
    """`items` in seq order (each user's a prefix of its backlog), one outcome each."""
    if len(items) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(items)} items")
    plan = RoundPlan()
    stopped: set[str] = set()  # users whose head is waiting: the rest of their items stay as they are
    for item, outcome in zip(items, outcomes, strict=True):
        if item.user_key in stopped:
            plan.released.append(item.seq)
        elif isinstance(outcome, Delivered):
            plan.delivered.append(item.seq)
        elif isinstance(outcome, Failed):
            plan.dead_letters.append(Letter(item, outcome.reason, outcome.detail, item.attempts + 1,
                                            item.first_attempt_at or now))
        else:
            stopped.add(item.user_key)
            _retry(plan, item, outcome, policy, now)
    return plan


def _retry(plan: RoundPlan, item: BacklogItem, outcome: Retry, policy: RetryPolicy, now: float) -> None:
    first = item.first_attempt_at if item.first_attempt_at is not None else now
    if not outcome.counts_attempt:
        delay = outcome.retry_after if outcome.retry_after is not None else policy.backoff(1)
        plan.rescheduled.append(Reschedule(item.seq, item.attempts, first, now + delay, outcome.reason))
        return
    attempts = item.attempts + 1
    decision = policy.after_failure(attempts, first, now, outcome.retry_after, outcome.reason)
    if isinstance(decision, GiveUp):
        plan.dead_letters.append(Letter(item, decision.reason, outcome.reason, attempts, first))
        return
    plan.rescheduled.append(Reschedule(item.seq, attempts, first, decision.at, outcome.reason))


def first_schedule(outcome: ItemOutcome | None, attempts: int, first_attempt_at: float | None,
                   policy: RetryPolicy, now: float) -> tuple[int, float | None, float]:
    """(attempts, first attempt, next attempt) of an item entering the backlog from the live path:
    after a failed live attempt (`outcome` its Retry), or untried behind the backlog (`outcome` None)."""
    if not isinstance(outcome, Retry):
        return 0, None, now
    first = first_attempt_at if first_attempt_at is not None else now
    if not outcome.counts_attempt:
        delay = outcome.retry_after if outcome.retry_after is not None else policy.backoff(1)
        return max(0, attempts - 1), first, now + delay
    delay = policy.backoff(attempts)
    if outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    return attempts, first, now + delay

