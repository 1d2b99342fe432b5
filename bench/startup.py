"""Start-up after a restart must not grow with history: how long `tether serve` takes until it
runs and `tether api` until it answers, and the RSS of each, at 10,000 and 100,000 finished
runs of history (target: the 100,000 figures within 1.5x of the 10,000 ones).

For each size, on a fresh nats-server of its own (temporary store; or a fresh namespace of
`--nats-url`):

1. History. `tether serve` and a worker process (this script, `--role worker`) run as child
   processes; this process first leaves `--open` runs waiting on an event nobody pushes, then
   triggers N runs of a task that records one step and completes (chunks of `--chunk`), and
   waits until all N have completed (4 run-log events each).
   How, and why: real runs through the real engine and a real worker. The run log, the
   deadlines bucket, the engine's consumers and the matcher's checkpoints then hold what a
   production install holds after N runs, and that is what start-up reads. On the 2-core
   machine this goes at several hundred runs per second, so 100,000 runs take minutes.
   Writing run events straight into the run log would be faster, but skips the engine: its
   bookkeeping would meet the whole backlog at the first serve start, and the deadlines
   bucket and matcher checkpoints would not be what real runs leave.
2. `serve` is stopped and started again at once ("serve, at once": the deadlines bucket still
   holds the purge markers of the last DEADLINE_MARKER_TTL_S, i.e. of recent traffic).
3. First start of `tether api`: no run index checkpoint yet, so it reads the whole run log,
   once; on stop it writes its checkpoint. Shown for comparison.
4. `serve` is stopped; unless `--no-settle`, the script waits until the markers have expired
   (DEADLINE_MARKER_TTL_S after the last run), so what is left is history, not recent traffic.
5. Restart `tether serve`: seconds from spawn until it prints its `running` line; its RSS then.
6. Start `tether api --http 127.0.0.1:0` (serve running): seconds from spawn until
   `GET /api/runs` answers 200; its RSS then. Checked: `/api/overview` counts the open runs
   as waiting and at most the index's recent finished runs as completed.

Usage: python bench/startup.py [--sizes 10000 100000] [--open 100] [--slots 200]
       [--chunk 500] [--no-settle] [--nats-url URL]
Takes several minutes at the default sizes (building 110,000 runs, two settle waits of a minute).
Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import psutil
from hitl_cycle import gather_chunks, stop_child, until
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from reporting import load_before_start, machine, write_results

from tether import DurableContext, Tether
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer
from tether.engine.provision import DEADLINE_MARKER_TTL_S
from tether.projections.run_index import RECENT_FINISHED

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-startup-token-0123456789"
TARGET_RATIO = 1.5
IN_FLIGHT = 2_000  # runs triggered and not yet completed while history is built
MIB = 1024 * 1024


def define_tasks(app: Tether) -> tuple[Any, Any]:
    """A run that records one step and completes, and one left waiting for good."""

    def double(x: int) -> int:
        return 2 * x

    @app.durable_task(name="bench-quick", execution_timeout=timedelta(hours=2))
    async def quick(input: dict[str, int], ctx: DurableContext) -> int:
        return int(await ctx.step("double", double, input["x"]))

    @app.durable_task(name="bench-open", execution_timeout=timedelta(hours=2))
    async def left_open(input: dict[str, int], ctx: DurableContext) -> dict[str, Any]:
        return await ctx.wait_for_event("bench:never", expression=f"input.runId == '{ctx.run_id}'")

    return quick, left_open


async def worker_main(args: argparse.Namespace) -> None:
    app = Tether(settings=Settings(nats_url=args.nats_url, namespace=args.namespace))
    define_tasks(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app, app.worker("bench", slots=args.slots):
        print(f"worker ready pid={os.getpid()}", flush=True)
        await stop.wait()


# -- child processes -----------------------------------------------------------------------


def spawn_until(
    cmd: list[str], pattern: str, what: str, *, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], re.Match[str], float]:
    """Start ``cmd``; return once a line of its stdout matches ``pattern``, with the match
    and the seconds since the spawn."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} exited with code {proc.wait()} before it was ready")
        found = re.search(pattern, line)
        if found:
            return proc, found, time.perf_counter() - started
    proc.kill()
    raise RuntimeError(f"{what} not ready within 600s")


def tether_cmd(command: str, nats_url: str, namespace: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli.main", command, "--nats-url", nats_url,
            "--namespace", namespace]  # fmt: skip


def start_serve(nats_url: str, namespace: str) -> tuple[subprocess.Popen[str], float]:
    proc, _, seconds = spawn_until(tether_cmd("serve", nats_url, namespace), "running", "serve")
    return proc, seconds


