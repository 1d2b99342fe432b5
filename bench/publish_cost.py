"""What one acknowledged JetStream publish costs the publishing process.

Every append to a run's log, every dispatch and every pushed event is a publish that waits
for the stream's acknowledgement. This publishes --count messages (300 bytes, one header,
--in-flight at a time) to a fresh nats-server, in turns through nats-py's
``JetStreamContext.publish`` and through Tether's ``AckedPublisher``, and reports the
client's CPU time per publish (``time.process_time``) and the publishes per second, for
each of --rounds rounds.

Usage: python bench/publish_cost.py [--count 5000] [--in-flight 16] [--rounds 3] [--out PATH]
Writes bench/results/publish_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from reporting import load_before_start, machine, write_results

from tether.engine.acked_publish import AckedPublisher
from tether.engine.nats_server import NatsServer

RESULTS = Path(__file__).resolve().parent / "results"
STREAM, SUBJECTS = "PUBLISH_COST", "cost.>"
BODY = b"x" * 300

Publish = Callable[..., Awaitable[Any]]


async def measure(publish: Publish, count: int, in_flight: int) -> tuple[float, float]:
    """CPU microseconds per publish and publishes per second."""
    slots = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with slots:
            await publish(f"cost.{i % 100}", BODY, headers={"Tether-Bench": "1"})

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return (time.process_time() - cpu) / count * 1e6, count / (time.perf_counter() - wall)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = NatsServer(sync_always=False).start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=10)
        await js.add_stream(name=STREAM, subjects=[SUBJECTS])
        ours = AckedPublisher(nc)
        ways: dict[str, Publish] = {"nats-py": js.publish, "AckedPublisher": ours.publish}
        await measure(ours.publish, args.in_flight * 10, args.in_flight)  # warm-up
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for n in range(args.rounds):
            for name, publish in ways.items():
                cpu_us, rate = await measure(publish, args.count, args.in_flight)
                rounds[name].append((cpu_us, rate))
                print(f"  round {n + 1} {name:15s} {cpu_us:6.1f} us CPU  {rate:8,.0f}/s")
        await ours.close()
        await nc.close()
    finally:
        server.cleanup()
    return {
        name: {
            "cpu_us_per_publish_median": round(statistics.median(c for c, _ in got), 1),
            "publishes_per_s_median": round(statistics.median(r for _, r in got)),
        }
        for name, got in rounds.items()
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="default: results/publish_cost.json")
    args = parser.parse_args()
    load = load_before_start()
    results = asyncio.run(main(args))
    for name, figures in results.items():
        print(f"{name}: {figures}")
    config = {**vars(args), **machine(load)}
    write_results(Path(args.out) if args.out else RESULTS / "publish_cost.json", config, results)
