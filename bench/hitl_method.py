"""The human-in-the-loop cycle measured by the method the peer systems were measured with
(DBOS, Restate, Temporal: figures in ../shared/bench/README.md), plus where the CPU goes.

Layout: nats-server | ``tether serve`` | a worker process (``hitl_cycle.py --role worker``,
200 slots) | this process as the client. The task: one step, then a durable wait for
``{"decision": ...}`` addressed to the run (``input.runId == '<run id>'``).

Phases, as the peers ran them:
  * warm-up: 64 cycles;
  * latency: runs one at a time; each waits until its ``wait_started`` is in the log, then a
    think time U[0, --think-max-ms) (seeded), then the decision is pushed; recorded: the push
    call, push returned -> result, and push start -> result (what a person clicking Approve
    waits for), the result always through ``RunRef.result()``;
  * memory: PSS of nats-server, serve and worker with nothing waiting and with --runs waiting;
  * throughput: --runs started (--in-flight at a time), all waiting, then --runs decisions
    pushed (--in-flight at a time) while every result is awaited through ``RunRef.result()``;
    cycles/s = runs / (first push -> last result); CPU seconds per cycle of every process,
    the client included, over that phase, and per start over the phase that starts the runs
    (from the first start until every run waits).

Usage: python bench/hitl_method.py [--runs 2000] [--latency-runs 200] [--in-flight 16]
       [--sync-always]
Writes bench/results/hitl_method.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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
    pct,
    start_serve,
    start_worker,
    stop_child,
    until,
)
from reporting import load_before_start, machine, write_results

from tether import Tether
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer

RESULTS = Path(__file__).resolve().parent / "results"
WARM_UP = 64
SETTLE_S = 2.0  # before a memory snapshot: let acknowledgements and caches settle
WAIT_TIMEOUT_S = 300.0  # the wait's timeout, as in the peers' workload


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split among the processes that map them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss for pid {pid}")


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 50), 2),
        "p90_ms": round(pct(values, 90), 2),
        "p99_ms": round(pct(values, 99), 2),
        "max_ms": round(max(values), 2),
    }


async def bounded(items: list[Any], in_flight: int, fn: Any) -> list[Any]:
    """``fn`` over ``items``, at most ``in_flight`` at a time, results in order."""
    gate = asyncio.Semaphore(in_flight)

    async def one(item: Any) -> Any:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(item) for item in items))


class Cycle:
    """Starting runs, pushing their decisions, checking their results."""

    def __init__(self, app: Tether, task: Any, watch: RunWatch) -> None:
        self.app, self.task, self.watch = app, task, watch
        self.amount = 0

    async def start(self, _: object = None) -> Any:
        self.amount += 1
        amount = self.amount
        ref = await self.task.run_no_wait(Proposal(amount=amount))
        ref.amount = amount  # what its result must name
        return ref

    async def decide(self, ref: Any) -> None:
        await self.app.events.push(EVENT_KEY, {"runId": ref.run_id, "decision": "approve"})

    async def result(self, ref: Any, timeout: float) -> None:
        got = self.approval_of(await ref.result(timeout=timeout))
        expected = {"status": "approve", "action": {"pay": ref.amount}}
        assert got == expected, f"run {ref.run_id}: {got!r}, expected {expected!r}"

    def approval_of(self, output: Any) -> Any:
        """The part of a run's output that names the decision and the action."""
        return output

    async def all_waiting(self, refs: list[Any], what: str) -> None:
        await until(
            lambda: all(r.run_id in self.watch.waiting for r in refs),
            limit_s=300,
            what=what,
            progress=lambda: f"{sum(r.run_id in self.watch.waiting for r in refs)} waiting",
        )


async def warm_up(cycle: Cycle, in_flight: int) -> None:
    """WARM_UP whole cycles, so that caches, consumers and connections are in place."""
    warm = await bounded(list(range(WARM_UP)), in_flight, cycle.start)
    await cycle.all_waiting(warm, "warm-up runs waiting")
    await bounded(warm, in_flight, cycle.decide)
    await asyncio.gather(*(cycle.result(ref, timeout=120) for ref in warm))


async def latency(cycle: Cycle, runs: int, think_max_ms: float) -> dict[str, Any]:
    think = random.Random(42)
    push_ms: list[float] = []
    after_push_ms: list[float] = []
    click_ms: list[float] = []
    for n in range(runs):
        ref = await cycle.start()
        await cycle.watch.waiting_future(ref.run_id)
        await asyncio.sleep(think.uniform(0, think_max_ms) / 1000)
        began = time.perf_counter()
        await cycle.decide(ref)
        pushed = time.perf_counter()
        await cycle.result(ref, timeout=60)
        done = time.perf_counter()
        push_ms.append((pushed - began) * 1000)
        after_push_ms.append((done - pushed) * 1000)
        click_ms.append((done - began) * 1000)
        if (n + 1) % 50 == 0:
            print(f"    ... {n + 1}/{runs}, p50 so far {pct(click_ms, 50):.2f} ms", flush=True)
    return {
        "push_call": summary(push_ms),
        "push_returned_to_result": summary(after_push_ms),
        "push_start_to_result": summary(click_ms),
        "think_max_ms": think_max_ms,
    }


