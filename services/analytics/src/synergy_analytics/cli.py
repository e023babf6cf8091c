"""`synergy kpi funnel|time-to-first|retention|report`: the KPI read API's answers, as tables or --json.

The commands run the service's own queries against DATABASE_URL, for one brand (its id or slug).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
from synergy_common.db import create_pool
from synergy_common.durations import parse_duration

from synergy_analytics import queries, report

T = TypeVar("T")


def _time(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _run(database_url: str | None, brand: str, work: Callable[[asyncpg.Pool, int], Awaitable[T]]) -> T:
    from synergy_common.settings import common_settings

    async def go() -> T:
        pool = await create_pool(database_url or common_settings().database_url, min_size=1, max_size=2)
        try:
            brand_id = await pool.fetchval("SELECT id FROM brands WHERE slug = $1 OR id::text = $1", brand)
            if brand_id is None:
                raise click.ClickException(f"no brand {brand!r} (give its id or slug)")
            return await work(pool, int(brand_id))
        finally:
            await pool.close()

    return asyncio.run(go())


def _options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--brand", required=True, help="the brand's id or slug"),
            click.option("--since", default=None, help="ISO 8601; default: 30 days before --until"),
            click.option("--until", default=None, help="ISO 8601; default: now"),
            click.option("--json", "as_json", is_flag=True, help="print JSON, as the HTTP route answers"),
            click.option(
                "--database-url", envvar="DATABASE_URL", default=None, help="defaults to DATABASE_URL"
            ),
        ]
    ):
        command = option(command)
    return command


def _range(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    end = _time(until, datetime.now(UTC))
    return _time(since, end - timedelta(days=30)), end


def _emit(value: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(value, indent=2) if as_json else text(value))


@click.group()
def kpi() -> None:
    """Seed 002's KPIs over user_action_log, on event time, per brand."""


@kpi.command("funnel")
@_options
@click.option("--steps", required=True, help="comma-separated event names, 2 to 10")
@click.option("--window", default="14d", show_default=True, help="conversion window (90s, 15m, 24h, 7d)")
@click.option("--order", type=click.Choice(["ordered", "strict"]), default="ordered", show_default=True)
def funnel(
    brand: str,
    since: str | None,
    until: str | None,
    as_json: bool,
    database_url: str | None,
    steps: str,
    window: str,
    order: str,
) -> None:
    """Users reaching each step, conversions and the median time between steps."""
    start, end = _range(since, until)
    names = [s.strip() for s in steps.split(",") if s.strip()]
    result = _run(
        database_url,
        brand,
        lambda pool, b: queries.funnel(
            pool, b, names, start, end, parse_duration(window), "strict" if order == "strict" else "ordered"
        ),
    )
    _emit(
        queries.as_json(result), as_json, lambda v: report.table(report.FUNNEL_HEADERS, report.funnel_rows(v))
    )


@kpi.command("time-to-first")
@_options
@click.option("--action", required=True)
@click.option("--from", "from_action", required=True, help="the event the clock starts at")
def time_to_first(
    brand: str,
    since: str | None,
    until: str | None,
    as_json: bool,
    database_url: str | None,
    action: str,
    from_action: str,
) -> None:
    """Median and P75 time to the first and second use of an action."""
    start, end = _range(since, until)
    result = queries.as_json(
        _run(
            database_url,
            brand,
            lambda pool, b: queries.time_to_first(pool, b, action, from_action, start, end),
        )
    )
    _emit(result, as_json, lambda v: report.table(report.TTF_HEADERS, [report.ttf_row(v)]))


@kpi.command("retention")
@_options
@click.option("--start", "start_action", required=True)
@click.option("--return", "return_action", required=True, help="one event name, or several comma-separated")
@click.option("--week", default=1, show_default=True, help="week n is days 7n to 7n+6 after the start")
def retention(
    brand: str,
    since: str | None,
    until: str | None,
    as_json: bool,
    database_url: str | None,
    start_action: str,
    return_action: str,
    week: int,
) -> None:
    """The share of the cohort that came back in week n (24-hour windows from each user's start)."""
    start, end = _range(since, until)
    result = queries.as_json(
        _run(
            database_url,
            brand,
            lambda pool, b: queries.retention(
                pool, b, start_action, return_action.split(","), start, end, week
            ),
        )
    )
    _emit(
        result,
        as_json,
        lambda v: report.table(
            ("cohort", "retained", "rate"),
            [[v["cohort_users"], v["retained_users"], report.percent_text(v["rate"])]],
        ),
    )


@kpi.command("report")
@_options
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write one self-contained HTML page with the charts",
)
@click.option("--visit", default=report.ReportSpec.visit, show_default=True)
@click.option("--signup", default=report.ReportSpec.signup, show_default=True)
@click.option("--scan", default=report.ReportSpec.scan, show_default=True)
@click.option("--redeem", default=report.ReportSpec.redeem, show_default=True)
def kpi_report(
    brand: str,
    since: str | None,
    until: str | None,
    as_json: bool,
    database_url: str | None,
    html_file: Path | None,
    visit: str,
    signup: str,
    scan: str,
    redeem: str,
) -> None:
    """Seed 002's launch KPI set: funnel, time to first value, 7-day activation, week-1 retention."""
    start, end = _range(since, until)
    spec = report.ReportSpec(visit=visit, signup=signup, scan=scan, redeem=redeem)
    result = _run(database_url, brand, lambda pool, b: report.gather(pool, b, start, end, spec))
    if html_file is not None:
        html_file.write_text(report.html_report(result), encoding="utf-8")
        click.echo(f"wrote {html_file}", err=True)
    _emit(result, as_json, report.text_report)


if __name__ == "__main__":
    sys.exit(kpi())
