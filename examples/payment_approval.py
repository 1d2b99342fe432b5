"""The README's payment approval, as a complete program.

A durable task proposes a payment and waits for a person to approve or reject it. This
script starts a worker in-process, triggers one run, waits until the run is really waiting
for its decision, approves it as "alice", and prints the result. It ends on its own.

    tether dev                              # in another terminal: NATS + engine + dashboard
    python examples/payment_approval.py

The NATS URL and namespace come from TETHER_NATS_URL and TETHER_NAMESPACE (defaults
nats://127.0.0.1:4222 and "tether", which is what `tether dev` serves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from pydantic import BaseModel

from tether import DurableContext, Tether, WaitTimeoutError

app = Tether()  # no I/O here: the connection opens on first use

DECISION_KEY = "approval:decision"


class Proposal(BaseModel):
    amount: int
    payee: str = "ACME Ltd"


def propose_payment(amount: int, payee: str) -> dict[str, Any]:
    """The action a person must approve. Runs once per run: its result is recorded."""
    return {"action": "pay", "amount": amount, "payee": payee}


@app.durable_task(name="payment-approval", execution_timeout="24h")
async def payment_approval(input: Proposal, ctx: DurableContext) -> dict[str, Any]:
    action = await ctx.step("propose", propose_payment, input.amount, input.payee)
    try:
        decision = await ctx.wait_for_event(
            DECISION_KEY,
            expression=f"input.runId == '{ctx.run_id}'",  # CEL; `input` is the event payload
            timeout="1h",
            description=f"Pay {input.amount} to {input.payee}",  # shown in the inbox
        )
    except WaitTimeoutError:
        return {"status": "expired", "action": action}
    if decision["decision"] == "approve":
        return {"status": "approved", "action": action}
    return {"status": "rejected", "reason": decision.get("reason")}


async def wait_until_waiting(run_id: str, timeout: float = 30.0) -> None:
    """Poll the run until its wait is recorded. A decision pushed before the wait exists
    does not match it (by design: an old event must not answer a new question)."""
    deadline = time.monotonic() + timeout
    while (info := await app.runs.get(run_id)).status != "waiting":
        if info.is_terminal or time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} is {info.status}, not waiting for a decision")
        await asyncio.sleep(0.05)


async def approve_one_payment(amount: int = 120) -> Any:
    async with app, app.worker("payments", tasks=[payment_approval], slots=2):
        ref = await payment_approval.run_no_wait(Proposal(amount=amount))
        print(f"started run {ref.run_id}")
        await wait_until_waiting(ref.run_id)
        print("the run is waiting for a decision; approving it as alice")
        await app.events.push(
            DECISION_KEY,
            {"runId": ref.run_id, "decision": "approve", "reason": "within budget"},
            metadata={"approver": "alice"},  # recorded on the run as who decided
        )
        output = await ref.result(timeout="30s")
        print(f"result: {output}")
        return output


def main(nats_url: str | None = None) -> Any:
    """Run the walkthrough once and return the run's output. ``nats_url`` overrides
    TETHER_NATS_URL (it must be set before the app's first use)."""
    if nats_url:
        app.settings = dataclasses.replace(app.settings, nats_url=nats_url)
    return asyncio.run(approve_one_payment())


if __name__ == "__main__":
    main()
