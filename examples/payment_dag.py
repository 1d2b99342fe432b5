"""A payment-approval workflow: small payments go straight through, larger ones wait at a
manager's approval gate, and the branch after the gate pays or tells the requester.

    validate --> manager_approval --> notify_rejection
        \\              |
         `-----------> pay

`manager_approval` is skipped under 1,000 (its `skip_if`); `pay` still runs then, because
one of its parents (`validate`) was not skipped, while `notify_rejection`, whose only
parent was skipped, is skipped too. A withdrawal (`payments:withdrawn`) cancels a run
that waits at the gate; no answer within 48 hours expires it.

    tether dev                              # in another terminal: NATS + engine + dashboard
    python examples/payment_dag.py

The script starts a worker in-process, submits three payments, approves one and rejects
another at the gate, and prints each run's tasks and output. It ends on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from tether import ParentCondition, SleepCondition, TaskContext, Tether, UserEventCondition, or_

app = Tether()

DECISION_KEY = "payments:decision"
WITHDRAWN_KEY = "payments:withdrawn"


class Payment(BaseModel):
    amount: int
    payee: str


payments = app.workflow(name="payment-dag", execution_timeout=timedelta(days=3))


@payments.task(retries=2)
async def validate(input: Payment, ctx: TaskContext) -> dict[str, Any]:
    if input.amount <= 0:
        raise ValueError(f"amount must be positive, not {input.amount}")
    return {"amount": input.amount, "payee": input.payee}


@payments.task(
    parents=[validate],
    wait_for=[
        or_(
            UserEventCondition(DECISION_KEY, "input.runId == run.id"),
            SleepCondition(timedelta(hours=48), key="timeout"),
        )
    ],
    skip_if=[ParentCondition(validate, "output.amount < 1000")],
    cancel_if=[UserEventCondition(WITHDRAWN_KEY, "input.runId == run.id")],
    description="Approve a payment of 1,000 or more",
)
async def manager_approval(input: Payment, ctx: TaskContext) -> dict[str, Any]:
    if "timeout" in ctx.wait_result.fired:
        return {"decision": "timeout"}
    decision = ctx.wait_result.payloads[DECISION_KEY]
    return {"decision": decision["decision"], "reason": decision.get("reason")}


@payments.task(
    parents=[validate, manager_approval],
    # a skipped gate's output is {"skipped": true}: it has no decision, so it does not stop pay
    skip_if=[
        ParentCondition(manager_approval, "has(output.decision) && output.decision != 'approve'")
    ],
)
async def pay(input: Payment, ctx: TaskContext) -> dict[str, Any]:
    approved_by = "policy" if ctx.was_skipped(manager_approval) else "manager"
    return {"paid": input.amount, "to": input.payee, "approved_by": approved_by}


@payments.task(
    parents=[manager_approval],
    skip_if=[ParentCondition(manager_approval, "output.decision == 'approve'")],
)
async def notify_rejection(input: Payment, ctx: TaskContext) -> dict[str, Any]:
    return {"told": input.payee, "why": ctx.task_output(manager_approval)}


async def wait_at_gate(run_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (info := await app.runs.get(run_id)).tasks["manager_approval"].status != "waiting":
        if info.is_terminal or time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} is {info.status}, not waiting at the gate")
        await asyncio.sleep(0.05)


async def three_payments() -> dict[str, Any]:
    async with app, app.worker("payments", workflows=[payments], slots=4):
        small = await payments.run_no_wait(Payment(amount=250, payee="Office Supplies"))
        approved = await payments.run_no_wait(Payment(amount=5_000, payee="ACME Ltd"))
        rejected = await payments.run_no_wait(Payment(amount=7_000, payee="Unknown Corp"))
        for ref, decision in ((approved, "approve"), (rejected, "reject")):
            await wait_at_gate(ref.run_id)
            print(f"run {ref.run_id} waits at the manager's gate: {decision}")
            await app.events.push(
                DECISION_KEY,
                {"runId": ref.run_id, "decision": decision, "reason": "checked the invoice"},
            )
        outputs = {}
        for label, ref in (("small", small), ("approved", approved), ("rejected", rejected)):
            outputs[label] = await ref.result(timeout="30s")
            tasks = {n: t.status for n, t in (await app.runs.get(ref.run_id)).tasks.items()}
            print(f"{label}: {tasks}\n  output: {outputs[label]}")
        return outputs


def main(nats_url: str | None = None) -> dict[str, Any]:
    if nats_url:
        app.settings = dataclasses.replace(app.settings, nats_url=nats_url)
    return asyncio.run(three_payments())


if __name__ == "__main__":
    main()
