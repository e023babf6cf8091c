"""What to do after a failed delivery: retry when, or dead-letter. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def is_retryable_status(status: int) -> bool:
    """429, 408 and 5xx are worth retrying; any other 4xx will fail the same way again."""
    return status in RETRYABLE_STATUSES


@dataclass(frozen=True)
class RetryAt:
    at: float


@dataclass(frozen=True)
class DeadLetter:
    reason: str


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; dead-letter only once BOTH limits are passed."""

    max_attempts: int = 10
    max_window: float = 3 * 3600.0
    base: float = 0.5
    cap: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, attempts: int) -> float:
        return self.rng.uniform(0.0, min(self.cap, self.base * 2 ** max(0, attempts - 1)))

    def after_failure(
        self, attempts: int, first_attempt_at: float, now: float, retry_after: float | None, reason: str
    ) -> RetryAt | DeadLetter:
        """`attempts` counts the failed attempt just made."""
        if attempts >= self.max_attempts and now - first_attempt_at >= self.max_window:
            return DeadLetter(f"retries_exhausted:{reason}")
        delay = self.backoff(attempts)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return RetryAt(now + delay)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is treated as absent)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
