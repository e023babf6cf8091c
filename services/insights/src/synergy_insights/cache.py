"""The read API's in-process cache. Pure: no I/O; the clock is injected.

Entries expire after a TTL and are dropped when another replica (or this one) reports the user
changed. A reader that missed records the key's generation before it reads Postgres and stores its
answer only if no invalidation came in between, so a slow read never caches a stale answer.
While invalidations may be missed (the listener is disconnected), the cache is switched off.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class InsightsCache:
    def __init__(
        self, ttl_seconds: float, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._generations: dict[Hashable, int] = {}
        self._global_generation = 0
        self.enabled = True
        self.stats = CacheStats()

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """(hit, value). Counts toward the hit ratio."""
        entry = self._entries.get(key) if self.enabled else None
        if entry is not None and entry[0] > self._clock():
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return True, entry[1]
        if entry is not None:
            del self._entries[key]
        self.stats.misses += 1
        return False, None

    def generation(self, key: Hashable) -> tuple[int, int]:
        return self._global_generation, self._generations.get(key, 0)

    def put(self, key: Hashable, value: Any, generation: tuple[int, int]) -> bool:
        """Store `value` if nothing invalidated `key` since `generation` was taken."""
        if not self.enabled or generation != self.generation(key):
            return False
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    def invalidate(self, key: Hashable) -> None:
        self._entries.pop(key, None)
        self._generations[key] = self._generations.get(key, 0) + 1
        if len(self._generations) > self._max_entries * 4:
            # Forgetting per-key counters is safe once the global generation moves on.
            self._generations.clear()
            self._global_generation += 1

    def invalidate_all(self) -> None:
        self._entries.clear()
        self._generations.clear()
        self._global_generation += 1

    def __len__(self) -> int:
        return len(self._entries)
