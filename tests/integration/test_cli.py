"""The CLI for people in the loop, against a real nats-server: ``runs list|show|cancel``,
``waits list``, ``events push``, ``approve``, ``reject``, and the servers that carry the
dashboard (``serve --http``, ``api``, ``dev``, ``demo --interactive``).

Commands run in-process through ``tether.cli.main.main`` on a worker thread (each makes its own
event loop, while the test's loop keeps the engine and worker running); the long-running
servers run as subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import wait_for_status
from tests.integration.content_review import Post, content_review
from tether import DurableContext, Tether
from tether.cli.main import build_parser, main
from tether.engine.config import Settings
from tether.engine.nats_server import free_port
from tether.serve import TetherServer

TOKEN = "cli-test-token-0123456789"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """``main`` configures the root logger for a terminal; give the test process its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Cli:
    def __init__(self, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
        self._base = ["--nats-url", settings.nats_url, "--namespace", settings.namespace]
        self._capsys = capsys

    async def __call__(self, *argv: str, code: int = 0) -> str:
        """Run ``tether <argv>``; return stdout, or stderr when a failure is expected."""
        args = list(argv)
        # connection options belong to the subcommand: after the command words
        words = 2 if args[0] in ("runs", "waits", "events") else 1
        full = [*args[:words], *self._base, *args[words:]]
        self._capsys.readouterr()
        try:
            got = await asyncio.to_thread(main, full)
        except SystemExit as exc:  # argparse refusing the arguments
            got = int(exc.code or 0)
        out, err = self._capsys.readouterr()
        assert got == code, f"tether {' '.join(full)} exited {got}\nstdout:\n{out}\nstderr:\n{err}"
        return out if code == 0 else err


@pytest.fixture
def cli(settings: Settings, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(settings, capsys)


def define(app: Tether) -> Any:
    @app.durable_task(name="payment-approval", execution_timeout=timedelta(minutes=5))
    async def payment_approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        await ctx.step("propose", lambda: {"pay": input["amount"]})
        decision = await ctx.wait_for_event(
            "approval:decision",
            expression=f"input.runId == '{ctx.run_id}'",
            timeout=timedelta(hours=1),
            description=f"Pay {input['amount']} EUR",
        )
        return {"decision": decision["decision"], "reason": decision.get("reason")}

    @app.durable_task(name="double")
    async def double(input: dict[str, int], ctx: DurableContext) -> int:
        return int(await ctx.step("double", lambda: input["x"] * 2))

    return payment_approval, double


@pytest.fixture
async def tasks(app: Tether, server: TetherServer) -> AsyncIterator[tuple[Any, Any]]:
    payment, double = define(app)
    async with app.worker("w", slots=4):
        yield payment, double


def rows(table: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in table.strip().splitlines()]


async def test_runs_list_with_filters(app: Tether, tasks: tuple[Any, Any], cli: Cli) -> None:
    payment, double = tasks
    waiting = await payment.run_no_wait({"amount": 10})
    done = await double.run_no_wait({"x": 2})
    await wait_for_status(app, waiting.run_id, "waiting")
    assert await done.result(timeout=15) == 4

    table = rows(await cli("runs", "list"))
    assert table[0] == ["RUN ID", "TASK", "STATUS", "DECISION", "WAITING ON", "CREATED", "UPDATED"]
    by_id = {row[0]: row for row in table[1:]}
    assert by_id[waiting.run_id][1:4] == ["payment-approval", "waiting", "approval:decision"]
    assert by_id[done.run_id][1:3] == ["double", "completed"]
    assert by_id[done.run_id][3].endswith("ago")  # no waiting-on column value: created next

    only_waiting = rows(await cli("runs", "list", "--status", "waiting"))
    assert [row[0] for row in only_waiting[1:]] == [waiting.run_id]
    only_double = rows(await cli("runs", "list", "--task", "double"))
    assert [row[0] for row in only_double[1:]] == [done.run_id]
    assert "no runs match" in await cli("runs", "list", "--task", "nope")
    listed = json.loads(await cli("runs", "list", "--status", "completed", "--json"))
    assert [(r["run_id"], r["status"]) for r in listed["runs"]] == [(done.run_id, "completed")]
    assert "unknown status finished" in await cli("runs", "list", "--status", "finished", code=2)


async def test_waits_list_show_and_approve(app: Tether, tasks: tuple[Any, Any], cli: Cli) -> None:
    payment, _ = tasks
    ref = await payment.run_no_wait({"amount": 120})
    await wait_for_status(app, ref.run_id, "waiting")

    table = rows(await cli("waits", "list"))
    assert table[0] == ["RUN ID", "TASK", "EVENT KEY", "WAITING", "DEADLINE", "PROPOSED ACTION"]
    [row] = table[1:]
    assert row[:3] == [ref.run_id, "payment-approval", "approval:decision"]
    assert row[3].endswith("ago") and row[4].startswith("in ")
    assert row[5] == "Pay 120 EUR"
    assert "no run is waiting" in await cli("waits", "list", "--task", "other")

    shown = await cli("runs", "show", ref.run_id)
    assert re.search(r"^status\s+waiting$", shown, re.M)
    assert "waiting on approval:decision since" in shown
    assert "proposed action  Pay 120 EUR" in shown
    assert f"tether approve {ref.run_id}" in shown
    assert re.search(
        r"^4\s+\S+\s+\S+\s+run\.wait_started\.v1\s+waits for approval:decision", shown, re.M
    )

    out = await cli("approve", ref.run_id, "--reason", "fine", "--as", "alice")
    assert f"approved run {ref.run_id} as alice" in out
    assert await ref.result(timeout=15) == {"decision": "approve", "reason": "fine"}
    shown = await cli("runs", "show", ref.run_id)
    assert re.search(r"^status\s+completed$", shown, re.M)
    assert 'run.wait_satisfied.v1  approve by alice: "fine"' in shown
    detail = json.loads(await cli("runs", "show", ref.run_id, "--json"))
    [satisfied] = [e for e in detail["events"] if e["type"] == "run.wait_satisfied.v1"]
    assert satisfied["data"]["metadata"] == {"approver": "alice"}

    # deciding again, or an unknown run, is refused with exit code 1
    assert "has already ended (status: completed)" in await cli("approve", ref.run_id, code=1)
    assert "no run with id 'nosuch'" in await cli("reject", "nosuch", "--reason", "x", code=1)


async def test_reject_takes_an_optional_reason_and_lists_show_the_decision(
    app: Tether, tasks: tuple[Any, Any], cli: Cli
) -> None:
    payment, _ = tasks
    first, second = [await payment.run_no_wait({"amount": 9000}) for _ in range(2)]
    for ref in (first, second):
        await wait_for_status(app, ref.run_id, "waiting")
    out = await cli("reject", first.run_id, "--as", "bob")  # no reason: as in the API
    assert f"rejected run {first.run_id} as bob" in out
    assert await first.result(timeout=15) == {"decision": "reject", "reason": None}
    out = await cli("reject", second.run_id, "--reason", "over budget", "--as", "bob")
    assert await second.result(timeout=15) == {"decision": "reject", "reason": "over budget"}
    listed = await cli("runs", "list")
    assert re.search(
        rf"^{second.run_id}\s+payment-approval\s+completed\s+rejected by bob", listed, re.M
    )
    # a run's events are numbered 1..n, whatever else the stream holds; --json has the seq
    shown = await cli("runs", "show", second.run_id)
    assert re.search(r"^#\s+TIME", shown, re.M) and re.search(r"^1\s+\S+\s+\+0\.000s", shown, re.M)
    assert 'decision  rejected by bob ("over budget")' in shown
    events = json.loads(await cli("runs", "show", second.run_id, "--json"))["events"]
    assert events[0]["seq"] > 1


def task_rows(shown: str) -> dict[str, list[str]]:
    """The task table of ``runs show``: task name -> [status, parents]."""
    lines = shown.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"TASK\s+STATUS", line)), None)
    if start is None:
        return {}
    table = lines[start : lines.index("", start)]
    assert rows(table[0]) == [["TASK", "STATUS", "PARENTS"]]
    return {row[0]: row[1:] for row in rows("\n".join(table[1:]))}


