"""Matcher cost per event as open waits on one key grow: 10, 1,000, 100,000.

Every wait is the common approval shape, ``input.runId == '<its run>'`` on the key
``approval:decision``; every event approves one run. Three measurements:

A. In-process matching path (labelled as such): the real ``Matcher`` fed fake messages
   through ``Matcher._on_run_msg`` / ``Matcher._on_event_msg`` with a stub JetStream that
   counts resume commands. No NATS: this isolates the matcher's own cost per event (index
   lookup, equality check, resume command built and handed to a task) at each size.
B. Baseline without the index: evaluate every waiter's CEL with cel-python per event,
   measured at 10 and 1,000 waits; the cost at 100,000 is extrapolated from the per-eval
   cost (labelled as extrapolated).
C. End to end through NATS: the real ``Matcher`` started on a nats-server, waits arriving as
   real ``wait_started`` run events, approvals pushed to the events stream, time until every
   resume command is seen on ``<ns>.cmd.resume.>``. The matcher and the publishing client
   share this process (and its core); nats-server has the other.

Usage: python bench/matcher_scaling.py [--sizes 10,1000,100000] [--e2e-sizes 1000,100000]
       [--nats-url URL] [--sync-always]
Writes bench/results/matcher_scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import orjson

# The sibling module (its directory is on sys.path when run as a script).
from fake_msg import FakeMsg, fake_msg
from nats.aio.msg import Msg
from reporting import load_before_start, machine, write_results

from tether.engine import events as ev
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.expressions import analyze, compile_program
from tether.engine.nats_server import NatsServer
from tether.engine.tracing import Tracing
from tether.projections.matcher import Matcher

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "approval:decision"
TASK = "bench-approval"


# -- fake messages for the in-process path ---------------------------------------------------


class StubJetStream:
    """Stands in for the JetStream context: counts resume commands instead of sending them."""

    def __init__(self) -> None:
        self.published = 0

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None, **_: Any
    ) -> None:
        self.published += 1


def condition_spec(expression: str) -> ev.ConditionSpec:
    """The single event condition ``ctx.wait_for_event(KEY, expression)`` records."""
    return ev.ConditionSpec(id="c0.0", key=KEY, kind="event", event_key=KEY, expression=expression)


def wait_started_bytes(run_id: str, events_position: int) -> bytes:
    return ev.encode(
        ev.WaitStarted(
            run_id=run_id,
            at=time.time(),
            position=1,
            wait_id=f"{run_id}:1",
            task=TASK,
            event_key=KEY,
            expression=f"input.runId == '{run_id}'",
            clauses=[[condition_spec(f"input.runId == '{run_id}'")]],
            events_position=events_position,
            timeout_at=None,
        )
    )


def approval_bytes(run_id: str) -> bytes:
    return orjson.dumps({"runId": run_id, "decision": "approve", "by": "alice@example.com"})


class Progress:
    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.start = self.last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            print(
                f"    ... {self.label}: {done:,}/{self.total:,} ({now - self.start:.1f}s)",
                flush=True,
            )
            self.last = now


# -- A: in-process --------------------------------------------------------------------------


class InProcessBench:
    def __init__(self) -> None:
        self.js = StubJetStream()
        # the connection's parts the matcher uses; tracing as in a process with no exporter
        conn = SimpleNamespace(
            settings=Settings(namespace="bench"), js=self.js, reader=None, tracing=Tracing()
        )
        self.matcher = Matcher(conn)  # type: ignore[arg-type]
        self.matcher.events_cursor = 0
        self.matcher._recent.complete_after = 0
        self.runs_seq = 0
        self.events_seq = 0

    def open_wait(self, run_id: str) -> None:
        self.runs_seq += 1
        self.matcher._on_run_msg(
            fake_msg(  # type: ignore[arg-type]
                f"bench.runs.{run_id}.wait_started",
                wait_started_bytes(run_id, self.events_seq),
                self.runs_seq,
            )
        )

    def event(self, run_id: str) -> FakeMsg:
        self.events_seq += 1
        return fake_msg(
            f"bench.events.{KEY}",
            approval_bytes(run_id),
            self.events_seq,
            {"Nats-Msg-Id": uuid.uuid4().hex},
        )

    async def drain(self) -> None:
        """Let the matcher's spawned resume-command tasks run to the end."""
        if self.matcher._background:
            await asyncio.wait(set(self.matcher._background))


