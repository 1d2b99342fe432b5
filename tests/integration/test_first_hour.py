"""What a newcomer meets in the first hour: a CLI that fails fast, `tether dev` on a busy
port, a worker script that says it is ready, shows a failed task's traceback and stops on
Ctrl-C, sync calls for web backends, durations as strings, and the version."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tether import DurableContext, RunCancelledError, RunFailedError, Tether
from tether.engine.config import Settings
from tether.serve import TetherServer

TETHER = str(Path(sys.executable).with_name("tether"))


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def run_cli(*args: str, timeout: float = 30.0, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("command", [["runs", "list"], ["approve", "some-run"]])
async def test_a_cli_command_without_nats_fails_fast_with_one_line(
    command: list[str], listening: int
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"nats://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
    started = time.monotonic()
    code, _, err = await run_cli(TETHER, *command, "--nats-url", url, TETHER_CONNECT_TIMEOUT_S="2")
    closed.close()
    assert code == 1
    assert time.monotonic() - started < 15
    assert err.count("\n") == 1 and url in err and "Traceback" not in err


async def test_tether_dev_refuses_busy_ports_before_starting_anything(
    listening: int, tmp_path: Path
) -> None:
    store = str(tmp_path / "nats")
    code, out, err = await run_cli(
        TETHER, "dev", "--port", str(listening), "--http", "", "--store-dir", store
    )
    assert code == 1 and f"port {listening} is already in use" in err and "dashboard" not in out
    code, out, err = await run_cli(
        TETHER, "dev", "--port", "0", "--http", f"127.0.0.1:{listening}", "--store-dir", store
    )
    assert code == 1 and f"cannot listen on 127.0.0.1:{listening}" in err
    assert "nats-server with JetStream" not in out


async def test_version_three_ways() -> None:
    import tether

    assert tether.__version__ and tether.__version__[0].isdigit()
    for command in ([TETHER, "--version"], [sys.executable, "-m", "tether", "--version"]):
        code, out, _ = await run_cli(*command)
        assert (code, out.strip()) == (0, f"tether {tether.__version__}")


WORKER_SCRIPT = """
import sys
from tether import Tether

app = Tether(nats_url=sys.argv[1], namespace=sys.argv[2])

@app.durable_task(name="typo", execution_timeout="30m")
async def typo(input: dict, ctx) -> str:
    return input["decison"]

app.worker("typo-worker", slots=2).run()
"""


async def _read_until(stream: asyncio.StreamReader, start: str, seen: list[str]) -> str:
    """Read lines into ``seen`` until one starts with ``start``; return it."""
    async with asyncio.timeout(20):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the worker's stderr ended before {start!r}: {''.join(seen)}"
            seen.append(line)
            if line.startswith(start):
                return line


async def test_a_worker_script_says_it_is_ready_shows_tracebacks_and_stops_on_ctrl_c(
    app: Tether, server: TetherServer, settings: Settings, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), settings.nats_url, settings.namespace,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        while "ready" not in await _read_until(proc.stderr, "", seen):
            pass
        assert "typo-worker" in seen[-1] and "tasks typo" in seen[-1] and "2 slots" in seen[-1]

        @app.durable_task(name="typo")
        async def typo(input: dict[str, Any], ctx: DurableContext) -> str:
            raise AssertionError("runs in the worker process")

        with pytest.raises(RunFailedError, match="decison"):
            await typo.run({}, timeout=20)
        await _read_until(proc.stderr, "Traceback", seen)
        await _read_until(proc.stderr, "KeyError: 'decison'", seen)  # the traceback's end
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stderr.read(), 20)
        assert await proc.wait() == 0
        assert b"KeyboardInterrupt" not in rest and b"Traceback" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_app_serves_successive_event_loops_and_sync_callers(
    app: Tether, server: TetherServer, settings: Settings
) -> None:
    @app.durable_task(name="review", execution_timeout="1h")
    async def review(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        decision = await ctx.wait_for_event("review:decision", f"input.runId == '{ctx.run_id}'")
        return {"decision": decision["decision"]}

    def web_backend() -> tuple[Any, str, str]:
        """What a sync view does: its own app, each request in its own loop or a *_sync."""
        web = Tether(settings=settings)
        web.durable_task(name="review", execution_timeout="1h")(review.fn)
        task = web.tasks["review"]
        first = asyncio.run(task.run_no_wait({}))
        second = asyncio.run(task.run_no_wait({}))  # a second loop: no hang, no timeout
        for ref in (first, second):
            deadline = time.monotonic() + 15
            while web.runs.get_sync(ref.run_id).status != "waiting":
                assert time.monotonic() < deadline, "the run never waited"
                time.sleep(0.02)
        web.events.push_sync("review:decision", {"runId": first.run_id, "decision": "approve"})
        output = first.result_sync(timeout="15s")
        web.runs.cancel_sync(second.run_id, reason="withdrawn")
        third = task.run_no_wait_sync({})
        web.close_sync()
        return output, second.run_id, third.run_id

    async with app.worker("w", tasks=[review], slots=2):
        output, cancelled_id, third_id = await asyncio.to_thread(web_backend)
        assert output == {"decision": "approve"}
        with pytest.raises(RunCancelledError):
            await app.runs.result(cancelled_id, timeout=5)
        assert (await app.runs.get(third_id)).task == "review"


def test_durations_take_timedeltas_seconds_and_short_strings() -> None:
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="a", execution_timeout="30m", backoff_max=90, retries=1)
    async def a(input: dict[str, Any], ctx: DurableContext) -> None: ...

    assert a.execution_timeout == timedelta(minutes=30)
    assert a.backoff_max == timedelta(seconds=90)
    for bad in ("30 minutes", "5x", "", True):
        with pytest.raises(ValueError, match=r"execution_timeout=.*'45s', '30m', '2h', '1d'"):
            app.durable_task(name=f"bad{bad!r}", execution_timeout=bad)  # type: ignore[arg-type]


async def test_the_demo_says_who_decided_and_prints_json() -> None:
    code, out, err = await run_cli(TETHER, "demo", "--decision", "reject", timeout=60)
    assert code == 0, err
    assert 'run resumed and finished: {"status":"rejected","reason":"over budget"}' in out
    assert re.search(r"run\.wait_satisfied\.v1\s+reject by reviewer: 'over budget'", out), out
    assert re.search(r"^\s+1\s+\+0\.0 ms\s+run\.requested\.v1", out, re.M), out


async def test_bootstrap_skips_an_install_that_is_up_to_date() -> None:
    """A second bootstrap with nothing changed installs nothing (under scripts/test.sh the
    first one already ran before the tests)."""
    bootstrap = str(Path(__file__).parents[2] / "scripts" / "bootstrap.sh")
    code, _, err = await run_cli("bash", bootstrap, "test", timeout=300)
    assert code == 0, err
    started = time.monotonic()
    assert await run_cli("bash", bootstrap, "test") == (0, "", "")
    assert time.monotonic() - started < 5
