"""The dashboard in a real browser (Debian's chromium, headless, driven by Selenium) against a
real nats-server: the inbox lists pending approvals live, Approve and Reject resume runs, the
runs page says who decided each (or that the wait expired), and the run page shows the run's
input, its decision and its timeline, and draws a workflow run's graph, whose gate the inbox
decides. A read-only token sees the buttons disabled with the reason, a token for other keys
too; a stale ``#token=`` link says so instead of connecting forever; the pages fit a 390 px
screen; ``/favicon.ico`` exists. Saves a screenshot of the inbox (to ``docs/inbox.png`` with
``TETHER_UPDATE_SCREENSHOT=1``).

Without chromium and chromedriver the test is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import wait_for_status
from tests.integration.content_review import Post, content_review
from tether import DurableContext, Tether, WaitTimeoutError
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
READER = "browser-reader-0123456789"  # read-only
MODERATOR = "browser-moderator-01234567"  # may decide approval:moder* only, not cancel
AUTH = TokenAuth.parse(
    {
        TOKEN: {"name": "alice", "keys": ["approval:*", "review:*"], "cancel": True},
        READER: {"name": "auditor"},
        MODERATOR: {"name": "mia", "keys": ["approval:moder*"]},
    },
    source="test",
)
PAGES = ("/", "/runs", "/runs/some-run")


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
                reason = card.find_element(By.CSS_SELECTOR, "input[name='reason']")
                reason.send_keys("within")
                # a run that starts waiting now appears without a reload, and the card
                # being typed into keeps the focus through the refreshes that add it
                later = asyncio.run_coroutine_threadsafe(later_run(), loop).result(15)
                wait.until(
                    ec.presence_of_element_located((By.CSS_SELECTOR, f'li[data-run-id="{later}"]'))
                )
                wait.until(ec.text_to_be_present_in_element((By.ID, "inbox-count"), "(2)"))
                assert browser.switch_to.active_element == reason
                SCREENSHOT.parent.mkdir(exist_ok=True)
                browser.save_screenshot(str(SCREENSHOT))

                label = browser.find_element(
                    By.CSS_SELECTOR, f"label[for='{reason.get_attribute('id')}']"
                )
                assert label.text == "Reason (optional)"
                reason.send_keys(" budget")
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


@contextlib.asynccontextmanager
async def serving(app: Tether, settings: Settings) -> AsyncIterator[str]:
    """The API and dashboard on a free port, with a worker; yields the dashboard's URL."""
    async with TetherServer(settings, http="127.0.0.1:0", auth=AUTH) as srv:
        assert srv.api is not None
        async with app.worker("w", slots=4):
            yield srv.api.url


