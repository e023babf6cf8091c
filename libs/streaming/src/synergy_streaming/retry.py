"""When to try again: exponential backoff with full jitter, as one policy object. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RETRYABLE_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


def is_retryable_status(status: int) -> bool:
    """429, 408 and 5xx are worth retrying; any other 4xx will fail the same way again."""
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is treated as absent)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryAt:
    at: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass
class RetryPolicy:
    """Backoff `uniform(0, min(cap, base * 2**(attempts-1)))`, at least the target's Retry-After.

    An item is given up only once BOTH budgets are spent: `max_attempts` attempts and `max_window`
    seconds since its first attempt, so a short burst of failures never dead-letters anything, and
    neither does a slow trickle of them over a long outage.
    """

    max_attempts: int = 10
    max_window: float = 3 * 3600.0
    base: float = 0.5
    cap: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, attempts: int) -> float:
        return self.rng.uniform(0.0, min(self.cap, self.base * 2 ** max(0, attempts - 1)))

    def after_failure(
        self, attempts: int, first_attempt_at: float, now: float, retry_after: float | None, reason: str
    ) -> RetryAt | GiveUp:
        """`attempts` counts the failed attempt just made."""
        if attempts >= self.max_attempts and now - first_attempt_at >= self.max_window:
            return GiveUp(f"retries_exhausted:{reason}")
        delay = self.backoff(attempts)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return RetryAt(now + delay)

    def forever(self) -> RetryPolicy:
        """The same backoff, never giving up (for writes that must land: dead letters, state)."""
        return RetryPolicy(10**9, float("inf"), self.base, self.cap, self.rng)
