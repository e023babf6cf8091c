"""Per-key order: one run of a key's messages in flight; a retrying key waits, others flow. Pure.

The hot-key escape: when a key whose head message is being retried piles up more than
`max_pending_per_key` messages behind it, that backlog (and whatever else arrives for the key until
its head is resolved) is parked: handed back to be dead-lettered with reason `hot_key_parked`, so the
partition keeps moving. `synergy dlq replay --reason hot_key_parked` sends them later, in order.
A key held back through no fault of its own (`park=False`: the target paused) is never parked.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_NONE: list[Any] = []  # returned, never changed: nothing parked


@dataclass
class KeyedQueues(Generic[T]):
    max_pending_per_key: int = 1_000
    _queues: dict[str, deque[T]] = field(default_factory=dict)
    _ready: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    _busy: set[str] = field(default_factory=set)
    _blocked: list[tuple[float, str]] = field(default_factory=list)
    _blocked_until: dict[str, float] = field(default_factory=dict)
    _may_park: set[str] = field(default_factory=set)
    _parked: set[str] = field(default_factory=set)
    _size: int = 0

    def push(self, key: str, item: T) -> list[T]:
        """Queue `item` behind the key's earlier messages. Returns the messages parked instead."""
        if key in self._parked:
            return [item]
        self._size += 1
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque((item,))
            if key not in self._busy and key not in self._blocked_until:
                self._ready[key] = None
            return _NONE
        queue.append(item)
        if key in self._may_park and len(queue) > self.max_pending_per_key:
            parked = [queue.pop() for _ in range(len(queue) - 1)][::-1]
            self._size -= len(parked)
            self._parked.add(key)
            return parked
        return []

    def take_ready(self, now: float, limit: int, per_key: int = 1) -> list[tuple[str, list[T]]]:
        """Up to `per_key` oldest messages of each key that may go now, `limit` in all.

        A key's taken run is in flight until done() or retry_later().
        """
        self._unblock(now)
        taken: list[tuple[str, list[T]]] = []
        budget = limit
        while self._ready and budget > 0:
            key = next(iter(self._ready))
            del self._ready[key]
            self._busy.add(key)
            queue = self._queues[key]
            run = [queue[i] for i in range(min(per_key, budget, len(queue)))]
            budget -= len(run)
            taken.append((key, run))
        return taken

    def _unblock(self, now: float) -> None:
        while self._blocked and self._blocked[0][0] <= now:
            _, key = heapq.heappop(self._blocked)
            if self._blocked_until.get(key, now + 1) <= now:
                del self._blocked_until[key]
                if self._queues.get(key):
                    self._ready[key] = None

    def ready_count(self, now: float) -> int:
        """Messages that take_ready(now) could hand out (their keys are neither busy nor blocked)."""
        self._unblock(now)
        return sum(len(self._queues[key]) for key in self._ready)

    def done(self, key: str, count: int) -> None:
        """The key's `count` oldest messages are settled: the next may go."""
        self._busy.discard(key)
        self._blocked_until.pop(key, None)
        self._may_park.discard(key)
        self._parked.discard(key)
        queue = self._queues.get(key)
        for _ in range(min(count, len(queue or ()))):
            assert queue is not None
            queue.popleft()
            self._size -= 1
        if queue:
            self._ready[key] = None
        else:
            self._queues.pop(key, None)

    def retry_later(self, key: str, at: float, park: bool = True, settled: int = 0) -> None:
        """The key's run failed after its `settled` oldest messages: nothing more goes before `at`."""
        self._busy.discard(key)
        queue = self._queues.get(key)
        for _ in range(min(settled, len(queue or ()))):
            assert queue is not None
            queue.popleft()
            self._size -= 1
        self._blocked_until[key] = at
        if park:
            self._may_park.add(key)
        else:
            self._may_park.discard(key)
        heapq.heappush(self._blocked, (at, key))

    def give_back(self, key: str) -> None:
        """A taken run was not sent after all: the key is ready again, its messages untouched."""
        self._busy.discard(key)
        if self._queues.get(key):
            self._ready[key] = None

    def next_wakeup(self) -> float | None:
        while self._blocked and self._blocked_until.get(self._blocked[0][1]) != self._blocked[0][0]:
            heapq.heappop(self._blocked)  # stale entries of keys retried again or done
        return self._blocked[0][0] if self._blocked else None

    def drain(self) -> list[T]:
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._ready.clear()
        self._busy.clear()
        self._blocked.clear()
        self._blocked_until.clear()
        self._may_park.clear()
        self._parked.clear()
        self._size = 0
        return items

    def __len__(self) -> int:
        return self._size
