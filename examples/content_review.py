"""The content-review workflow: a draft, a human review gate, then publish or notify.

A fixed approval gate known when the workflow is defined is a workflow task with an event
condition. This script starts a worker in-process, submits two posts, approves the risky
one at its gate (the other is low risk: the gate is skipped, and so is everything after
it), and prints both results. It ends on its own.

    tether dev                              # in another terminal: NATS + engine + dashboard
    python examples/content_review.py

While a run waits at the gate it holds no worker slot; the dashboard's inbox lists the gate
with Approve and Reject, and the run page draws the graph.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from tether import ParentCondition, SleepCondition, TaskContext, Tether, UserEventCondition, or_

app = Tether()  # no I/O here: the connection opens on first use

DECISION_KEY = "review:decision"


class Post(BaseModel):
    author: str
    text: str


review = app.workflow(name="content-review", execution_timeout=timedelta(hours=24))


@review.task()
async def draft(input: Post, ctx: TaskContext) -> dict[str, Any]:
    """Stands for an LLM's draft and its risk score."""
    risk = 0.9 if "guaranteed returns" in input.text else 0.1
    return {"text": input.text.strip(), "risk": risk}


@review.task(
    parents=[draft],
    # scoped to this run: `run.id` is this run's id; nobody answering for 4 hours expires it
    wait_for=[
        or_(
            UserEventCondition(DECISION_KEY, "input.runId == run.id"),
            SleepCondition(timedelta(hours=4), key="expired"),
        )
    ],
    skip_if=[ParentCondition(draft, "output.risk < 0.5")],  # low risk needs no review
    description="Review a risky post before it is published",
)
async def human_review(input: Post, ctx: TaskContext) -> dict[str, Any]:
    if ctx.wait_result.fired == ["expired"]:
        return {"decision": "expired"}
    decision: dict[str, Any] = ctx.wait_result.payloads[DECISION_KEY]
    return decision


@review.task(
    parents=[human_review],
    skip_if=[ParentCondition(human_review, "output.decision != 'approve'")],
)
async def publish(input: Post, ctx: TaskContext) -> dict[str, Any]:
    return {"published": ctx.task_output(draft)["text"]}


@review.task(
    parents=[human_review],
    skip_if=[ParentCondition(human_review, "output.decision == 'approve'")],
)
async def notify_author(input: Post, ctx: TaskContext) -> dict[str, Any]:
    return {"to": input.author, "decision": ctx.task_output(human_review)["decision"]}


@review.on_failure()
async def report_failure(input: Post, ctx: TaskContext) -> dict[str, Any]:
    return {"errors": ctx.task_run_errors}


async def wait_at_gate(run_id: str, timeout: float = 30.0) -> None:
    """Poll the run until its gate is waiting for a decision."""
    deadline = time.monotonic() + timeout
    while (info := await app.runs.get(run_id)).tasks["human_review"].status != "waiting":
        if info.is_terminal or time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} is {info.status}, not waiting at the gate")
        await asyncio.sleep(0.05)


async def review_two_posts() -> list[dict[str, Any]]:
    async with app, app.worker("reviews", workflows=[review], slots=5):
        risky = await review.run_no_wait(Post(author="sam", text="Invest now: guaranteed returns!"))
        harmless = await review.run_no_wait(Post(author="kim", text="Our office moves."))
        print(f"started runs {risky.run_id} (risky) and {harmless.run_id} (harmless)")
        await wait_at_gate(risky.run_id)
        print("the risky post waits at the review gate; approving it as alice")
        await app.events.push(
            DECISION_KEY,
            {"runId": risky.run_id, "decision": "approve", "reason": "claims checked"},
            metadata={"approver": "alice"},
        )
        outputs = [await risky.result(timeout="30s"), await harmless.result(timeout="30s")]
        for ref, output in zip((risky, harmless), outputs, strict=True):
            statuses = {n: t.status for n, t in (await app.runs.get(ref.run_id)).tasks.items()}
            print(f"run {ref.run_id}: {statuses}\n  output: {output}")
        return outputs


def main(nats_url: str | None = None) -> list[dict[str, Any]]:
    """Run the walkthrough once; returns both runs' outputs. ``nats_url`` overrides
    TETHER_NATS_URL (it must be set before the app's first use)."""
    if nats_url:
        app.settings = dataclasses.replace(app.settings, nats_url=nats_url)
    return asyncio.run(review_two_posts())


if __name__ == "__main__":
    main()
