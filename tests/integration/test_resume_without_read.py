"""A worker starts a new run from the request its dispatch carries, and resumes a run it
suspended from the log it kept and the resolution its dispatch carries, without reading
the run; when what it kept does not end right before the resolution, it reads the run as
before. Either way the replay is exact."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, RunRef, Tether
from tether.serve import TetherServer

KEY = "approval:decision"


def define(app: Tether, calls: list[int]) -> Any:
    def propose(amount: int) -> dict[str, int]:
        calls.append(amount)
        return {"pay": amount}

    @app.durable_task(name="resume-kept", execution_timeout=timedelta(minutes=5))
    async def approval(input: dict[str, int], ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step("propose", propose, input["amount"])
        first = await ctx.wait_for_event(KEY, expression=f"input.runId == '{ctx.run_id}'")
        second = await ctx.wait_for_event(KEY, expression=f"input.runId == '{ctx.run_id}'")
        return {"action": action, "decisions": [first["decision"], second["decision"]]}

    return approval


async def waiting_again(app: Tether, run_id: str) -> None:
    """The run waits on its second wait."""

    async def check() -> bool:
        info = await app.runs.get(run_id)
        started = [e for e in info.events if e.type == "run.wait_started.v1"]
        return info.status == "waiting" and len(started) == 2

    await wait_until(check, timeout=15, message=f"run {run_id} to wait again")


async def approve_then_reject(app: Tether, refs: list[RunRef]) -> list[Any]:
    """Each run's first wait approved, its second rejected; the runs' results."""
    for decision in ("approve", "reject"):
        for ref in refs:
            await app.events.push(KEY, {"runId": ref.run_id, "decision": decision})
        if decision == "approve":
            for ref in refs:
                await waiting_again(app, ref.run_id)
    return [await ref.result(timeout=30) for ref in refs]


async def test_runs_resume_from_the_kept_log_or_by_reading(
    app: Tether, server: TetherServer
) -> None:
    calls: list[int] = []
    task = define(app, calls)
    # Two slots for four runs: dispatches often arrive while attempts (resumed early from
    # stored resolutions, or not) hold both. They wait for an early attempt without a slot,
    # or are handed back unrun, and their redelivery still uses what they carry.
    async with app.worker("kept", slots=2) as worker:
        refs = [await task.run_no_wait({"amount": n}) for n in range(4)]
        for ref in refs:
            await wait_for_status(app, ref.run_id, "waiting")
        assert len(worker.suspended) == 4
        # one run's kept log is gone (as after a restart): it is read instead
        worker.suspended.forget(refs[0].run_id)
        results = await approve_then_reject(app, refs)
    assert results == [{"action": {"pay": n}, "decisions": ["approve", "reject"]} for n in range(4)]
    assert sorted(calls) == [0, 1, 2, 3]  # each step ran once, replays used its record
    # 4 starts from the carried request, 4 runs x 2 resumes, less the one whose kept log
    # was forgotten
    assert worker.suspended.read_spared == 11
    assert len(worker.suspended) == 0  # nothing is kept for runs that ended
    for ref in refs:
        info = await app.runs.get(ref.run_id)
        types = [e.type for e in info.events]
        assert types.count("run.wait_satisfied.v1") == 2 and types[-1] == "run.completed.v1"


async def test_a_resolved_wait_is_dispatched_once_by_the_engine_or_by_its_bookkeeping(
    app: Tether, server: TetherServer, monkeypatch: Any
) -> None:
    """The engine dispatches a run right after resolving its wait; the resolution's
    bookkeeping then leaves it alone, and dispatches it itself when the engine's publish
    failed. Either way each resolution is dispatched once and the run resumes."""
    import tether.engine.bookkeeping as bookkeeping
    import tether.engine.service as service

    by_engine: list[int] = []
    by_bookkeeping: list[int] = []
    failed_by_engine: list[int] = []
    real_dispatch = service.dispatch_task

    async def engine_dispatch(*args: Any, **kwargs: Any) -> None:
        if len(failed_by_engine) < 2:
            failed_by_engine.append(args[4])
            raise ConnectionError("publish failed (injected)")
        by_engine.append(args[4])
        await real_dispatch(*args, **kwargs)

    async def bookkeeping_dispatch(*args: Any, **kwargs: Any) -> None:
        by_bookkeeping.append(args[4])
        await real_dispatch(*args, **kwargs)

    monkeypatch.setattr(service, "dispatch_task", engine_dispatch)
    monkeypatch.setattr(bookkeeping, "dispatch_task", bookkeeping_dispatch)
    calls: list[int] = []
    task = define(app, calls)
    async with app.worker("kept", slots=2):
        refs = [await task.run_no_wait({"amount": n}) for n in range(4)]
        for ref in refs:
            await wait_for_status(app, ref.run_id, "waiting")
        results = await approve_then_reject(app, refs)
    assert results == [{"action": {"pay": n}, "decisions": ["approve", "reject"]} for n in range(4)]
    resolutions = []
    for ref in refs:
        info = await app.runs.get(ref.run_id)
        resolutions += [e.seq for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert len(resolutions) == 8
    # (the bookkeeping also dispatches the runs' requests: those are not resolutions)
    booked = [seq for seq in by_bookkeeping if seq in resolutions]
    # each resolution went out once, by whichever came first; those whose engine dispatch
    # failed went by the bookkeeping
    assert sorted(by_engine + booked) == sorted(resolutions)
    assert set(failed_by_engine) <= set(booked)