async def match_hits(bench: InProcessBench, run_ids: list[str], count: int) -> float:
    """Seconds the matcher spends on ``count`` events that each resolve a distinct wait. Each
    resolved wait is opened again right after (untimed) so the open count stays the same; the
    resume-command tasks the matcher spawns (command built, encoded, handed to the stub) run
    in a timed drain at the end."""
    timed = 0.0
    matched_before = bench.matcher.matched
    published_before = bench.js.published
    size = len(run_ids)
    progress = Progress(f"{size:,} waits: matching events", count)
    for i in range(count):
        run_id = run_ids[i % size]
        msg = bench.event(run_id)
        start = time.perf_counter()
        bench.matcher._on_event_msg(msg)  # type: ignore[arg-type]
        timed += time.perf_counter() - start
        bench.open_wait(run_id)
        if i % 500 == 0:
            progress.tick(i)
    start = time.perf_counter()
    await bench.drain()
    timed += time.perf_counter() - start
    matched = bench.matcher.matched - matched_before
    published = bench.js.published - published_before
    if matched != count or published != count:
        raise RuntimeError(f"expected {count} matches, got {matched} ({published} commands)")
    if len(bench.matcher.waits) != size:
        raise RuntimeError("open wait count drifted")
    return timed


async def in_process(size: int, hit_events: int, miss_events: int) -> dict[str, Any]:
    analyze("input.runId == 'warm-up'")  # builds cel-python's parser once, outside the timing
    bench = InProcessBench()
    run_ids = [uuid.uuid4().hex for _ in range(size)]
    progress = Progress(f"registering {size:,} waits", size)
    start = time.perf_counter()
    for i, run_id in enumerate(run_ids):
        bench.open_wait(run_id)
        if i % 1000 == 0:
            progress.tick(i)
    register_s = time.perf_counter() - start
    assert len(bench.matcher.waits) == size

    # Hits, as a running matcher sees them (the garbage collector on), then with every
    # object that exists before the run frozen out of the collector, which leaves the cost
    # of matching itself: the difference is the full collections that walk every open wait.
    full_before = gc.get_stats()[2]["collections"]
    hit_s = await match_hits(bench, run_ids, hit_events)
    full_collections = gc.get_stats()[2]["collections"] - full_before
    gc.collect()
    gc.freeze()
    try:
        frozen_s = await match_hits(bench, run_ids, hit_events)
    finally:
        gc.unfreeze()

    # Misses: approvals for runs nobody waits on (the index answers "no candidate").
    msgs = [bench.event(uuid.uuid4().hex) for _ in range(miss_events)]
    start = time.perf_counter()
    for msg in msgs:
        bench.matcher._on_event_msg(msg)  # type: ignore[arg-type]
    miss_s = time.perf_counter() - start
    if bench.matcher.matched != 2 * hit_events:
        raise RuntimeError("a miss event matched")
    return {
        "open_waits": size,
        "register_waits_per_s": size / register_s,
        "hit_events": hit_events,
        "hit_events_per_s": hit_events / hit_s,
        "hit_us_per_event": hit_s / hit_events * 1e6,
        "full_gc_collections_during_hits": full_collections,
        "hit_events_per_s_gc_frozen": hit_events / frozen_s,
        "hit_us_per_event_gc_frozen": frozen_s / hit_events * 1e6,
        "miss_events": miss_events,
        "miss_events_per_s": miss_events / miss_s,
        "miss_us_per_event": miss_s / miss_events * 1e6,
    }


# -- B: evaluate every waiter's CEL ------------------------------------------------------------


