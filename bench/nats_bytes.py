"""What nats-server holds for one waiting run, part by part.

A waiting run of the approval task has four events in the run log (requested, started,
step, wait_started; each with the run's optimistic-concurrency headers)
and two deadline entries in the deadlines bucket (the run's execution timeout and the
wait's timeout). This writes that much for --runs runs into Tether's own streams on a fresh
nats-server, once as Tether writes it, once with a Nats-Msg-Id on every event (as the run
log was written before) and once without each part, and reports the growth
of the server's memory (PSS) per run for each variant: what each part costs.

Usage: python bench/nats_bytes.py [--runs 2000] [--settle-s 2]
Writes bench/results/nats_bytes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path
from typing import Any

from hitl_method import pss_bytes
from reporting import load_before_start, machine, write_results

from tether.engine import ids, wire
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.nats_server import NatsServer

RESULTS = Path(__file__).resolve().parent / "results"
# body sizes of the approval task's events, as measured on its log
EVENT_BYTES = {"requested": 159, "started": 134, "step": 142, "wait_started": 491}
# the execution deadline's entry, then the wait's
DEADLINE_BYTES = (100, 184)
VARIANTS = {
    "as written": set(),
    "with a Nats-Msg-Id per event (as before)": {"msg_ids"},
    "without concurrency headers": {"occ"},
    "without deadline entries": {"deadlines"},
    "deadline entries only": {"events"},
}


async def write_runs(conn: Connection, runs: int, left_out: set[str]) -> None:
    names = conn.settings.names

    async def one_run() -> None:
        run_id = uuid.uuid4().hex
        partition = names.partition(run_id)
        last = 0
        for token, size in EVENT_BYTES.items():
            if "events" in left_out:
                break
            headers: dict[str, str] = {}
            if "msg_ids" in left_out:  # (a variant's extra part, not a left-out one)
                headers[wire.MSG_ID] = f"{run_id}:{last}:{token}:0123456789ab"
            if "occ" not in left_out:
                headers[wire.EXPECTED_LAST_SUBJECT_SEQ] = str(last)
                headers[wire.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = names.run_filter(run_id)
            ack = await conn.js.publish(
                names.run_subject(run_id, token), b"x" * size, headers=headers
            )
            last = ack.seq
        if "deadlines" not in left_out:
            keys = (
                ids.run_deadline_key(partition, run_id),
                ids.wait_deadline_key(partition, run_id, 1),
            )
            for key, size in zip(keys, DEADLINE_BYTES, strict=True):
                await conn.deadlines.put(key, b"y" * size)

    for start in range(0, runs, 100):
        await asyncio.gather(*(one_run() for _ in range(min(100, runs - start))))


async def measure(variant: str, left_out: set[str], args: argparse.Namespace) -> float:
    server = NatsServer(sync_always=False).start()
    assert server.proc is not None
    try:
        settings = Settings(nats_url=server.url, namespace="tether")
        conn = await Connection.open(settings, name="nats-bytes", manage_streams=True)
        try:
            await asyncio.sleep(args.settle_s)
            before = pss_bytes(server.proc.pid)
            await write_runs(conn, args.runs, left_out)
            await asyncio.sleep(args.settle_s)
            per_run = (pss_bytes(server.proc.pid) - before) / args.runs
        finally:
            await conn.close()
    finally:
        server.stop()
        server.cleanup()
    print(f"  {variant:30} {per_run:8,.0f} bytes per run", flush=True)
    return per_run


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    return {variant: round(await measure(variant, out, args)) for variant, out in VARIANTS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="default: results/nats_bytes.json")
    args = parser.parse_args()
    load_start = load_before_start()
    print(f"nats-server memory per waiting run ({args.runs} runs):", flush=True)
    results = asyncio.run(main_async(args))
    config = {**vars(args), "machine": machine(load_start)}
    write_results(Path(args.out) if args.out else RESULTS / "nats_bytes.json", config, results)


if __name__ == "__main__":
    main()
