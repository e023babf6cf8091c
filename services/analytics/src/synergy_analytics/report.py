"""Seed 002's launch KPI report: gathered from Postgres, printed as tables, or one self-contained HTML page.

The page has no script and loads nothing: the funnel and the retention curve are inline SVG.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from synergy_analytics import queries
from synergy_analytics.kpis import DEFAULT_WINDOW


@dataclass(frozen=True)
class ReportSpec:
    """This app's version of seed 002's launch set: visit -> signup -> first scan -> first redemption."""

    visit: str = "user_session_started"
    signup: str = "identify"
    scan: str = "product_scanned"
    redeem: str = "reward_redeemed"
    core_actions: tuple[str, ...] = (
        "product_scanned",
        "reward_redeemed",
        "wishlist_item_added",
        "referral_initiated",
        "order_completed",
    )
    window: timedelta = DEFAULT_WINDOW
    retention_days: int = 14
    activation_bundle: tuple[str, ...] = field(default=())

    @property
    def funnel_steps(self) -> list[str]:
        return [self.visit, self.signup, self.scan, self.redeem]

    @property
    def bundle(self) -> list[str]:
        return list(self.activation_bundle or (self.scan, self.redeem))


async def gather(
    db: asyncpg.Pool, brand_id: int, since: datetime, until: datetime, spec: ReportSpec = ReportSpec()
) -> dict[str, Any]:
    funnel = await queries.funnel(db, brand_id, spec.funnel_steps, since, until, spec.window)
    first_value = [
        queries.as_json(await queries.time_to_first(db, brand_id, action, spec.signup, since, until))
        for action in spec.core_actions
    ]
    activation = await queries.activation(db, brand_id, spec.signup, spec.bundle, since, until)
    week1 = await queries.retention(db, brand_id, spec.signup, list(spec.core_actions), since, until, week=1)
    curve = await queries.retention_curve(
        db, brand_id, spec.signup, list(spec.core_actions), since, until, spec.retention_days
    )
    return {
        "brand_id": brand_id,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "funnel": queries.as_json(funnel),
        "time_to_first_value": first_value,
        "activation_7_day": {**queries.as_json(activation), "bundle": spec.bundle, "from": spec.signup},
        "retention_week_1": {
            **queries.as_json(week1),
            "start": spec.signup,
            "return": list(spec.core_actions),
        },
        "retention_by_day": [{"day": day, **queries.as_json(r)} for day, r in enumerate(curve)],
    }


def seconds_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def percent_text(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def funnel_rows(funnel: dict[str, Any]) -> list[list[object]]:
    return [
        [
            s["name"],
            s["users"],
            percent_text(s["conversion_from_previous"]),
            percent_text(s["conversion_from_first"]),
            seconds_text(s["median_seconds_from_previous"]),
        ]
        for s in funnel["steps"]
    ]


FUNNEL_HEADERS = ("step", "users", "from previous", "from first", "median from previous")
TTF_HEADERS = ("action", "cohort", "users", "median first", "p75 first", "median second", "p75 second")


def ttf_row(t: dict[str, Any]) -> list[object]:
    return [
        t["action"],
        t["cohort_users"],
        t["users"],
        seconds_text(t["median_seconds"]),
        seconds_text(t["p75_seconds"]),
        seconds_text(t["second_use_median_seconds"]),
        seconds_text(t["second_use_p75_seconds"]),
    ]


def text_report(report: dict[str, Any]) -> str:
    funnel = report["funnel"]
    activation, week1 = report["activation_7_day"], report["retention_week_1"]
    window_days = funnel["window_seconds"] / 86400
    return "\n\n".join(
        [
            f"Launch KPIs, brand {report['brand_id']}, {report['since']} to {report['until']} (event time)",
            f"Funnel ({funnel['order']}, {window_days:g}-day window)\n"
            + table(FUNNEL_HEADERS, funnel_rows(funnel)),
            f"Time to first value, from {activation['from']}\n"
            + table(TTF_HEADERS, [ttf_row(t) for t in report["time_to_first_value"]]),
            f"7-day activation ({' + '.join(activation['bundle'])}): {activation['retained_users']} of "
            f"{activation['cohort_users']} = {percent_text(activation['rate'])}",
            f"Week-1 retention (days 7 to 13, any core action): {week1['retained_users']} of "
            f"{week1['cohort_users']} = {percent_text(week1['rate'])}",
        ]
    )


def _funnel_svg(steps: Sequence[dict[str, Any]]) -> str:
    width, bar_height, gap, label = 640, 34, 12, 190
    top = max((s["users"] for s in steps), default=0) or 1
    height = len(steps) * (bar_height + gap) + gap
    parts = [
        f'<svg id="funnel-chart" role="img" aria-label="funnel" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for index, step in enumerate(steps):
        y = gap + index * (bar_height + gap)
        length = (width - label - 90) * step["users"] / top
        parts.append(f'<text x="0" y="{y + 22}" class="label">{html.escape(step["name"])}</text>')
        parts.append(
            f'<rect class="bar" x="{label}" y="{y}" width="{length:.1f}" height="{bar_height}" '
            f'rx="3"><title>{step["users"]} users</title></rect>'
        )
        parts.append(
            f'<text x="{label + length + 8:.1f}" y="{y + 22}" class="value">{step["users"]} '
            f"({percent_text(step['conversion_from_first'])})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _retention_svg(days: Sequence[dict[str, Any]]) -> str:
    width, height, bottom, left = 640, 240, 30, 40
    step = (width - left) / max(len(days), 1)
    parts = [
        f'<svg id="retention-chart" role="img" aria-label="retention by day" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" class="axis"/>',
        '<text x="0" y="14" class="value">100 %</text>',
    ]
    for index, day in enumerate(days):
        rate = day["rate"]
        bar = (height - bottom - 20) * rate
        x = left + index * step + 3
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{height - bottom - bar:.1f}" width="{step - 6:.1f}" '
            f'height="{bar:.1f}"><title>day {day["day"]}: {percent_text(rate)}</title></rect>'
        )
        parts.append(
            f'<text x="{x + (step - 6) / 2:.1f}" y="{height - 10}" class="tick" '
            f'text-anchor="middle">{day["day"]}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1d2330;max-width:60rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:.3rem .7rem;border-bottom:1px solid #dde;
text-align:left}th{background:#f3f4f8}
.bar{fill:#3b6fd8}.label,.value,.tick{font-size:13px;fill:#1d2330}.axis{stroke:#889}
.kpi{display:inline-block;margin-right:2rem;padding:.6rem 1rem;background:#f3f4f8;border-radius:6px}
.kpi b{display:block;font-size:1.4rem}
"""


def html_report(report: dict[str, Any]) -> str:
    funnel, activation, week1 = report["funnel"], report["activation_7_day"], report["retention_week_1"]
    title = f"Launch KPIs, brand {report['brand_id']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(report["since"])} to {html.escape(report["until"])}, on event time.</p>
<div class="kpi" id="activation">7-day activation<b>{percent_text(activation["rate"])}</b>
{activation["retained_users"]} of {activation["cohort_users"]}</div>
<div class="kpi" id="week1">Week-1 retention<b>{percent_text(week1["rate"])}</b>
{week1["retained_users"]} of {week1["cohort_users"]}</div>
<h2>Funnel ({html.escape(funnel["order"])}, {funnel["window_seconds"] / 86400:g}-day window)</h2>
{_funnel_svg(funnel["steps"])}
{_html_table(FUNNEL_HEADERS, funnel_rows(funnel))}
<h2>Retention by day since {html.escape(week1["start"])} (24-hour windows)</h2>
{_retention_svg(report["retention_by_day"])}
<h2>Time to first value, and to second use</h2>
{_html_table(TTF_HEADERS, [ttf_row(t) for t in report["time_to_first_value"]])}
</body></html>
"""
