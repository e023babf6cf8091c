"""Per-key order: one run of a key's messages in flight; a retrying key waits, others flow. Pure.

The hot-key escape: when a key whose head message is being retried piles up more than
`max_pending_per_key` messages behind it, that backlog (and whatever else arrives for the key until
its head is resolved) is parked: handed back to be dead-lettered with reason `hot_key_parked`, so the
partition keeps moving. `synergy dlq replay --reason hot_key_parked` sends them later, in order.
A key held back through no fault of its own (`park=False`: the target paused) is never parked.

A key's queue is a plain list: a run is taken as one slice and settled as one `del`, and a chunk of
records is queued by `push_many` in one pass.

`counted=True` (the runtime working in runs): each queued item stands for `item.count` messages (a
message.Run: one key's records of a poll chunk), and the budgets (`take_ready`'s limit, `ready_at_least`,
the hot-key bound) count messages, not items.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_NONE: list[Any] = []  # returned, never changed: nothing parked


@dataclass
class KeyedQueues(Generic[T]):
    max_pending_per_key: int = 1_000
    counted: bool = False
    _queues: dict[str, list[T]] = field(default_factory=dict)
    _ready: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    _busy: set[str] = field(default_factory=set)
    _blocked: list[tuple[float, str]] = field(default_factory=list)
    _blocked_until: dict[str, float] = field(default_factory=dict)
    _may_park: set[str] = field(default_factory=set)
    _parked: set[str] = field(default_factory=set)
    _size: int = 0

    def push(self, key: str, item: T) -> list[T]:
        """Queue `item` behind the key's earlier messages. Returns the messages parked instead."""
        return self.push_many((key,), (item,))

    def push_many(self, keys: Sequence[str], items: Sequence[T]) -> list[T]:
        """`push` of each (key, item) in order, in one pass. Returns the messages parked instead."""
        queues, ready, busy, blocked = self._queues, self._ready, self._busy, self._blocked_until
        parked_keys, may_park = self._parked, self._may_park
        parked: list[T] = _NONE
        self._size += len(items)
        for key, item in zip(keys, items, strict=True):
            queue = queues.get(key)
            if queue is None:
                if parked_keys and key in parked_keys:
                    parked = self._park_one(parked, item)
                    continue
                queues[key] = [item]
                if key not in busy and key not in blocked:
                    ready[key] = None
                continue
            if parked_keys and key in parked_keys:
                parked = self._park_one(parked, item)
                continue
            queue.append(item)
            # a key with a run in flight is not parked now: its queue's head is that run, not one message
            # (its backlog is parked at the next push once the run is answered)
            if (may_park and key in may_park and key not in busy
                    and self._pending(queue) > self.max_pending_per_key):
                backlog = queue[1:]
                del queue[1:]
                self._size -= len(backlog)
                parked_keys.add(key)
                parked = backlog if parked is _NONE else parked + backlog
        return parked

    def _pending(self, queue: list[Any]) -> int:
        return sum([item.count for item in queue]) if self.counted else len(queue)

    def replace_head(self, key: str, taken: Sequence[T], pieces: Sequence[list[T]]) -> None:
        """Each item of the key's taken run `taken` (at the head of its queue) stands as its `pieces`
        from now on."""
        queue = self._queues.get(key)
        if not queue:
            return
        present = 0
        for queued, item in zip(queue, taken, strict=False):
            if queued is not item:
                break
            present += 1
        replacement = [piece for item_pieces in pieces[:present] for piece in item_pieces]
        queue[:present] = replacement
        self._size += len(replacement) - present

    def _park_one(self, parked: list[T], item: T) -> list[T]:
        self._size -= 1
        if parked is _NONE:
            return [item]
        parked.append(item)
        return parked

    def take_ready(self, now: float, limit: int, per_key: int = 1) -> list[tuple[str, list[T]]]:
        """Up to `per_key` oldest messages of each key that may go now, `limit` in all.

        A key's taken run is in flight until done() or retry_later().
        """
        self._unblock(now)
        taken: list[tuple[str, list[T]]] = []
        budget = limit
        ready, queues = self._ready, self._queues
        if self.counted:
            keys: list[str] = []
            for key in ready:
                if budget <= 0:
                    break
                queue = queues[key]
                if len(queue) == 1:
                    taken.append((key, queue[:]))
                    budget -= queue[0].count  # type: ignore[attr-defined]
                else:
                    run = queue[:per_key]
                    budget -= sum([item.count for item in run])  # type: ignore[attr-defined]
                    taken.append((key, run))
                keys.append(key)
            if len(keys) == len(ready):
                ready.clear()
            else:
                for key in keys:
                    del ready[key]
            self._busy.update(keys)
            return taken
        else:
            for key in ready:
                if budget <= 0:
                    break
                queue = queues[key]
                run = queue[:per_key if per_key < budget else budget]
                budget -= len(run)
                taken.append((key, run))
        for key, _ in taken:
            del ready[key]
        self._busy.update(key for key, _ in taken)
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

    def ready_at_least(self, now: float, wanted: int) -> int:
        """ready_count(now), counted only up to `wanted` (the dispatcher asks "is a batch full?")."""
        self._unblock(now)
        count = 0
        queues = self._queues
        if self.counted:
            for key in self._ready:
                queue = queues[key]
                count += queue[0].count if len(queue) == 1 else self._pending(queue)  # type: ignore[attr-defined]
                if count >= wanted:
                    break
            return count
        for key in self._ready:
            count += len(queues[key])
            if count >= wanted:
                break
        return count

    def done(self, key: str, count: int) -> None:
        """The key's `count` oldest messages are settled: the next may go."""
        self._busy.discard(key)
        self._blocked_until.pop(key, None)
        self._may_park.discard(key)
        self._parked.discard(key)
        queue = self._queues.get(key)
        if queue:
            removed = min(count, len(queue))
            del queue[:removed]
            self._size -= removed
        if queue:
            self._ready[key] = None
        else:
            self._queues.pop(key, None)

    def done_many(self, runs: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """done(key, len(run)) for each (key, run) of a delivered batch, in one pass."""
        busy, blocked, may_park, parked = self._busy, self._blocked_until, self._may_park, self._parked
        queues, ready = self._queues, self._ready
        removed_total = 0
        for key, run in runs:
            busy.discard(key)
            if blocked:
                blocked.pop(key, None)
            if may_park:
                may_park.discard(key)
            if parked:
                parked.discard(key)
            queue = queues.get(key)
            if queue is None:
                continue
            queued, settled = len(queue), len(run)
            if settled >= queued:
                del queues[key]
                removed_total += queued
                continue
            del queue[:settled]
            removed_total += settled
            ready[key] = None
        self._size -= removed_total

    def retry_later(self, key: str, at: float, park: bool = True, settled: int = 0) -> None:
        """The key's run failed after its `settled` oldest messages: nothing more goes before `at`."""
        self._busy.discard(key)
        queue = self._queues.get(key)
        if queue and settled:
            removed = min(settled, len(queue))
            del queue[:removed]
            self._size -= removed
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

    def idle(self) -> bool:
        """No key queued, in flight, waiting for a retry or parked: every key is untouched."""
        return not (self._queues or self._blocked_until or self._parked or self._busy)

    def untouched(self, keys: set[str]) -> bool:
        """None of `keys` is queued, in flight, waiting for a retry or parked (set operations, no loop)."""
        return (keys.isdisjoint(self._queues) and keys.isdisjoint(self._blocked_until)
                and keys.isdisjoint(self._parked) and keys.isdisjoint(self._busy))

    def hold(self, keys: set[str]) -> None:
        """`keys` have a run in flight outside these queues: what is queued for them waits for release()."""
        self._busy |= keys
        ready = self._ready
        for key in keys:
            ready.pop(key, None)

    def release(self, keys: set[str]) -> None:
        """The runs in flight outside these queues of `keys` (see hold) are settled: the next may go."""
        self._busy -= keys
        queues, ready, blocked = self._queues, self._ready, self._blocked_until
        for key in keys:
            if queues.get(key) and key not in blocked:
                ready[key] = None

    def put_taken(self, items: Sequence[T]) -> None:
        """Items (one a key: `item.key`) in flight outside these queues come back as the taken head of
        their keys' queues, ahead of what is queued for them, as take_ready left them."""
        queues, ready = self._queues, self._ready
        keys = []
        for item in items:
            key = item.key  # type: ignore[attr-defined]
            keys.append(key)
            queue = queues.get(key)
            if queue is None:
                queues[key] = [item]
            else:
                queue.insert(0, item)
            ready.pop(key, None)
        self._busy.update(keys)
        self._size += len(items)

    def any_blocked(self) -> bool:
        """Some key waits for a retry (its messages, and those queued behind, are held back)."""
        return bool(self._blocked_until)

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
