"""The DLQ brake (arroyo's DlqLimit): a misconfiguration must never flush a stream into the DLQ. Pure.

Each settled item records whether it was dead-lettered. When more than `max_share` of the last
`window` items, or `max_consecutive` in a row, would be dead-lettered, the brake engages: the runtime
stops dead-lettering, holds those items (their offsets stay uncommitted), pauses consumption, reports
not ready, and retries the held items every `retry_interval` seconds. The brake releases when a held item
succeeds on its retry (counting starts afresh); what still fails then is dead-lettered as usual.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DlqBrake:
    max_share: float = 0.5
    window: int = 100
    max_consecutive: int = 50
    retry_interval: float = 30.0
    engaged: bool = False
    _recent: deque[bool] = field(default_factory=deque)
    _dead_in_window: int = 0
    _consecutive: int = 0

    def _record(self, dead: bool) -> None:
        self._recent.append(dead)
        self._dead_in_window += dead
        if len(self._recent) > self.window:
            self._dead_in_window -= self._recent.popleft()
        self._consecutive = self._consecutive + 1 if dead else 0

    def _over_limit(self) -> bool:
        if self._consecutive >= self.max_consecutive:
            return True
        return len(self._recent) >= self.window and self._dead_in_window > self.max_share * self.window

    def succeeded(self, count: int = 1, was_held: bool = False) -> None:
        """`count` items settled without a dead letter. A held item that now succeeds releases the
        brake, with a fresh window: what held it back is gone."""
        if count == 1:
            self._record(False)
        elif count >= self.window:  # the whole window is successes now
            self._recent = deque([False] * self.window)
            self._dead_in_window = 0
            self._consecutive = 0
        else:
            for _ in range(count):
                self._record(False)
        if self.engaged and was_held:
            self.engaged = False
            self._recent.clear()
            self._dead_in_window = 0
            self._consecutive = 0

    def may_dead_letter(self) -> bool:
        """Record one more item to dead-letter; False when the brake holds it back instead."""
        if self.engaged:
            return False
        self._record(True)
        if self._over_limit():
            self.engaged = True
            return False
        return True

    def reset_streak(self) -> None:
        """After a retry round in which held items failed again: start counting afresh."""
        self._consecutive = 0