async def throughput_and_memory(
    cycle: Cycle, args: argparse.Namespace, pids: dict[str, int], cpu: CpuMeter
) -> dict[str, Any]:
    await asyncio.sleep(SETTLE_S)
    idle = {name: pss_bytes(pid) for name, pid in pids.items()}
    cpu.begin()
    began = time.perf_counter()
    refs = await bounded(list(range(args.runs)), args.in_flight, cycle.start)
    started = time.perf_counter()
    await cycle.all_waiting(refs, f"{args.runs} runs waiting")
    waiting = time.perf_counter()
    start_cpu = cpu.end()
    await asyncio.sleep(SETTLE_S)
    loaded = {name: pss_bytes(pid) for name, pid in pids.items()}
    per_wait = {name: (loaded[name] - idle[name]) / args.runs for name in pids}
    print(
        f"    {args.runs} started in {started - began:.2f}s, all waiting after "
        f"{waiting - began:.2f}s; {sum(per_wait.values()):,.0f} bytes per waiting run",
        flush=True,
    )
    cpu.begin()
    first = time.perf_counter()
    await asyncio.gather(
        bounded(refs, args.in_flight, cycle.decide),
        *(cycle.result(ref, timeout=600) for ref in refs),
    )
    last = time.perf_counter()
    used = cpu.end()
    return {
        "throughput": {
            "runs": args.runs,
            "in_flight": args.in_flight,
            "starts_per_s": round(args.runs / (started - began), 1),
            "cycles_per_s": round(args.runs / (last - first), 1),
            "cpu_ms_per_cycle": {k: round(v * 1000 / args.runs, 3) for k, v in used.items()},
            # from the first start until every run waits
            "cpu_ms_per_start": {k: round(v * 1000 / args.runs, 3) for k, v in start_cpu.items()},
        },
        "memory": {
            "idle_pss": idle,
            "waiting_pss": loaded,
            "bytes_per_waiting_run": {k: round(v) for k, v in per_wait.items()},
            "bytes_per_waiting_run_total": round(sum(per_wait.values())),
        },
    }


async def client_main(args: argparse.Namespace, nats_url: str, pids: dict[str, int]) -> Any:
    nc = await nats.connect(nats_url)
    watch = RunWatch(args.namespace)
    await watch.start(nc)
    await nc.flush()
    app = Tether(settings=Settings(nats_url=nats_url, namespace=args.namespace))
    cycle = Cycle(app, define_task(app, WAIT_TIMEOUT_S), watch)
    cpu = CpuMeter({**pids, "client": os.getpid()})
    try:
        async with app:
            print(f"\n[1] warm-up: {WARM_UP} cycles", flush=True)
            await warm_up(cycle, args.in_flight)
            print(f"\n[2] latency: {args.latency_runs} runs one at a time", flush=True)
            results: dict[str, Any] = {
                "latency": await latency(cycle, args.latency_runs, args.think_max_ms)
            }
            print(f"\n[3] memory and throughput: {args.runs} runs", flush=True)
            results.update(await throughput_and_memory(cycle, args, pids, cpu))
            return results
    finally:
        await nc.close()


def report(results: dict[str, Any]) -> None:
    lat, t, m = results["latency"], results["throughput"], results["memory"]
    click = lat["push_start_to_result"]
    print("\n== hitl_method summary ==")
    if click["n"]:
        print(
            f"push start -> result: p50 {click['p50_ms']} ms, p99 {click['p99_ms']} ms "
            f"(push call p50 {lat['push_call']['p50_ms']} ms)"
        )
    print(f"throughput: {t['cycles_per_s']} cycles/s, starts {t['starts_per_s']}/s")
    print(f"CPU ms per cycle: {t['cpu_ms_per_cycle']}")
    print(f"CPU ms per start: {t['cpu_ms_per_start']}")
    print(
        f"bytes per waiting run: {m['bytes_per_waiting_run_total']:,} "
        f"({m['bytes_per_waiting_run']})"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=16, help="client requests at a time")
    parser.add_argument("--think-max-ms", type=float, default=1000.0)
    parser.add_argument("--slots", type=int, default=200, help="worker slots")
    parser.add_argument("--sync-always", action="store_true", help="nats-server fsyncs every write")
    parser.add_argument("--out", default=None, help="default: results/hitl_method.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.namespace = f"bench{uuid.uuid4().hex[:8]}"
    load_start = load_before_start()
    # as the peers were measured: the server's default fsync interval, unless asked
    server = NatsServer(sync_always=args.sync_always).start()
    assert server.proc is not None
    pids = {"nats-server": server.proc.pid}
    serve = worker = None
    try:
        serve = start_serve(server.url, args.namespace, "serve-1")
        pids["serve"] = serve.pid
        worker = start_worker(server.url, args.namespace, args.slots, WAIT_TIMEOUT_S)
        pids["worker"] = worker.pid
        results = asyncio.run(client_main(args, server.url, pids))
    finally:
        stop_child(worker)
        stop_child(serve)
        server.stop()
        server.cleanup()
    report(results)
    config = {**vars(args), "machine": machine(load_start)}
    write_results(Path(args.out) if args.out else RESULTS / "hitl_method.json", config, results)


if __name__ == "__main__":
    main()
