"""Headless Chromium for the page tests: Debian's chromium + chromedriver through Selenium.

Selenium Manager is never used (both paths are given and ``SE_OFFLINE`` is set), so nothing
is downloaded. A module that needs the browser calls :func:`require` at import: it skips with
the reason when a piece is missing. ``PGVEIL_SCREENSHOT_DIR`` keeps screenshots somewhere
stable for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = os.environ.get("PGVEIL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PGVEIL_CHROMEDRIVER", "/usr/bin/chromedriver")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1400")


def require() -> None:
    """Skip the calling module when the browser is missing (fail in CI, which installs it)."""
    reason = None
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    else:
        try:
            import selenium.webdriver  # noqa: F401
        except ImportError:
            reason = "needs selenium (pip install selenium)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@contextmanager
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    old = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch anything
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        if old is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = old


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Save a screenshot, check it is a real PNG, keep a copy if asked to."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    keep = os.environ.get("PGVEIL_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def wait_replaced(driver, element, timeout: float = 15.0) -> None:
    """Wait until ``element``'s page has been replaced by the next one.

    Chromium's driver sometimes answers a question about an element of a page that is being
    torn down with an "unhandled inspector error" instead of "stale element": both mean the
    old page is gone.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_driver) -> bool:
        try:
            element.is_enabled()
            return False
        except WebDriverException:
            return True

    WebDriverWait(driver, timeout).until(gone)
