"""Per-brand event quotas: a token bucket per brand. Pure: the clock is passed in.

Each ingest process holds its own buckets and enforces its share of the brand's quota (the quota
divided by the number of processes on the machine; see the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Quota:
    events_per_second: float
    burst: float

    def share(self, processes: int) -> Quota:
        return Quota(self.events_per_second / processes, max(1.0, self.burst / processes))


@dataclass
class TokenBucket:
    quota: Quota
    tokens: float
    updated_at: float

    def take(self, events: int, now: float) -> float:
        """Takes `events` tokens and answers 0, or leaves the bucket as it was and answers the seconds
        to wait. A request larger than the burst passes once the bucket is full, and the debt it
        leaves holds back the next ones, so the long-run rate is the quota either way."""
        refill = (now - self.updated_at) * self.quota.events_per_second
        self.tokens = min(self.quota.burst, self.tokens + refill)
        self.updated_at = now
        needed = min(float(events), self.quota.burst)
        if self.tokens >= needed:
            self.tokens -= events
            return 0.0
        return (needed - self.tokens) / self.quota.events_per_second


def quota_from_settings(brand_settings: dict[str, object], default: Quota | None) -> Quota | None:
    """The brand's own quota (`ingest_rate_limit_per_second`, `ingest_rate_limit_burst` in its settings),
    else the default. A brand limit of 0 turns the quota off for that brand."""
    rate = brand_settings.get("ingest_rate_limit_per_second")
    if rate is None:
        return default
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        return default
    if rate == 0:
        return None
    burst = brand_settings.get("ingest_rate_limit_burst")
    if isinstance(burst, bool) or not isinstance(burst, int | float) or burst <= 0:
        burst = default.burst if default else rate
    return Quota(float(rate), float(burst))


class QuotaBook:
    """The buckets of every brand seen by this process."""

    def __init__(self, processes: int = 1) -> None:
        self._processes = max(1, processes)
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, brand_id: str, quota: Quota | None, events: int, now: float) -> float:
        """0 when the events may pass, else the seconds after which they would."""
        if quota is None:
            return 0.0
        share = quota.share(self._processes)
        bucket = self._buckets.get(brand_id)
        if bucket is None or bucket.quota != share:
            bucket = TokenBucket(share, share.burst, now)
            self._buckets[brand_id] = bucket
        return bucket.take(events, now)


def retry_after_header(wait_seconds: float) -> str:
    return str(max(1, math.ceil(wait_seconds)))
