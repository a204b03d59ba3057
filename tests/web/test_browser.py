"""Headless Chromium clicks through the approver page (Selenium + Debian's chromedriver).

Needs ``apt-get install chromium chromium-driver`` and ``pip install selenium``; skipped with
the reason when either is missing. Selenium Manager is never used (both paths are given and
``SE_OFFLINE`` is set), so nothing is downloaded. ``PGVEIL_SCREENSHOT_DIR`` keeps the
screenshots somewhere stable for a person to look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .conftest import LiveServer

import chromium

chromium.require()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402



@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with chromium.browser(tmp_path) as driver:
        yield driver


def _shot(driver, tmp_path: Path, name: str) -> Path:
    return chromium.screenshot(driver, tmp_path, name)


def _submit(driver, button) -> str:
    """Click a form's button, wait for the next page to replace this one, return its flash."""
    button.click()
    chromium.wait_replaced(driver, button)
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
    chromium.wait_replaced(d, refresh)
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
