"""The KPIs of `kpis` computed in Postgres over user_action_log, one brand at a time.

Every query bounds `occurred_at` with plain parameters (the range start, and its end plus the window),
so the planner prunes the month partitions outside it; `EXPLAIN` shows only the months read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from synergy_analytics.kpis import DAY, Funnel, FunnelStep, Order, Retention, TimeToFirst, ratio

MAX_STEPS = 10
LOG = "user_action_log"


def ordered_funnel_sql(steps: int) -> str:
    """$1 brand, $2 since, $3 until, $4 window (interval), $5 until + window, $6.. the step names."""
    ctes = [
        f"""s1 AS (
  SELECT user_id, min(occurred_at) AS t1, NULL::timestamptz AS prev, min(occurred_at) AS t
  FROM {LOG}
  WHERE brand_id = $1 AND action_type = $6 AND user_id IS NOT NULL
    AND occurred_at >= $2 AND occurred_at < $3
  GROUP BY user_id)"""
    ]
    for k in range(2, steps + 1):
        ctes.append(f"""s{k} AS (
  SELECT p.user_id, min(p.t1) AS t1, min(p.t) AS prev, min(l.occurred_at) AS t
  FROM s{k - 1} p JOIN {LOG} l
    ON l.brand_id = $1 AND l.user_id = p.user_id AND l.action_type = ${5 + k}
   AND l.occurred_at >= p.t AND l.occurred_at <= p.t1 + $4
  WHERE l.occurred_at >= $2 AND l.occurred_at <= $5
  GROUP BY p.user_id)""")
    selects = [
        f"SELECT {k} AS step, count(*) AS users, "
        + (
            "NULL::float8"
            if k == 1
            else "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t - prev))::float8"
        )
        + f" AS median FROM s{k}"
        for k in range(1, steps + 1)
    ]
    return "WITH " + ",\n".join(ctes) + "\n" + "\nUNION ALL ".join(selects) + "\nORDER BY step"


def strict_funnel_sql(steps: int) -> str:
    """Each user's client events in order (window functions: lead); from the entry, the next events must
    be the next steps. $1 brand, $2 since, $3 until, $4 window, $5 until + window, $6.. step names."""
    leads = ",\n    ".join(
        f"lead(action_type, {n}) OVER w AS a{n + 1}, lead(occurred_at, {n}) OVER w AS t{n + 1}"
        for n in range(1, steps)
    )
    conditions: list[str] = []
    for k in range(2, steps + 1):
        previous = conditions[-1] + " AND " if conditions else ""
        conditions.append(f"{previous}a{k} = ${5 + k} AND t{k} <= t1 + $4")
    columns = ["count(*) AS u1"]
    for k in range(2, steps + 1):
        condition = conditions[k - 2]
        previous_time = "t1" if k == 2 else f"t{k - 1}"
        columns.append(f"count(*) FILTER (WHERE {condition}) AS u{k}")
        columns.append(
            f"percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t{k} - {previous_time}))"
            f" FILTER (WHERE {condition})::float8 AS m{k}"
        )
    return f"""WITH ev AS (
  SELECT user_id, action_type, occurred_at AS t1, event_id,
    {leads}
  FROM {LOG}
  WHERE brand_id = $1 AND user_id IS NOT NULL AND NOT engine_event
    AND occurred_at >= $2 AND occurred_at <= $5
  WINDOW w AS (PARTITION BY user_id ORDER BY occurred_at, event_id)),
entry AS (
  SELECT DISTINCT ON (user_id) * FROM ev
  WHERE action_type = $6 AND t1 < $3
  ORDER BY user_id, t1, event_id)
SELECT {", ".join(columns)} FROM entry"""


# A funnel over millions of rows: the planner's guess for a step's users (a GROUP BY over the previous
# step, 200 rows) picks a nested loop of one index probe per user, ~4 s over 5 M rows; each step's rows
# hashed once and joined by user takes ~0.6 s (the README's profile). JIT compiling costs more than it
# saves here, and a step's users (hundreds of thousands) hash in memory instead of spilling in batches.
FUNNEL_SETTINGS = (
    "SET LOCAL enable_nestloop = off",
    "SET LOCAL jit = off",
    "SET LOCAL work_mem = '64MB'",
)


async def _fetch_funnel(db: asyncpg.Pool | asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
    """`sql` under FUNNEL_SETTINGS, which end with its transaction (a savepoint's, inside a caller's)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _fetch_funnel(conn, sql, *args)
    async with db.transaction():
        for setting in FUNNEL_SETTINGS:
            await db.execute(setting)
        return list(await db.fetch(sql, *args))


