"""Invariant 1 with real processes: nothing is lost when a worker, ``tether serve`` or NATS
itself dies (SIGKILL) and comes back.

Workers and ``tether serve`` run in their own interpreters (``tests/integration/procs.py``
and ``python -m tether.cli.main serve``); the last test restarts a dedicated nats-server on the
same port and store. Every child is killed in a fixture finaliser, and its stderr is part of
any failure message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.aio.msg import Msg

from tests.helpers import attempt_workers, wait_until
from tests.integration.procs import (
    APPROVAL_KEY,
    approve,
    define_tasks,
    define_workflow,
    executions,
    push_approvals,
    trigger_approvals,
)
from tether import DurableContext, RunRef, Tether, WaitTimeoutError
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer
from tether.serve import TetherServer

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PROCS = Path(__file__).with_name("procs.py")
SHORT_ACK_WAIT_S = 2.0


class Child:
    """A child process whose stdout lines and stderr are collected as they come."""

    def __init__(self, label: str, proc: asyncio.subprocess.Process) -> None:
        self.label = label
        self.proc = proc
        self.lines: list[str] = []
        self.stderr = bytearray()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_lines(proc.stdout)),
            asyncio.create_task(self._read_err(proc.stderr)),
        ]

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def _read_err(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr.extend(chunk)

    def describe(self) -> str:
        err = self.stderr.decode(errors="replace")[-3000:]
        return (
            f"--- {self.label} (pid {self.proc.pid}, exit {self.proc.returncode}) stdout:\n"
            + "\n".join(self.lines[-20:])
            + f"\n--- {self.label} stderr:\n{err}"
        )

    async def line_starting(self, prefix: str, within: float = 20.0) -> str:
        async def check() -> str:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"{self.label} exited before printing {prefix!r}\n" + self.describe()
                )
            return ""

        return await wait_until(check, timeout=within, message=f"{self.label}: {prefix!r}")

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no acks, no goodbyes."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await asyncio.wait(self._readers, timeout=5)

    async def terminate(self, within: float = 10.0) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), within)
            except TimeoutError:
                await self.kill()
        await asyncio.wait(self._readers, timeout=5)


class Children:
    """Starts child processes for a test and reports on all of them when something fails."""

    def __init__(self) -> None:
        self.all: list[Child] = []

    async def spawn(self, label: str, *args: str) -> Child:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TETHER_ENGINE_ACK_WAIT_S": "2",
            # Info-level logs, so that a failure report shows what each child was doing.
            "TETHER_LOG_LEVEL": "INFO",
        }
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=str(REPO),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        child = Child(label, proc)
        self.all.append(child)
        return child

    async def worker(
        self, label: str, nats_url: str, namespace: str, *, ack_wait: float = 30.0
    ) -> tuple[Child, str]:
        """A worker process for the tasks of ``procs.py``; returns it with its worker id."""
        child = await self.spawn(
            label,
            str(PROCS),
            "worker",
            "--nats-url",
            nats_url,
            "--namespace",
            namespace,
            "--name",
            label,
            "--ack-wait",
            str(ack_wait),
        )
        ready = await child.line_starting("READY ")
        return child, ready.split(" ", 1)[1]

    async def serve(
        self, label: str, nats_url: str, namespace: str, *, name: str | None = None
    ) -> Child:
        child = await self.spawn(
            label,
            "-m",
            "tether.cli.main",
            "serve",
            "--nats-url",
            nats_url,
            "--namespace",
            namespace,
            *(("--name", name) if name else ()),
        )
        await child.line_starting("tether serve:")
        return child

    def report(self) -> str:
        return "\n".join(child.describe() for child in self.all)

    async def until(
        self, check: Callable[[], Awaitable[T]], *, within: float = 15.0, message: str
    ) -> T:
        try:
            return await wait_until(check, timeout=within, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.report()}") from None

    async def kill_all(self) -> None:
        for child in self.all:
            await child.kill()


@pytest.fixture
async def children() -> AsyncIterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        await kids.kill_all()


async def statuses(app: Tether, run_ids: list[str]) -> list[str]:
    infos = await asyncio.gather(*(app.runs.get(run_id) for run_id in run_ids))
    return [info.status for info in infos]


async def all_in_status(
    kids: Children, app: Tether, run_ids: list[str], status: str, within: float = 20.0
) -> None:
    seen: list[str] = []

    async def check() -> bool:
        seen[:] = await statuses(app, run_ids)
        return all(s == status for s in seen)

    try:
        await kids.until(check, within=within, message=f"{len(run_ids)} runs to be {status}")
    except AssertionError as exc:
        counts = {s: seen.count(s) for s in sorted(set(seen))}
        raise AssertionError(f"statuses {counts}\n{exc}") from None


async def results(app: Tether, kids: Children, refs: list[RunRef], within: float) -> list[Any]:
    began = time.time()
    try:
        return await asyncio.gather(*(ref.result(timeout=within) for ref in refs))
    except TimeoutError:
        timeline = await describe_runs(app, [ref.run_id for ref in refs], began)
        raise AssertionError(
            f"runs did not finish within {within}s\n{timeline}\n{kids.report()}"
        ) from None


async def describe_runs(app: Tether, run_ids: list[str], began: float) -> str:
    """Each run's status and its last events, timed from ``began``, for a failure message."""
    lines = []
    for run_id in run_ids:
        info = await app.runs.get(run_id)
        tail = [
            f"{e.type.removeprefix('run.').removesuffix('.v1')}@{e.at - began:+.2f}s"
            for e in info.events[-4:]
        ]
        lines.append(f"  {run_id}: {info.status}, {' '.join(tail)}")
    return "\n".join(lines)


