"""A workflow's approval cycle beside the durable task's, measured in the same run.

The workflow is the content review: ``draft`` -> ``human_review`` (a gate waiting for
``{"runId": <run id>, "decision": ...}`` on the event key) -> ``publish``. The durable task
is ``hitl_cycle.py``'s: one step, then a wait for the same decision.

Layout: nats-server | ``tether serve`` | one worker process running both (``--role
worker``, 200 slots) | this process as the client. Each kind runs on processes of its own,
started afresh (so neither inherits the other's grown heaps), in turn:
  * warm-up: 64 cycles;
  * memory: PSS of nats-server, serve and worker before and after --runs runs are waiting
    (at the gate, for the workflow);
  * throughput: --runs decisions pushed (--in-flight at a time) while every result is
    awaited through ``RunRef.result()``; cycles/s = runs / (first push -> last result), and
    CPU ms per cycle of every process, the client included.
The ratio of the two cycles' CPU and rate is what the workflow costs over the durable task.

Usage: python bench/dag_cycle.py [--runs 2000] [--in-flight 16]
Writes bench/results/dag_cycle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
from hitl_cycle import (
    EVENT_KEY,
    CpuMeter,
    Proposal,
    RunWatch,
    define_task,
    spawn_ready,
    start_serve,
    stop_child,
)
from hitl_method import WARM_UP, Cycle, throughput_and_memory, warm_up
from reporting import load_before_start, machine, write_results

from tether import TaskContext, Tether, UserEventCondition, Workflow
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer

RESULTS = Path(__file__).resolve().parent / "results"
WAIT_TIMEOUT_S = 300.0


def define_workflow(app: Tether) -> Workflow:
    review = app.workflow(name="content-review", execution_timeout="2h")

    @review.task()
    async def draft(input: Proposal, ctx: TaskContext) -> dict[str, Any]:
        return {"pay": input.amount}

    @review.task(parents=[draft], wait_for=[UserEventCondition(EVENT_KEY, "input.runId == run.id")])
    async def human_review(input: Proposal, ctx: TaskContext) -> str:
        return str(ctx.wait_result.payloads[EVENT_KEY]["decision"])

    @review.task(parents=[human_review])
    async def publish(input: Proposal, ctx: TaskContext) -> dict[str, Any]:
        return {"status": ctx.task_output(human_review), "action": ctx.task_output(draft)}

    return review


async def worker_main(args: argparse.Namespace) -> None:
    app = Tether(settings=Settings(nats_url=args.nats_url, namespace=args.namespace))
    task = define_task(app, WAIT_TIMEOUT_S)
    review = define_workflow(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app, app.worker("bench", tasks=[task], workflows=[review], slots=args.slots):
        print(f"worker ready pid={os.getpid()} slots={args.slots}", flush=True)
        await stop.wait()


class WorkflowCycle(Cycle):
    """The workflow's cycle: its decision and action are ``publish``'s output."""

    def approval_of(self, output: Any) -> Any:
        return output["publish"]


async def measure(
    cycle: Cycle, name: str, args: argparse.Namespace, pids: dict[str, int], cpu: CpuMeter
) -> dict[str, Any]:
    print(f"\n[{name}] warm-up: {WARM_UP} cycles", flush=True)
    await warm_up(cycle, args.in_flight)
    print(f"[{name}] {args.runs} runs to waiting, then decided", flush=True)
    measured = await throughput_and_memory(cycle, args, pids, cpu)
    throughput, memory = measured["throughput"], measured["memory"]
    cpu_ms = throughput["cpu_ms_per_cycle"]
    return {
        "starts_per_s": throughput["starts_per_s"],
        "cycles_per_s": throughput["cycles_per_s"],
        "cpu_ms_per_cycle": cpu_ms,
        "cpu_ms_per_cycle_total": round(sum(cpu_ms.values()), 3),
        "bytes_per_waiting_run": memory["bytes_per_waiting_run"],
        "bytes_per_waiting_run_total": memory["bytes_per_waiting_run_total"],
    }


async def client_main(
    args: argparse.Namespace, kind_name: str, nats_url: str, pids: dict[str, int]
) -> Any:
    nc = await nats.connect(nats_url)
    watch = RunWatch(args.namespace)
    await watch.start(nc)
    await nc.flush()
    app = Tether(settings=Settings(nats_url=nats_url, namespace=args.namespace))
    if kind_name == "durable":
        cycle = Cycle(app, define_task(app, WAIT_TIMEOUT_S), watch)
    else:
        cycle = WorkflowCycle(app, define_workflow(app), watch)
    cpu = CpuMeter({**pids, "client": os.getpid()})
    try:
        async with app:
            return await measure(cycle, kind_name, args, pids, cpu)
    finally:
        await nc.close()


def run_kind(args: argparse.Namespace, kind_name: str) -> dict[str, Any]:
    """One kind's measurements, on a nats-server, serve and worker of its own."""
    args.namespace = f"bench{uuid.uuid4().hex[:8]}"
    server = NatsServer().start()
    assert server.proc is not None
    pids = {"nats-server": server.proc.pid}
    serve = worker = None
    try:
        serve = start_serve(server.url, args.namespace, "serve-1")
        pids["serve"] = serve.pid
        cmd = [sys.executable, __file__, "--role", "worker", "--nats-url", server.url]
        cmd += ["--namespace", args.namespace, "--slots", str(args.slots)]
        worker = spawn_ready(cmd, "worker ready", "worker")
        pids["worker"] = worker.pid
        result: dict[str, Any] = asyncio.run(client_main(args, kind_name, server.url, pids))
        return result
    finally:
        stop_child(worker)
        stop_child(serve)
        server.stop()
        server.cleanup()


