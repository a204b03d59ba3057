"""The approver page in headless Chromium, against a real pgveil process.

A request made from psql through the console shows up on the page; the approver signs in
with a token, approves it with the form, and the analyst's already-open session sees the
real value on its next statement. Launch as in tests/web/test_browser.py (Debian's
chromium + chromedriver, Selenium Manager never used); skipped when any is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import psycopg
import pytest

import chromium

chromium.require()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from jit_e2e_fixtures import jit_db, schema_path, start_proxy, tokens, watch  # noqa: E402,F401
from jit_e2e_helpers import (  # noqa: E402
    ANALYST, MASKED_SSN, SSN_1, Api, JitProxy, Tokens, cleanup_jit, console_request, jit_toml,
    policy_toml, ssn_of,
)



@pytest.fixture(scope="module")
def page_proxy(pg, jit_db, tokens: Tokens, start_proxy, tmp_path_factory) -> JitProxy:
    state = tmp_path_factory.mktemp("jit-page") / "state.db"
    extra = "\n".join([tokens.toml(), policy_toml(sorted({"postgres", pg.superuser})),
                       jit_toml(state_url=f"sqlite:///{state}")])
    return start_proxy("pgveil-page", extra)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with chromium.browser(tmp_path) as driver:
        yield driver


def _shot(driver, tmp_path: Path, name: str) -> Path:
    return chromium.screenshot(driver, tmp_path, name)


def test_approve_on_the_page_unmasks_the_open_session(page_proxy, jit_db, tokens, browser,
                                                      tmp_path, watch):
    proxy = watch(page_proxy)
    cleanup_jit(proxy, tokens)
    d = browser
    with psycopg.connect(proxy.dsn(jit_db, ANALYST), autocommit=True) as analyst:
        assert ssn_of(analyst) == MASKED_SSN
        reason = "INC-9 chargeback <needs SSN> & more"
        rid, state = console_request(proxy, ANALYST, "public.customers", "ssn", "30 minutes",
                                     reason)
        assert state == "pending"

        d.get(proxy.admin_url + "/")
        assert "sign in" in d.title
        d.find_element(By.ID, "token").send_keys(tokens.approver.value)
        d.find_element(By.ID, "login").click()
        WebDriverWait(d, 15).until(EC.presence_of_element_located((By.ID, "whoami")))
        assert "boss (approver)" in d.find_element(By.ID, "whoami").text

        card = d.find_element(By.ID, f"req-{rid}")
        assert card.find_element(By.CLASS_NAME, "reason").text == reason  # escaped, shown as is
        assert "public.customers (ssn)" in card.text and ANALYST in card.text
        _shot(d, tmp_path, "jit-page-pending.png")
        assert ssn_of(analyst) == MASKED_SSN

        button = card.find_element(By.CSS_SELECTOR, "button.approve")
        button.click()
        chromium.wait_replaced(d, button)
        flash = WebDriverWait(d, 15).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, ".flash"))).text
        assert f"Approved request {rid}" in flash
        assert not d.find_elements(By.ID, f"req-{rid}")
        req = [r for r in Api(proxy.admin_url, tokens.approver).requests() if r["id"] == rid][0]
        assert req["state"] == "approved" and req["decided_by"] == "boss"
        row = d.find_element(By.ID, f"grant-{req['grant_id']}")
        assert ANALYST in row.text and "public.customers" in row.text

        assert ssn_of(analyst) == SSN_1  # the same open session, next statement
        shot = _shot(d, tmp_path, "jit-page-approved.png")
        assert shot.read_bytes()[:8] == chromium.PNG_MAGIC
    cleanup_jit(proxy, tokens)