def cel_every_waiter(size: int, events: int) -> dict[str, Any]:
    run_ids = [uuid.uuid4().hex for _ in range(size)]
    programs = [compile_program(f"input.runId == '{r}'") for r in run_ids]
    payloads = [orjson.loads(approval_bytes(run_ids[i % size])) for i in range(events)]
    progress = Progress(f"cel-python over {size:,} waiters", events)
    matches = 0
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        for program in programs:
            if program.matches(payload):
                matches += 1
        progress.tick(i + 1)
    elapsed = time.perf_counter() - start
    if matches != events:
        raise RuntimeError(f"expected {events} matches, got {matches}")
    per_eval = elapsed / (events * size)
    return {
        "open_waits": size,
        "events": events,
        "us_per_eval": per_eval * 1e6,
        "events_per_s": 1 / (per_eval * size),
        "extrapolated": False,
    }


# -- C: end to end through NATS ----------------------------------------------------------------


async def publish_chunked(
    js: Any,
    items: list[tuple[str, bytes, dict[str, str] | None]],
    chunk: int,
    progress: Progress | None = None,
    count: Any = None,
) -> float:
    start = time.perf_counter()
    for i in range(0, len(items), chunk):
        await asyncio.gather(
            *(js.publish(subj, data, headers=hdrs) for subj, data, hdrs in items[i : i + chunk])
        )
        if progress is not None:
            progress.tick(count() if count else i + chunk)
    return time.perf_counter() - start