async def test_runs_show_lists_a_workflow_runs_tasks(
    app: Tether, server: TetherServer, cli: Cli
) -> None:
    review = content_review(app, "review:decision")
    _, double = define(app)
    async with app.worker("w", slots=2):
        ref = await review.run_no_wait(Post(text="hello"))
        await wait_for_status(app, ref.run_id, "waiting")
        waiting = await cli("runs", "show", ref.run_id)
        await cli("approve", ref.run_id, "--as", "alice")
        await ref.result(timeout=15)
        plain = await double.run_no_wait({"x": 2})
        assert await plain.result(timeout=15) == 4
    assert re.search(r"^task\s+content-review$", waiting, re.M)
    assert task_rows(waiting) == {
        "draft": ["completed", "-"],
        "human_review": ["waiting (for a decision)", "draft"],
        "publish": ["pending", "human_review"],
        "notify_author": ["pending", "human_review"],
    }
    assert "waiting on review:decision since" in waiting
    assert f"tether approve {ref.run_id}" in waiting

    done = await cli("runs", "show", ref.run_id)
    assert task_rows(done) == {
        "draft": ["completed", "-"],
        "human_review": ["completed", "draft"],
        "publish": ["completed", "human_review"],
        "notify_author": ["skipped", "human_review"],
    }
    # a task's own end in the timeline names it (others ride on the next event)
    ends = re.findall(r"run\.task\.v1\s+(.*)$", done, re.M)
    assert all(re.match(r"task \w+ (completed -> \{|skipped(: .+)?$)", end) for end in ends), ends
    detail = json.loads(await cli("runs", "show", ref.run_id, "--json"))
    assert [task["status"] for task in detail["tasks"]] == [
        "completed",
        "completed",
        "completed",
        "skipped",
    ]
    # a durable task's run shows no task table
    shown = await cli("runs", "show", plain.run_id)
    assert task_rows(shown) == {} and "PARENTS" not in shown
    assert json.loads(await cli("runs", "show", plain.run_id, "--json"))["tasks"] == []


