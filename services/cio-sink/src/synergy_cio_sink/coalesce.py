"""Snapshots of one user go out at most once per interval; newer ones replace held ones. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Offer(Generic[T]):
    release: T | None = None  # send this now
    superseded: T | None = None  # never needs sending: a newer snapshot replaced it


@dataclass
class SnapshotCoalescer(Generic[T]):
    interval: float
    _last_sent: dict[str, float] = field(default_factory=dict)
    _held: dict[str, T] = field(default_factory=dict)

    def offer(self, person_key: str, item: T, now: float) -> Offer[T]:
        last = self._last_sent.get(person_key)
        if person_key not in self._held and (last is None or now - last >= self.interval):
            self._last_sent[person_key] = now
            return Offer(release=item)
        superseded = self._held.get(person_key)
        self._held[person_key] = item
        return Offer(superseded=superseded)

    def due(self, now: float) -> list[T]:
        """Held snapshots whose interval has passed; they are sent now."""
        released = []
        for person_key in [k for k in self._held if now - self._last_sent.get(k, 0.0) >= self.interval]:
            released.append(self._held.pop(person_key))
            self._last_sent[person_key] = now
        for person_key in [k for k, t in self._last_sent.items() if now - t >= self.interval]:
            if person_key not in self._held:
                del self._last_sent[person_key]
        return released

    def next_due(self) -> float | None:
        if not self._held:
            return None
        return min(self._last_sent.get(k, 0.0) for k in self._held) + self.interval

    def drain(self) -> list[T]:
        """Every held snapshot (shutdown, rebalance)."""
        held = list(self._held.values())
        self._held.clear()
        return held

    def __len__(self) -> int:
        return len(self._held)
