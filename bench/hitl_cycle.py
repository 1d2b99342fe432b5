"""Human-in-the-loop cycle throughput and resume latency, end to end through NATS.

Layout (3 OS processes plus nats-server, like a small production install on one box):
  * ``tether serve`` (engine service + matcher + timer) in a child process,
  * a worker process running the approval task (this script with ``--role worker``),
  * this process as the client: triggers runs, pushes approvals, observes completions.

Phases:
  1. JetStream publish ceiling on a scratch stream (same server, idle system).
  2. Throughput: N runs triggered, all reach ``waiting``, all approved with
     ``app.events.push`` (pipelined in chunks), all completed.
  3. Resume latency on an idle system: one run at a time, push ack -> ``ref.result()``.

Usage: python bench/hitl_cycle.py [--runs 2000] [--slots 200] [--serves 1] [--nats-url URL]
       [--sync-always]
With ``--serves 2`` two ``tether serve`` processes share the partitions; the summary then
shows the engine commands each handled.
Writes bench/results/hitl_cycle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from pydantic import BaseModel
from reporting import load_before_start, machine, write_results

from tether import DurableContext, Tether
from tether.cli.status import read_status
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer
from tether.engine.subjects import run_subject_parts
from tether.serve import TetherServer

RESULTS = Path(__file__).resolve().parent / "results"
TASK_NAME = "bench-approval"
EVENT_KEY = "approval:decision"
TARGET_CYCLES_PER_S = 500.0
TARGET_P50_MS = 15.0
TARGET_P99_MS = 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Proposal(BaseModel):
    amount: int


def define_task(app: Tether, wait_timeout_s: float) -> Any:
    """The approval task: one step, then a durable wait for this run's decision."""

    def propose(amount: int) -> dict[str, Any]:
        return {"pay": amount}

    timeout = timedelta(seconds=wait_timeout_s) if wait_timeout_s > 0 else None

    @app.durable_task(name=TASK_NAME, execution_timeout=timedelta(hours=2))
    async def approval(input: Proposal, ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step("propose", propose, input.amount)
        decision = await ctx.wait_for_event(
            EVENT_KEY, expression=f"input.runId == '{ctx.run_id}'", timeout=timeout
        )
        return {"status": decision["decision"], "action": action}

    return approval


# -- child processes -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def spawn_ready(
    cmd: list[str], marker: str, what: str, timeout: float = 30.0
) -> subprocess.Popen[str]:
    """Start ``cmd`` and wait until it prints a line containing ``marker``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} exited with code {proc.wait()} before it was ready")
        if marker in line:
            return proc
    proc.kill()
    raise RuntimeError(f"{what} not ready within {timeout}s")


def start_serve(
    nats_url: str, namespace: str, name: str, *, tracing: bool = False
) -> subprocess.Popen[str]:
    """``tether serve --name NAME`` in its own process, once it is running."""
    cmd = [sys.executable, "-m", "tether.cli.main", "serve", "--name", name]
    if tracing:  # the same TetherServer, given a tracer provider
        cmd = [sys.executable, __file__, "--role", "serve", "--tracing", "--name", name]
    return spawn_ready(
        [*cmd, "--nats-url", nats_url, "--namespace", namespace], "running", "tether serve"
    )


async def partition_status(nats_url: str, namespace: str) -> dict[str, Any]:
    return await read_status(Settings(nats_url=nats_url, namespace=namespace))


async def until_shared(nats_url: str, namespace: str, serves: int, within_s: float = 60) -> None:
    """Wait until ``serves`` processes own the partitions evenly, so each does its share."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        owners = (await partition_status(nats_url, namespace))["owners"]
        shares = [len(p) for p in owners.values()]
        if len(shares) == serves and max(shares) - min(shares) <= 1:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{serves} serve processes did not share the partitions in {within_s}s")


async def commands_per_serve(nats_url: str, namespace: str, total: int) -> dict[str, int]:
    """Engine commands each serve process handled (from ``tether status``), once their
    sum reaches ``total`` (members report it every second) or 10 s have passed."""
    deadline = time.monotonic() + 10
    while True:
        members = (await partition_status(nats_url, namespace))["members"]
        handled = {name: int(m["commands_handled"]) for name, m in members.items()}
        if sum(handled.values()) >= total or time.monotonic() > deadline:
            return handled
        await asyncio.sleep(0.5)


