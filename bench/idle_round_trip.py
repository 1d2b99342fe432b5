"""What a round trip to nats-server costs after the machine has been idle.

The latency phase of the peers' method pushes one decision at a time after a think time of
up to a second, so every process of the cycle has been asleep when the push starts. This
measures, on a fresh nats-server, a core round trip (``flush``: PING/PONG) and an
acknowledged JetStream publish after each of several pauses, one at a time: what one hop
of the cycle costs before any of Tether's own work.

Usage: python bench/idle_round_trip.py [--samples 60] [--pauses-ms 0,10,100,300] [--out PATH]
Writes bench/results/idle_round_trip.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import nats
from hitl_cycle import pct
from reporting import load_before_start, machine, write_results

from tether.engine.acked_publish import AckedPublisher
from tether.engine.nats_server import NatsServer

RESULTS = Path(__file__).resolve().parent / "results"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = NatsServer(sync_always=False).start()
    results: dict[str, Any] = {}
    try:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="IDLE_RTT", subjects=["idle.>"])
        publisher = AckedPublisher(nc)
        for pause_ms in (float(p) for p in args.pauses_ms.split(",")):
            ping: list[float] = []
            publish: list[float] = []
            for i in range(args.samples):
                await asyncio.sleep(pause_ms / 1000)
                began = time.perf_counter()
                await nc.flush()
                ping.append((time.perf_counter() - began) * 1000)
                await asyncio.sleep(pause_ms / 1000)
                began = time.perf_counter()
                await publisher.publish(f"idle.{i}", b"x" * 300)
                publish.append((time.perf_counter() - began) * 1000)
            results[f"{pause_ms:g} ms"] = {
                "core_round_trip_p50_ms": round(statistics.median(ping), 3),
                "publish_p50_ms": round(statistics.median(publish), 3),
                "publish_p90_ms": round(pct(publish, 90), 3),
            }
            print(f"  after {pause_ms:g} ms idle: {results[f'{pause_ms:g} ms']}", flush=True)
        await publisher.close()
        await nc.close()
    finally:
        server.cleanup()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--pauses-ms", default="0,10,100,300")
    parser.add_argument("--out", default=None, help="default: results/idle_round_trip.json")
    args = parser.parse_args()
    load = load_before_start()
    results = asyncio.run(main(args))
    config = {**vars(args), **machine(load)}
    out = Path(args.out) if args.out else RESULTS / "idle_round_trip.json"
    write_results(out, config, results)
