"""Headless Chromium clicks through the approver page (Selenium + Debian's chromedriver).

Needs ``apt-get install chromium chromium-driver`` and ``pip install selenium``; skipped with
the reason when either is missing. Selenium Manager is never used (both paths are given and
``SE_OFFLINE`` is set), so nothing is downloaded. ``PGVEIL_SCREENSHOT_DIR`` keeps the
screenshots somewhere stable for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import LiveServer

CHROMIUM = os.environ.get("PGVEIL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PGVEIL_CHROMEDRIVER", "/usr/bin/chromedriver")

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1400",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    keep = os.environ.get("PGVEIL_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _submit(driver, button) -> str:
    """Click a form's button, wait for the next page to replace this one, return its flash."""
    button.click()
    WebDriverWait(driver, 15).until(EC.staleness_of(button))
    return WebDriverWait(driver, 15).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".flash"))).text


def test_click_through(live: LiveServer, browser, tmp_path: Path) -> None:
    d = browser
    r1 = live.pending(user="dave", table="public.customers", columns=("ssn", "email"),
                      reason="ticket 123: refund dispute <needs SSN>", duration="30 minutes")
    r2 = live.pending(user="erin", table=None, columns=(), action="truncate",
                      statement="TRUNCATE public.orders", reason="clean up test data",
                      duration=600, requested_by="erin")
    r3 = live.pending(user="bob_db", table="public.orders", columns=("total",),
                      reason="my own request", requested_by="bob")

    d.get(live.url + "/")
    assert "sign in" in d.title
    _shot(d, tmp_path, "approver-login.png")
    d.find_element(By.ID, "token").send_keys("bob-token")
    d.find_element(By.ID, "login").click()
    WebDriverWait(d, 15).until(EC.presence_of_element_located((By.ID, "whoami")))
    assert "bob (admin)" in d.find_element(By.ID, "whoami").text

    cookie = d.get_cookie("pgveil_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    card = d.find_element(By.ID, f"req-{r1}")
    assert "ticket 123: refund dispute <needs SSN>" in card.find_element(By.CLASS_NAME, "reason").text
    assert card.find_element(By.CLASS_NAME, "exposure").text == "≈ 12,345 rows"
    assert "public.customers (ssn, email)" in card.text and "30 min" in card.text
    action_card = d.find_element(By.ID, f"req-{r2}")
    assert "truncate public . orders" in action_card.text.lower()  # normalized statement
    pending_shot = _shot(d, tmp_path, "approver-pending.png")

    # self-approval is refused and the error is shown
    flash = _submit(d, d.find_element(By.ID, f"req-{r3}").find_element(By.CSS_SELECTOR,
                                                                          "button.approve"))
    assert "cannot approve their own request" in flash
    assert d.find_elements(By.ID, f"req-{r3}")

    # approve r1: it leaves the pending list and shows up as an active grant
    flash = _submit(d, d.find_element(By.ID, f"req-{r1}").find_element(By.CSS_SELECTOR,
                                                                          "button.approve"))
    assert f"Approved request {r1}" in flash
    assert not d.find_elements(By.ID, f"req-{r1}")
    grant_id = next(r.grant_id for r in live.service.requests(state="approved"))
    row = d.find_element(By.ID, f"grant-{grant_id}")
    assert "dave" in row.text and "public.customers" in row.text
    live.service.use(grant_id)  # the proxy would record this when dave's query uses it
    refresh = d.find_element(By.LINK_TEXT, "Refresh")
    refresh.click()
    WebDriverWait(d, 15).until(EC.staleness_of(refresh))
    assert grant_id in d.find_element(By.ID, "uses").text
    _shot(d, tmp_path, "approver-granted.png")

    # deny r2 with a reason
    card = d.find_element(By.ID, f"req-{r2}")
    card.find_element(By.NAME, "reason").send_keys("use the staging database")
    assert f"Denied request {r2}" in _submit(d, card.find_element(By.CSS_SELECTOR, "button.deny"))
    assert "use the staging database" in d.find_element(By.ID, "decided").text
    assert live.service.requests(state="denied")[0].deny_reason == "use the staging database"

    # revoke the grant
    flash = _submit(d, d.find_element(By.ID, f"grant-{grant_id}").find_element(
        By.CSS_SELECTOR, "button.revoke"))
    assert f"Revoked grant {grant_id}" in flash
    assert d.find_elements(By.ID, "no-grants")
    _shot(d, tmp_path, "approver-final.png")

    # sign out
    d.find_element(By.ID, "logout").click()
    WebDriverWait(d, 15).until(EC.presence_of_element_located((By.ID, "token")))
    assert pending_shot.exists()