def report(results: dict[str, Any]) -> dict[str, float]:
    durable, workflow = results["durable"], results["workflow"]
    ratios = {
        "cycle_time": round(durable["cycles_per_s"] / workflow["cycles_per_s"], 2),
        "cpu_per_cycle": round(
            workflow["cpu_ms_per_cycle_total"] / durable["cpu_ms_per_cycle_total"], 2
        ),
        "bytes_per_waiting_run": round(
            workflow["bytes_per_waiting_run_total"] / durable["bytes_per_waiting_run_total"], 2
        ),
    }
    print("\n== dag_cycle summary ==")
    for name in ("durable", "workflow"):
        r = results[name]
        print(
            f"{name:>9}: {r['cycles_per_s']} cycles/s, starts {r['starts_per_s']}/s, "
            f"CPU {r['cpu_ms_per_cycle_total']} ms/cycle {r['cpu_ms_per_cycle']}, "
            f"{r['bytes_per_waiting_run_total']:,} bytes per waiting run "
            f"{r['bytes_per_waiting_run']}"
        )
    print(
        f"workflow / durable: {ratios['cycle_time']}x the time per cycle, "
        f"{ratios['cpu_per_cycle']}x the CPU, {ratios['bytes_per_waiting_run']}x the memory"
    )
    return ratios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=16, help="client requests at a time")
    parser.add_argument("--slots", type=int, default=200, help="worker slots")
    parser.add_argument("--out", default=None, help="default: results/dag_cycle.json")
    parser.add_argument("--role", choices=["bench", "worker"], default="bench")
    parser.add_argument("--nats-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--namespace", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.role == "worker":
        asyncio.run(worker_main(args))
        return
    load_start = load_before_start()
    results: dict[str, Any] = {kind: run_kind(args, kind) for kind in ("durable", "workflow")}
    results["workflow_over_durable"] = report(results)
    config = {**vars(args), "machine": machine(load_start)}
    write_results(Path(args.out) if args.out else RESULTS / "dag_cycle.json", config, results)


if __name__ == "__main__":
    main()
