"""Every code block of the README runs as written, against the test session's nats-server.

Blocks are found by their fence; each kind is run the way a reader would: Python blocks as
scripts, the JSON block as the API's token file, the curl block in bash against a running
API, and the console block's ``$`` lines in bash. Where a block names a place that only
exists on the reader's machine (port 8080, a run id), the test puts its own in."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for_status
from tether import DurableContext, Tether
from tether.engine.config import Settings
from tether.operator.auth import TokenAuth
from tether.serve import TetherServer

README = Path(__file__).parents[2] / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
KEY = "approval:decision"


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def test_the_readme_has_only_blocks_this_file_runs() -> None:
    languages = [lang for lang, _ in BLOCK.findall(README.read_text())]
    assert sorted(set(languages)) == ["", "bash", "console", "json", "python"], languages
    # the unlabelled block is the trace tree, a picture of output rather than code
    assert languages.count("") == 1 and "publish tether.runs" in blocks("")[0]
    # the set-up block is the two commands CI and the reader run
    assert blocks("bash")[0].split("#")[0].strip() == "bash scripts/demo.sh"


async def run(*args: str, env: dict[str, str], stdin: str | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def reader_env(settings: Settings) -> dict[str, str]:
    """What a reader sets: where NATS is (and here, a namespace of this test)."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        "TETHER_NATS_URL": settings.nats_url,
        "TETHER_NAMESPACE": settings.namespace,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_python_blocks_run_as_scripts(
    index: int, server: TetherServer, settings: Settings, tmp_path: Path
) -> None:
    script = tmp_path / "block.py"
    python = [b for b in blocks("python") if "import nats\n" not in b]
    script.write_text(python[index])
    code, out = await run(sys.executable, str(script), env=reader_env(settings))
    assert code == 0, out
    if index == 0:  # the approval program prints its approved result
        assert "'status': 'approved'" in out, out
    if index == 2:  # the workflow publishes the approved draft
        assert "'publish': {'published': 'hello'}" in out, out
        assert "'notify_author': 'skipped'" in out, out


def define_approval(app: Tether) -> Any:
    @app.durable_task(name="payment-approval", execution_timeout="1h")
    async def payment_approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        await ctx.step("propose", lambda: {"action": "pay", "amount": input["amount"]})
        decision = await ctx.wait_for_event(KEY, f"input.runId == '{ctx.run_id}'")
        status = {"approve": "approved", "reject": "rejected"}[decision["decision"]]
        return {"status": status, "reason": decision.get("reason")}

    return payment_approval


async def waiting_run(app: Tether) -> str:
    ref = await app.tasks["payment-approval"].run_no_wait({"amount": 120})
    await wait_for_status(app, ref.run_id, "waiting")
    return ref.run_id


@pytest.fixture
async def default_namespace(nats_url: str) -> AsyncIterator[tuple[Tether, TetherServer]]:
    """The plain nats-py block names subjects with the default namespace, `tether`."""
    settings = Settings(nats_url=nats_url, namespace="tether")
    server = TetherServer(settings)
    await server.start()
    app = Tether(settings=settings)
    yield app, server
    await app.close()
    await server.stop()


async def test_the_plain_nats_block_rejects_a_waiting_run(
    default_namespace: tuple[Tether, TetherServer], tmp_path: Path
) -> None:
    app, _ = default_namespace
    [block] = [b for b in blocks("python") if "import nats\n" in b]
    (tmp_path / "decide.py").write_text(block)
    async with app.worker("payments", tasks=[define_approval(app)], slots=2):
        run_id = await waiting_run(app)
        env = {"TETHER_NATS_URL": app.settings.nats_url}
        code, out = await run(sys.executable, str(tmp_path / "decide.py"), run_id, env=env)
        assert code == 0 and "stored as event" in out, out
        output = await app.runs.result(run_id, timeout=15)
    assert output == {"status": "rejected", "reason": "over budget"}


@pytest.fixture
def readme_tokens() -> TokenAuth:
    [body] = blocks("json")
    return TokenAuth.parse(json.loads(body), source="README")


@pytest.fixture
async def readme_api(settings: Settings, readme_tokens: TokenAuth) -> AsyncIterator[TetherServer]:
    srv = TetherServer(settings, http="127.0.0.1:0", auth=readme_tokens)
    await srv.start()
    yield srv
    await srv.stop()


async def test_the_curl_block_approves_a_run_through_the_api(
    app: Tether, readme_api: TetherServer, settings: Settings
) -> None:
    assert readme_api.api is not None
    [block] = [b for b in blocks("bash") if "curl" in b]
    block = block.replace("http://127.0.0.1:8080", readme_api.api.url)
    async with app.worker("payments", tasks=[define_approval(app)], slots=2):
        run_id = await waiting_run(app)
        env = {**reader_env(settings), "RUN_ID": run_id}
        code, out = await run("bash", "-euo", "pipefail", env=env, stdin=block)
        assert code == 0, out
        assert await app.runs.result(run_id, timeout=15) == {
            "status": "approved",
            "reason": "within budget",
        }
    assert '"status": 401' not in out and '"status": 403' not in out, out


async def test_the_scaling_block_shares_the_partitions(settings: Settings) -> None:
    [block] = [b for b in blocks("bash") if "tether status" in b]
    # a namespace of its own: no serve of this test session may take a share
    env = {**reader_env(settings), "TETHER_NAMESPACE": f"{settings.namespace}scale"}
    script = block + "\nkill $(jobs -p)\nwait\n"  # stop the two serve processes again
    code, out = await run("bash", "-euo", "pipefail", env=env, stdin=script)
    assert code == 0, out
    assert "32 partitions, 2 serve processes, 0 partitions unowned" in out, out
    assert re.search(r"serve-1\s+16\s", out) and re.search(r"serve-2\s+16\s", out), out


async def test_the_console_session_runs_its_commands(
    app: Tether, server: TetherServer, settings: Settings
) -> None:
    [block] = blocks("console")
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    shown_id = re.search(r"tether approve (\w+)", block)
    assert shown_id is not None and len(commands) == 4
    async with app.worker("payments", tasks=[define_approval(app)], slots=2):
        run_id = await waiting_run(app)
        script = "\n".join(commands).replace(shown_id.group(1), run_id)
        script = script.replace("nats://127.0.0.1:4222", settings.nats_url)
        env = {**reader_env(settings), "TETHER_NATS_URL": ""}
        code, out = await run("bash", "-euo", "pipefail", env=env, stdin=script)
        assert code == 0, out
        assert f"approved run {run_id} as alice" in out, out
        assert (await app.runs.result(run_id, timeout=15))["status"] == "approved"
