"""CLI commands for people in the loop: ``runs list|show|cancel``, ``waits list``,
``events push``, ``approve`` and ``reject``.

They talk to NATS directly (``--nats-url``/``TETHER_NATS_URL``, ``--namespace``): lists
start a run index from its checkpoint (open and recently finished runs, written by the HTTP
API) and the run log after it, ``runs list --before SEQ`` pages through older finished runs
in the run log, single runs are read from their own log. The caller's name (``--as``, else
``$TETHER_APPROVER``, else the login name) is recorded as the approver.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from tether.app import Tether
from tether.cli.format import action_text, ago, cell, compact, stamp, table, until
from tether.engine import events as ev
from tether.engine.config import Settings
from tether.engine.workflow_graph import tasks_of_wait
from tether.http import schemas
from tether.operator import views
from tether.operator.auth import Identity
from tether.operator.decisions import Decision, cancel, push_decision, push_event
from tether.projections.run_history import finished_page
from tether.projections.run_index import RunIndex
from tether.projections.run_view import RunView


def _print_json(body: BaseModel) -> None:
    """The same JSON the HTTP API answers with, indented."""
    print(body.model_dump_json(indent=2))


# -- plumbing --------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(args.nats_url, args.namespace)


def _caller(args: argparse.Namespace) -> Identity:
    name = getattr(args, "as_name", None) or os.environ.get("TETHER_APPROVER")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "cli"
    # The CLI holds NATS credentials, so it may do anything those allow.
    return Identity(name, ("*",), True)


def _with_app(
    fn: Callable[[Tether, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], None]:
    def command(args: argparse.Namespace) -> None:
        async def main() -> None:
            app = Tether(settings=_settings(args))
            try:
                await fn(app, args)
            finally:
                await app.close()

        asyncio.run(main())

    return command


async def _index(app: Tether) -> RunIndex:
    # it reads the checkpoint and leaves writing it to the API, which runs for longer
    index = RunIndex(await app.connection(), write_checkpoints=False)
    async with asyncio.timeout(120):
        await index.start()
    return index


# -- commands --------------------------------------------------------------------------------


async def runs_list(app: Tether, args: argparse.Namespace) -> None:
    statuses = [s.strip() for s in (args.status or "").split(",") if s.strip()]
    unknown = [s for s in statuses if s not in schemas.STATUSES]
    if unknown:
        raise ValueError(f"unknown status {', '.join(unknown)}; use {', '.join(schemas.STATUSES)}")
    runs, next_before = await _runs_page(app, args, statuses or None)
    found = views.run_list(runs)
    if next_before is not None:  # on stderr: stdout stays the table or the API's JSON
        print(f"older finished runs: tether runs list --before {next_before}", file=sys.stderr)
    if args.json:
        _print_json(found)
        return
    if not found.runs:
        print("no runs" + (" match these filters" if statuses or args.task else ""))
        return
    now = time.time()
    rows = [
        [
            r.run_id,
            r.task,
            r.status,
            decision_text(r.decision),
            r.waiting_on or "",
            ago(r.created_at, now),
            ago(r.updated_at, now),
        ]
        for r in found.runs
    ]
    headers = ["RUN ID", "TASK", "STATUS", "DECISION", "WAITING ON", "CREATED", "UPDATED"]
    print(table(headers, rows))


async def _runs_page(
    app: Tether, args: argparse.Namespace, statuses: list[str] | None
) -> tuple[list[RunView], int | None]:
    """The runs to list, and the ``--before`` of the next page of older finished runs."""
    if args.before is not None:  # read from the run log; no index needed
        page = await finished_page(
            await app.connection(),
            args.before,
            statuses=statuses,
            task=args.task,
            limit=args.limit,
        )
        return page.runs, page.next_before
    index = await _index(app)
    try:
        runs = index.list_runs(statuses=statuses, task=args.task, limit=args.limit)
        return runs, index.next_before(runs, statuses)
    finally:
        await index.stop()


def decision_text(decision: schemas.RunDecision | None) -> str:
    """``approved by alice``, ``rejected``, ``expired``; empty when nobody decided."""
    if decision is None:
        return ""
    return decision.outcome + (f" by {decision.by}" if decision.by else "")


def _event_detail(entry: schemas.RunEvent) -> str:
    event = entry.data
    if isinstance(event, ev.WaitSatisfied):
        reason = (event.payload or {}).get("reason")
        return entry.note + (f': "{reason}"' if reason else "")
    if isinstance(event, ev.StepRecorded):
        return f"{entry.note} -> {compact(event.output)}"
    if isinstance(event, ev.RunCompleted):
        return (f"{entry.note}: " if entry.note else "") + compact(event.output)
    if isinstance(event, ev.TaskRecorded) and event.status == "completed":
        return f"{entry.note} -> {compact(event.output)}"
    return entry.note


def _task_table(tasks: list[schemas.RunTask], wait: schemas.Wait | None) -> str:
    """A workflow run's tasks in the workflow's order; the gate a person decides says so."""
    gate = wait.label if wait is not None else None
    rows = [
        [
            task.name,
            task.status + (" (for a decision)" if task.name in tasks_of_wait(gate) else ""),
            ", ".join(task.parents) or "-",
        ]
        for task in tasks
    ]
    return table(["TASK", "STATUS", "PARENTS"], rows)


async def runs_show(app: Tether, args: argparse.Namespace) -> None:
    detail = await views.read_detail(app, args.run_id)
    if args.json:
        _print_json(detail)
        return
    run, wait, now = detail.run, detail.wait, time.time()
    fields = [
        ("run", run.run_id),
        ("task", run.task),
        ("status", run.status),
        ("attempt", run.attempt),
        ("created", f"{stamp(run.created_at)} ({ago(run.created_at, now)})"),
        ("ended", stamp(run.ended_at)),
        (
            "deadline",
            "-" if run.deadline is None else f"{stamp(run.deadline)} ({until(run.deadline, now)})",
        ),
        ("input", compact(run.input)),
    ]
    if run.decision is not None:
        reason = f' ("{run.decision.reason}")' if run.decision.reason else ""
        fields.append(("decision", decision_text(run.decision) + reason))
    if run.status == "completed":
        fields.append(("output", compact(run.output)))
    if run.error:
        fields.append(("error", f"{run.error.type}: {run.error.message}"))
    for name, value in fields:
        print(f"{name:<9} {cell(value, 200)}")
    if detail.tasks:
        print()
        print(_task_table(detail.tasks, wait))
    if wait is not None:
        print(
            f"\nwaiting on {wait.event_key} since {ago(wait.since, now)}"
            f" (wait deadline {until(wait.deadline, now)})"
        )
        print(f"  expression       {wait.expression or '(none: any event on the key)'}")
        print(f"  proposed action  {cell(action_text(wait), 200)}")
        if wait.conventional:
            print(
                f"  decide with      tether approve {run.run_id}  |  "
                f"tether reject {run.run_id} [--reason ...]"
            )
        else:
            print(
                "  note             the expression is not input.runId == '<run>': approve/"
                "reject may not match; push a matching event with `tether events push`"
            )
    start = detail.events[0].at if detail.events else 0.0
    # numbered within the run (1..n); the stream-wide sequence is in --json
    rows = [
        [
            number,
            time.strftime("%H:%M:%S", time.localtime(entry.at)),
            f"+{(entry.at - start):.3f}s",
            entry.type,
            _event_detail(entry),
        ]
        for number, entry in enumerate(detail.events, 1)
    ]
    print()
    print(table(["#", "TIME", "ELAPSED", "EVENT", "DETAIL"], rows))


async def runs_cancel(app: Tether, args: argparse.Namespace) -> None:
    info = await cancel(app, args.run_id, identity=_caller(args), reason=args.reason)
    print(f"cancelled run {info.run_id} ({info.error['message'] if info.error else ''})")


async def waits_list(app: Tether, args: argparse.Namespace) -> None:
    index = await _index(app)
    try:
        found = views.wait_list(index.list_waits(task=args.task, key=args.key))
    finally:
        await index.stop()
    if args.json:
        _print_json(found)
        return
    if not found.waits:
        print("no run is waiting for a decision")
        return
    now = time.time()
    rows = [
        [
            w.run_id,
            w.task,
            w.event_key,
            ago(w.since, now),
            until(w.deadline or w.run_deadline, now),
            action_text(w) + ("" if w.conventional else "  [push: custom expression]"),
        ]
        for w in found.waits
    ]
    print(table(["RUN ID", "TASK", "EVENT KEY", "WAITING", "DEADLINE", "PROPOSED ACTION"], rows))


async def events_push(app: Tether, args: argparse.Namespace) -> None:
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--data must be a JSON object, got {type(data).__name__}; wrap it, e.g. "
            "'{\"value\": ...}'"
        )
    result = await push_event(app, args.key, data, identity=_caller(args), event_id=args.id)
    if result.duplicate:
        print(
            f"duplicate: event {result.id} was already stored (seq {result.seq}); "
            "nothing new pushed"
        )
    else:
        print(f"pushed event {result.id} to {args.key} (seq {result.seq})")


def _decision(decision: Decision) -> Callable[[Tether, argparse.Namespace], Awaitable[None]]:
    async def run(app: Tether, args: argparse.Namespace) -> None:
        made = await push_decision(
            app, args.run_id, decision, identity=_caller(args), reason=args.reason
        )
        verb = "approved" if decision == "approve" else "rejected"
        print(
            f"{verb} run {made.run_id} as {made.approver}: pushed "
            f"{compact(made.payload)} to {made.event_key} (event seq {made.event.seq})"
        )

    return run


# -- parsers ---------------------------------------------------------------------------------


def connection_args(parser: argparse.ArgumentParser) -> None:
    """``--nats-url`` and ``--namespace``, defaulting to the ``TETHER_*`` variables."""
    parser.add_argument("--nats-url", default=None, help="default: $TETHER_NATS_URL or local")
    parser.add_argument("--namespace", default=None, help="default: $TETHER_NAMESPACE or tether")


def _as_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--as",
        dest="as_name",
        default=None,
        metavar="NAME",
        help="approver name to record (default: $TETHER_APPROVER or login)",
    )


def _sequence(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a run-log sequence: use a positive integer, as printed after "
            "'older finished runs:'"
        )
    return value


def register(sub: Any) -> None:
    """Add the commands to the ``tether`` parser's subcommands."""
    runs = sub.add_parser("runs", allow_abbrev=False, help="list, show or cancel runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)

    p = runs_sub.add_parser("list", allow_abbrev=False, help="runs, most recently updated first")
    connection_args(p)
    p.add_argument("--status", default=None, help=f"comma-separated: {', '.join(schemas.STATUSES)}")
    p.add_argument("--task", default=None, help="only runs of this task")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument(
        "--before",
        type=_sequence,
        default=None,
        metavar="SEQ",
        help="older finished runs: those that ended before this run-log sequence, most "
        "recently finished first (each list prints the SEQ of the next page on stderr)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=_with_app(runs_list))

    p = runs_sub.add_parser(
        "show",
        allow_abbrev=False,
        help="a run, its open wait, a workflow run's tasks and its event timeline",
    )
    connection_args(p)
    p.add_argument("run_id", help="the run's id")
    p.add_argument("--json", action="store_true", help="print the API's JSON body")
    p.set_defaults(fn=_with_app(runs_show))

    p = runs_sub.add_parser(
        "cancel", allow_abbrev=False, help="cancel a queued, running or waiting run"
    )
    connection_args(p)
    p.add_argument("run_id", help="the run's id")
    p.add_argument("--reason", default=None, help="why (recorded on the run)")
    _as_arg(p)
    p.set_defaults(fn=_with_app(runs_cancel))

    waits = sub.add_parser("waits", allow_abbrev=False, help="open waits")
    waits_sub = waits.add_subparsers(dest="waits_command", required=True)
    p = waits_sub.add_parser(
        "list", allow_abbrev=False, help="runs waiting for a decision, longest first"
    )
    connection_args(p)
    p.add_argument("--task", default=None, help="only waits of this task")
    p.add_argument("--key", default=None, help="only waits on this event key")
    p.add_argument("--json", action="store_true", help="print the API's JSON body")
    p.set_defaults(fn=_with_app(waits_list))

    events = sub.add_parser("events", allow_abbrev=False, help="push events")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    p = events_sub.add_parser("push", allow_abbrev=False, help="push a JSON object to an event key")
    connection_args(p)
    p.add_argument("key", help="the event key, e.g. approval:decision")
    p.add_argument("--data", required=True, help='JSON object, e.g. \'{"runId": "...", ...}\'')
    p.add_argument("--id", default=None, help="idempotency key (dedupe within 2 minutes)")
    _as_arg(p)
    p.set_defaults(fn=_with_app(events_push))

    decisions: tuple[Decision, ...] = ("approve", "reject")
    for decision in decisions:
        p = sub.add_parser(
            decision,
            allow_abbrev=False,
            help=f"{decision} a waiting run (pushes "
            f'{{"runId": RUN, "decision": "{decision}", "reason": ...}} to its wait\'s key)',
        )
        connection_args(p)
        p.add_argument("run_id", help="the waiting run's id")
        p.add_argument("--reason", default=None, help="why (recorded on the run)")
        _as_arg(p)
        p.set_defaults(fn=_with_app(_decision(decision)))
