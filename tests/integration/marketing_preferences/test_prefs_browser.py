"""The preference centre in a real headless Chromium: tick, untick, save, reload, read back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.integration.marketing_preferences.browser import ensure_chromium, headless_chromium
from tests.integration.marketing_preferences.harness import (
    make_user,
    settings_for,
    stored_preferences,
    token,
)
from tests.support import free_port

SCREENSHOTS = Path(__file__).resolve().parents[3] / ".local" / "screenshots"


@pytest.fixture(scope="module")
def chromium() -> None:
    if reason := ensure_chromium():
        pytest.skip(reason)


@pytest.fixture(scope="module")
async def served(marketing, kafka_bootstrap: str) -> AsyncIterator[str]:
    """The same service as `marketing`, behind a real HTTP server for the browser."""
    from synergy_marketing.app import create_app
    from synergy_marketing.publisher import MarketingPublisher

    port = free_port()
    settings = settings_for(
        marketing.database_url, kafka_bootstrap, marketing_public_url=f"http://127.0.0.1:{port}"
    )
    app = create_app(settings, publisher=MarketingPublisher(kafka_bootstrap, topic=marketing.topic))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


def boxes(driver: Any) -> dict[str, bool]:
    from selenium.webdriver.common.by import By

    return {
        element.get_attribute("name"): element.is_selected()
        for element in driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox]")
    }


def click(driver: Any, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, element_id).click()


def save_and_wait(driver: Any) -> None:
    """Submit, then wait for the new page: the old one goes stale first (after an earlier save it already
    shows the saved notice, so waiting for the notice alone could read the old page)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old_form = driver.find_element(By.ID, "preferences-form")
    click(driver, "save")
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old_form))
    WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.ID, "saved")))


def drive_the_preference_centre(url: str) -> dict[str, Any]:
    """Runs in a thread: the browser is synchronous, the service runs on the test's event loop."""
    seen: dict[str, Any] = {}
    with headless_chromium() as driver:
        driver.get(url)
        seen["initial"] = boxes(driver)
        seen["title"] = driver.title
        seen["fits_the_phone"] = driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        )
        seen["button_colour"] = driver.execute_script(
            "return getComputedStyle(document.getElementById('save')).backgroundColor"
        )
        click(driver, "newsletter")
        click(driver, "price_drop_alerts")
        click(driver, "abandoned_cart_emails")
        save_and_wait(driver)
        seen["after_save_url"] = driver.current_url
        driver.refresh()
        seen["reloaded"] = boxes(driver)
        seen["saved_notice_after_reload"] = bool(driver.find_elements("id", "saved"))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "preference-centre-phone.png"))
        click(driver, "abandoned_cart_emails")  # tick it again
        click(driver, "unsubscribed")
        save_and_wait(driver)
        seen["unsubscribed"] = boxes(driver)
        driver.save_screenshot(str(SCREENSHOTS / "preference-centre-unsubscribed.png"))
        seen["console"] = [entry["message"] for entry in driver.get_log("browser")]
    return seen


async def test_the_preference_centre_in_headless_chromium(chromium, marketing, served) -> None:
    user = await make_user(marketing.db, marketing.brand, email="browser@example.com")
    url = f"{served}/preferences?token={token('preferences', marketing.brand, user)}"
    seen = await asyncio.to_thread(drive_the_preference_centre, url)

    everything = {
        "marketing_emails": True,
        "abandoned_cart_emails": True,
        "price_drop_alerts": True,
        "back_in_stock_alerts": True,
        "product_recommendations": True,
        "newsletter": True,
        "browse_abandonment_emails": True,
        "promotional_emails": True,
        "unsubscribed": False,
    }
    assert seen["title"] == "Email preferences"
    assert seen["initial"] == everything
    assert seen["fits_the_phone"] is True
    assert seen["button_colour"] == "rgb(10, 102, 194)"  # the stylesheet loaded under the CSP
    assert seen["after_save_url"].endswith("&saved=1")
    assert seen["reloaded"] == {
        **everything,
        "newsletter": False,
        "price_drop_alerts": False,
        "abandoned_cart_emails": False,
    }
    assert seen["saved_notice_after_reload"] is True
    assert seen["unsubscribed"] == {
        **everything,
        "newsletter": False,
        "price_drop_alerts": False,
        "unsubscribed": True,
    }
    assert not [m for m in seen["console"] if "Content Security Policy" in m], seen["console"]
    assert (SCREENSHOTS / "preference-centre-phone.png").stat().st_size > 1000

    stored = await stored_preferences(marketing.db, marketing.brand, user)
    assert (stored["newsletter"], stored["price_drop_alerts"], stored["abandoned_cart_emails"]) == (
        False,
        False,
        True,
    )
    assert stored["unsubscribed"] is True and stored["unsubscribed_at"] is not None
    async with httpx.AsyncClient(base_url=served) as client:
        api = (await client.get(f"/v1/users/{user}/email-preferences", headers=marketing.brand.auth)).json()
    assert api["newsletter"] is False and api["unsubscribed"] is True and api["marketing_emails"] is True
