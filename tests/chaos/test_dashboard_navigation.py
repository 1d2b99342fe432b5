"""Twelve page changes in one Chromium tab (links, back and forward) between the inbox, the
runs list and run pages: every page loads its data and its live stream.

Chromium keeps a left page in its back/forward cache, and with it any request still open;
the dashboard's ``/api/stream`` is one. Unless the page closes it on ``pagehide``, a few page
changes use up the six connections per host and the next page never loads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.chaos.report import Row, emit
from tests.helpers import wait_for_status
from tests.integration.test_dashboard_browser import AUTH, TOKEN, define
from tether import Tether
from tether.engine.config import Settings
from tether.serve import TetherServer

pytestmark = pytest.mark.chaos

PAGE_WITHIN_S = 10.0


@dataclass
class Step:
    label: str
    go: Callable[[Any], None]  # acts on the driver
    selector: str | Callable[[], str]  # present once the page has loaded its data


def navigation(url: str, pay: str, mod: str, fresh: Callable[[], str]) -> list[Step]:
    from selenium.webdriver.common.by import By

    def click(by: str, value: str) -> Callable[[Any], None]:
        return lambda driver: driver.find_element(by, value).click()

    inbox, runs = f'li[data-run-id="{pay}"]', f'#runs tr[data-run-id="{pay}"]'
    listed = f'[aria-label="run {pay}"]'
    later: dict[str, str] = {}

    def new() -> str:  # the run requested while a page sat in the cache
        return f'[data-run-id="{later["run"]}"]'

    def forward_after_new_run(driver: Any) -> None:
        later["run"] = fresh()  # requested while the runs page sits in the cache
        driver.forward()

    return [
        Step("open the inbox", lambda d: d.get(f"{url}/#token={TOKEN}"), inbox),
        Step("Runs in the menu", click(By.LINK_TEXT, "Runs"), runs),
        Step("a run in the list", click(By.CSS_SELECTOR, listed), "#run-status"),
        Step("Inbox in the menu", click(By.PARTIAL_LINK_TEXT, "Inbox"), inbox),
        Step("a card's run link", click(By.CSS_SELECTOR, f"#title-{mod} a"), "#timeline li"),
        Step("Runs in the menu", click(By.LINK_TEXT, "Runs"), runs),
        Step("back to the run", lambda d: d.back(), '#run-title[data-status="waiting"]'),
        Step("back to the inbox", lambda d: d.back(), inbox),
        Step("forward to the run", lambda d: d.forward(), "#timeline li"),
        Step("forward to the runs", forward_after_new_run, lambda: f"#runs {new()}"),
        Step("Inbox in the menu", click(By.PARTIAL_LINK_TEXT, "Inbox"), lambda: f"li{new()}"),
        Step("a run by address", lambda d: d.get(f"{url}/runs/{pay}"), "#timeline li"),
    ]  # fmt: skip


def walk(driver: Any, steps: list[Step]) -> tuple[list[str], int, str]:
    """Take the steps in one tab; returns those that loaded, how many pages came back from
    the back/forward cache, and why the walk stopped (empty if it did not)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_page_load_timeout(PAGE_WITHIN_S)
    loaded: list[str] = []
    restored = 0
    for n, step in enumerate(steps, 1):
        try:
            step.go(driver)
            wait = WebDriverWait(driver, PAGE_WITHIN_S)
            selector = step.selector if isinstance(step.selector, str) else step.selector()
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))
            wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
            # a page that still carries the mark left on it came back from the cache
            restored += bool(driver.execute_script("return window.chaosMark === 1"))
            driver.execute_script("window.chaosMark = 1")
        except WebDriverException as exc:
            live = ""
            with contextlib.suppress(WebDriverException):
                live = driver.find_element(By.ID, "live").text
            reason = f"step {n} ({step.label}) did not load within {PAGE_WITHIN_S:g}s"
            return loaded, restored, f"{reason}: {type(exc).__name__}, live: {live!r}"
        loaded.append(step.label)
    return loaded, restored, ""


async def test_dashboard_survives_page_changes_in_one_tab(
    app: Tether, settings: Settings, browser: Any
) -> None:
    payment, moderation = define(app)
    loop = asyncio.get_running_loop()
    async with TetherServer(settings, http="127.0.0.1:0", auth=AUTH) as srv:
        assert srv.api is not None
        async with app.worker("w", slots=2):
            pay = await payment.run_no_wait({"amount": 1200, "to": "ACME Ltd"})
            mod = await moderation.run_no_wait({"post": "p-1"})
            for ref in (pay, mod):
                await wait_for_status(app, ref.run_id, "waiting")

            async def new_run() -> str:
                later = await payment.run_no_wait({"amount": 5, "to": "Later Ltd"})
                await wait_for_status(app, later.run_id, "waiting")
                return str(later.run_id)

            def fresh() -> str:
                return asyncio.run_coroutine_threadsafe(new_run(), loop).result(15)

            steps = navigation(srv.api.url, pay.run_id, mod.run_id, fresh)
            loaded, restored, stopped = await asyncio.to_thread(walk, browser, steps)
    row = Row(
        "dashboard navigation",
        runs=len(steps),
        stuck=len(steps) - len(loaded),
        note=f"runs = page loads; {len(loaded)} loaded, {restored} of them from the "
        f"back/forward cache. {stopped}",
    )
    emit(row)
    assert not stopped, f"{stopped}; loaded before it: {loaded}"
    assert restored >= 1, "no page came back from the back/forward cache: the test lost its point"
