"""Tasks and a worker process for the resilience tests.

Run as a script, it starts a worker in its own interpreter, so a test can SIGKILL it:

    python tests/integration/procs.py worker --nats-url URL --namespace NS [--ack-wait S]

Once the worker is pulling it prints ``READY <worker id>`` on stdout; it runs until SIGTERM.
The tests import ``define_tasks`` from here, so in-process workers run the very same code.

Tasks:
- ``approval``: step ``propose``, then ``wait_for_event("approval:decision",
  "input.runId == '<run id>'")``; returns the decision and the proposed action.
- ``blocking``: step ``before``, then step ``block``, which waits until the file
  ``<dir>/release`` exists (the tests create it only after killing the first worker).
- ``gated`` (a workflow): ``draft``, then the gate ``review``, which waits for
  ``approval:decision`` with ``input.runId == run.id``, then ``publish``.
Each step (and each task of ``gated``) appends a line to ``<dir>/<step>.count`` whenever
its function really runs, so a test can count executions across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.helpers import wait_until
from tether import (
    DurableContext,
    DurableTask,
    RunRef,
    TaskContext,
    Tether,
    UserEventCondition,
    Workflow,
)
from tether.engine.config import Settings
from tether.logs import configure

APPROVAL_KEY = "approval:decision"


def _count(directory: str, step: str) -> None:
    with open(Path(directory) / f"{step}.count", "a") as out:
        out.write("ran\n")


def executions(directory: Path, step: str) -> int:
    """How many times the function of ``step`` ran, in any process."""
    path = directory / f"{step}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def approve(run_id: str) -> dict[str, str]:
    """The approval the ``approval`` task of ``run_id`` waits for."""
    return {"runId": run_id, "decision": "approve"}


async def push_approvals(app: Tether, run_ids: list[str], *, within: float) -> None:
    """Approve every run, retrying while NATS or a stream leader comes back; the event id
    makes each push idempotent, so a retry never approves twice."""

    async def pushed_all() -> bool:
        try:
            for run_id in run_ids:
                await app.events.push(APPROVAL_KEY, approve(run_id), id=f"ok-{run_id}")
        except Exception:
            return False
        return True

    await wait_until(pushed_all, timeout=within, interval=0.2, message="pushes to be accepted")


async def trigger_approvals(
    task: DurableTask[Any, Any], count: int, directory: Path
) -> list[RunRef]:
    """``count`` runs of the ``approval`` task, proposing amounts 0 .. count - 1."""
    return [await task.run_no_wait({"amount": i, "dir": str(directory)}) for i in range(count)]


def define_tasks(app: Tether) -> dict[str, DurableTask[Any, Any]]:
    def propose(amount: int, directory: str) -> dict[str, int]:
        _count(directory, "propose")
        return {"pay": amount}

    @app.durable_task(name="approval", execution_timeout=timedelta(minutes=10))
    async def approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step("propose", propose, input["amount"], input["dir"])
        decision = await ctx.wait_for_event(
            APPROVAL_KEY,
            expression=f"input.runId == '{ctx.run_id}'",
            timeout=timedelta(minutes=10),
        )
        return {"decision": decision["decision"], "action": action}

    def before(directory: str) -> str:
        _count(directory, "before")
        return "prepared"

    async def block(directory: str) -> str:
        _count(directory, "block")
        release = Path(directory) / "release"
        while not release.exists():  # noqa: ASYNC110 - the flag comes from another process
            await asyncio.sleep(0.05)
        return "released"

    @app.durable_task(name="blocking", execution_timeout=timedelta(minutes=10))
    async def blocking(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        first = await ctx.step("before", before, input["dir"])
        second = await ctx.step("block", block, input["dir"])
        return {"before": first, "block": second, "attempt": ctx.attempt}

    return {"approval": approval, "blocking": blocking}


def define_workflow(app: Tether) -> Workflow:
    gated = app.workflow(name="gated", execution_timeout=timedelta(minutes=10))

    @gated.task()
    async def draft(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        _count(input["dir"], "draft")
        return {"amount": input["amount"]}

    @gated.task(
        parents=[draft], wait_for=[UserEventCondition(APPROVAL_KEY, "input.runId == run.id")]
    )
    async def review(input: dict[str, Any], ctx: TaskContext) -> str:
        _count(input["dir"], "review")
        return str(ctx.wait_result.payloads[APPROVAL_KEY]["decision"])

    @gated.task(parents=[review])
    async def publish(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        _count(input["dir"], "publish")
        return {"published": ctx.task_output(draft)["amount"]}

    return gated


async def _worker(args: argparse.Namespace) -> None:
    settings = Settings(
        nats_url=args.nats_url, namespace=args.namespace, task_ack_wait_s=args.ack_wait
    )
    app = Tether(settings=settings)
    define_tasks(app)
    define_workflow(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with app.worker(args.name, slots=args.slots) as worker:
            print(f"READY {worker.worker_id}", flush=True)
            await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a worker for the test tasks until SIGTERM")
    worker.add_argument("--nats-url", required=True)
    worker.add_argument("--namespace", required=True)
    worker.add_argument("--name", default="proc-worker")
    worker.add_argument("--slots", type=int, default=4)
    worker.add_argument("--ack-wait", type=float, default=30.0, help="task ack wait, seconds")
    args = parser.parse_args()
    configure("WARNING")  # JSON lines on stderr, which the tests capture
    asyncio.run(_worker(args))


if __name__ == "__main__":
    main()