def _check_steps(steps: Sequence[str]) -> None:
    if not 2 <= len(steps) <= MAX_STEPS:
        raise ValueError(f"a funnel has 2 to {MAX_STEPS} steps")


async def funnel(
    db: asyncpg.Pool | asyncpg.Connection,
    brand_id: int,
    steps: Sequence[str],
    since: datetime,
    until: datetime,
    window: timedelta,
    order: Order = "ordered",
) -> Funnel:
    _check_steps(steps)
    args = (brand_id, since, until, window, until + window, *steps)
    if order == "strict":
        row = (await _fetch_funnel(db, strict_funnel_sql(len(steps)), *args))[0]
        counts = [int(row[f"u{k}"]) for k in range(1, len(steps) + 1)]
        medians: list[float | None] = [None] + [row[f"m{k}"] for k in range(2, len(steps) + 1)]
    else:
        rows = await _fetch_funnel(db, ordered_funnel_sql(len(steps)), *args)
        counts = [int(r["users"]) for r in rows]
        medians = [r["median"] for r in rows]
    return Funnel(
        tuple(
            FunnelStep(
                name,
                counts[k],
                None if k == 0 else ratio(counts[k], counts[k - 1]),
                ratio(counts[k], counts[0]),
                medians[k],
            )
            for k, name in enumerate(steps)
        ),
        window.total_seconds(),
        order,
    )


TIME_TO_FIRST_SQL = f"""
WITH cohort AS (
  SELECT user_id, min(occurred_at) AS t0 FROM {LOG}
  WHERE brand_id = $1 AND action_type = $5 AND user_id IS NOT NULL AND occurred_at >= $2 AND occurred_at < $3
  GROUP BY user_id),
uses AS (
  SELECT extract(epoch FROM l.occurred_at - c.t0)::float8 AS seconds,
         row_number() OVER (PARTITION BY c.user_id ORDER BY l.occurred_at, l.event_id) AS n
  FROM cohort c JOIN {LOG} l
    ON l.brand_id = $1 AND l.user_id = c.user_id AND l.action_type = $4 AND l.occurred_at >= c.t0
  WHERE l.occurred_at >= $2)
SELECT (SELECT count(*) FROM cohort) AS cohort_users,
  count(*) FILTER (WHERE n = 1) AS users,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) FILTER (WHERE n = 1) AS first_p50,
  percentile_cont(0.75) WITHIN GROUP (ORDER BY seconds) FILTER (WHERE n = 1) AS first_p75,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) FILTER (WHERE n = 2) AS second_p50,
  percentile_cont(0.75) WITHIN GROUP (ORDER BY seconds) FILTER (WHERE n = 2) AS second_p75
FROM uses WHERE n <= 2
"""


async def time_to_first(
    db: asyncpg.Pool | asyncpg.Connection,
    brand_id: int,
    action: str,
    from_action: str,
    since: datetime,
    until: datetime,
) -> TimeToFirst:
    row = await db.fetchrow(TIME_TO_FIRST_SQL, brand_id, since, until, action, from_action)
    return TimeToFirst(
        action,
        from_action,
        int(row["cohort_users"]),
        int(row["users"]),
        row["first_p50"],
        row["first_p75"],
        row["second_p50"],
        row["second_p75"],
    )


RETENTION_SQL = f"""
WITH cohort AS (
  SELECT user_id, min(occurred_at) AS t0 FROM {LOG}
  WHERE brand_id = $1 AND action_type = $4 AND user_id IS NOT NULL AND occurred_at >= $2 AND occurred_at < $3
  GROUP BY user_id)
SELECT count(*) AS cohort_users,
  count(*) FILTER (WHERE EXISTS (
    SELECT 1 FROM {LOG} l
    WHERE l.brand_id = $1 AND l.user_id = c.user_id AND l.action_type = ANY($5::text[])
      AND l.occurred_at >= c.t0 + $6 AND l.occurred_at < c.t0 + $7
      AND l.occurred_at >= $8 AND l.occurred_at < $9)) AS retained_users
FROM cohort c
"""


def _names(actions: str | Sequence[str]) -> list[str]:
    return [actions] if isinstance(actions, str) else list(actions)


async def retention(
    db: asyncpg.Pool | asyncpg.Connection,
    brand_id: int,
    start_action: str,
    return_action: str | Sequence[str],
    since: datetime,
    until: datetime,
    week: int = 1,
) -> Retention:
    """`return_action`: one event name, or several (any of them counts as coming back)."""
    low, high = 7 * week * DAY, (7 * week + 7) * DAY
    row = await db.fetchrow(
        RETENTION_SQL,
        brand_id,
        since,
        until,
        start_action,
        _names(return_action),
        low,
        high,
        since + low,
        until + high,
    )
    cohort, kept = int(row["cohort_users"]), int(row["retained_users"])
    return Retention(cohort, kept, ratio(kept, cohort) or 0.0)


