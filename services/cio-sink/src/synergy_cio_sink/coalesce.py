"""Snapshots of one person: at most one sent per interval, the newest wins, an older one never. Pure.

Snapshots travel in a lane of their own per person (their key is `<person>#snapshot`), so a held
snapshot never blocks that person's events. At delivery each snapshot is decided:
- `SUPERSEDED` when a newer snapshot of the person has been seen: it is settled without sending
  (the newer one, behind it in the lane, carries the state);
- `Wait(seconds)` when the person's last snapshot went out less than `interval` ago;
- `SEND` otherwise.
`admit()` runs when a snapshot is consumed: one older than the newest seen or sent for its person
(a replayed dead letter, say) is refused, so it can never overwrite a newer one at Customer.io.
The memory is bounded: the last `memory` people seen, least recently used forgotten first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cachetools import LRUCache

# (achievements' state_version, the envelope's timestamp in seconds, the Kafka offset as tie-break)
Version = tuple[int, float, int]


def snapshot_version(envelope: Mapping[str, Any], offset: int) -> Version:
    data = envelope.get("data") if isinstance(envelope.get("data"), Mapping) else {}
    loyalty = data.get("loyalty") if isinstance(data, Mapping) else None
    state_version = loyalty.get("state_version") if isinstance(loyalty, Mapping) else None
    if not isinstance(state_version, int) or isinstance(state_version, bool):
        state_version = 0
    timestamp = envelope.get("timestamp")
    seconds = 0.0
    if isinstance(timestamp, str):
        try:
            seconds = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            seconds = 0.0
    return (state_version, seconds, offset)


@dataclass(frozen=True)
class Superseded:
    pass


@dataclass(frozen=True)
class Send:
    pass


@dataclass(frozen=True)
class Wait:
    seconds: float


SUPERSEDED, SEND = Superseded(), Send()
Decision = Superseded | Send | Wait


@dataclass
class SnapshotCoalescer:
    interval: float
    memory: int = 200_000
    _newest: LRUCache[str, Version] = field(init=False)
    _sent_at: LRUCache[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self._newest = LRUCache(self.memory)
        self._sent_at = LRUCache(self.memory)

    def admit(self, person: str, version: Version) -> bool:
        """A snapshot was consumed: False when a newer one of the person was already seen or sent."""
        newest = self._newest.get(person)
        if newest is not None and _older(version, newest):
            return False
        self._newest[person] = version
        return True

    def decide(self, person: str, version: Version, now: float) -> Decision:
        newest = self._newest.get(person)
        if newest is not None and _older(version, newest):
            return SUPERSEDED
        last = self._sent_at.get(person)
        if last is not None and now - last < self.interval:
            return Wait(last + self.interval - now)
        return SEND

    def sent(self, person: str, version: Version, now: float) -> None:
        self._sent_at[person] = now
        newest = self._newest.get(person)
        if newest is None or _older(newest, version):
            self._newest[person] = version


def _older(version: Version, than: Version) -> bool:
    """Older by content (state version, then timestamp); the offset only orders equal content."""
    return version < than