async def test_help_is_plain_text_and_every_option_explains_itself() -> None:
    parsers = [build_parser()]
    for parser in parsers:  # the tree of subcommands, breadth first
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            else:
                assert action.help, f"{parser.prog}: {action.dest} has no help"
        assert "``" not in parser.format_help(), parser.prog
    assert len(parsers) > 12


async def test_events_push(app: Tether, tasks: tuple[Any, Any], cli: Cli) -> None:
    payment, _ = tasks
    ref = await payment.run_no_wait({"amount": 1})
    await wait_for_status(app, ref.run_id, "waiting")
    data = json.dumps({"runId": ref.run_id, "decision": "approve"})
    assert "--data is not valid JSON" in await cli(
        "events", "push", "approval:decision", "--data", "{oops", code=2
    )
    assert "--data must be a JSON object" in await cli(
        "events", "push", "approval:decision", "--data", "[1]", code=2
    )
    assert "invalid event key" in await cli("events", "push", "a b", "--data", "{}", code=2)
    out = await cli(
        "events", "push", "approval:decision", "--data", data, "--id", "d-1", "--as", "carol"
    )
    assert re.match(r"pushed event d-1 to approval:decision \(seq \d+\)", out)
    assert "duplicate" in await cli(
        "events", "push", "approval:decision", "--data", data, "--id", "d-1"
    )
    assert await ref.result(timeout=15) == {"decision": "approve", "reason": None}
    info = await app.runs.get(ref.run_id)
    [satisfied] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert satisfied.data["metadata"] == {"approver": "carol"}


async def test_runs_cancel(app: Tether, tasks: tuple[Any, Any], cli: Cli) -> None:
    payment, _ = tasks
    ref = await payment.run_no_wait({"amount": 2})
    await wait_for_status(app, ref.run_id, "waiting")
    out = await cli("runs", "cancel", ref.run_id, "--reason", "duplicate", "--as", "dave")
    assert f"cancelled run {ref.run_id}" in out and "cancelled by dave: duplicate" in out
    assert (await app.runs.get(ref.run_id)).status == "cancelled"
    assert "has already ended (status: cancelled)" in await cli(
        "runs", "cancel", ref.run_id, code=1
    )
    assert "no open wait" not in await cli("runs", "show", ref.run_id)


