"""Workflows (DAGs) with event conditions against a real nats-server: the gate's branches,
decisions scoped to their run, decisions that arrive early, skips, sleeps, cancellation,
failure, and a thousand runs waiting at a gate on two slots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from tests.helpers import wait_for_status, wait_until
from tests.integration.content_review import KEY, Post, content_review
from tether import (
    DurableContext,
    DurableTaskContext,
    ParentCondition,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    TaskContext,
    Tether,
    UserEventCondition,
)
from tether.serve import TetherServer


async def statuses(app: Tether, run_id: str) -> dict[str, str]:
    return {name: task.status for name, task in (await app.runs.get(run_id)).tasks.items()}


async def push_raw(nc: NATS, namespace: str, payload: dict[str, Any]) -> None:
    """A decision as any NATS client sends it: a JetStream publish of the JSON payload."""
    ack = await nc.jetstream().publish(f"{namespace}.events.{KEY}", orjson.dumps(payload))
    assert ack.seq > 0


async def test_approve_and_reject_branches_from_nats_py_and_the_sdk(
    app: Tether, server: TetherServer, plain_nc: NATS, namespace: str
) -> None:
    review = content_review(app)
    async with app.worker("reviews", workflows=[review], slots=5):
        approved = await review.run_no_wait(Post(text="hello"))
        rejected = await review.run_no_wait(Post(text="spam"))
        for ref in (approved, rejected):
            await wait_for_status(app, ref.run_id, "waiting")
            assert await statuses(app, ref.run_id) == {
                "draft": "completed",
                "human_review": "waiting",
                "publish": "pending",
                "notify_author": "pending",
            }
        await push_raw(plain_nc, namespace, {"runId": approved.run_id, "decision": "approve"})
        await app.events.push(
            KEY, {"runId": rejected.run_id, "decision": "reject", "reason": "off-topic"}
        )
        assert await approved.result(timeout=15) == {
            "draft": {"text": "HELLO", "risk": 0.7},
            "human_review": {"runId": approved.run_id, "decision": "approve"},
            "publish": {"published": "HELLO"},
            "notify_author": {"skipped": True},
        }
        out = await rejected.result(timeout=15)
    assert out["publish"] == {"skipped": True}
    assert out["notify_author"] == {"notified": "reject"}
    assert out["human_review"]["reason"] == "off-topic"
    assert await statuses(app, rejected.run_id) == {
        "draft": "completed",
        "human_review": "completed",
        "publish": "skipped",
        "notify_author": "completed",
    }


async def test_a_decision_moves_only_its_own_run(app: Tether, server: TetherServer) -> None:
    review = content_review(app)
    async with app.worker("reviews", workflows=[review], slots=5):
        refs = [await review.run_no_wait(Post(text=f"post {n}")) for n in range(5)]
        for ref in refs:
            await wait_for_status(app, ref.run_id, "waiting")
        chosen = refs[2]
        await app.events.push(KEY, {"runId": chosen.run_id, "decision": "approve"})
        assert (await chosen.result(timeout=15))["publish"] == {"published": "POST 2"}
        # the others still wait at the gate: the matcher has their waits and nothing more
        assert server.matcher is not None
        open_runs = {wait.run_id for wait in server.matcher.waits.values()}
        others = [ref.run_id for ref in refs if ref is not chosen]
        assert open_runs == set(others)
        for run_id in others:
            assert (await app.runs.get(run_id)).status == "waiting"
            assert (await statuses(app, run_id))["human_review"] == "waiting"


async def test_a_decision_pushed_while_the_parent_runs_is_kept(
    app: Tether, server: TetherServer
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    flow = app.workflow(name="slow-draft")

    @flow.task()
    async def draft(input: dict[str, Any], ctx: TaskContext) -> str:
        started.set()
        await release.wait()
        return "drafted"

    @flow.task(parents=[draft], wait_for=[UserEventCondition(KEY, "input.runId == run.id")])
    async def gate(input: dict[str, Any], ctx: TaskContext) -> Any:
        return ctx.wait_result.payloads[KEY]["decision"]

    async with app.worker("w", workflows=[flow], slots=2):
        ref = await flow.run_no_wait({})
        await asyncio.wait_for(started.wait(), 15)
        assert (await app.runs.get(ref.run_id)).status == "running"
        await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})
        release.set()
        assert await ref.result(timeout=15) == {"draft": "drafted", "gate": "approve"}


async def test_skip_if_skips_the_gate_and_children_whose_parents_were_all_skipped(
    app: Tether, server: TetherServer
) -> None:
    flow = app.workflow(name="skips")

    @flow.task()
    async def score(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"risk": input["risk"]}

    @flow.task(
        parents=[score],
        wait_for=[UserEventCondition(KEY, "input.runId == run.id")],
        skip_if=[ParentCondition(score, "output.risk < 0.5")],
    )
    async def gate(input: dict[str, Any], ctx: TaskContext) -> str:
        return "reviewed"

    @flow.task(parents=[gate])
    async def after_gate(input: dict[str, Any], ctx: TaskContext) -> str:
        return "ran"

    @flow.task(parents=[gate, score])
    async def summary(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"gate_skipped": ctx.was_skipped(gate), "risk": ctx.task_output(score)["risk"]}

    async with app.worker("w", workflows=[flow], slots=2):
        out = await flow.run({"risk": 0.1}, timeout=15)
    assert out == {
        "score": {"risk": 0.1},
        "gate": {"skipped": True},
        "after_gate": {"skipped": True},
        "summary": {"gate_skipped": True, "risk": 0.1},
    }


async def test_the_sleep_branch_when_nobody_answers(app: Tether, server: TetherServer) -> None:
    review = content_review(app, expire_after=timedelta(seconds=0.5))
    async with app.worker("reviews", workflows=[review], slots=2):
        out = await review.run(Post(text="quiet"), timeout=15)
    assert out["human_review"] == {"decision": "expired"}
    assert out["notify_author"] == {"notified": "expired"}
    assert out["publish"] == {"skipped": True}


async def test_a_decision_and_the_sleep_racing_resolve_once(
    app: Tether, server: TetherServer
) -> None:
    review = content_review(app, expire_after=timedelta(seconds=1))
    async with app.worker("reviews", workflows=[review], slots=5):
        refs = [await review.run_no_wait(Post(text=f"race {n}")) for n in range(6)]
        for ref in refs:
            await wait_for_status(app, ref.run_id, "waiting")
        info = await app.runs.get(refs[0].run_id)
        wait = next(e for e in info.events if e.type == "run.wait_started.v1")
        sleep_due = next(
            spec["due_at"] for spec in wait.data["clauses"][0] if spec["kind"] == "sleep"
        )

        async def decide(ref: Any) -> None:
            await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})

        # push every decision at the moment the sleeps come due
        await wait_until(_due(sleep_due), timeout=15, interval=0.002, message="the sleeps due")
        await asyncio.gather(*(decide(ref) for ref in refs))
        outs = [await ref.result(timeout=15) for ref in refs]
    for ref, out in zip(refs, outs, strict=True):
        events = [e.type for e in (await app.runs.get(ref.run_id)).events]
        assert events.count("run.wait_satisfied.v1") == 1
        assert events.count("run.completed.v1") == 1
        assert out["human_review"]["decision"] in ("approve", "expired")
        # the branch taken follows the decision the gate got
        approved = out["human_review"]["decision"] == "approve"
        assert (out["publish"] != {"skipped": True}) == approved


def _due(at: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return time.time() >= at

    return check


async def test_cancel_if_on_an_event_cancels_the_run(app: Tether, server: TetherServer) -> None:
    flow = app.workflow(name="cancellable")

    @flow.task()
    async def prepare(input: dict[str, Any], ctx: TaskContext) -> str:
        return "prepared"

    @flow.task(
        parents=[prepare],
        wait_for=[UserEventCondition(KEY, "input.runId == run.id")],
        cancel_if=[UserEventCondition("review:withdrawn", "input.runId == run.id")],
    )
    async def gate(input: dict[str, Any], ctx: TaskContext) -> str:
        return "decided"

    @flow.task(parents=[gate])
    async def ship(input: dict[str, Any], ctx: TaskContext) -> str:
        return "shipped"

    async with app.worker("w", workflows=[flow], slots=2):
        ref = await flow.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push("review:withdrawn", {"runId": ref.run_id})
        with pytest.raises(RunCancelledError, match="gate"):
            await ref.result(timeout=15)
        # a decision after the cancellation changes nothing
        await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})
    info = await app.runs.get(ref.run_id)
    assert info.status == "cancelled"
    assert {name: task.status for name, task in info.tasks.items()} == {
        "prepare": "completed",
        "gate": "cancelled",
        "ship": "cancelled",
    }


async def test_a_failing_task_cancels_downstream_and_runs_on_failure(
    app: Tether, server: TetherServer
) -> None:
    attempts: list[int] = []
    flow = app.workflow(name="failing")

    @flow.task()
    async def fetch(input: dict[str, Any], ctx: TaskContext) -> str:
        return "fetched"

    @flow.task(parents=[fetch], retries=1, backoff_initial=timedelta(seconds=0.1))
    async def charge(input: dict[str, Any], ctx: TaskContext) -> str:
        attempts.append(ctx.retry_count)
        raise RuntimeError("card declined")

    @flow.task(parents=[charge])
    async def receipt(input: dict[str, Any], ctx: TaskContext) -> str:
        return "sent"

    @flow.on_failure()
    async def cleanup(input: dict[str, Any], ctx: TaskContext) -> dict[str, str]:
        return dict(ctx.task_run_errors)

    async with app.worker("w", workflows=[flow], slots=2):
        ref = await flow.run_no_wait({})
        with pytest.raises(RunFailedError, match="card declined"):
            await ref.result(timeout=15)
    assert attempts == [0, 1]  # one retry
    info = await app.runs.get(ref.run_id)
    tasks = {name: task.status for name, task in info.tasks.items()}
    assert tasks == {
        "fetch": "completed",
        "charge": "failed",
        "receipt": "cancelled",
        "on_failure": "completed",
    }
    assert info.tasks["on_failure"].output == {"charge": "RuntimeError: card declined"}
    assert info.tasks["on_failure"].parents == ["charge"]  # drawn after what failed


async def test_a_thousand_runs_wait_at_a_gate_on_two_slots(
    app: Tether, server: TetherServer
) -> None:
    waiting = 1000
    review = content_review(app)

    @app.durable_task(name="other-work")
    async def other_work(input: Any, ctx: Any) -> str:
        return "done"

    async with app.worker("one", workflows=[review], tasks=[other_work], slots=2) as worker:
        refs = []
        for start in range(0, waiting, 200):
            refs += await asyncio.gather(
                *(review.run_no_wait(Post(text=f"n{n}")) for n in range(start, start + 200))
            )
        assert server.matcher is not None
        matcher = server.matcher

        async def all_waiting() -> bool:
            return len(matcher.waits) >= waiting

        await wait_until(all_waiting, timeout=120, message="1,000 runs waiting at the gate")
        assert worker.active <= 2
        assert await other_work.run({}, timeout=30) == "done"
        for start in range(0, waiting, 200):
            await asyncio.gather(
                *(
                    app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})
                    for ref in refs[start : start + 200]
                )
            )
        outs = await asyncio.gather(*(ref.result(timeout=180) for ref in refs))
    assert [out["publish"]["published"] for out in outs] == [f"N{n}" for n in range(waiting)]
    assert len(matcher.waits) == 0


async def test_a_durable_task_in_a_workflow_records_its_steps_and_waits(
    app: Tether, server: TetherServer
) -> None:
    proposed: list[int] = []
    flow = app.workflow(name="agent-review")

    @flow.task()
    async def plan(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"actions": input["actions"]}

    @flow.durable_task(parents=[plan])
    async def act(input: dict[str, Any], ctx: DurableTaskContext) -> list[str]:
        """Asks a person once per planned action: how often is known only at run time."""
        outcomes = []
        for n in range(ctx.task_output(plan)["actions"]):
            action = await ctx.step(f"propose-{n}", lambda n=n: proposed.append(n) or n)
            decision = await ctx.wait_for_event(
                KEY, f"input.runId == '{ctx.run_id}' && input.action == {action}"
            )
            outcomes.append(decision["decision"])
        return outcomes

    @flow.task(parents=[act])
    async def report(input: dict[str, Any], ctx: TaskContext) -> int:
        return ctx.task_output(act).count("approve")

    async with app.worker("w", workflows=[flow], slots=2):
        ref = await flow.run_no_wait({"actions": 2})
        for action, decision in ((0, "approve"), (1, "reject")):

            async def act_waits(action: int = action) -> bool:
                info = await app.runs.get(ref.run_id)
                waits = [e for e in info.events if e.type == "run.wait_started.v1"]
                return info.status == "waiting" and len(waits) == action + 1

            await wait_until(act_waits, message=f"act to wait on action {action}")
            assert (await statuses(app, ref.run_id))["act"] == "waiting"
            await app.events.push(
                KEY, {"runId": ref.run_id, "action": action, "decision": decision}
            )
        out = await ref.result(timeout=15)
    assert out == {"plan": {"actions": 2}, "act": ["approve", "reject"], "report": 1}
    assert proposed == [0, 1]  # each step ran once across two suspensions


async def test_execution_timeouts_of_a_task_and_of_the_workflow(
    app: Tether, server: TetherServer
) -> None:
    slow = app.workflow(name="slow-task")

    @slow.task(execution_timeout=timedelta(seconds=0.2))
    async def stuck(input: Any, ctx: TaskContext) -> None:
        await asyncio.Event().wait()  # never set: only the task's timeout ends it

    silent = app.workflow(name="silent-gate", execution_timeout=timedelta(seconds=1))

    @silent.task(wait_for=[UserEventCondition(KEY, "input.runId == run.id")])
    async def gate(input: Any, ctx: TaskContext) -> None: ...

    async with app.worker("w", workflows=[slow, silent], slots=2):
        stuck_run = await slow.run_no_wait({})
        silent_run = await silent.run_no_wait({})
        with pytest.raises(RunFailedError, match=r"execution_timeout of 0\.2s"):
            await stuck_run.result(timeout=15)
        with pytest.raises(RunTimeoutError):
            await silent_run.result(timeout=15)
    assert (await statuses(app, stuck_run.run_id)) == {"stuck": "failed"}
    assert (await statuses(app, silent_run.run_id)) == {"gate": "cancelled"}


async def test_a_durable_task_runs_a_workflow_as_its_child(
    app: Tether, server: TetherServer
) -> None:
    review = content_review(app, name="child-review")

    @app.durable_task(name="campaign")
    async def campaign(input: Any, ctx: DurableContext) -> dict[str, Any]:
        ref = await review.run_no_wait(Post(text="launch"))  # a child: started once
        return {"child": ref.run_id, "out": await ref.result()}

    async with app.worker("w", slots=2):  # every task and workflow of the app
        ref = await campaign.run_no_wait({})
        child_id = f"{ref.run_id}-c0"

        async def child_at_gate() -> bool:
            try:
                return (await statuses(app, child_id)).get("human_review") == "waiting"
            except RunNotFoundError:
                return False

        await wait_until(child_at_gate, message="the child workflow run at its gate")
        await app.events.push(KEY, {"runId": child_id, "decision": "approve"})
        out = await ref.result(timeout=15)
    assert out["child"] == child_id
    assert out["out"]["publish"] == {"published": "LAUNCH"}
    assert (await app.runs.get(child_id)).status == "completed"


async def test_two_gates_wait_together_and_each_goes_on_when_answered(
    app: Tether, server: TetherServer
) -> None:
    flow = app.workflow(name="two-gates")

    @flow.task()
    async def prepare(input: Any, ctx: TaskContext) -> str:
        return "contract"

    def gate_of(name: str) -> UserEventCondition:
        return UserEventCondition(KEY, f"input.runId == run.id && input.gate == '{name}'")

    @flow.task(parents=[prepare], wait_for=[gate_of("legal")])
    async def legal(input: Any, ctx: TaskContext) -> str:
        return str(ctx.wait_result.payloads[KEY]["decision"])

    @flow.task(parents=[prepare], wait_for=[gate_of("finance")])
    async def finance(input: Any, ctx: TaskContext) -> str:
        return str(ctx.wait_result.payloads[KEY]["decision"])

    @flow.task(parents=[finance])
    async def budget(input: Any, ctx: TaskContext) -> str:
        return "booked"

    async with app.worker("w", workflows=[flow], slots=2):
        ref = await flow.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        first = await statuses(app, ref.run_id)
        assert (first["legal"], first["finance"]) == ("waiting", "waiting")
        # the second gate is answered first: its branch goes on while legal still waits
        await app.events.push(KEY, {"runId": ref.run_id, "gate": "finance", "decision": "ok"})

        async def budget_booked() -> bool:
            now = await statuses(app, ref.run_id)
            return now["budget"] == "completed" and now["legal"] == "waiting"

        await wait_until(budget_booked, message="finance's branch done while legal waits")
        await app.events.push(KEY, {"runId": ref.run_id, "gate": "legal", "decision": "ok"})
        out = await ref.result(timeout=15)
    assert out == {"prepare": "contract", "legal": "ok", "finance": "ok", "budget": "booked"}
    waits = [e for e in (await app.runs.get(ref.run_id)).events if e.type.startswith("run.wait")]
    assert [e.data.get("label") for e in waits if e.type == "run.wait_started.v1"] == [
        "task:legal|finance",
        "task:legal",
    ]