async def restart_nats(nats: NatsServer, app: Tether) -> None:
    """SIGKILL the server, start it again on the same port and store, and wait for the SDK
    to reconnect."""
    nats.kill()
    nats.start()
    conn = await app.connection()

    async def reconnected() -> bool:
        return bool(conn.nc.is_connected and conn.nc.stats["reconnects"] >= 1)

    await wait_until(reconnected, timeout=10, message="the SDK to reconnect")


# -- 1. a worker dies while its run waits ----------------------------------------------------


async def test_worker_killed_while_run_waits(
    app: Tether,
    server: TetherServer,
    children: Children,
    nats_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    tasks = define_tasks(app)
    first, first_id = await children.worker("first", nats_url, namespace)
    ref = await tasks["approval"].run_no_wait({"amount": 120, "dir": str(tmp_path)})
    await all_in_status(children, app, [ref.run_id], "waiting")

    await first.kill()
    second, second_id = await children.worker("second", nats_url, namespace)
    await app.events.push(APPROVAL_KEY, approve(ref.run_id))
    result = await results(app, children, [ref], within=15)

    assert result == [{"decision": "approve", "action": {"pay": 120}}], children.report()
    info = await app.runs.get(ref.run_id)
    assert info.status == "completed"
    assert attempt_workers(info) == [first_id, second_id]
    assert first_id != second_id
    assert executions(tmp_path, "propose") == 1  # the recorded step was replayed, not re-run
    await second.terminate()
    assert second.proc.returncode == 0, second.describe()


# -- 2. a worker dies in the middle of a step --------------------------------------------------


async def test_worker_killed_while_run_is_running(
    app: Tether,
    server: TetherServer,
    children: Children,
    nats_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    tasks = define_tasks(app)
    first, first_id = await children.worker("first", nats_url, namespace, ack_wait=SHORT_ACK_WAIT_S)
    ref = await tasks["blocking"].run_no_wait({"dir": str(tmp_path)})

    async def inside_block() -> bool:
        return executions(tmp_path, "block") == 1

    await children.until(inside_block, message="the first worker to enter the blocking step")
    info = await app.runs.get(ref.run_id)
    assert info.status == "running"
    assert [e.data["name"] for e in info.events if e.type == "run.step.v1"] == ["before"]

    await first.kill()
    (tmp_path / "release").touch()
    _, second_id = await children.worker("second", nats_url, namespace, ack_wait=SHORT_ACK_WAIT_S)
    # Redelivery comes once the dead worker's ack wait runs out.
    result = await results(app, children, [ref], within=SHORT_ACK_WAIT_S + 15)

    assert result == [{"before": "prepared", "block": "released", "attempt": 2}]
    info = await app.runs.get(ref.run_id)
    started = [e.data for e in info.events if e.type == "run.started.v1"]
    assert [(s["attempt"], s["worker"]) for s in started] == [(1, first_id), (2, second_id)]
    assert [e.data["name"] for e in info.events if e.type == "run.step.v1"] == ["before", "block"]
    assert executions(tmp_path, "before") == 1  # recorded before the kill: never again
    assert executions(tmp_path, "block") == 2  # cut short by the kill, so it ran again
    assert [e.type for e in info.events].count("run.completed.v1") == 1


# -- 3. tether serve dies with runs waiting and approvals arriving ---------------------------


async def test_serve_killed_and_restarted_mid_flow(
    app: Tether, children: Children, nats_url: str, namespace: str, tmp_path: Path
) -> None:
    runs = 20
    tasks = define_tasks(app)
    serve = await children.serve("serve-1", nats_url, namespace)
    async with app.worker("w", tasks=[tasks["approval"]], slots=4):
        refs = await trigger_approvals(tasks["approval"], runs, tmp_path)
        ids = [ref.run_id for ref in refs]
        await all_in_status(children, app, ids, "waiting")

        await serve.kill()
        for run_id in ids:
            await app.events.push(APPROVAL_KEY, approve(run_id))
        late = await tasks["approval"].run_no_wait({"amount": 999, "dir": str(tmp_path)})
        # Nothing moves without the engine and the matcher.
        assert await statuses(app, ids) == ["waiting"] * runs
        assert (await app.runs.get(late.run_id)).status == "queued"

        await children.serve("serve-2", nats_url, namespace)
        outputs = await results(app, children, refs, within=30)
        assert outputs == [{"decision": "approve", "action": {"pay": i}} for i in range(runs)]

        # The run requested while serve was down was dispatched from the durable consumer.
        await all_in_status(children, app, [late.run_id], "waiting")
        await app.events.push(APPROVAL_KEY, approve(late.run_id))
        assert await results(app, children, [late], within=15) == [
            {"decision": "approve", "action": {"pay": 999}}
        ]
    assert executions(tmp_path, "propose") == runs + 1
    for ref in [*refs, late]:
        types = [e.type for e in (await app.runs.get(ref.run_id)).events]
        assert types.count("run.wait_satisfied.v1") == 1
        assert types.count("run.completed.v1") == 1


async def test_serve_killed_while_resuming_runs(
    app: Tether, children: Children, nats_url: str, namespace: str, tmp_path: Path
) -> None:
    """SIGKILL lands while serve is matching approvals, appending resolutions and dispatching:
    whatever it held unacknowledged comes back to the next serve (after the engine consumers'
    ack wait at worst), and no run is resumed twice."""
    runs = 20
    tasks = define_tasks(app)
    serve = await children.serve("serve-1", nats_url, namespace)
    async with app.worker("w", tasks=[tasks["approval"]], slots=4):
        refs = await trigger_approvals(tasks["approval"], runs, tmp_path)
        ids = [ref.run_id for ref in refs]
        await all_in_status(children, app, ids, "waiting")

        # Kill serve the moment its first resolution lands in the log: the others are then
        # somewhere between matched, commanded, appended and dispatched.
        conn = await app.connection()
        first_resolution = asyncio.Event()

        async def on_resolution(msg: Msg) -> None:
            if not first_resolution.is_set():
                first_resolution.set()
                serve.proc.send_signal(signal.SIGKILL)

        sub = await conn.nc.subscribe(
            conn.settings.names.runs_token_filter("wait_satisfied"), cb=on_resolution
        )
        await asyncio.gather(*(app.events.push(APPROVAL_KEY, approve(i)) for i in ids))

        async def resolved() -> bool:
            return first_resolution.is_set()

        await children.until(resolved, message="serve to resolve a wait")
        await sub.unsubscribe()
        await serve.kill()
        in_flight = dict(Counter(await statuses(app, ids)))
        await children.serve("serve-2", nats_url, namespace)
        outputs = await results(app, children, refs, within=45)
    assert outputs == [{"decision": "approve", "action": {"pay": i}} for i in range(runs)], (
        in_flight
    )
    for ref in refs:
        types = [e.type for e in (await app.runs.get(ref.run_id)).events]
        assert types.count("run.wait_satisfied.v1") == 1, (in_flight, types)
        assert types.count("run.completed.v1") == 1, (in_flight, types)
    assert executions(tmp_path, "propose") == runs


async def test_workflow_runs_at_a_gate_survive_serve_restarts_and_worker_kills(
    app: Tether, children: Children, nats_url: str, namespace: str, tmp_path: Path
) -> None:
    """Runs wait at a workflow's gate; serve is SIGKILLed and started again, the worker is
    SIGKILLed and another takes over, and decisions arrive in between: every run ends
    once, each task ran once, and no gate resolved twice."""
    runs = 12
    define_tasks(app)
    gated = define_workflow(app)
    serve = await children.serve("serve-1", nats_url, namespace)
    first, _ = await children.worker("first", nats_url, namespace)
    refs = [await gated.run_no_wait({"amount": i, "dir": str(tmp_path)}) for i in range(runs)]
    ids = [ref.run_id for ref in refs]
    await all_in_status(children, app, ids, "waiting")

    await serve.kill()
    await first.kill()
    half = runs // 2
    for run_id in ids[:half]:  # decided while nothing runs: kept in the events stream
        await app.events.push(APPROVAL_KEY, approve(run_id))
    await children.serve("serve-2", nats_url, namespace)
    await children.worker("second", nats_url, namespace)
    for run_id in ids[half:]:
        await app.events.push(APPROVAL_KEY, approve(run_id))
    outputs = await results(app, children, refs, within=45)

    assert [out["publish"] for out in outputs] == [{"published": i} for i in range(runs)]
    for ref in refs:
        types = [e.type for e in (await app.runs.get(ref.run_id)).events]
        assert types.count("run.wait_satisfied.v1") == 1, types
        assert types.count("run.completed.v1") == 1, types
    for task in ("draft", "review", "publish"):
        assert executions(tmp_path, task) == runs, task


# -- 4. NATS itself restarts under everything ---------------------------------------------------


async def test_nats_restarted_with_runs_waiting(namespace: str, tmp_path: Path) -> None:
    runs = 10
    nats = NatsServer(store_dir=tmp_path / "nats", sync_always=True).start()
    settings = Settings(nats_url=nats.url, namespace=namespace)
    app = Tether(settings=settings)
    srv = TetherServer(settings)
    tasks = define_tasks(app)
    try:
        await srv.start()
        async with app.worker("w", tasks=[tasks["approval"]], slots=4):
            refs = await trigger_approvals(tasks["approval"], runs, tmp_path)
            ids = [ref.run_id for ref in refs]
            kids = Children()
            await all_in_status(kids, app, ids, "waiting")

            await restart_nats(nats, app)

            await push_approvals(app, ids, within=20)
            outputs = await asyncio.gather(*(ref.result(timeout=30) for ref in refs))
            assert outputs == [{"decision": "approve", "action": {"pay": i}} for i in range(runs)]

            # New work flows too: requested, dispatched, waited, resumed after the restart.
            fresh = await tasks["approval"].run_no_wait({"amount": 77, "dir": str(tmp_path)})
            await all_in_status(kids, app, [fresh.run_id], "waiting")
            await app.events.push(APPROVAL_KEY, approve(fresh.run_id))
            assert await fresh.result(timeout=15) == {"decision": "approve", "action": {"pay": 77}}
            for ref in [*refs, fresh]:
                types = [e.type for e in (await app.runs.get(ref.run_id)).events]
                assert types.count("run.wait_satisfied.v1") == 1
                assert types.count("run.completed.v1") == 1
        assert executions(tmp_path, "propose") == runs + 1
    finally:
        await srv.stop()
        await app.close()
        nats.cleanup()


async def test_timeouts_set_after_a_nats_restart_fire_on_time(
    namespace: str, tmp_path: Path
) -> None:
    """The timer learns of deadlines from a watch on the KV bucket. After NATS restarts, that
    watch must come back within seconds, or every timeout set since waits for it."""
    nats = NatsServer(store_dir=tmp_path / "nats", sync_always=True).start()
    settings = Settings(nats_url=nats.url, namespace=namespace)
    app = Tether(settings=settings)
    srv = TetherServer(settings)

    @app.durable_task(name="short-wait")
    async def short_wait(input: dict[str, Any], ctx: DurableContext) -> str:
        try:
            await ctx.wait_for_event("never:sent", timeout=timedelta(seconds=1))
        except WaitTimeoutError:
            return "expired"
        return "resumed"

    try:
        await srv.start()
        async with app.worker("w", tasks=[short_wait], slots=2):
            await restart_nats(nats, app)

            async def triggered() -> RunRef | None:
                try:
                    return await short_wait.run_no_wait({})
                except Exception:
                    return None  # JetStream still recovering its streams

            ref = await wait_until(triggered, timeout=20, interval=0.2, message="a trigger")
            try:
                assert await ref.result(timeout=10) == "expired"
            except TimeoutError:
                info = await app.runs.get(ref.run_id)
                raise AssertionError(
                    f"the 1 s wait timeout set after the restart did not fire within 10 s; "
                    f"run {info.status}, events {[e.type for e in info.events]}"
                ) from None
            info = await app.runs.get(ref.run_id)
            [started] = [e.data for e in info.events if e.type == "run.wait_started.v1"]
            [expired] = [e.data for e in info.events if e.type == "run.wait_timed_out.v1"]
            assert expired["at"] >= started["timeout_at"]
    finally:
        await srv.stop()
        await app.close()
        nats.cleanup()