# -- the processes that carry the dashboard --------------------------------------------------


async def _start(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.cli.main",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def _read_until(
    proc: asyncio.subprocess.Process, pattern: str, within_s: float = 30
) -> re.Match[str]:
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(within_s):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(
                    f"process ended; stdout: {seen}; stderr: {err.decode()[-2000:]}"
                )
            seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        return await proc.wait()


@pytest.mark.parametrize("command", ["api", "serve"])
async def test_api_and_serve_http_serve_the_dashboard(
    settings: Settings, app: Tether, tasks: tuple[Any, Any], command: str
) -> None:
    payment, _ = tasks
    ref = await payment.run_no_wait({"amount": 5})
    await wait_for_status(app, ref.run_id, "waiting")
    tokens = json.dumps({TOKEN: {"name": "erin", "keys": ["approval:*"]}})
    proc = await _start(
        command,
        "--nats-url",
        settings.nats_url,
        "--namespace",
        settings.namespace,
        "--http",
        "127.0.0.1:0",
        env={"TETHER_API_TOKENS": tokens},
    )
    try:
        url = (await _read_until(proc, r"dashboard: (http://\S+)/ "))[1]
        async with aiohttp.ClientSession(url) as http:
            async with http.get("/api/me", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
                assert (await r.json())["name"] == "erin"
            async with http.get("/") as r:
                assert r.status == 200
                assert "Pending approvals" in await r.text()
            path = f"/api/runs/{ref.run_id}/approve"
            async with http.post(path, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 202, await r.text()
        assert await ref.result(timeout=15) == {"decision": "approve", "reason": None}
    finally:
        assert await _stop(proc) == 0


async def test_serve_http_refuses_to_run_without_tokens(settings: Settings) -> None:
    proc = await _start(
        "serve",
        "--nats-url",
        settings.nats_url,
        "--namespace",
        settings.namespace,
        "--http",
        "127.0.0.1:0",
        env={"TETHER_API_TOKENS": ""},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "no API tokens configured" in err.decode()


async def test_dev_starts_the_dashboard_and_prints_its_url(tmp_path: Path) -> None:
    proc = await _start(
        "dev",
        "--store-dir",
        str(tmp_path / "nats"),
        "--port",
        str(free_port()),
        "--http",
        "127.0.0.1:0",
        env={"TETHER_API_TOKENS": ""},
    )
    try:
        found = await _read_until(proc, r"dashboard: (http://\S+)/#token=(\S+)")
        headers = {"Authorization": f"Bearer {found[2]}"}
        async with (
            aiohttp.ClientSession(found[1]) as http,
            http.get("/api/waits", headers=headers) as r,
        ):
            assert r.status == 200
            assert await r.json() == {"waits": [], "total": 0}
    finally:
        assert await _stop(proc) == 0


async def test_demo_interactive_waits_for_a_person(tmp_path: Path) -> None:
    proc = await _start(
        "demo", "--interactive", "--http", "127.0.0.1:0", env={"TETHER_API_TOKENS": ""}
    )
    try:
        run_id = (await _read_until(proc, r"^run (\w+) proposes paying"))[1]
        link = await _read_until(proc, r"click Approve or Reject: (http://\S+)/#token=(\S+)")
        async with aiohttp.ClientSession(link[1]) as http:
            headers = {"Authorization": f"Bearer {link[2]}"}
            async with http.get("/api/waits", headers=headers) as r:
                [wait] = (await r.json())["waits"]
            assert wait["run_id"] == run_id
            assert wait["proposed_action"]["description"] == "Pay 120 to ACME Ltd"
            async with http.post(f"/api/runs/{run_id}/approve", headers=headers) as r:
                assert r.status == 202
        await _read_until(proc, r'run resumed and finished: .*"approved"')
        await _read_until(proc, r"run\.wait_satisfied\.v1\s+approve by reviewer")
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
