"""Resident memory per open wait in the engine + matcher process, at 10,000 waiting runs.

Layout: nats-server | ``tether serve`` (engine service, matcher, timer) in a child process |
a worker process (the approval task of bench/hitl_cycle.py) | this process as the client.

1. Warm up with a few hundred full approval cycles, so caches, consumers and buffers that
   do not depend on the number of waits exist before the baseline.
2. Read VmRSS (/proc/<pid>/status) of the serve and worker processes.
3. Trigger 10,000 runs and wait until every one is ``waiting``; a last run approved after
   them proves the matcher has indexed every earlier wait (it reads the run log in order).
   Then wait for the engine's bookkeeping to drain and for RSS to settle.
4. Read VmRSS again: (after - before) / waits, against the 2 KB target. The worker should
   not grow per waiting run: a suspended run holds no slot and nothing in the worker.

Then, in this process and with tracemalloc, where the bytes go: the matcher's structures for
10,000 waits and the timer projection's entries for their deadlines (each waiting run has an
execution deadline and, with a wait timeout, a wait deadline).

Usage: python bench/wait_memory.py [--waits 10000] [--slots 500] [--wait-timeout-s 3600]
       [--nats-url URL] [--sync-always]
Writes bench/results/wait_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import tracemalloc
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats

# The sibling script (its directory is on sys.path when run as a script) owns the task and
# the worker role, so both benchmarks run exactly the same approval task.
from fake_msg import fake_msg
from hitl_cycle import (
    EVENT_KEY,
    Proposal,
    RunWatch,
    define_task,
    gather_chunks,
    rss_bytes,
    start_serve,
    start_worker,
    stop_child,
    until,
)
from reporting import load_before_start, machine, write_results

from tether import Tether
from tether.engine.config import Settings
from tether.engine.expressions import analyze
from tether.engine.nats_server import NatsServer
from tether.engine.tracing import Tracing
from tether.projections.matcher import Matcher
from tether.projections.timer import TimerProjection

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_BYTES_PER_WAIT = 2048


async def settled_rss(
    pid: int, *, every: float = 0.5, window: int = 4, limit_s: float = 30.0
) -> int:
    """VmRSS once it has stopped moving: `window` readings within 0.5% of each other."""
    readings: list[int] = []
    deadline = time.monotonic() + limit_s
    while True:
        readings.append(rss_bytes(pid))
        recent = readings[-window:]
        if len(recent) == window and max(recent) - min(recent) <= 0.005 * max(recent):
            return recent[-1]
        if time.monotonic() > deadline:
            print(
                f"    (RSS of {pid} still moving after {limit_s:.0f}s; taking the last reading)",
                flush=True,
            )
            return readings[-1]
        await asyncio.sleep(every)


async def engine_idle(js: Any, settings: Settings, limit_s: float = 120.0) -> None:
    """Wait until the engine's bookkeeping consumer has handled every run event so far."""
    names = settings.names
    deadline = time.monotonic() + limit_s
    while True:
        info = await js.consumer_info(names.runs_stream, names.bookkeeper_consumer)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"engine bookkeeping did not drain: {info.num_pending} pending")
        await asyncio.sleep(0.1)


async def cycles(app: Tether, task: Any, watch: RunWatch, n: int) -> None:
    refs = await gather_chunks(
        list(range(n)), 200, lambda i: task.run_no_wait(Proposal(amount=i)), "triggered"
    )
    await until(
        lambda: all(r.run_id in watch.waiting for r in refs),
        limit_s=120,
        what="runs waiting",
        progress=lambda: "warm-up runs waiting",
    )
    await asyncio.gather(
        *(app.events.push(EVENT_KEY, {"runId": r.run_id, "decision": "approve"}) for r in refs)
    )
    await asyncio.gather(*(r.result(timeout=60) for r in refs))


