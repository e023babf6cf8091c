"""Seed 002's launch KPIs, defined once in plain Python over a brand's events. Pure.

These are the definitions; `queries` computes the same numbers in Postgres (SQL with window functions),
and the tests hold both to the same hand-computed values.

- A user enters a funnel, a time-to-first cohort or a retention cohort at their FIRST event of the
  entry action inside [since, until). Only identified users count (anonymous events are logged, not counted).
- ordered funnel: step k is the user's first step-k event at or after step k-1, at most `window` after
  the entry. strict funnel: step k must be the user's very next client event after step k-1 (engine
  events such as points or achievements never break it), also within `window` of the entry.
- time to first / second use: from the entry to the first / second `action` at or after it.
- retention week w: the user did `return` within [entry + 7w days, entry + 7w + 7 days) (24-hour
  windows counted from the user's own entry, not calendar weeks; week 1 is days 7 to 13).
- percentiles interpolate linearly between ranks (Postgres' percentile_cont).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Order = Literal["ordered", "strict"]
DAY = timedelta(days=1)
DEFAULT_WINDOW = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str | None
    action: str
    at: datetime
    event_id: str = ""
    engine: bool = False


@dataclass(frozen=True, slots=True)
class FunnelStep:
    name: str
    users: int
    conversion_from_previous: float | None
    conversion_from_first: float | None
    median_seconds_from_previous: float | None


@dataclass(frozen=True, slots=True)
class Funnel:
    steps: tuple[FunnelStep, ...]
    window_seconds: float
    order: Order


@dataclass(frozen=True, slots=True)
class TimeToFirst:
    action: str
    from_action: str
    cohort_users: int
    users: int
    median_seconds: float | None
    p75_seconds: float | None
    second_use_median_seconds: float | None
    second_use_p75_seconds: float | None


@dataclass(frozen=True, slots=True)
class Retention:
    cohort_users: int
    retained_users: int
    rate: float


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, as Postgres' percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def by_user(events: Iterable[Event]) -> dict[str, list[Event]]:
    users: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.user_id is not None:
            users[event.user_id].append(event)
    for timeline in users.values():
        timeline.sort(key=lambda e: (e.at, e.event_id))
    return users


def entry_of(timeline: Sequence[Event], action: str, since: datetime, until: datetime) -> int | None:
    """Index of the user's first `action` in [since, until)."""
    for index, event in enumerate(timeline):
        if event.action == action and since <= event.at < until:
            return index
    return None


def _reached(
    timeline: Sequence[Event], steps: Sequence[str], start: int, window: timedelta, order: Order
) -> list[datetime]:
    """The times the user reached each step, from the entry at `start` on."""
    first = timeline[start].at
    times = [first]
    if order == "strict":
        client = [e for e in timeline[start:] if not e.engine]
        for step, event in zip(steps[1:], client[1:], strict=False):
            if event.action != step or event.at > first + window:
                break
            times.append(event.at)
        return times
    cursor = start
    for step in steps[1:]:
        found = next(
            (
                i
                for i in range(cursor, len(timeline))
                if timeline[i].action == step and timeline[i].at >= times[-1]
            ),
            None,
        )
        if found is None or timeline[found].at > first + window:
            break
        times.append(timeline[found].at)
        cursor = found
    return times


def funnel(
    events: Iterable[Event],
    steps: Sequence[str],
    since: datetime,
    until: datetime,
    window: timedelta = DEFAULT_WINDOW,
    order: Order = "ordered",
) -> Funnel:
    reached: list[list[datetime]] = []
    for timeline in by_user(events).values():
        start = entry_of(timeline, steps[0], since, until)
        if start is not None:
            reached.append(_reached(timeline, steps, start, window, order))
    counts = [sum(1 for times in reached if len(times) > k) for k in range(len(steps))]
    result = []
    for k, name in enumerate(steps):
        gaps = [(t[k] - t[k - 1]).total_seconds() for t in reached if k > 0 and len(t) > k]
        result.append(
            FunnelStep(
                name=name,
                users=counts[k],
                conversion_from_previous=None if k == 0 else ratio(counts[k], counts[k - 1]),
                conversion_from_first=ratio(counts[k], counts[0]),
                median_seconds_from_previous=percentile(gaps, 0.5) if k > 0 else None,
            )
        )
    return Funnel(tuple(result), window.total_seconds(), order)


def time_to_first(
    events: Iterable[Event], action: str, from_action: str, since: datetime, until: datetime
) -> TimeToFirst:
    first: list[float] = []
    second: list[float] = []
    cohort = 0
    for timeline in by_user(events).values():
        start = entry_of(timeline, from_action, since, until)
        if start is None:
            continue
        cohort += 1
        entry = timeline[start].at
        uses = [e.at for e in timeline if e.action == action and e.at >= entry]
        if uses:
            first.append((uses[0] - entry).total_seconds())
        if len(uses) > 1:
            second.append((uses[1] - entry).total_seconds())
    return TimeToFirst(
        action,
        from_action,
        cohort,
        len(first),
        percentile(first, 0.5),
        percentile(first, 0.75),
        percentile(second, 0.5),
        percentile(second, 0.75),
    )


def retention(
    events: Iterable[Event],
    start_action: str,
    return_action: str,
    since: datetime,
    until: datetime,
    week: int = 1,
) -> Retention:
    cohort = retained = 0
    for timeline in by_user(events).values():
        start = entry_of(timeline, start_action, since, until)
        if start is None:
            continue
        cohort += 1
        low = timeline[start].at + 7 * week * DAY
        high = low + 7 * DAY
        if any(e.action == return_action and low <= e.at < high for e in timeline):
            retained += 1
    return Retention(cohort, retained, ratio(retained, cohort) or 0.0)


def retention_curve(
    events: Iterable[Event],
    start_action: str,
    return_action: str,
    since: datetime,
    until: datetime,
    days: int = 14,
) -> list[Retention]:
    """Day n: the share of the cohort that did `return` within [entry + n days, entry + n + 1 days)."""
    timelines = by_user(events)
    entries = {
        u: t[i].at for u, t in timelines.items() if (i := entry_of(t, start_action, since, until)) is not None
    }
    curve = []
    for day in range(days):
        kept = sum(
            1
            for user, entry in entries.items()
            if any(
                e.action == return_action and entry + day * DAY <= e.at < entry + (day + 1) * DAY
                for e in timelines[user]
            )
        )
        curve.append(Retention(len(entries), kept, ratio(kept, len(entries)) or 0.0))
    return curve


def activation(
    events: Iterable[Event],
    signup: str,
    bundle: Sequence[str],
    since: datetime,
    until: datetime,
    within: timedelta = 7 * DAY,
) -> Retention:
    """Seed 002's 7-day activation: the share of signups who did every action of `bundle` within 7 days."""
    cohort = activated = 0
    for timeline in by_user(events).values():
        start = entry_of(timeline, signup, since, until)
        if start is None:
            continue
        cohort += 1
        entry = timeline[start].at
        if all(any(e.action == a and entry <= e.at <= entry + within for e in timeline) for a in bundle):
            activated += 1
    return Retention(cohort, activated, ratio(activated, cohort) or 0.0)
