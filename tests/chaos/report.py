"""What each chaos scenario reports: one row of runs, lost, resolved twice, stuck and 5xx.

A row is printed to stdout (visible with ``pytest -s``), collected for the summary table
printed at the end of the session, and appended as a JSON line to ``$TETHER_CHAOS_REPORT``
when that is set (``$TETHER_CHAOS_LABEL``, e.g. ``before`` or ``after``, tags the line).

The counts, per run:
- lost: the run never reached the terminal state the scenario expects (unknown to the
  store, or ended failed, timed out or cancelled, or with the wrong output), counted among
  the runs that did end;
- stuck: still queued, running or waiting when the scenario's deadline passed;
- resolved twice: one wait resolved more than once (``run.wait_satisfied.v1`` and
  ``run.wait_timed_out.v1`` together), or more than one terminal event in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tether import RunNotFoundError, Tether
from tether.client import RunInfo

TERMINAL_TYPES = frozenset(
    {"run.completed.v1", "run.failed.v1", "run.timed_out.v1", "run.cancelled.v1"}
)
RESOLUTION_TYPES = frozenset({"run.wait_satisfied.v1", "run.wait_timed_out.v1"})
HEADER = ("scenario", "runs", "lost", "resolved twice", "stuck", "5xx")
ROWS: list[Row] = []  # every row of this session, for the summary table


@dataclass
class Row:
    scenario: str
    runs: int
    lost: int = 0
    resolved_twice: int = 0
    stuck: int = 0
    http_5xx: int | None = None  # None: the scenario makes no HTTP requests
    note: str = ""
    problems: list[str] = field(default_factory=list)  # one line per bad run, for asserts

    def cells(self) -> tuple[str, ...]:
        http = "-" if self.http_5xx is None else str(self.http_5xx)
        counts = (self.runs, self.lost, self.resolved_twice, self.stuck)
        return (self.scenario, *map(str, counts), http)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.resolved_twice or self.stuck or self.http_5xx)

    def explain(self) -> str:
        shown = "\n  ".join(self.problems[:15])
        more = f"\n  ... and {len(self.problems) - 15} more" if len(self.problems) > 15 else ""
        return f"{table([self])}\n{self.note}\n  {shown}{more}"


def table(rows: list[Row]) -> str:
    lines = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    )


def emit(row: Row) -> None:
    """Print the row and record it; call it before asserting, so failing runs count too."""
    ROWS.append(row)
    print(f"\nchaos: {table([row])}" + (f"\n  {row.note}" if row.note else ""), flush=True)
    path = os.environ.get("TETHER_CHAOS_REPORT")
    if path:
        record = {k: v for k, v in asdict(row).items() if k != "problems"}
        record.update(label=os.environ.get("TETHER_CHAOS_LABEL", ""), at=time.time())
        with open(path, "a") as out:
            out.write(json.dumps(record) + "\n")


async def settle(app: Tether, run_ids: list[str], within: float) -> None:
    """Wait until every run has ended or ``within`` seconds have passed, whichever is first
    (no error: the tally says what did not end)."""

    async def one(run_id: str) -> None:
        with contextlib.suppress(Exception):
            await app.runs.wait_terminal(run_id, timeout=within)

    await asyncio.gather(*(one(run_id) for run_id in run_ids))


async def read_run(app: Tether, run_id: str, attempts: int = 20) -> RunInfo | None:
    """The run, retrying reads that fail while NATS recovers; None if the store has no such
    run."""
    for attempt in range(attempts):
        try:
            return await app.runs.get(run_id)
        except RunNotFoundError:
            return None
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
    return None


def doubles(info: RunInfo) -> list[str]:
    """What was resolved more than once in this run's log."""
    types = [e.type for e in info.events]
    per_wait = Counter(e.data.get("wait_id") for e in info.events if e.type in RESOLUTION_TYPES)
    found = [f"wait {w} resolved {n} times" for w, n in per_wait.items() if n > 1]
    terminal = [t for t in types if t in TERMINAL_TYPES]
    if len(terminal) > 1:
        found.append(f"{len(terminal)} terminal events {terminal}")
    return found


async def tally(
    app: Tether,
    scenario: str,
    run_ids: list[str],
    expect: Callable[[RunInfo], str | None],
    *,
    note: str = "",
    http_5xx: int | None = None,
) -> Row:
    """Count lost, resolved twice and stuck among ``run_ids``. ``expect`` returns None for a
    run that ended as it should, else what is wrong with it."""
    row = Row(scenario, len(run_ids), http_5xx=http_5xx, note=note)
    infos = await asyncio.gather(*(read_run(app, run_id) for run_id in run_ids))
    for run_id, info in zip(run_ids, infos, strict=True):
        if info is None:
            row.lost += 1
            row.problems.append(f"{run_id}: unknown to the store")
            continue
        tail = " ".join(e.type.removeprefix("run.").removesuffix(".v1") for e in info.events[-5:])
        if not info.is_terminal:
            row.stuck += 1
            row.problems.append(f"{run_id}: stuck {info.status} (last: {tail})")
        else:
            wrong = expect(info)
            if wrong:
                row.lost += 1
                row.problems.append(f"{run_id}: {wrong} (last: {tail})")
        twice = doubles(info)
        if twice:
            row.resolved_twice += 1
            row.problems.append(f"{run_id}: {'; '.join(twice)}")
    return row


def approved(info: RunInfo) -> str | None:
    """The check for a run of the ``approval`` task of ``tests/integration/procs.py`` that
    was sent one approval: completed with that decision and its proposal, resolved once."""
    if info.status != "completed":
        return f"ended {info.status}: {info.error}"
    want = {"decision": "approve", "action": {"pay": info.input["amount"]}}
    if info.output != want:
        return f"output {info.output!r}, expected {want!r}"
    satisfied = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    if len(satisfied) != 1:
        return f"{len(satisfied)} wait_satisfied events"
    return None


def counts(items: list[Any]) -> dict[str, int]:
    """How many of each, for short failure messages."""
    return dict(Counter(str(item) for item in items))
