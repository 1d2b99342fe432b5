"""Example worker: the payment-approval task, run until SIGTERM (``worker.run()``).

Start a run and approve it from any NATS client, e.g.

    nats req tether.events.approval:decision '{"runId": "<run id>", "decision": "approve"}'
"""

import os
from datetime import timedelta

from pydantic import BaseModel

from tether import DurableContext, Tether, WaitTimeoutError

app = Tether()  # TETHER_NATS_URL, TETHER_NAMESPACE


class Proposal(BaseModel):
    amount: int


async def propose_payment(amount: int) -> str:
    return f"pay {amount}"


@app.durable_task(name="payment-approval", execution_timeout=timedelta(hours=24))
async def payment_approval(input: Proposal, ctx: DurableContext) -> dict[str, object]:
    action = await ctx.step("propose", propose_payment, input.amount)
    try:
        decision = await ctx.wait_for_event(
            "approval:decision",
            expression=f"input.runId == '{ctx.run_id}'",
            timeout=timedelta(hours=1),
        )
    except WaitTimeoutError:
        return {"status": "expired", "action": action}
    if decision["decision"] == "approve":
        return {"status": "approved", "action": action}
    return {"status": "rejected", "reason": decision.get("reason")}


if __name__ == "__main__":
    # blocks; logs a line when ready; SIGTERM (docker stop) or Ctrl-C stop it cleanly
    app.worker(
        "payments",
        tasks=[payment_approval],
        slots=int(os.environ.get("TETHER_WORKER_SLOTS", "4")),
    ).run()