def start_worker(nats_url: str, namespace: str, slots: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--role", "worker", "--nats-url", nats_url]
    cmd += ["--namespace", namespace, "--slots", str(slots)]
    return spawn_until(cmd, "worker ready", "worker")[0]


def api_get(url: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status), json.loads(response.read())


def start_api(nats_url: str, namespace: str) -> tuple[subprocess.Popen[str], str, float]:
    """`tether api` on a free port; returns once GET /api/runs answered 200, with the seconds
    from the spawn to that answer."""
    env = {**os.environ, "TETHER_API_TOKENS": json.dumps({TOKEN: {"name": "bench"}})}
    started = time.perf_counter()
    cmd = [*tether_cmd("api", nats_url, namespace), "--http", "127.0.0.1:0"]
    proc, found, _ = spawn_until(cmd, r"dashboard: (http://[^/\s]+)/", "api", env=env)
    url = found[1]
    status, _ = api_get(url, "/api/runs")
    if status != 200:
        raise RuntimeError(f"GET /api/runs answered {status}")
    return proc, url, time.perf_counter() - started


def rss_mib(proc: subprocess.Popen[str]) -> float:
    return float(psutil.Process(proc.pid).memory_info().rss) / MIB


# -- history ---------------------------------------------------------------------------------


class Counter:
    """Counts stored run-log events of one kind (an ordered consumer, headers only)."""

    def __init__(self) -> None:
        self.seen = 0
        self.last_at = 0.0

    async def start(self, nc: nats.NATS, subject: str) -> None:
        js = nc.jetstream()
        config = ConsumerConfig(headers_only=True)
        await js.subscribe(subject, cb=self._on_msg, ordered_consumer=True, config=config)

    async def _on_msg(self, msg: Msg) -> None:
        self.seen += 1
        self.last_at = time.monotonic()


async def build_history(
    nats_url: str, namespace: str, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    app = Tether(settings=Settings(nats_url=nats_url, namespace=namespace))
    quick, left_open = define_tasks(app)
    nc = await nats.connect(nats_url)
    waiting, completed = Counter(), Counter()
    await waiting.start(nc, f"{namespace}.runs.*.wait_started.*")
    await completed.start(nc, f"{namespace}.runs.*.completed.*")
    try:
        async with app:
            for i in range(args.open):
                await left_open.run_no_wait({"x": i})
            await until(
                lambda: waiting.seen >= args.open,
                limit_s=120,
                what="the open runs to wait",
                progress=lambda: f"waiting {waiting.seen}/{args.open}",
            )
            started = time.perf_counter()
            # Paced: at most IN_FLIGHT runs triggered and not yet completed, as a steady
            # production load would be. Triggering all of them at once measured a backlog
            # of 100,000 runs (timeouts and redeliveries), not the history it leaves.
            for first in range(0, size, args.chunk):
                await until(
                    lambda first=first: first - completed.seen <= IN_FLIGHT,
                    limit_s=300,
                    what="runs in flight to complete",
                    progress=lambda: f"completed {completed.seen:,}/{size:,}",
                    every=10.0,
                )
                await gather_chunks(
                    list(range(first, min(size, first + args.chunk))),
                    args.chunk,
                    lambda i: quick.run_no_wait({"x": i}),
                    "triggered",
                )
            await until(
                lambda: completed.seen >= size,
                limit_s=max(600, size / 20),
                what="every run to complete",
                progress=lambda: f"completed {completed.seen:,}/{size:,}",
                every=10.0,
            )
            seconds = time.perf_counter() - started
    finally:
        await nc.close()
    info = await stream_state(nats_url, app.settings.names.runs_stream)
    print(
        f"    {size:,} runs completed in {seconds:.1f}s ({size / seconds:,.0f} runs/s); "
        f"run log {info['messages']:,} messages, {info['bytes'] / MIB:,.1f} MiB",
        flush=True,
    )
    return {
        "build_s": seconds,
        "runs_per_s": size / seconds,
        "run_log_messages": info["messages"],
        "run_log_mib": info["bytes"] / MIB,
        "last_completed_monotonic": completed.last_at,
    }


async def stream_state(nats_url: str, stream: str) -> dict[str, int]:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return {"messages": int(info.state.messages), "bytes": int(info.state.bytes)}
    finally:
        await nc.close()


# -- one size --------------------------------------------------------------------------------


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    server = None if args.nats_url else NatsServer(sync_always=False).start()
    nats_url = args.nats_url or (server.url if server else "")
    serve = worker = api = None
    out: dict[str, Any] = {"size": size, "open": args.open}
    try:
        print(f"\n[{size:,} runs] history on {nats_url}, namespace {namespace}", flush=True)
        serve, _ = start_serve(nats_url, namespace)
        worker = start_worker(nats_url, namespace, args.slots)
        out.update(asyncio.run(build_history(nats_url, namespace, size, args)))
        stop_child(worker)
        stop_child(serve)

        serve, out["serve_ready_at_once_s"] = start_serve(nats_url, namespace)
        print(f"    serve, at once: running after {out['serve_ready_at_once_s']:.2f}s", flush=True)
        api, _, out["api_first_start_s"] = start_api(nats_url, namespace)
        out["api_first_start_rss_mib"] = rss_mib(api)
        print(
            f"    api, first start (whole log): answering after {out['api_first_start_s']:.2f}s,"
            f" RSS {out['api_first_start_rss_mib']:.1f} MiB",
            flush=True,
        )
        stop_child(api)  # writes the run index checkpoint
        stop_child(serve)

        if not args.no_settle:
            wait_s = out["last_completed_monotonic"] + DEADLINE_MARKER_TTL_S + 5 - time.monotonic()
            if wait_s > 0:
                print(f"    waiting {wait_s:.0f}s for the deadline markers to expire", flush=True)
                time.sleep(wait_s)
        bucket = Settings(namespace=namespace).names.deadlines_bucket
        deadlines = asyncio.run(stream_state(nats_url, f"KV_{bucket}"))
        out["deadline_entries_at_restart"] = deadlines["messages"]

        serve, out["serve_ready_s"] = start_serve(nats_url, namespace)
        out["serve_rss_mib"] = rss_mib(serve)
        api, url, out["api_ready_s"] = start_api(nats_url, namespace)
        out["api_rss_mib"] = rss_mib(api)
        print(
            f"    restart: serve running after {out['serve_ready_s']:.2f}s "
            f"(RSS {out['serve_rss_mib']:.1f} MiB); api answering after "
            f"{out['api_ready_s']:.2f}s (RSS {out['api_rss_mib']:.1f} MiB)",
            flush=True,
        )
        _, overview = api_get(url, "/api/overview")
        out["overview"] = overview["statuses"]
        check_overview(overview["statuses"], size, args.open)
    finally:
        for proc in (api, worker, serve):
            stop_child(proc)
        if server is not None:
            server.cleanup()
    return out


def check_overview(statuses: dict[str, int], size: int, open_runs: int) -> None:
    expected = {"waiting": open_runs, "completed": min(size, RECENT_FINISHED)}
    if {k: statuses.get(k, 0) for k in expected} != expected:
        raise RuntimeError(f"the restarted API holds {statuses}, expected {expected}")


# -- report ----------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    print("\n== startup summary ==")
    print(
        f"{'history':>9} | {'built/s':>7} | {'serve at once s':>15} | {'serve s':>7} | "
        f"{'serve MiB':>9} | {'api first s':>11} | {'api s':>6} | {'api MiB':>7} | "
        f"{'deadline entries':>16}"
    )
    for r in rows:
        print(
            f"{r['size']:>9,} | {r['runs_per_s']:>7,.0f} | {r['serve_ready_at_once_s']:>15.2f} | "
            f"{r['serve_ready_s']:>7.2f} | {r['serve_rss_mib']:>9.1f} | "
            f"{r['api_first_start_s']:>11.2f} | {r['api_ready_s']:>6.2f} | "
            f"{r['api_rss_mib']:>7.1f} | {r['deadline_entries_at_restart']:>16,}"
        )
    ratios: dict[str, float] = {}
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        for key in ("serve_ready_s", "serve_rss_mib", "api_ready_s", "api_rss_mib"):
            ratios[key] = large[key] / small[key]
        verdict = ", ".join(
            f"{k} {v:.2f}{'' if v <= TARGET_RATIO else ' (over)'}" for k, v in ratios.items()
        )
        print(f"ratio {large['size']:,} / {small['size']:,} (target <= {TARGET_RATIO}): {verdict}")
    return ratios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000], help="finished runs"
    )
    parser.add_argument("--open", type=int, default=100, help="runs left waiting, per size")
    parser.add_argument("--slots", type=int, default=200, help="worker slots")
    parser.add_argument("--chunk", type=int, default=500, help="triggers per gather")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="restart at once instead of waiting for the deadline markers to expire",
    )
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    parser.add_argument("--namespace", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="default: results/startup.json")
    parser.add_argument(
        "--role", choices=["bench", "worker"], default="bench", help=argparse.SUPPRESS
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.role == "worker":
        asyncio.run(worker_main(args))
        return
    load_start = load_before_start()
    rows = [measure(size, args) for size in args.sizes]
    ratios = report(rows)
    config = {
        **machine(load_start),
        "sizes": args.sizes,
        "open": args.open,
        "slots": args.slots,
        "chunk": args.chunk,
        "settle": not args.no_settle,
        "recent_finished": RECENT_FINISHED,
        "nats_url_given": bool(args.nats_url),
        "target_ratio": TARGET_RATIO,
    }
    write_results(
        Path(args.out) if args.out else RESULTS / "startup.json",
        config,
        {"sizes": rows, "ratios": ratios},
    )


if __name__ == "__main__":
    main()
