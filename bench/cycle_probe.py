"""Where the time of one approval goes, process by process: every socket read and write
and the main steps of each process's Python, on one clock.

Runs ``cycle_timeline.py`` (nats-server, ``tether serve``, a worker, the client; one run
at a time after an idle pause) with ``cycle_probe/sitecustomize.py`` loaded in every
Python process, which logs each mark (see there). Then, for each cycle from the client's
push to the return of ``result()``, takes the first time of each mark, and prints the
median over the cycles of every mark seen in at least half of them, in ms after the push:
``R``/``W`` a socket read/write and its NATS subjects, ``>``/``<`` a function entered/left.
The marks cost time themselves (``result()`` returns about half a millisecond later).

Usage: python bench/cycle_probe.py [--cycles 60] [--pause-ms 300]
Writes bench/results/cycle_probe.json.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from reporting import load_before_start, machine, write_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WARM_UP = 10  # cycles left out, as cycle_timeline.py leaves them out
Mark = tuple[float, str, str, str]  # time, process, kind, what


def process_of(lines: list[str]) -> str | None:
    """Which process wrote a log, from what it published."""
    written = " ".join(line for line in lines if " W " in line)
    if re.search(r"\.runs\.\S+\.completed\.", written):
        return "worker"
    if re.search(r"\.runs\.\S+\.wait_satisfied\.", written):
        return "serve"
    if re.search(r"\.events\.", written):
        return "client"
    return None


def read_marks(folder: Path) -> list[Mark]:
    marks: list[Mark] = []
    for path in folder.glob("*.log"):
        lines = path.read_text().splitlines()
        process = process_of(lines)
        if process is None:
            continue
        for line in lines:
            at, kind, *what = line.split(" ", 2)
            marks.append((float(at), process, kind, what[0] if what else ""))
    return sorted(marks)


def label(process: str, kind: str, what: str) -> str:
    """A mark's name, the same in every cycle: ids, partitions and inboxes left out."""
    what = re.sub(r"[0-9A-Za-z]{20,}", "ID", what)
    what = re.sub(r"\bbench\w+\.", "", what)
    what = re.sub(r"_INBOX\.\S+", "INBOX", what)
    what = re.sub(r"\.\d+\b", ".N", what)
    return f"{process} {kind} {what}".strip()


def cycles_of(marks: list[Mark]) -> list[list[Mark]]:
    """From each push (the client writing a pushed event) to the return of ``result()``."""
    cycles: list[list[Mark]] = []
    current: list[Mark] | None = None
    for mark in marks:
        _, process, kind, what = mark
        if process == "client" and kind == "W" and ".events." in what:
            current = [mark]
            continue
        if current is None:
            continue
        current.append(mark)
        if process == "client" and kind == "<" and what == "RunsClient._result":
            cycles.append(current)
            current = None
    return cycles[WARM_UP:]


def medians(cycles: list[list[Mark]]) -> list[tuple[str, float, int]]:
    seen: dict[str, list[float]] = defaultdict(list)
    for cycle in cycles:
        start = cycle[0][0]
        first: dict[str, float] = {}
        for at, process, kind, what in cycle:
            first.setdefault(label(process, kind, what), (at - start) * 1000)
        for name, ms in first.items():
            seen[name].append(ms)
    rows = [
        (name, statistics.median(times), len(times))
        for name, times in seen.items()
        if len(times) * 2 >= len(cycles)
    ]
    return sorted(rows, key=lambda row: row[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--pause-ms", type=float, default=300.0, help="idle time before a push")
    args = parser.parse_args()
    load_start = load_before_start()
    with tempfile.TemporaryDirectory(prefix="tether-probe-") as folder:
        env = dict(os.environ, TETHER_PROBE_DIR=folder)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE / "cycle_probe"), os.environ.get("PYTHONPATH")) if p
        )
        timeline = [sys.executable, str(HERE / "cycle_timeline.py")]
        subprocess.run(
            [
                *timeline,
                "--cycles",
                str(args.cycles),
                "--pause-ms",
                str(args.pause_ms),
                "--out",
                str(Path(folder) / "timeline.json"),
            ],
            env=env,
            check=True,
        )
        cycles = cycles_of(read_marks(Path(folder)))
    rows = medians(cycles)
    print(f"\n== {len(cycles)} cycles, median ms after the push started ==")
    for name, ms, count in rows:
        print(f"  {ms:7.3f}  {name}" + ("" if count == len(cycles) else f"  ({count} cycles)"))
    results: dict[str, Any] = {
        "cycles": len(cycles),
        "marks": [{"mark": name, "p50_ms": round(ms, 3), "cycles": n} for name, ms, n in rows],
    }
    write_results(
        RESULTS / "cycle_probe.json",
        {"cycles": args.cycles, "pause_ms": args.pause_ms, "machine": machine(load_start)},
        results,
    )


if __name__ == "__main__":
    main()