RETENTION_CURVE_SQL = f"""
WITH cohort AS (
  SELECT user_id, min(occurred_at) AS t0 FROM {LOG}
  WHERE brand_id = $1 AND action_type = $4 AND user_id IS NOT NULL AND occurred_at >= $2 AND occurred_at < $3
  GROUP BY user_id),
returned AS (
  SELECT DISTINCT c.user_id, floor(extract(epoch FROM l.occurred_at - c.t0) / 86400)::int AS day
  FROM cohort c JOIN {LOG} l
    ON l.brand_id = $1 AND l.user_id = c.user_id AND l.action_type = ANY($5::text[])
   AND l.occurred_at >= c.t0 AND l.occurred_at < c.t0 + make_interval(days => $6)
  WHERE l.occurred_at >= $2 AND l.occurred_at < $7)
SELECT d.day, (SELECT count(*) FROM cohort) AS cohort_users, count(r.user_id) AS retained_users
FROM generate_series(0, $6 - 1) AS d(day) LEFT JOIN returned r ON r.day = d.day
GROUP BY d.day ORDER BY d.day
"""


async def retention_curve(
    db: asyncpg.Pool | asyncpg.Connection,
    brand_id: int,
    start_action: str,
    return_action: str | Sequence[str],
    since: datetime,
    until: datetime,
    days: int = 14,
) -> list[Retention]:
    rows = await db.fetch(
        RETENTION_CURVE_SQL,
        brand_id,
        since,
        until,
        start_action,
        _names(return_action),
        days,
        until + days * DAY,
    )
    return [
        Retention(
            int(r["cohort_users"]),
            int(r["retained_users"]),
            ratio(int(r["retained_users"]), int(r["cohort_users"])) or 0.0,
        )
        for r in rows
    ]


def activation_sql(bundle: int) -> str:
    checks = " AND ".join(
        f"""EXISTS (SELECT 1 FROM {LOG} l WHERE l.brand_id = $1 AND l.user_id = c.user_id
             AND l.action_type = ${5 + i} AND l.occurred_at >= c.t0 AND l.occurred_at <= c.t0 + $4
             AND l.occurred_at >= $2 AND l.occurred_at <= $3 + $4)"""
        for i in range(1, bundle + 1)
    )
    return f"""
WITH cohort AS (
  SELECT user_id, min(occurred_at) AS t0 FROM {LOG}
  WHERE brand_id = $1 AND action_type = $5 AND user_id IS NOT NULL AND occurred_at >= $2 AND occurred_at < $3
  GROUP BY user_id)
SELECT count(*) AS cohort_users, count(*) FILTER (WHERE {checks}) AS retained_users FROM cohort c
"""


async def activation(
    db: asyncpg.Pool | asyncpg.Connection,
    brand_id: int,
    signup: str,
    bundle: Sequence[str],
    since: datetime,
    until: datetime,
    within: timedelta = 7 * DAY,
) -> Retention:
    row = await db.fetchrow(activation_sql(len(bundle)), brand_id, since, until, within, signup, *bundle)
    cohort, kept = int(row["cohort_users"]), int(row["retained_users"])
    return Retention(cohort, kept, ratio(kept, cohort) or 0.0)


def as_json(value: Any) -> Any:
    """The KPI dataclasses as the routes answer them."""
    if isinstance(value, Funnel):
        return {
            "steps": [
                {
                    "name": s.name,
                    "users": s.users,
                    "conversion_from_previous": s.conversion_from_previous,
                    "conversion_from_first": s.conversion_from_first,
                    "median_seconds_from_previous": s.median_seconds_from_previous,
                }
                for s in value.steps
            ],
            "window_seconds": value.window_seconds,
            "order": value.order,
        }
    if isinstance(value, TimeToFirst):
        return {
            "action": value.action,
            "from": value.from_action,
            "cohort_users": value.cohort_users,
            "users": value.users,
            "median_seconds": value.median_seconds,
            "p75_seconds": value.p75_seconds,
            "second_use_median_seconds": value.second_use_median_seconds,
            "second_use_p75_seconds": value.second_use_p75_seconds,
        }
    if isinstance(value, Retention):
        return {
            "cohort_users": value.cohort_users,
            "retained_users": value.retained_users,
            "rate": value.rate,
        }
    raise TypeError(type(value))