def decision_buttons(scope: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(scope.find_elements(By.CSS_SELECTOR, "button.approve, button.reject"))


async def test_runs_page_shows_decisions_and_run_page_shows_input(
    app: Tether, settings: Settings, browser: Any
) -> None:
    """The runs page has a Decision column: approved by alice, rejected by alice, expired; the
    run page shows the run's input and its decision."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    payment, moderation = define(app)

    @app.durable_task(name="quick-expiry", execution_timeout=timedelta(hours=1))
    async def quick(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        try:
            await ctx.wait_for_event(
                "approval:quick", f"input.runId == '{ctx.run_id}'", timeout=timedelta(seconds=1)
            )
        except WaitTimeoutError:
            return {"status": "expired"}
        return {"status": "decided"}

    async with serving(app, settings) as url:
        pay = await payment.run_no_wait({"amount": 1200, "to": "<b>ACME</b> Ltd"})
        mod = await moderation.run_no_wait({"post": "p-4411"})
        late = await quick.run_no_wait({"n": 1})
        for ref in (pay, mod):
            await wait_for_status(app, ref.run_id, "waiting")

        def drive() -> tuple[str, str, str]:
            wait = WebDriverWait(browser, 15)
            browser.get(f"{url}/#token={TOKEN}")
            for run_id, verb in ((pay.run_id, "Approve"), (mod.run_id, "Reject")):
                card = wait.until(
                    ec.presence_of_element_located((By.CSS_SELECTOR, f'li[data-run-id="{run_id}"]'))
                )
                card.find_element(By.CSS_SELECTOR, "input[name='reason']").send_keys("checked")
                card.find_element(By.XPATH, f".//button[normalize-space()='{verb}']").click()
                wait.until(ec.staleness_of(card))

            browser.get(f"{url}/runs")
            cells = {}
            for run_id, text in (
                (pay.run_id, "approved by alice"),
                (mod.run_id, "rejected by alice"),
                (late.run_id, "expired"),
            ):
                cell = (
                    By.CSS_SELECTOR,
                    f'#runs tr[data-run-id="{run_id}"] td[data-col="decision"]',
                )
                wait.until(ec.text_to_be_present_in_element(cell, text))
                cells[run_id] = browser.find_element(*cell).text
            header = browser.find_element(By.CSS_SELECTOR, "#runs thead").text
            assert "Decision" in header, header
            assert "“checked”" in cells[pay.run_id], cells

            browser.get(f"{url}/runs/{pay.run_id}")
            wait.until(ec.text_to_be_present_in_element((By.ID, "run-status"), "completed"))
            run_input = wait.until(ec.visibility_of_element_located((By.ID, "run-input")))
            decision = browser.find_element(By.ID, "run-decision").text
            # the input's markup is shown as text, not rendered
            assert not browser.find_elements(By.CSS_SELECTOR, "#run-input b")
            # a durable task's run has no graph
            assert not browser.find_element(By.ID, "run-graph").is_displayed()
            assert not browser.find_elements(By.ID, "task-graph")
            return run_input.text, decision, str(browser.find_element(By.ID, "timeline").text)

        shown_input, decision, timeline = await asyncio.to_thread(drive)
    assert '"to": "<b>ACME</b> Ltd"' in shown_input and '"amount": 1200' in shown_input
    assert "approved by alice" in decision and "checked" in decision
    assert "Approved by alice: “checked”" in timeline


def graph_statuses(browser: Any) -> dict[str, str]:
    """Each node of the run page's workflow graph: task name -> status."""
    from selenium.webdriver.common.by import By

    nodes = browser.find_elements(By.CSS_SELECTOR, "#task-graph g[data-task]")
    return {node.get_attribute("data-task"): node.get_attribute("data-status") for node in nodes}


def graph_column(browser: Any, task: str) -> float:
    """The x of a task's node: the graph's layers are its columns."""
    from selenium.webdriver.common.by import By

    node = browser.find_element(By.CSS_SELECTOR, f'#task-graph g[data-task="{task}"]')
    transform = node.get_attribute("transform")  # translate(x,y)
    return float(transform.removeprefix("translate(").split(",")[0])


async def test_run_page_draws_the_workflow_and_the_inbox_decides_its_gate(
    app: Tether, settings: Settings, browser: Any
) -> None:
    """The run page draws the content-review workflow in layers with each task's status, the
    gate waiting for a decision; Approve in the inbox resumes the run, and the graph then
    shows publish completed and notify_author skipped."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    review = content_review(app, "review:decision")
    async with serving(app, settings) as url:
        ref = await review.run_no_wait(Post(text="hello"))
        await wait_for_status(app, ref.run_id, "waiting")
        node = '#task-graph g[data-task="{}"][data-status="{}"]'

        def drive() -> tuple[dict[str, str], dict[str, str], str, list[float]]:
            wait = WebDriverWait(browser, 15)
            browser.get(f"{url}/runs/{ref.run_id}#token={TOKEN}")
            gate = wait.until(
                ec.presence_of_element_located(
                    (By.CSS_SELECTOR, node.format("human_review", "waiting"))
                )
            )
            label = gate.find_element(By.CSS_SELECTOR, "text.state").get_attribute("textContent")
            waiting = graph_statuses(browser)
            columns = [graph_column(browser, task) for task in ("draft", "human_review")]
            columns += [graph_column(browser, task) for task in ("publish", "notify_author")]
            assert len(browser.find_elements(By.CSS_SELECTOR, "#task-graph path.edge")) == 3

            browser.get(f"{url}/")
            card = wait.until(
                ec.presence_of_element_located((By.CSS_SELECTOR, f'li[data-run-id="{ref.run_id}"]'))
            )
            assert "content-review: human_review" in card.text, card.text
            card.find_element(By.CSS_SELECTOR, "input[name='reason']").send_keys("looks good")
            card.find_element(By.XPATH, ".//button[normalize-space()='Approve']").click()
            wait.until(ec.staleness_of(card))  # the decided gate leaves the inbox

            browser.get(f"{url}/runs/{ref.run_id}")
            wait.until(
                ec.presence_of_element_located(
                    (By.CSS_SELECTOR, node.format("notify_author", "skipped"))
                )
            )
            return waiting, graph_statuses(browser), label, columns

        waiting, decided, label, columns = await asyncio.to_thread(drive)
        out = await ref.result(timeout=15)
    assert waiting == {
        "draft": "completed",
        "human_review": "waiting",
        "publish": "pending",
        "notify_author": "pending",
    }
    assert label == "waiting for a decision"
    draft_x, review_x, publish_x, notify_x = columns
    assert draft_x < review_x < publish_x == notify_x  # one layer per depth
    assert decided == {
        "draft": "completed",
        "human_review": "completed",
        "publish": "completed",
        "notify_author": "skipped",
    }
    assert out["publish"] == {"published": "HELLO"}
    assert out["human_review"] == {
        "runId": ref.run_id,
        "decision": "approve",
        "reason": "looks good",
    }
    info = await app.runs.get(ref.run_id)
    [satisfied] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert satisfied.data["metadata"] == {"approver": "alice"}


async def test_read_only_and_other_keys_tokens_get_no_working_buttons(
    app: Tether, settings: Settings, browser: Any
) -> None:
    """Buttons follow /api/me: a read-only token sees Approve and Reject disabled, with the
    reason, in the inbox and on the run page, and no Cancel; a token for approval:moder*
    may decide the moderation wait and not the payment one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    payment, moderation = define(app)
    async with serving(app, settings) as url:
        pay = await payment.run_no_wait({"amount": 1200, "to": "ACME Ltd"})
        mod = await moderation.run_no_wait({"post": "p-4411"})
        for ref in (pay, mod):
            await wait_for_status(app, ref.run_id, "waiting")

        def card(wait: Any, run_id: str) -> Any:
            selector = f'li[data-run-id="{run_id}"]'
            return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))

        def drive() -> None:
            wait = WebDriverWait(browser, 15)
            browser.get(f"{url}/#token={READER}")
            wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "auditor"))
            for run_id in (pay.run_id, mod.run_id):
                node = card(wait, run_id)
                buttons = decision_buttons(node)
                assert all(not b.is_enabled() for b in buttons), [b.text for b in buttons]
                assert "read-only" in node.text.lower(), node.text

            browser.get(f"{url}/runs/{pay.run_id}")
            panel = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#run-wait .card")))
            buttons = decision_buttons(panel)
            assert all(not b.is_enabled() for b in buttons), [b.text for b in buttons]
            assert "read-only" in panel.text.lower(), panel.text
            assert not browser.find_element(By.ID, "run-cancel").is_displayed()

            browser.get(f"{url}/#token={MODERATOR}")
            wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "mia"))
            may_not = card(wait, pay.run_id)
            assert all(not b.is_enabled() for b in decision_buttons(may_not))
            assert "approval:moder*" in may_not.text, may_not.text
            may = card(wait, mod.run_id)
            buttons = decision_buttons(may)
            assert len(buttons) == 2 and all(b.is_enabled() for b in buttons)
            browser.get(f"{url}/runs/{mod.run_id}")
            panel = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#run-wait .card")))
            assert all(b.is_enabled() for b in decision_buttons(panel))
            assert not browser.find_element(By.ID, "run-cancel").is_displayed()

        await asyncio.to_thread(drive)
        assert (await app.runs.get(pay.run_id)).status == "waiting"


