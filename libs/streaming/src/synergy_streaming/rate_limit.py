"""Requests per second to one target, shared by every replica by partition share. Pure state.

Each replica takes `share` of the fleet budget (its partitions over all partitions, recomputed on
every rebalance). The rate adapts additively-increase / multiplicatively-decrease: a 429 halves it
and pauses sending for the Retry-After, then it climbs back to the ceiling.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

# Network jitter can bunch requests that left evenly spaced; aim a little under the budget so
# the receiving side never counts more than the budget in any one-second window.
JITTER_HEADROOM = 0.95


@dataclass
class AdaptiveRateLimit:
    fleet_limit: float
    minimum: float = 1.0
    decrease_factor: float = 0.5
    recovery_seconds: float = 10.0  # from minimum to the ceiling, when nothing is throttled
    # 429s answered together are one sign of congestion: the rate is cut once per this many seconds.
    decrease_cooldown: float = 1.0
    share: float = 1.0
    rate: float = field(init=False)
    _next_slot: float = field(default=0.0, init=False)
    _paused_until: float = field(default=0.0, init=False)
    _updated_at: float | None = field(default=None, init=False)
    _decreased_at: float | None = field(default=None, init=False)
    _sent: deque[float] = field(default_factory=deque, init=False)

    def __post_init__(self) -> None:
        self.rate = self.ceiling

    @property
    def ceiling(self) -> float:
        return max(self.minimum * 0.01, self.fleet_limit * self.share * JITTER_HEADROOM)

    def set_share(self, share: float) -> None:
        """This replica's fraction of the target's budget (assigned partitions / all partitions)."""
        self.share = min(1.0, max(0.0, share))
        self.rate = min(self.rate, self.ceiling) if self._updated_at is not None else self.ceiling

    def _recover(self, now: float) -> None:
        if self._updated_at is not None and now > self._paused_until:
            step = (self.ceiling / self.recovery_seconds) * (now - max(self._updated_at, self._paused_until))
            self.rate = min(self.ceiling, self.rate + max(0.0, step))
        self._updated_at = now

    def reserve(self, now: float) -> float:
        """Book the next request; returns when it may be sent (>= now)."""
        self._recover(now)
        slot = max(now, self._next_slot, self._paused_until)
        self._next_slot = slot + 1.0 / self.rate
        return slot

    def window_wait(self, now: float) -> float:
        """Seconds to wait so that no one-second window holds more sends than the ceiling.

        Slots keep requests evenly spaced; this also stops a burst when a stalled event loop
        wakes several waiting senders at once.
        """
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        if len(self._sent) < max(1, int(self.ceiling)):
            return 0.0
        return self._sent[0] + 1.0 - now

    def sent(self, now: float) -> None:
        self._sent.append(now)

    def throttled(self, now: float, retry_after: float | None) -> None:
        """The target answered 429: slow down, and wait out its Retry-After."""
        self._recover(now)
        if self._decreased_at is None or now - self._decreased_at >= self.decrease_cooldown:
            # Requests already in flight when the first 429 came back answer 429 too: cutting the
            # rate for each of them would take it to the floor, and the slots they book with it
            # would stall the target long after it recovered.
            self.rate = max(min(self.minimum, self.ceiling), self.rate * self.decrease_factor)
            self._decreased_at = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
            self._next_slot = max(self._next_slot, self._paused_until)


@dataclass
class RateLimits:
    """One adaptive limit per target, all scaled by this replica's partition share."""

    fleet_limit: float
    minimum: float = 1.0
    _limits: dict[Hashable, AdaptiveRateLimit] = field(default_factory=dict)
    _share: float = 1.0

    def for_target(self, target: Hashable) -> AdaptiveRateLimit:
        limit = self._limits.get(target)
        if limit is None:
            limit = AdaptiveRateLimit(self.fleet_limit, self.minimum, share=self._share)
            self._limits[target] = limit
        return limit

    def set_share(self, share: float) -> None:
        self._share = share
        for limit in self._limits.values():
            limit.set_share(share)

    @property
    def share(self) -> float:
        return self._share