def start_worker(
    nats_url: str, namespace: str, slots: int, wait_timeout_s: float, *, tracing: bool = False
) -> subprocess.Popen[str]:
    """A worker process for this benchmark's task, once it is pulling."""
    cmd = [sys.executable, __file__, "--role", "worker", "--nats-url", nats_url]
    cmd += ["--namespace", namespace, "--slots", str(slots)]
    cmd += ["--wait-timeout-s", str(wait_timeout_s), *(["--tracing"] if tracing else [])]
    return spawn_ready(cmd, "worker ready", "worker")


def stop_child(proc: subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _DiscardSpans:
    """A span exporter that takes every span and keeps none: what tracing costs Tether
    itself, without an exporter's own network cost."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def tracer_provider(enabled: bool) -> Any:
    """An SDK provider with a batch processor when ``enabled``; else None (tracing off)."""
    if not enabled:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DiscardSpans()))  # type: ignore[arg-type]
    return provider


async def serve_main(args: argparse.Namespace) -> None:
    """``tether serve`` with a tracer provider (the CLI reads OTEL_* variables instead)."""
    settings = Settings(nats_url=args.nats_url, namespace=args.namespace)
    server = TetherServer(settings, tracer_provider=tracer_provider(args.tracing), name=args.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print("serve running", flush=True)
        await stop.wait()


async def worker_main(args: argparse.Namespace) -> None:
    app = Tether(
        settings=Settings(nats_url=args.nats_url, namespace=args.namespace),
        tracer_provider=tracer_provider(args.tracing),
    )
    task = define_task(app, args.wait_timeout_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app, app.worker("bench", tasks=[task], slots=args.slots):
        print(f"worker ready pid={os.getpid()} slots={args.slots}", flush=True)
        await stop.wait()


# -- client-side observation ---------------------------------------------------------------


class RunWatch:
    """Counts wait_started and terminal events of the run log with plain subscriptions."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.waiting: set[str] = set()
        self.terminal: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}

    async def start(self, nc: nats.NATS) -> None:
        await nc.subscribe(f"{self.ns}.runs.*.wait_started.*", cb=self._on_wait)
        for token in ("completed", "failed", "timed_out", "cancelled"):
            await nc.subscribe(f"{self.ns}.runs.*.{token}.*", cb=self._on_terminal)

    async def _on_wait(self, msg: Msg) -> None:
        run_id, _ = run_subject_parts(msg.subject)
        self.waiting.add(run_id)
        fut = self._waiters.pop(run_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _on_terminal(self, msg: Msg) -> None:
        run_id, token = run_subject_parts(msg.subject)
        self.terminal[run_id] = token

    def waiting_future(self, run_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if run_id in self.waiting:
            fut.set_result(None)
        else:
            self._waiters[run_id] = fut
        return fut


async def until(
    check: Callable[[], bool],
    *,
    limit_s: float,
    what: str,
    progress: Callable[[], str],
    every: float = 2.0,
) -> None:
    """Poll ``check`` (cheap, in-memory) until true; print progress; fail after ``limit_s``."""
    start = time.monotonic()
    last = start
    while not check():
        now = time.monotonic()
        if now - start > limit_s:
            raise RuntimeError(f"timed out after {limit_s:.0f}s waiting for {what}: {progress()}")
        if now - last >= every:
            print(f"    ... {progress()} ({now - start:.1f}s)", flush=True)
            last = now
        await asyncio.sleep(0.005)


async def gather_chunks(
    items: list[Any], chunk: int, fn: Callable[[Any], Awaitable[Any]], label: str
) -> list[Any]:
    out: list[Any] = []
    start = last = time.monotonic()
    for i in range(0, len(items), chunk):
        out.extend(await asyncio.gather(*(fn(x) for x in items[i : i + chunk])))
        now = time.monotonic()
        if now - last >= 2.0:
            print(f"    ... {label}: {len(out)}/{len(items)} ({now - start:.1f}s)", flush=True)
            last = now
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- phases --------------------------------------------------------------------------------


async def publish_ceiling(nc: nats.NATS, sequential: int, pipelined: int) -> dict[str, float]:
    js = nc.jetstream(timeout=10)
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"BENCH_SCRATCH_{tag}", f"benchscratch{tag}.x"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
    body = os.urandom(150).hex().encode()  # 300 bytes
    try:
        for _ in range(200):  # warm-up
            await js.publish(subject, body)
        start = time.perf_counter()
        for _ in range(sequential):
            await js.publish(subject, body)
        seq_rate = sequential / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(pipelined // 500):
            await asyncio.gather(*(js.publish(subject, body) for _ in range(500)))
        pipe_rate = (pipelined // 500 * 500) / (time.perf_counter() - start)
    finally:
        await js.delete_stream(stream)
    return {"sequential_per_s": seq_rate, "gather500_per_s": pipe_rate}


class CpuMeter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def begin(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def end(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}


async def throughput(
    app: Tether, task: Any, watch: RunWatch, args: argparse.Namespace, cpu: CpuMeter
) -> dict[str, Any]:
    n = args.runs
    print(
        f"\n[2] throughput: {n} runs, trigger chunk {args.chunk}, approve chunk "
        f"{args.approve_chunk}",
        flush=True,
    )
    cpu.begin()
    t0 = time.perf_counter()
    refs = await gather_chunks(
        list(range(n)), args.chunk, lambda i: task.run_no_wait(Proposal(amount=i)), "triggered"
    )
    t_triggered = time.perf_counter()
    ids = [ref.run_id for ref in refs]
    await until(
        lambda: all(r in watch.waiting for r in ids),
        limit_s=max(120, n / 5),
        what="all runs waiting",
        progress=lambda: f"waiting {sum(r in watch.waiting for r in ids)}/{n}",
    )
    t_waiting = time.perf_counter()
    cpu_first = cpu.end()
    print(
        f"    all {n} waiting after {t_waiting - t0:.2f}s "
        f"(triggering took {t_triggered - t0:.2f}s)",
        flush=True,
    )

    cpu.begin()
    t_approve = time.perf_counter()
    await gather_chunks(
        ids,
        args.approve_chunk,
        lambda r: app.events.push(EVENT_KEY, {"runId": r, "decision": "approve"}),
        "approved",
    )
    t_pushed = time.perf_counter()
    await until(
        lambda: all(r in watch.terminal for r in ids),
        limit_s=max(120, n / 5),
        what="all runs completed",
        progress=lambda: f"completed {sum(r in watch.terminal for r in ids)}/{n}",
    )
    t_done = time.perf_counter()
    cpu_second = cpu.end()
    print(
        f"    all {n} completed {t_done - t_approve:.2f}s after the first push "
        f"(pushing took {t_pushed - t_approve:.2f}s)",
        flush=True,
    )

    # Check what a user would check, outside the timed window.
    infos = await gather_chunks(ids, 200, app.runs.get, "verified")
    bad = [
        i.run_id
        for i in infos
        if i.status != "completed"
        or i.output != {"status": "approve", "action": {"pay": i.input["amount"]}}
    ]
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not complete as approved, e.g. {bad[:3]}")
    total = t_done - t0
    return {
        "runs": n,
        "trigger_to_all_waiting_s": t_waiting - t0,
        "trigger_s": t_triggered - t0,
        "approve_to_all_completed_s": t_done - t_approve,
        "push_s": t_pushed - t_approve,
        "whole_flow_s": total,
        "cycles_per_s": n / total,
        "trigger_to_waiting_runs_per_s": n / (t_waiting - t0),
        "approve_to_complete_runs_per_s": n / (t_done - t_approve),
        "cpu_ms_per_run_trigger_to_waiting": {k: v / n * 1e3 for k, v in cpu_first.items()},
        "cpu_ms_per_run_approve_to_complete": {k: v / n * 1e3 for k, v in cpu_second.items()},
        "cpu_utilisation_cores": {k: (cpu_first[k] + cpu_second[k]) / total for k in cpu_first},
    }


async def latency(app: Tether, task: Any, watch: RunWatch, samples: int) -> dict[str, Any]:
    print(f"\n[3] resume latency: {samples} runs one at a time on an idle system", flush=True)
    ack_to_done: list[float] = []
    push_to_ack: list[float] = []
    trigger_to_waiting: list[float] = []
    last = time.monotonic()
    for i in range(samples + 5):
        t_trigger = time.perf_counter()
        ref = await task.run_no_wait(Proposal(amount=i))
        await asyncio.wait_for(watch.waiting_future(ref.run_id), 10)
        t_push = time.perf_counter()
        await app.events.push(EVENT_KEY, {"runId": ref.run_id, "decision": "approve"})
        t_ack = time.perf_counter()
        output = await ref.result(timeout=10)
        t_done = time.perf_counter()
        if output["status"] != "approve":
            raise RuntimeError(f"unexpected output {output}")
        if i >= 5:  # the first few warm caches
            trigger_to_waiting.append((t_push - t_trigger) * 1e3)
            push_to_ack.append((t_ack - t_push) * 1e3)
            ack_to_done.append((t_done - t_ack) * 1e3)
        if time.monotonic() - last >= 2.0:
            print(
                f"    ... {len(ack_to_done)}/{samples} "
                f"(p50 so far {statistics.median(ack_to_done or [0]):.1f} ms)",
                flush=True,
            )
            last = time.monotonic()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": pct(values, 50),
            "p90_ms": pct(values, 90),
            "p99_ms": pct(values, 99),
            "max_ms": max(values),
            "mean_ms": statistics.fmean(values),
        }

    return {
        "samples": samples,
        "push_ack_to_result": summary(ack_to_done),
        "push_call_to_ack": summary(push_to_ack),
        "trigger_to_waiting_observed": summary(trigger_to_waiting),
    }


# -- main ----------------------------------------------------------------------------------


async def client_main(
    args: argparse.Namespace, nats_url: str, pids: dict[str, int]
) -> dict[str, Any]:
    namespace = args.namespace
    nc = await nats.connect(nats_url)
    results: dict[str, Any] = {}
    try:
        print("\n[1] JetStream publish ceiling (300-byte messages, scratch stream)", flush=True)
        results["publish_ceiling"] = await publish_ceiling(nc, args.ceiling_seq, args.ceiling_pipe)
        c = results["publish_ceiling"]
        print(
            f"    sequential await js.publish: {c['sequential_per_s']:,.0f}/s; "
            f"gather-500: {c['gather500_per_s']:,.0f}/s",
            flush=True,
        )

        app = Tether(
            settings=Settings(nats_url=nats_url, namespace=namespace),
            tracer_provider=tracer_provider(args.tracing),
        )
        task = define_task(app, args.wait_timeout_s)
        watch = RunWatch(namespace)
        await watch.start(nc)
        await nc.flush()
        cpu = CpuMeter({**pids, "client": os.getpid()})
        async with app:
            # warm-up: a few full cycles so every process has its caches and consumers ready
            warm = [await task.run_no_wait(Proposal(amount=1)) for _ in range(20)]
            await until(
                lambda: all(r.run_id in watch.waiting for r in warm),
                limit_s=60,
                what="warm-up runs waiting",
                progress=lambda: "warm-up",
            )
            await asyncio.gather(
                *(
                    app.events.push(EVENT_KEY, {"runId": r.run_id, "decision": "approve"})
                    for r in warm
                )
            )
            await asyncio.gather(*(r.result(timeout=30) for r in warm))
            results["throughput"] = await throughput(app, task, watch, args, cpu)
            results["latency"] = await latency(app, task, watch, args.latency_samples)
    finally:
        await nc.close()
    return results


def report(results: dict[str, Any], config: dict[str, Any]) -> None:
    t, lat, c = results["throughput"], results["latency"], results["publish_ceiling"]
    a = lat["push_ack_to_result"]
    ok = lambda good: "meets target" if good else "MISSES target"  # noqa: E731
    print("\n== hitl_cycle summary ==")
    print(f"layout: {config['layout']}")
    print(
        f"worker slots: {config['slots']}; wait timeout: {config['wait_timeout_s']}s; "
        f"nats sync_always: {config['sync_always']}"
    )
    print(
        f"JetStream ceiling: sequential {c['sequential_per_s']:,.0f}/s, "
        f"gather-500 {c['gather500_per_s']:,.0f}/s"
    )
    cps = t["cycles_per_s"]
    print(
        f"whole flow, {t['runs']} runs trigger->wait->approve->complete: {cps:,.0f} cycles/s "
        f"({t['whole_flow_s']:.2f}s); target >= {TARGET_CYCLES_PER_S:.0f}: "
        f"ratio {cps / TARGET_CYCLES_PER_S:.2f} ({ok(cps >= TARGET_CYCLES_PER_S)})"
    )
    print(
        f"  trigger -> all waiting: {t['trigger_to_waiting_runs_per_s']:,.0f} runs/s "
        f"({t['trigger_to_all_waiting_s']:.2f}s)"
    )
    print(
        f"  approve -> all completed: {t['approve_to_complete_runs_per_s']:,.0f} runs/s "
        f"({t['approve_to_all_completed_s']:.2f}s)"
    )
    for phase in ("trigger_to_waiting", "approve_to_complete"):
        cpu = t[f"cpu_ms_per_run_{phase}"]
        print(
            f"  CPU ms per run, {phase.replace('_', ' ')}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        )
    print(
        "  CPU use over the whole flow (cores): "
        + ", ".join(f"{k} {v:.2f}" for k, v in t["cpu_utilisation_cores"].items())
    )
    print(
        f"resume latency, push ack -> ref.result() ({lat['samples']} sequential runs): "
        f"p50 {a['p50_ms']:.1f} ms (target <= {TARGET_P50_MS:.0f}: ratio "
        f"{a['p50_ms'] / TARGET_P50_MS:.2f}, {ok(a['p50_ms'] <= TARGET_P50_MS)}), "
        f"p99 {a['p99_ms']:.1f} ms (target <= {TARGET_P99_MS:.0f}: ratio "
        f"{a['p99_ms'] / TARGET_P99_MS:.2f}, {ok(a['p99_ms'] <= TARGET_P99_MS)})"
    )
    p = lat["push_call_to_ack"]
    w = lat["trigger_to_waiting_observed"]
    print(
        f"  push call -> ack: p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms; "
        f"trigger -> waiting observed: p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms"
    )
    handled = results.get("commands_per_serve", {})
    if handled:
        total = sum(handled.values()) or 1
        print(
            "engine commands handled per serve process: "
            + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in handled.items())
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=200, help="worker slots")
    parser.add_argument(
        "--serves", type=int, default=1, help="tether serve processes sharing the partitions"
    )
    parser.add_argument("--name", default=None, help=argparse.SUPPRESS)  # of a --role serve
    parser.add_argument("--chunk", type=int, default=200, help="triggers per gather")
    parser.add_argument("--approve-chunk", type=int, default=500, help="pushes per gather")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument(
        "--wait-timeout-s",
        type=float,
        default=3600.0,
        help="the wait's timeout (0: none); a timeout adds a KV deadline",
    )
    parser.add_argument("--ceiling-seq", type=int, default=3000)
    parser.add_argument("--ceiling-pipe", type=int, default=20000)
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    parser.add_argument(
        "--sync-always",
        action="store_true",
        help="started nats-server fsyncs every write (sync_interval: always)",
    )
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--out", default=None, help="default: results/hitl_cycle[_tracing].json")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="trace every process (SDK provider, batch processor, spans discarded); run once "
        "with and once without to get the overhead ratio",
    )
    parser.add_argument(
        "--role", choices=["bench", "worker", "serve"], default="bench", help=argparse.SUPPRESS
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.role == "worker":
        asyncio.run(worker_main(args))
        return
    if args.role == "serve":
        asyncio.run(serve_main(args))
        return
    args.namespace = args.namespace or f"bench{uuid.uuid4().hex[:8]}"
    load_start = load_before_start()
    server: NatsServer | None = None
    worker = None
    serves: list[subprocess.Popen[str]] = []
    pids: dict[str, int] = {}
    try:
        if args.nats_url:
            nats_url = args.nats_url
        else:
            server = NatsServer(sync_always=args.sync_always).start()
            nats_url = server.url
            assert server.proc is not None
            pids["nats-server"] = server.proc.pid
        print(
            f"nats-server: {nats_url} ({'given' if args.nats_url else 'started here'}, "
            f"sync_always={args.sync_always if not args.nats_url else 'unknown'}); "
            f"namespace {args.namespace}",
            flush=True,
        )
        serves = []
        for number in range(1, args.serves + 1):
            name = f"serve-{number}"
            serves.append(start_serve(nats_url, args.namespace, name, tracing=args.tracing))
            pids[name if args.serves > 1 else "serve"] = serves[-1].pid
        asyncio.run(until_shared(nats_url, args.namespace, args.serves))
        worker = start_worker(
            nats_url, args.namespace, args.slots, args.wait_timeout_s, tracing=args.tracing
        )
        pids["worker"] = worker.pid
        layout = (
            f"nats-server | {args.serves} x `tether serve` (engine+matcher+timer) | worker "
            f"process | client (this process): {3 + args.serves} processes on "
            f"{os.cpu_count()} cores"
        )
        print(f"layout: {layout}", flush=True)
        results = asyncio.run(client_main(args, nats_url, pids))
        expected = args.runs + args.latency_samples  # one resume command per cycle
        results["commands_per_serve"] = asyncio.run(
            commands_per_serve(nats_url, args.namespace, expected)
        )
    finally:
        stop_child(worker)
        for serve in serves:
            stop_child(serve)
        if server is not None:
            server.cleanup()
    config = {
        **machine(load_start),
        "layout": layout,
        "runs": args.runs,
        "serves": args.serves,
        "slots": args.slots,
        "trigger_chunk": args.chunk,
        "approve_chunk": args.approve_chunk,
        "wait_timeout_s": args.wait_timeout_s,
        "sync_always": args.sync_always if not args.nats_url else None,
        "tracing": args.tracing,
        "nats_url_given": bool(args.nats_url),
        "targets": {
            "cycles_per_s": TARGET_CYCLES_PER_S,
            "p50_ms": TARGET_P50_MS,
            "p99_ms": TARGET_P99_MS,
        },
    }
    report(results, config)
    name = "hitl_cycle_tracing.json" if args.tracing else "hitl_cycle.json"
    write_results(Path(args.out or RESULTS / name), config, results)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