async def end_to_end(nats_url: str, size: int, events: int, chunk: int) -> dict[str, Any]:
    """Two runs of ``events`` approvals against ``size`` other open waits:

    * backlog: waits and approvals are in the streams before the matcher starts; the matcher
      registers the waits from the run log, then matches the approvals at full speed (no
      publisher competing for this process);
    * live: the matcher is running; new waits are published and registered, then approvals
      are pushed (gather-``chunk``) from this same process while it matches them.
    """
    settings = Settings(nats_url=nats_url, namespace=f"mb{uuid.uuid4().hex[:8]}")
    names = settings.names
    conn = await Connection.open(settings, name="bench-matcher")
    client = await nats.connect(nats_url)
    cjs = client.jetstream(timeout=30)
    matcher = Matcher(conn)
    seen: set[str] = set()
    enough = asyncio.Event()
    want = 0

    async def on_command(msg: Msg) -> None:
        seen.add(msg.subject.rsplit(".", 1)[-1])
        if len(seen) >= want:
            enough.set()

    def waits(run_ids: list[str], position: int) -> list[tuple[str, bytes, None]]:
        return [
            (names.run_subject(r, "wait_started"), wait_started_bytes(r, position), None)
            for r in run_ids
        ]

    def approvals(run_ids: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
        return [
            (names.event_subject(KEY), approval_bytes(r), {"Nats-Msg-Id": uuid.uuid4().hex})
            for r in run_ids
        ]

    try:
        await client.subscribe(f"{names.namespace}.cmd.resume.>", cb=on_command)
        await client.flush()
        open_ids = [uuid.uuid4().hex for _ in range(size)]
        backlog_ids = [uuid.uuid4().hex for _ in range(events)]
        live_ids = [uuid.uuid4().hex for _ in range(events)]
        position = await conn.events_position()
        print(
            f"    backlog: publishing {size + events:,} wait_started and {events:,} approvals "
            "before the matcher starts",
            flush=True,
        )
        await publish_chunked(
            cjs,
            waits(open_ids + backlog_ids, position),
            chunk,
            Progress("wait_started published", size + events),
        )
        await publish_chunked(cjs, approvals(backlog_ids), chunk)
        want = events
        start = time.perf_counter()
        await matcher.start()  # replays the run log: every wait registered before it returns
        started = time.perf_counter()
        await asyncio.wait_for(enough.wait(), timeout=max(60.0, events / 100))
        backlog_s = time.perf_counter() - started
        if seen != set(backlog_ids) or len(matcher.waits) != size:
            raise RuntimeError(f"backlog: {len(seen)} resumed, {len(matcher.waits)} open")
        register_replay = (size + events) / (started - start)

        print(
            f"    live: publishing {events:,} new wait_started, then pushing {events:,} "
            "approvals while the matcher runs",
            flush=True,
        )
        position = await conn.events_position()
        progress = Progress("waits registered by the matcher", size + events)
        start = time.perf_counter()
        await publish_chunked(
            cjs, waits(live_ids, position), chunk, progress, lambda: len(matcher.waits)
        )
        deadline = time.monotonic() + max(60.0, events / 200)
        while len(matcher.waits) < size + events:
            if time.monotonic() > deadline:
                raise RuntimeError(f"matcher indexed {len(matcher.waits)}/{size + events}")
            progress.tick(len(matcher.waits))
            await asyncio.sleep(0.005)
        register_live = events / (time.perf_counter() - start)
        seen.clear()
        enough.clear()
        start = time.perf_counter()
        pushed_s = await publish_chunked(cjs, approvals(live_ids), chunk)
        await asyncio.wait_for(enough.wait(), timeout=max(60.0, events / 100))
        live_s = time.perf_counter() - start
        if seen != set(live_ids) or len(matcher.waits) != size:
            raise RuntimeError(f"live: {len(seen)} resumed, {len(matcher.waits)} open")
        return {
            "open_waits_during": [size, size + events],
            "events": events,
            "backlog_events_per_s": events / backlog_s,
            "live_events_per_s": events / live_s,
            "live_push_only_events_per_s": events / pushed_s,
            "register_waits_per_s_replay_at_start": register_replay,
            "register_waits_per_s_live": register_live,
            "matcher_in_process_with_publisher": True,
        }
    finally:
        await matcher.stop()
        await client.close()
        await conn.close()


# -- main ----------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"in_process": [], "cel_every_waiter": [], "end_to_end": []}
    print("\n[A] in-process matching path (Matcher._on_event_msg with fake messages)", flush=True)
    for size in parse_sizes(args.sizes):
        r = await in_process(size, args.hit_events, args.miss_events)
        results["in_process"].append(r)
        print(
            f"    {size:>7,} open waits: {r['hit_events_per_s']:>9,.0f} events/s matched "
            f"({r['hit_us_per_event']:.1f} us; {r['full_gc_collections_during_hits']} full GC), "
            f"GC frozen {r['hit_events_per_s_gc_frozen']:,.0f}/s, misses "
            f"{r['miss_events_per_s']:,.0f}/s; registering "
            f"{r['register_waits_per_s']:,.0f} waits/s",
            flush=True,
        )
    base = results["in_process"][0]
    for r in results["in_process"]:
        r["ratio_to_smallest"] = r["hit_events_per_s"] / base["hit_events_per_s"]
        r["ratio_to_smallest_gc_frozen"] = (
            r["hit_events_per_s_gc_frozen"] / base["hit_events_per_s_gc_frozen"]
        )

    print("\n[B] no index: cel-python over every waiter's expression per event", flush=True)
    for size, events in ((10, 500), (1000, 10)):
        r = cel_every_waiter(size, events)
        results["cel_every_waiter"].append(r)
        print(
            f"    {size:>7,} waiters: {r['events_per_s']:>9,.1f} events/s "
            f"({r['us_per_eval']:.0f} us per evaluation)",
            flush=True,
        )
    per_eval = results["cel_every_waiter"][-1]["us_per_eval"] / 1e6
    for size in parse_sizes(args.sizes):
        if size > 1000:
            results["cel_every_waiter"].append(
                {
                    "open_waits": size,
                    "us_per_eval": per_eval * 1e6,
                    "events_per_s": 1 / (per_eval * size),
                    "extrapolated": True,
                }
            )
            print(
                f"    {size:>7,} waiters: {1 / (per_eval * size):>9,.2f} events/s "
                "(extrapolated from the per-eval cost at 1,000)",
                flush=True,
            )

    server: NatsServer | None = None
    try:
        if parse_sizes(args.e2e_sizes):
            if args.nats_url:
                url = args.nats_url
            else:
                server = NatsServer(sync_always=args.sync_always).start()
                url = server.url
            origin = "given" if args.nats_url else f"started here, sync_always={args.sync_always}"
            print(f"\n[C] end to end through NATS ({url}, {origin})", flush=True)
            for size in parse_sizes(args.e2e_sizes):
                # at most `size` approvals, so the open count stays within [size, 2 x size]
                events = min(args.e2e_events, max(size, 100))
                r = await end_to_end(url, size, events, args.chunk)
                results["end_to_end"].append(r)
                print(
                    f"    {size:>7,} open waits: backlog {r['backlog_events_per_s']:,.0f} "
                    f"events/s, live {r['live_events_per_s']:,.0f} events/s (pushing alone "
                    f"{r['live_push_only_events_per_s']:,.0f}/s)",
                    flush=True,
                )
    finally:
        if server is not None:
            server.cleanup()
    return results


def report(results: dict[str, Any]) -> None:
    print("\n== matcher_scaling summary ==")
    print("A. in-process matching path (fake messages, stub JetStream):")
    print(
        f"   {'open waits':>10} | {'events/s':>10} | {'us/event':>8} | {'vs 10':>6} | "
        f"{'full GCs':>8} | {'GC frozen/s':>11} | {'vs 10':>6} | {'misses/s':>10} | "
        f"{'waits registered/s':>18}"
    )
    for r in results["in_process"]:
        print(
            f"   {r['open_waits']:>10,} | {r['hit_events_per_s']:>10,.0f} | "
            f"{r['hit_us_per_event']:>8.1f} | {r['ratio_to_smallest']:>6.2f} | "
            f"{r['full_gc_collections_during_hits']:>8} | "
            f"{r['hit_events_per_s_gc_frozen']:>11,.0f} | "
            f"{r['ratio_to_smallest_gc_frozen']:>6.2f} | "
            f"{r['miss_events_per_s']:>10,.0f} | {r['register_waits_per_s']:>18,.0f}"
        )
    print("B. evaluating every waiter's CEL with cel-python (no index):")
    for r in results["cel_every_waiter"]:
        label = " (extrapolated)" if r["extrapolated"] else ""
        print(f"   {r['open_waits']:>10,} waiters: {r['events_per_s']:,.2f} events/s{label}")
    idx = {r["open_waits"]: r["hit_events_per_s"] for r in results["in_process"]}
    for r in results["cel_every_waiter"]:
        if r["open_waits"] in idx:
            print(
                f"   index vs CEL-every-waiter at {r['open_waits']:,}: "
                f"{idx[r['open_waits']] / r['events_per_s']:,.0f}x"
            )
    if results["end_to_end"]:
        print("C. end to end through NATS (matcher + publisher in this process):")
        for r in results["end_to_end"]:
            lo, hi = r["open_waits_during"]
            print(
                f"   {lo:,}-{hi:,} open waits: backlog {r['backlog_events_per_s']:,.0f} events/s "
                f"matched and resumed; live {r['live_events_per_s']:,.0f} events/s (pushing "
                f"alone {r['live_push_only_events_per_s']:,.0f}/s); waits registered "
                f"{r['register_waits_per_s_replay_at_start']:,.0f}/s at start (replay), "
                f"{r['register_waits_per_s_live']:,.0f}/s live"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,1000,100000", help="in-process open wait counts")
    parser.add_argument("--hit-events", type=int, default=20000)
    parser.add_argument("--miss-events", type=int, default=5000)
    parser.add_argument(
        "--e2e-sizes", default="1000,100000", help="open wait counts for the NATS run ('' to skip)"
    )
    parser.add_argument(
        "--e2e-events", type=int, default=5000, help="approvals per NATS run (at most the size)"
    )
    parser.add_argument("--chunk", type=int, default=500, help="publishes per gather")
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    parser.add_argument(
        "--sync-always",
        action="store_true",
        help="started nats-server fsyncs every write (sync_interval: always)",
    )
    parser.add_argument("--out", default=str(RESULTS / "matcher_scaling.json"))
    args = parser.parse_args()
    load_start = load_before_start()
    results = asyncio.run(run(args))
    report(results)
    config = {
        **machine(load_start),
        "expression": "input.runId == '<run id>' on key approval:decision",
        "sizes": parse_sizes(args.sizes),
        "e2e_sizes": parse_sizes(args.e2e_sizes),
        "sync_always": args.sync_always if not args.nats_url else None,
    }
    write_results(Path(args.out), config, results)


if __name__ == "__main__":
    main()
