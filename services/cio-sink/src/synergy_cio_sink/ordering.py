"""Per-user order: one message per user in flight; a retrying user waits, others flow. Pure.

The hot-user escape hatch: when a user whose head message is being retried piles up more than
`max_pending_per_user` messages behind it, that backlog (and whatever else arrives for the user
until the head is resolved) is parked: handed back to be dead-lettered with reason
`hot_user_parked`, so the partition keeps moving. `synergy dlq replay --reason hot_user_parked`
sends them later, in order.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class UserQueues(Generic[T]):
    max_pending_per_user: int = 1_000
    _queues: dict[str, deque[T]] = field(default_factory=dict)
    _ready: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    _busy: set[str] = field(default_factory=set)
    _blocked: list[tuple[float, str]] = field(default_factory=list)
    _blocked_until: dict[str, float] = field(default_factory=dict)
    _parked: set[str] = field(default_factory=set)
    _size: int = 0

    def push(self, key: str, item: T) -> list[T]:
        """Queue `item` behind the user's earlier messages. Returns the messages parked instead."""
        if key in self._parked:
            return [item]
        queue = self._queues.setdefault(key, deque())
        queue.append(item)
        self._size += 1
        if len(queue) == 1 and key not in self._busy and key not in self._blocked_until:
            self._ready[key] = None
        if key in self._blocked_until and len(queue) > self.max_pending_per_user:
            parked = [queue.pop() for _ in range(len(queue) - 1)][::-1]
            self._size -= len(parked)
            self._parked.add(key)
            return parked
        return []

    def take_ready(self, now: float, limit: int, per_user: int = 1) -> list[tuple[str, list[T]]]:
        """Up to `per_user` oldest messages of each user that may send now, `limit` in all.

        A user's taken messages are in flight together until done() or retry_later().
        """
        while self._blocked and self._blocked[0][0] <= now:
            _, key = heapq.heappop(self._blocked)
            if self._blocked_until.get(key, now + 1) <= now:
                del self._blocked_until[key]
                if self._queues.get(key):
                    self._ready[key] = None
        taken: list[tuple[str, list[T]]] = []
        budget = limit
        while self._ready and budget > 0:
            key = next(iter(self._ready))
            del self._ready[key]
            self._busy.add(key)
            queue = self._queues[key]
            run = [queue[i] for i in range(min(per_user, budget, len(queue)))]
            budget -= len(run)
            taken.append((key, run))
        return taken

    def done(self, key: str, count: int = 1) -> None:
        """The user's `count` oldest messages were delivered or dead-lettered: the next may go."""
        self._busy.discard(key)
        self._blocked_until.pop(key, None)
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

    def retry_later(self, key: str, at: float) -> None:
        self._busy.discard(key)
        self._blocked_until[key] = at
        heapq.heappush(self._blocked, (at, key))

    def next_wakeup(self) -> float | None:
        return self._blocked[0][0] if self._blocked else None

    def has_ready(self) -> bool:
        return bool(self._ready)

    def drain(self) -> list[T]:
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._ready.clear()
        self._busy.clear()
        self._blocked.clear()
        self._blocked_until.clear()
        self._parked.clear()
        self._size = 0
        return items

    def __len__(self) -> int:
        return self._size
