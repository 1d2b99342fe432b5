"""The runnable examples in examples/, each against the session's nats-server with a running
engine (the ``server`` fixture), configured the way a user's are: TETHER_NATS_URL and
TETHER_NAMESPACE in the environment (here the test's own namespace)."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import wait_for_status, wait_until
from tether import Tether
from tether.engine.config import Settings
from tether.serve import TetherServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODULES = (
    "payment_approval",
    "worker",
    "flask_view",
    "hatchet_cookbook_approval",
    "content_review",
    "payment_dag",
)
APPROVED_PAYMENT = {
    "status": "approved",
    "action": {"action": "pay", "amount": 120, "payee": "ACME Ltd"},
}

Load = Callable[[str], ModuleType]


@pytest.fixture
def examples(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Load]:
    """Import an example afresh, so its module-level ``Tether()`` reads this test's
    environment (the examples import each other by name, as `python examples/x.py` does)."""
    monkeypatch.setenv("TETHER_NATS_URL", settings.nats_url)
    monkeypatch.setenv("TETHER_NAMESPACE", settings.namespace)
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str) -> ModuleType:
        for module in MODULES:
            sys.modules.pop(module, None)
        return importlib.import_module(name)

    yield load
    for module in MODULES:
        sys.modules.pop(module, None)


def decision_of(events: list[Any]) -> dict[str, Any]:
    """The recorded resolution of the run's one wait: its payload and metadata."""
    [satisfied] = [e for e in events if e.type == "run.wait_satisfied.v1"]
    return dict(satisfied.data)


async def test_payment_approval_runs_to_the_approved_output(
    app: Tether, server: TetherServer, settings: Settings, examples: Load, capfd: Any
) -> None:
    example = examples("payment_approval")
    output = await asyncio.to_thread(example.main, settings.nats_url)
    assert output == APPROVED_PAYMENT
    printed = capfd.readouterr().out
    assert f"result: {APPROVED_PAYMENT}" in printed
    run_id = printed.split("started run ", 1)[1].split()[0]
    info = await app.runs.get(run_id)
    assert (info.status, info.output) == ("completed", APPROVED_PAYMENT)
    assert decision_of(info.events)["metadata"]["approver"] == "alice"


async def test_content_review_publishes_the_approved_post_and_skips_the_harmless_gate(
    app: Tether, server: TetherServer, settings: Settings, examples: Load
) -> None:
    example = examples("content_review")
    risky, harmless = await asyncio.to_thread(example.main, settings.nats_url)
    assert risky["publish"] == {"published": "Invest now: guaranteed returns!"}
    assert risky["human_review"]["decision"] == "approve"
    assert risky["notify_author"] == {"skipped": True}
    assert harmless["human_review"] == harmless["publish"] == {"skipped": True}
    assert harmless["notify_author"] == {"skipped": True}


async def test_payment_dag_pays_small_and_approved_payments_and_tells_the_rejected(
    app: Tether, server: TetherServer, settings: Settings, examples: Load
) -> None:
    example = examples("payment_dag")
    outputs = await asyncio.to_thread(example.main, settings.nats_url)
    assert outputs["small"]["pay"]["approved_by"] == "policy"
    assert outputs["small"]["manager_approval"] == {"skipped": True}
    assert outputs["approved"]["pay"] == {"paid": 5000, "to": "ACME Ltd", "approved_by": "manager"}
    assert outputs["rejected"]["pay"] == {"skipped": True}
    assert outputs["rejected"]["notify_rejection"]["why"]["decision"] == "reject"


async def _line_with(stream: asyncio.StreamReader, text: str, seen: list[str]) -> str:
    async with asyncio.timeout(20):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the worker's stderr ended before {text!r}: {''.join(seen)}"
            seen.append(line)
            if text in line:
                return line


async def test_worker_script_says_ready_serves_runs_and_stops_on_ctrl_c(
    server: TetherServer, examples: Load
) -> None:
    example = examples("payment_approval")  # to trigger and decide, as a backend would
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "worker.py"),
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        ready = await _line_with(proc.stderr, "ready", seen)
        assert "worker payments ready" in ready and "payment-approval" in ready
        ref = await example.payment_approval.run_no_wait(example.Proposal(amount=120))
        await wait_for_status(example.app, ref.run_id, "waiting")
        await example.app.events.push(
            example.DECISION_KEY,
            {"runId": ref.run_id, "decision": "approve"},
            metadata={"approver": "carol"},
        )
        assert await ref.result(timeout=20) == APPROVED_PAYMENT
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
        assert await proc.wait() == 0
        assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
        assert "stopping" in "".join(seen) + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await example.app.close()


async def test_flask_view_starts_shows_and_approves_a_run(
    app: Tether, server: TetherServer, examples: Load
) -> None:
    example = examples("flask_view")
    client = example.web.test_client()

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        # views are synchronous, and their *_sync calls refuse to run inside an event loop
        return await asyncio.to_thread(getattr(client, method), path, **kwargs)

    async def status_is(run_id: str, status: str) -> Any:
        shown = await call("get", f"/payments/{run_id}")
        assert shown.status_code == 200, shown.get_json()
        body = shown.get_json()
        return body if body["status"] == status else None

    # The worker runs elsewhere: here, in the test, on the test's own app.
    try:
        async with app.worker("payments", tasks=[example.payment_approval], slots=2):
            started = await call("post", "/payments", json={"amount": 120})
            assert started.status_code == 202, started.get_json()
            run_id = started.get_json()["runId"]
            await wait_until(lambda: status_is(run_id, "waiting"), message="a waiting run")

            anonymous = await call("post", f"/payments/{run_id}/approve", json={})
            assert anonymous.status_code == 401
            approved = await call(
                "post",
                f"/payments/{run_id}/approve",
                json={"reason": "within budget"},
                headers={"X-User": "alice"},
            )
            assert approved.status_code == 202, approved.get_json()
            assert approved.get_json() == {
                "runId": run_id,
                "decision": "approve",
                "approver": "alice",
            }

            done = await wait_until(lambda: status_is(run_id, "completed"), message="completion")
            assert done["output"] == APPROVED_PAYMENT and done["error"] is None
            info = await app.runs.get(run_id)
            decision = decision_of(info.events)
            assert decision["metadata"]["approver"] == "alice"
            assert decision["payload"] == {
                "runId": run_id,
                "decision": "approve",
                "reason": "within budget",
            }

            again = await call("post", f"/payments/{run_id}/reject", headers={"X-User": "bob"})
            assert again.status_code == 409
            assert (await call("get", "/payments/no-such-run")).status_code == 404
            assert (await call("post", "/payments", json={"amount": "lots"})).status_code == 422
    finally:
        await asyncio.to_thread(example.app.close_sync)


async def test_hatchet_cookbook_approval_completes_both_ways(
    app: Tether, server: TetherServer, settings: Settings, examples: Load
) -> None:
    example = examples("hatchet_cookbook_approval")
    approved = await asyncio.to_thread(example.main, settings.nats_url)
    assert approved == {
        "status": "approved",
        "action": {"action": "send_email", "to": "user@example.com"},
    }
    rejected = await asyncio.to_thread(example.main, settings.nats_url, False)
    assert rejected == {"status": "rejected", "reason": "needs review"}
