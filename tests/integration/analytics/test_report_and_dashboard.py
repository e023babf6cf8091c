"""`synergy kpi` over the population: tables, --json, and the HTML report in real headless Chromium (with a
screenshot); the Grafana dashboard's SQL run against the same rows."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.analytics.browser import ensure_chromium, headless_chromium
from tests.integration.analytics.test_kpis_over_the_log import RANGE, population  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "kpi-dashboards" / "analytics-kpis.json"
ARTIFACTS = ROOT / ".local" / "artifacts"


def synergy(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "synergy"), "kpi", *args,
                           "--since", RANGE["since"], "--until", RANGE["until"]],
                          env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_cli_prints_the_funnel_table_and_the_routes_json(population, database_url) -> None:  # noqa: F811
    _, _, brand_a, _ = population
    table = await asyncio.to_thread(synergy, database_url, "funnel", "--brand", brand_a.brand_id, "--steps",
                                    "user_session_started,product_scanned,order_completed", "--window", "7d")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[2]) == ["user_session_started", "4", "-", "100.0 %", "-"]
    assert re.split(r"\s{2,}", lines[3]) == ["product_scanned", "3", "75.0 %", "75.0 %", "2.0 h"]
    assert re.split(r"\s{2,}", lines[4]) == ["order_completed", "1", "33.3 %", "25.0 %", "47.0 h"]
    retention = await asyncio.to_thread(synergy, database_url, "retention", "--brand", brand_a.brand_id, "--start",
                                        "user_session_started", "--return", "product_scanned", "--json")
    assert json.loads(retention.stdout) == {"cohort_users": 4, "retained_users": 2, "rate": 0.5}
    unknown = await asyncio.to_thread(synergy, database_url, "funnel", "--brand", "no-such-brand", "--steps", "a,b")
    assert unknown.returncode != 0 and "no brand 'no-such-brand'" in unknown.stderr


async def test_the_html_report_renders_in_headless_chromium_without_loading_anything(
    population, database_url, tmp_path  # noqa: F811
) -> None:
    if reason := await asyncio.to_thread(ensure_chromium):
        pytest.skip(reason)
    _, _, brand_a, _ = population
    page = tmp_path / "report.html"
    result = await asyncio.to_thread(synergy, database_url, "report", "--brand", brand_a.brand_id,
                                     "--signup", "user_session_started", "--redeem", "order_completed",
                                     "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert "7-day activation (product_scanned + order_completed): 1 of 4 = 25.0 %" in result.stdout
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")

    def look() -> dict:
        from selenium.webdriver.common.by import By

        with headless_chromium() as driver:
            driver.get(page.as_uri())
            bars = driver.find_elements(By.CSS_SELECTOR, "#funnel-chart rect.bar")
            days = driver.find_elements(By.CSS_SELECTOR, "#retention-chart rect.bar")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "analytics-report.png"
            driver.save_screenshot(str(shot))
            requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
            fetched = {r["params"]["request"]["url"] for r in requests if r["method"] == "Network.requestWillBeSent"}
            return {
                "widths": [round(float(b.get_attribute("width"))) for b in bars],
                "rendered": [b.size["width"] for b in bars],
                "days": len(days),
                "activation": driver.find_element(By.ID, "activation").text,
                "fetched": fetched,
                "shot": shot.stat().st_size,
            }

    seen = await asyncio.to_thread(look)
    # bars: session 4 (the full 360 px), session again as signup 4, scan 3, order 1 (14-day window)
    assert seen["days"] == 14
    assert seen["widths"][0] == 360 and seen["widths"][0] > seen["widths"][2] > 0
    assert all(w >= 0 for w in seen["rendered"]) and seen["rendered"][0] > 300
    assert seen["activation"].startswith("7-day activation\n25.0 %")
    # nothing but the page itself (Chromium's own chrome:// new-tab page aside): no CDN, no fonts
    assert {u for u in seen["fetched"] if not u.startswith(("chrome", "data:"))} == {page.as_uri()}
    assert seen["shot"] > 10_000


async def test_the_grafana_panels_sql_draws_the_same_funnel_and_retention(population) -> None:  # noqa: F811
    _, pool, brand_a, _ = population
    board = json.loads(DASHBOARD.read_text())
    assert {p["targets"][0]["datasource"]["uid"] for p in board["panels"]} == {"synergy-postgres"}
    values = {"${brand}": brand_a.brand_id, "$__timeFrom()": f"'{RANGE['since']}'::timestamptz",
              "$__timeTo()": f"'{RANGE['until']}'::timestamptz", "${window}": "7 days",
              "${step1}": "user_session_started", "${step2}": "product_scanned", "${step3}": "order_completed",
              "${step4}": "reward_redeemed", "${start}": "user_session_started", "${return}": "product_scanned"}

    def sql(title_start: str) -> str:
        panel = next(p for p in board["panels"] if p["title"].startswith(title_start))
        text = panel["targets"][0]["rawSql"]
        for name, value in values.items():
            text = text.replace(name, value)
        return text

    funnel = await pool.fetch(sql("Funnel"))
    assert [(r["step"], r["users"]) for r in funnel] == [
        ("1 user_session_started", 4), ("2 product_scanned", 3), ("3 order_completed", 1), ("4 reward_redeemed", 0)]
    curve = await pool.fetch(sql("Retention by day"))
    assert [float(r["retained_percent"]) for r in curve] == [50.0, 25.0, 0.0, 25.0, 0.0, 0.0, 0.0, 25.0, 25.0,
                                                            0.0, 0.0, 0.0, 0.0, 0.0]
    week1 = await pool.fetchrow(sql("Week-1"))
    assert (float(week1["week_1_retention_percent"]), week1["cohort_users"]) == (50.0, 4)
