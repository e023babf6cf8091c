"""Headless Chromium from Debian's packages, driven by selenium through Debian's chromedriver.

The browser is installed with apt-get when it is missing (CI runs as root on a fresh machine); where it
cannot be installed, the test is skipped with the reason. Nothing is downloaded by selenium itself: the
driver and the browser binary are given by path, so Selenium Manager never runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE = (390, 844)  # an iPhone 12-14 viewport, in CSS pixels


def ensure_chromium() -> str | None:
    """None when Chromium and its driver are there (installing them if need be), else why not."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if shutil.which("apt-get") is None:
        return "headless Chromium is needed and this machine has no apt-get to install Debian's chromium"
    if os.geteuid() != 0:
        return "headless Chromium is needed: run `apt-get install -y chromium chromium-driver` as root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not os.path.exists(CHROMEDRIVER):
        return f"could not install Debian's chromium: {result.stderr.strip()[-500:]}"
    return None


@contextmanager
def headless_chromium(window: tuple[int, int] = PHONE) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="synergy-chromium-") as profile:
        for argument in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()
