"""One user's loyalty state, as kept in the `user_state` table and its changelog. Pure data.

Times are epoch seconds in EVENT time; days are UTC dates (YYYY-MM-DD).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import msgspec

# The default dedupe window: the last this many applied event ids of each user (a replay of an older
# event is not recognised). The worker keeps at least ten times its batch size.
APPLIED_IDS_KEPT = 10_000
SCAN_DAYS_KEPT = 400
RECENT_TIMES_KEPT = 300
RECENT_WINDOW_SECONDS = 90 * 86400  # timeframes and the power-user window must fit in this
# The window keeps a digest of each applied event id, not the id: as JSON strings, 10,000 ULIDs took
# ~290 KB of the state and ~0.7 ms to decode and encode it on every batch of that user. A new event id is
# taken for one of the window's (and skipped) with probability window / 2**96 (1.3e-25 for 10,000).
DIGEST_BYTES = 12


@lru_cache(maxsize=8192)  # an event's digest is wanted twice: is it applied, then mark it applied
def applied_digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=DIGEST_BYTES).digest()


def holds_digest(digests: bytes | bytearray, digest: bytes) -> bool:
    """Whether `digests` (DIGEST_BYTES each, end to end) holds `digest` as one of its own, not across two."""
    at = digests.find(digest)
    while at != -1:
        if at % DIGEST_BYTES == 0:
            return True
        at = digests.find(digest, at + 1)
    return False


@dataclass(slots=True)
class UserState:
    brand_id: str
    user_id: str
    version: int = 0  # events applied
    counts: dict[str, int] = field(default_factory=dict)
    recent: dict[str, list[int]] = field(default_factory=dict)  # event name -> sorted event times
    scan_days: list[str] = field(default_factory=list)  # sorted distinct days with a scan
    longest_streak: int = 0
    points_balance: int = 0
    lifetime_points: int = 0
    points_spent: int = 0
    rank_key: str | None = None
    bonus_multiplier: float = 1.0  # product of unlocked achievements' reward multipliers
    first_seen: int | None = None
    signup_at: int | None = None
    first_last: dict[str, list[int]] = field(default_factory=dict)  # session/scan/redemption -> [first, last]
    achievements: dict[str, int] = field(default_factory=dict)  # key -> unlocked at
    referrals_completed: int = 0
    wishlist_size: int = 0
    purchase_total: float = 0.0
    rejected_redemptions: int = 0
    profile: dict[str, Any] = field(default_factory=dict)  # blocks passed through from user_snapshot
    # applied_digest of the most recent event ids, oldest first (base64 in the JSON form)
    applied: bytearray = field(default_factory=bytearray)
    derived: dict[str, Any] | None = None  # the time-dependent fields of the last snapshot sent
    # The fingerprint of the rule set every achievement was last judged against (BrandRules.fingerprint).
    # While it matches, an event needs only the rules whose metric it can move (rules.RuleBook); a state
    # without one (new, or from an older changelog) or with another one has every rule judged once.
    rules_judged: str | None = None

    # --- idempotence -------------------------------------------------------------------------------

    def has_applied(self, event_id: str) -> bool:
        return holds_digest(self.applied, applied_digest(event_id))

    def mark_applied(self, event_id: str, kept: int = APPLIED_IDS_KEPT) -> None:
        self.applied += applied_digest(event_id)
        excess = len(self.applied) - kept * DIGEST_BYTES
        if excess > 0:
            del self.applied[:excess]
        self.version += 1

    @property
    def applied_count(self) -> int:
        """How many event ids the dedupe window holds."""
        return len(self.applied) // DIGEST_BYTES

    def applied_digests(self) -> set[bytes]:
        applied = bytes(self.applied)
        return {applied[at:at + DIGEST_BYTES] for at in range(0, len(applied), DIGEST_BYTES)}

    # --- activity ----------------------------------------------------------------------------------

    def count(self, event_name: str) -> int:
        return self.counts.get(event_name, 0)

    def record_count(self, event_name: str) -> None:
        self.counts[event_name] = self.counts.get(event_name, 0) + 1

    def record_time(self, activity: str, at: int) -> None:
        pair = self.first_last.get(activity)
        if pair is None:
            self.first_last[activity] = [at, at]
        else:
            pair[0] = min(pair[0], at)
            pair[1] = max(pair[1], at)

    def last_time(self, activity: str) -> int | None:
        pair = self.first_last.get(activity)
        return pair[1] if pair else None

    def record_recent(self, event_name: str, at: int) -> None:
        times = self.recent.setdefault(event_name, [])
        bisect.insort(times, at)
        horizon = times[-1] - RECENT_WINDOW_SECONDS
        cut = bisect.bisect_left(times, horizon)
        if len(times) - cut > RECENT_TIMES_KEPT:
            cut = len(times) - RECENT_TIMES_KEPT
        if cut:
            del times[:cut]

    def record_scan_day(self, day: str) -> None:
        index = bisect.bisect_left(self.scan_days, day)
        if index < len(self.scan_days) and self.scan_days[index] == day:
            return
        self.scan_days.insert(index, day)
        self.longest_streak = max(self.longest_streak, run_through(self.scan_days, index))
        if len(self.scan_days) > SCAN_DAYS_KEPT:
            del self.scan_days[0]

    def current_streak(self) -> int:
        """Consecutive days with a scan ending at the latest scan day."""
        if not self.scan_days:
            return 0
        return run_through(self.scan_days, len(self.scan_days) - 1)

    # --- serialisation -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        try:
            return _DECODER.decode(raw)
        except msgspec.ValidationError:
            return _repaired(raw)

    def copy(self) -> UserState:
        return _DECODER.decode(_ENCODER.encode(self))


def _repaired(raw: bytes) -> UserState:
    """A state in an older form:
    - written before the worker refused events with a numeric brand_id or user id (it stored the number:
      `{"brand_id": 7, ...}`) under the same key as the string's ("7:u"). The ids are the key's text, so
      they are read back as strings;
    - written before the window kept digests: `applied` is the list of the ids themselves.
    Anything else wrong raises as before."""
    document = msgspec.json.decode(raw)
    if isinstance(document, dict):
        for name in ("brand_id", "user_id"):
            if isinstance(document.get(name), int | float) and not isinstance(document.get(name), bool):
                document[name] = str(document[name])
        applied = document.get("applied")
        if isinstance(applied, list) and all(type(event_id) is str for event_id in applied):
            document["applied"] = b"".join(applied_digest(event_id) for event_id in applied)
    return msgspec.convert(document, UserState)


# msgspec writes the same JSON objects orjson.dumps(asdict(state)) did (older changelogs still decode),
# without the deep copy asdict makes, and into exactly-sized bytes (orjson's over-allocated ones
# held ~8 KiB of heap per 1.2 KiB state in the memory store).
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(UserState)


def longest_run(sorted_days: list[str]) -> int:
    best = run = 0
    previous: date | None = None
    for text in sorted_days:
        day = date.fromisoformat(text)
        run = run + 1 if previous is not None and day - previous == timedelta(days=1) else 1
        best = max(best, run)
        previous = day
    return best


def run_through(sorted_days: list[str], index: int) -> int:
    """The length of the run of consecutive days that contains sorted_days[index] (a new day can only
    lengthen the runs it joins, so the longest streak is the larger of this and the previous longest).

    The days are distinct and sorted, so their day numbers strictly increase: days i..j form one run
    exactly when number(j) - number(i) == j - i. Both ends are found by bisection, O(log n)."""
    number = day_number(sorted_days[index])
    low, high = 0, index  # the run's first index is the smallest i with number - number(i) == index - i
    while low < high:
        middle = (low + high) // 2
        if number - day_number(sorted_days[middle]) == index - middle:
            high = middle
        else:
            low = middle + 1
    start = low
    low, high = index, len(sorted_days) - 1  # its last: the largest j with number(j) - number == j - index
    while low < high:
        middle = (low + high + 1) // 2
        if day_number(sorted_days[middle]) - number == middle - index:
            low = middle
        else:
            high = middle - 1
    return low - start + 1


@lru_cache(maxsize=4096)
def day_number(text: str) -> int:
    return date.fromisoformat(text).toordinal()


def max_in_window(sorted_times: list[int], window_seconds: float) -> int:
    """The most events that fall within any window of this length (event time, order-independent)."""
    best = start = 0
    for end, at in enumerate(sorted_times):
        while at - sorted_times[start] > window_seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def count_since(sorted_times: list[int], since: int) -> int:
    return len(sorted_times) - bisect.bisect_left(sorted_times, since)
