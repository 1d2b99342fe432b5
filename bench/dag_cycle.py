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
import time
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
    until,
)
from hitl_method import SETTLE_S, WARM_UP, bounded, pss_bytes
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


class Kind:
    """Starting runs of one kind, deciding them and checking their results."""

    def __init__(self, name: str, app: Tether, target: Any, watch: RunWatch) -> None:
        self.name, self.app, self.target, self.watch = name, app, target, watch
        self.amount = 0

    async def start(self, _: object = None) -> Any:
        self.amount += 1
        amount = self.amount
        ref = await self.target.run_no_wait(Proposal(amount=amount))
        ref.amount = amount  # what its result must name
        return ref

    async def decide(self, ref: Any) -> None:
        await self.app.events.push(EVENT_KEY, {"runId": ref.run_id, "decision": "approve"})

    async def result(self, ref: Any) -> None:
        got = await ref.result(timeout=600)
        expected = {"status": "approve", "action": {"pay": ref.amount}}
        if self.name == "workflow":
            got = got["publish"]
        assert got == expected, f"run {ref.run_id}: {got!r}, expected {expected!r}"

    async def all_waiting(self, refs: list[Any]) -> None:
        await until(
            lambda: all(r.run_id in self.watch.waiting for r in refs),
            limit_s=300,
            what=f"{len(refs)} {self.name} runs waiting",
            progress=lambda: f"{sum(r.run_id in self.watch.waiting for r in refs)} waiting",
        )


async def measure(
    kind: Kind, args: argparse.Namespace, pids: dict[str, int], cpu: CpuMeter
) -> dict[str, Any]:
    print(f"\n[{kind.name}] warm-up: {WARM_UP} cycles", flush=True)
    warm = await bounded(list(range(WARM_UP)), args.in_flight, kind.start)
    await kind.all_waiting(warm)
    await bounded(warm, args.in_flight, kind.decide)
    await asyncio.gather(*(kind.result(ref) for ref in warm))
    await asyncio.sleep(SETTLE_S)  # let acknowledgements and caches settle before measuring
    idle = {name: pss_bytes(pid) for name, pid in pids.items()}
    print(f"[{kind.name}] {args.runs} runs to waiting", flush=True)
    began = time.perf_counter()
    refs = await bounded(list(range(args.runs)), args.in_flight, kind.start)
    started = time.perf_counter()
    await kind.all_waiting(refs)
    await asyncio.sleep(SETTLE_S)
    loaded = {name: pss_bytes(pid) for name, pid in pids.items()}
    per_wait = {name: round((loaded[name] - idle[name]) / args.runs) for name in pids}
    print(f"[{kind.name}] deciding {args.runs} runs", flush=True)
    cpu.begin()
    first = time.perf_counter()
    await asyncio.gather(
        bounded(refs, args.in_flight, kind.decide), *(kind.result(ref) for ref in refs)
    )
    last = time.perf_counter()
    used = cpu.end()
    return {
        "starts_per_s": round(args.runs / (started - began), 1),
        "cycles_per_s": round(args.runs / (last - first), 1),
        "cpu_ms_per_cycle": {k: round(v * 1000 / args.runs, 3) for k, v in used.items()},
        "cpu_ms_per_cycle_total": round(sum(used.values()) * 1000 / args.runs, 3),
        "bytes_per_waiting_run": per_wait,
        "bytes_per_waiting_run_total": sum(per_wait.values()),
    }


async def client_main(
    args: argparse.Namespace, kind_name: str, nats_url: str, pids: dict[str, int]
) -> Any:
    nc = await nats.connect(nats_url)
    watch = RunWatch(args.namespace)
    await watch.start(nc)
    await nc.flush()
    app = Tether(settings=Settings(nats_url=nats_url, namespace=args.namespace))
    target = define_task(app, WAIT_TIMEOUT_S) if kind_name == "durable" else define_workflow(app)
    cpu = CpuMeter({**pids, "client": os.getpid()})
    try:
        async with app:
            return await measure(Kind(kind_name, app, target, watch), args, pids, cpu)
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