async def test_stale_link_says_why_and_does_not_stay_connecting(
    app: Tether, settings: Settings, browser: Any
) -> None:
    """A `#token=` link whose token the API no longer knows shows the sign-in form with the
    reason, the status says signed out, and a valid token pasted there signs in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    define(app)  # the worker needs tasks
    async with serving(app, settings) as url:

        def drive() -> None:
            wait = WebDriverWait(browser, 5)
            browser.get(f"{url}/#token=revoked-token-0123456789")
            wait.until(ec.visibility_of_element_located((By.ID, "signin")))
            wait.until(
                ec.text_to_be_present_in_element((By.ID, "signin-error"), "not valid any more")
            )
            wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "signed out"))
            assert "connecting" not in browser.find_element(By.ID, "live").text
            assert "ask for a new link" in browser.find_element(By.ID, "signin-error").text
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.CSS_SELECTOR, "#signin-form button[type='submit']").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "alice"))
            wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
            assert not browser.find_element(By.ID, "signin").is_displayed()

        await asyncio.to_thread(drive)


async def test_pages_fit_a_390px_screen(app: Tether, settings: Settings, browser: Any) -> None:
    """At 390 px the inbox, the runs list and run pages do not scroll sideways: the page is
    no wider than the screen (a wide table or workflow graph scrolls inside its own box)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    payment, _ = define(app)
    review = content_review(app, "review:decision")
    async with serving(app, settings) as url:
        pay = await payment.run_no_wait({"amount": 1200, "to": "ACME Ltd"})
        flow = await review.run_no_wait(Post(text="hello"))
        for ref in (pay, flow):
            await wait_for_status(app, ref.run_id, "waiting")

        def drive() -> dict[str, tuple[int, int]]:
            browser.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
            )
            wait = WebDriverWait(browser, 15)
            widths = {}
            for path, loaded in (
                (f"/#token={TOKEN}", f'li[data-run-id="{pay.run_id}"]'),
                ("/runs", f'#runs tr[data-run-id="{pay.run_id}"]'),
                (f"/runs/{pay.run_id}", "#run-wait .card"),
                (f"/runs/{flow.run_id}", "#task-graph"),
            ):
                browser.get(url + path)
                wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, loaded)))
                wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
                widths[path] = tuple(
                    browser.execute_script(
                        "const d = document.documentElement;"
                        "return [d.scrollWidth, d.clientWidth, window.innerWidth];"
                    )
                )
            return widths

        widths = await asyncio.to_thread(drive)
    for path, (scroll, client, inner) in widths.items():
        assert scroll <= client, f"{path} scrolls sideways at 390 px: {widths}"
        assert inner == 390, f"{path} is laid out wider than the screen: {widths}"


async def test_favicon_is_served(http: aiohttp.ClientSession) -> None:
    async with http.get("/favicon.ico") as response:
        assert response.status == 200
        assert response.content_type == "image/svg+xml"
        assert b"<svg" in await response.read()
    for page in PAGES:
        async with http.get(page) as response:
            html = await response.text()
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html, page
    async with http.get("/static/favicon.svg") as response:
        assert response.status == 200 and response.content_type == "image/svg+xml"
