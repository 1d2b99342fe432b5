"""The dashboard in a real browser (Debian's chromium, headless, driven by Selenium) against a
real nats-server: the inbox lists pending approvals live, Approve resumes a run, and the run
page shows it completed with who approved it. Saves a screenshot of the inbox (to
``docs/inbox.png`` with ``TETHER_UPDATE_SCREENSHOT=1``).

Without chromium and chromedriver the test is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for_status
from tether import DurableContext, Tether
from tether.engine.config import Settings
from tether.operator.auth import TokenAuth
from tether.serve import TetherServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The docs' screenshot is refreshed only on request, so test runs leave the tree clean.
SCREENSHOT = (
    Path(__file__).parents[2] / "docs" / "inbox.png"
    if os.environ.get("TETHER_UPDATE_SCREENSHOT") == "1"
    else Path(tempfile.gettempdir()) / "tether-inbox.png"
)
TOKEN = "browser-token-0123456789"
AUTH = TokenAuth.parse(
    {TOKEN: {"name": "alice", "keys": ["approval:*"], "cancel": True}}, source="test"
)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = (
            f"browser test needs {', '.join(missing)}: "
            "apt-get install -y chromium chromium-driver (scripts/test.sh does it as root)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1500",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def define(app: Tether) -> tuple[Any, Any]:
    @app.durable_task(name="payment-approval", execution_timeout=timedelta(hours=24))
    async def payment(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step(
            "propose", lambda: {"pay": input["amount"], "currency": "EUR", "to": input["to"]}
        )
        decision = await ctx.wait_for_event(
            "approval:decision",
            expression=f"input.runId == '{ctx.run_id}'",
            timeout=timedelta(hours=4),
            description=f"Pay {input['amount']:,} EUR to {input['to']}",
            details=action,
        )
        return {"status": decision["decision"], "reason": decision.get("reason")}

    @app.durable_task(name="content-moderation", execution_timeout=timedelta(hours=24))
    async def moderation(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        await ctx.step(
            "classify",
            lambda: {"post": input["post"], "verdict": "remove", "labels": ["spam", "phishing"]},
        )
        decision = await ctx.wait_for_event(
            "approval:moderation", expression=f"input.runId == '{ctx.run_id}'"
        )
        return {"status": decision["decision"]}

    return payment, moderation


async def test_inbox_approve_then_run_page_shows_completed(
    app: Tether, settings: Settings, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    payment, moderation = define(app)
    loop = asyncio.get_running_loop()
    async with TetherServer(settings, http="127.0.0.1:0", auth=AUTH) as srv:
        assert srv.api is not None
        url = srv.api.url
        async with app.worker("w", slots=2):
            pay = await payment.run_no_wait({"amount": 1200, "to": "ACME Ltd"})
            await wait_for_status(app, pay.run_id, "waiting")

            async def later_run() -> str:
                ref = await moderation.run_no_wait({"post": "p-4411"})
                return ref.run_id

            def drive() -> str:
                wait = WebDriverWait(browser, 15)
                browser.get(f"{url}/#token={TOKEN}")
                card = wait.until(
                    ec.presence_of_element_located(
                        (By.CSS_SELECTOR, f'li[data-run-id="{pay.run_id}"]')
                    )
                )
                assert "Pay 1,200 EUR to ACME Ltd" in card.text
                assert "approval:decision" in card.text
                assert "Signed in as alice" in browser.find_element(By.ID, "who").text
                # a run that starts waiting now appears without a reload
                later = asyncio.run_coroutine_threadsafe(later_run(), loop).result(15)
                wait.until(
                    ec.presence_of_element_located((By.CSS_SELECTOR, f'li[data-run-id="{later}"]'))
                )
                wait.until(ec.text_to_be_present_in_element((By.ID, "inbox-count"), "(2)"))
                SCREENSHOT.parent.mkdir(exist_ok=True)
                browser.save_screenshot(str(SCREENSHOT))

                reason = card.find_element(By.CSS_SELECTOR, "input[name='reason']")
                label = browser.find_element(
                    By.CSS_SELECTOR, f"label[for='{reason.get_attribute('id')}']"
                )
                assert label.text == "Reason (optional)"
                reason.send_keys("within budget")
                card.find_element(By.XPATH, ".//button[normalize-space()='Approve']").click()
                wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "approved"))
                wait.until(ec.staleness_of(card))  # the decided run leaves the inbox

                browser.get(f"{url}/runs/{pay.run_id}")
                wait.until(ec.text_to_be_present_in_element((By.ID, "run-status"), "completed"))
                return str(browser.find_element(By.ID, "timeline").text)

            timeline = await asyncio.to_thread(drive)
            assert await pay.result(timeout=15) == {"status": "approve", "reason": "within budget"}
    assert "Approved by alice: “within budget”" in timeline
    assert "Resumed: attempt 2" in timeline
    assert "Completed" in timeline
    info = await app.runs.get(pay.run_id)
    [satisfied] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert satisfied.data["metadata"] == {"approver": "alice"}
    assert SCREENSHOT.stat().st_size > 10_000
