"""Where the time of one approval goes: the moments of a cycle, from the push to the result.

Layout as in ``hitl_method.py`` (nats-server, ``tether serve``, a worker process, this
process as the client), one run at a time on an idle system. For each cycle the client
notes when it started the push, when the push returned and when ``RunRef.result()``
returned; the run's own events give the moments in between, from the clock of the process
that wrote each (all on this box): the engine's resolution of the wait and the resumed
attempt's completion (an attempt that runs no step records no start of its own).
Reported: the median and p90 of each moment, milliseconds after the push started.

Usage: python bench/cycle_timeline.py [--cycles 100] [--pause-ms 300]
Writes bench/results/cycle_timeline.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from hitl_cycle import EVENT_KEY, Proposal, RunWatch, define_task, pct, start_serve, start_worker
from hitl_cycle import stop_child as stop
from reporting import load_before_start, machine, write_results

from tether import Tether
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer

RESULTS = Path(__file__).resolve().parent / "results"
WARM_UP = 10
# the run's events whose time is a moment of the cycle (the last of each type), in order
MOMENTS = {
    "run.wait_satisfied.v1": "engine resolved the wait",
    "run.completed.v1": "worker completed the run",
}


async def one_cycle(app: Tether, task: Any, watch: RunWatch, pause_s: float) -> dict[str, float]:
    ref = await task.run_no_wait(Proposal(amount=1))
    await watch.waiting_future(ref.run_id)
    await asyncio.sleep(pause_s)  # an idle system, as when a person clicks
    wall, began = time.time(), time.perf_counter()
    await app.events.push(EVENT_KEY, {"runId": ref.run_id, "decision": "approve"})
    pushed = time.perf_counter()
    await ref.result(timeout=30)
    done = time.perf_counter()
    moments = {"push returned": (pushed - began) * 1000}
    info = await app.runs.get(ref.run_id)
    last_of_type = {event.type: event for event in info.events}  # the resumed attempt's
    for event_type, moment in MOMENTS.items():
        moments[moment] = (last_of_type[event_type].at - wall) * 1000
    moments["result() returned"] = (done - began) * 1000
    return moments


async def client_main(args: argparse.Namespace, nats_url: str) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    watch = RunWatch(args.namespace)
    await watch.start(nc)
    app = Tether(settings=Settings(nats_url=nats_url, namespace=args.namespace))
    task = define_task(app, 300.0)
    samples: list[dict[str, float]] = []
    try:
        async with app:
            for n in range(WARM_UP + args.cycles):
                moments = await one_cycle(app, task, watch, args.pause_ms / 1000)
                if n >= WARM_UP:
                    samples.append(moments)
                if (n + 1) % 25 == 0:
                    print(f"    ... {n + 1}/{WARM_UP + args.cycles} cycles", flush=True)
    finally:
        await nc.close()
    names = list(samples[0])
    return {
        name: {
            "p50_ms": round(pct([s[name] for s in samples], 50), 2),
            "p90_ms": round(pct([s[name] for s in samples], 90), 2),
        }
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--pause-ms", type=float, default=300.0, help="idle time before a push")
    parser.add_argument("--out", default=None, help="default: results/cycle_timeline.json")
    args = parser.parse_args()
    args.namespace = f"bench{uuid.uuid4().hex[:8]}"
    load_start = load_before_start()
    server = NatsServer(sync_always=False).start()  # as hitl_method.py (the peers' setup)
    serve = worker = None
    try:
        serve = start_serve(server.url, args.namespace, "serve-1")
        worker = start_worker(server.url, args.namespace, 200, 300.0)
        timeline = asyncio.run(client_main(args, server.url))
    finally:
        stop(worker)
        stop(serve)
        server.stop()
        server.cleanup()
    print("\n== cycle timeline (ms after the push started) ==")
    for name, figures in timeline.items():
        print(f"  {name:40} p50 {figures['p50_ms']:7.2f}   p90 {figures['p90_ms']:7.2f}")
    config = {**vars(args), "machine": machine(load_start)}
    write_results(Path(args.out) if args.out else RESULTS / "cycle_timeline.json", config, timeline)


if __name__ == "__main__":
    main()