async def measure(
    args: argparse.Namespace, nats_url: str, serve_pid: int, worker_pid: int
) -> dict[str, Any]:
    settings = Settings(nats_url=nats_url, namespace=args.namespace)
    app = Tether(settings=settings)
    task = define_task(app, args.wait_timeout_s)
    nc = await nats.connect(nats_url)
    js = nc.jetstream(timeout=30)
    watch = RunWatch(args.namespace)
    await watch.start(nc)
    await nc.flush()
    try:
        async with app:
            print(f"\n[1] warm-up: {args.warmup} full approval cycles", flush=True)
            await cycles(app, task, watch, args.warmup)
            await engine_idle(js, settings)
            serve_before = await settled_rss(serve_pid)
            worker_before = await settled_rss(worker_pid)
            print(
                f"    baseline RSS: serve {serve_before / 2**20:.1f} MiB, "
                f"worker {worker_before / 2**20:.1f} MiB",
                flush=True,
            )

            n = args.waits
            print(f"\n[2] {n:,} runs triggered, each left waiting", flush=True)
            start = time.perf_counter()
            refs = await gather_chunks(
                list(range(n)), 500, lambda i: task.run_no_wait(Proposal(amount=i)), "triggered"
            )
            ids = [r.run_id for r in refs]
            await until(
                lambda: all(r in watch.waiting for r in ids),
                limit_s=max(120, n / 20),
                what="all runs waiting",
                progress=lambda: f"waiting {sum(r in watch.waiting for r in ids):,}/{n:,}",
            )
            print(f"    all {n:,} waiting after {time.perf_counter() - start:.1f}s", flush=True)
            # A run that waits after all of them and resumes: the matcher has read every
            # earlier wait_started by then.
            sentinel = await task.run_no_wait(Proposal(amount=0))
            await asyncio.wait_for(watch.waiting_future(sentinel.run_id), 60)
            await app.events.push(EVENT_KEY, {"runId": sentinel.run_id, "decision": "approve"})
            await sentinel.result(timeout=60)
            await engine_idle(js, settings)
            serve_after = await settled_rss(serve_pid)
            worker_after = await settled_rss(worker_pid)
            still_waiting = [r for r in ids if r in watch.terminal]
            if still_waiting:
                raise RuntimeError(f"{len(still_waiting)} runs ended while they should wait")
            sample = await asyncio.gather(*(app.runs.get(r) for r in ids[:: max(1, n // 50)]))
            if any(i.status != "waiting" for i in sample):
                raise RuntimeError("a sampled run is not waiting")
            print(
                f"    RSS with {n:,} waiting: serve {serve_after / 2**20:.1f} MiB, "
                f"worker {worker_after / 2**20:.1f} MiB",
                flush=True,
            )
            records = await capture_records(js, settings, ids[0])
    finally:
        await nc.close()
    return {
        "records": records,
        "waits": n,
        "serve_rss_before": serve_before,
        "serve_rss_after": serve_after,
        "serve_bytes_per_wait": (serve_after - serve_before) / n,
        "worker_rss_before": worker_before,
        "worker_rss_after": worker_after,
        "worker_bytes_per_wait": (worker_after - worker_before) / n,
    }


# -- where the bytes go (in this process, tracemalloc) ----------------------------------------


async def capture_records(js: Any, settings: Settings, run_id: str) -> dict[str, Any]:
    """What serve holds for one waiting run, as stored: its wait_started event and its
    deadline entries (key suffix -> value), to rebuild the same records for other run ids."""
    names = settings.names
    wait = await js.get_last_msg(names.runs_stream, names.run_subject(run_id, "wait_started"))
    kv = await js.key_value(names.deadlines_bucket)
    deadlines = {}
    for key in await kv.keys():
        if key.startswith(run_id + "."):
            entry = await kv.get(key)
            deadlines[key[len(run_id) :]] = (entry.value or b"").decode()
    return {"run_id": run_id, "wait_started": wait.data.decode(), "deadlines": deadlines}


async def breakdown(n: int, records: dict[str, Any]) -> dict[str, Any]:
    """Feed the matcher and the timer projection the records of ``n`` waiting runs (copies
    of the captured ones under new run ids) and trace the Python memory each keeps: the
    messages are built under the trace and dropped before reading it, so whatever the
    projection keeps of them (strings, bytes) counts, and nothing else does."""
    analyze("input.runId == 'warm-up'")
    template = records["run_id"]
    run_ids = [uuid.uuid4().hex for _ in range(n)]
    conn = SimpleNamespace(
        settings=Settings(namespace="bench"), js=None, reader=None, tracing=Tracing()
    )

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    matcher = Matcher(conn)  # type: ignore[arg-type]
    for i, r in enumerate(run_ids):
        msg = fake_msg(
            f"bench.runs.{r}.wait_started",
            records["wait_started"].replace(template, r).encode(),
            i + 1,
        )
        matcher._on_run_msg(msg)  # type: ignore[arg-type]
    del msg
    gc.collect()
    matcher_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    if len(matcher.waits) != n:
        raise RuntimeError(f"matcher holds {len(matcher.waits)} of {n} waits")

    per_run = len(records["deadlines"])
    timer = TimerProjection(SimpleNamespace())  # type: ignore[arg-type]
    timer._key_prefix = "$KV.bench."
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    entries = [
        fake_msg(f"$KV.bench.{r}{suffix}", value.replace(template, r).encode(), i + 1)
        for i, r in enumerate(run_ids)
        for suffix, value in records["deadlines"].items()
    ]
    for entry in entries:
        timer._on_entry(entry)  # type: ignore[arg-type]
    del entries, entry
    gc.collect()
    timer_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    if timer.pending != n * per_run:
        raise RuntimeError(f"timer holds {timer.pending} of {n * per_run} deadlines")
    return {
        "waits": n,
        "matcher_bytes_per_wait": matcher_bytes / n,
        "timer_bytes_per_wait": timer_bytes / n,
        "timer_entries_per_wait": per_run,
        "deadline_keys": sorted(records["deadlines"]),
        "wait_started_bytes": len(records["wait_started"]),
        "deadline_value_bytes": {k: len(v) for k, v in records["deadlines"].items()},
    }


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=500, help="worker slots")
    parser.add_argument("--warmup", type=int, default=1000, help="full cycles before the baseline")
    parser.add_argument(
        "--wait-timeout-s",
        type=float,
        default=3600.0,
        help="the wait's timeout (0: none); a timeout adds a KV deadline",
    )
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    parser.add_argument(
        "--sync-always",
        action="store_true",
        help="started nats-server fsyncs every write (sync_interval: always)",
    )
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--out", default=str(RESULTS / "wait_memory.json"))
    args = parser.parse_args()
    args.namespace = args.namespace or f"bench{uuid.uuid4().hex[:8]}"
    load_start = load_before_start()

    server: NatsServer | None = None
    serve = worker = None
    try:
        if args.nats_url:
            nats_url = args.nats_url
        else:
            server = NatsServer(sync_always=args.sync_always).start()
            nats_url = server.url
        print(f"nats-server: {nats_url}; namespace {args.namespace}", flush=True)
        serve = start_serve(nats_url, args.namespace)
        worker = start_worker(nats_url, args.namespace, args.slots, args.wait_timeout_s)
        print(
            f"layout: nats-server | tether serve pid {serve.pid} | worker pid {worker.pid} "
            f"({args.slots} slots) | client pid {os.getpid()}",
            flush=True,
        )
        results = asyncio.run(measure(args, nats_url, serve.pid, worker.pid))
    finally:
        stop_child(worker)
        stop_child(serve)
        if server is not None:
            server.cleanup()

    print("\n[3] where the bytes go (this process, tracemalloc)", flush=True)
    parts = asyncio.run(breakdown(args.waits, results.pop("records")))
    results["breakdown"] = parts

    per_wait = results["serve_bytes_per_wait"]
    print("\n== wait_memory summary ==")
    print(
        f"serve (engine+matcher+timer) RSS: {results['serve_rss_before'] / 2**20:.1f} MiB -> "
        f"{results['serve_rss_after'] / 2**20:.1f} MiB with {results['waits']:,} open waits"
    )
    print(
        f"  {per_wait:,.0f} bytes per open wait; target <= {TARGET_BYTES_PER_WAIT}: ratio "
        f"{per_wait / TARGET_BYTES_PER_WAIT:.2f} "
        f"({'meets' if per_wait <= TARGET_BYTES_PER_WAIT else 'MISSES'} target)"
    )
    print(
        f"  wait timeout {args.wait_timeout_s:g}s: each waiting run has "
        f"{parts['timer_entries_per_wait']} deadline(s) in the timer projection"
    )
    print(
        f"worker RSS: {results['worker_rss_before'] / 2**20:.1f} MiB -> "
        f"{results['worker_rss_after'] / 2**20:.1f} MiB "
        f"({results['worker_bytes_per_wait']:,.0f} bytes per waiting run)"
    )
    print(
        f"breakdown (tracemalloc, Python objects only): matcher "
        f"{parts['matcher_bytes_per_wait']:,.0f} B/wait, timer "
        f"{parts['timer_bytes_per_wait']:,.0f} B/wait"
    )
    config = {
        **machine(load_start),
        "waits": args.waits,
        "slots": args.slots,
        "warmup_cycles": args.warmup,
        "wait_timeout_s": args.wait_timeout_s,
        "sync_always": args.sync_always if not args.nats_url else None,
        "target_bytes_per_wait": TARGET_BYTES_PER_WAIT,
    }
    write_results(Path(args.out), config, results)


if __name__ == "__main__":
    main()
