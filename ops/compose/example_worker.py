"""Example worker: the payment-approval task, run until SIGTERM.

Start a run and approve it from any NATS client, e.g.

    nats req tether.events.approval:decision '{"runId": "<run id>", "decision": "approve"}'
"""

import asyncio
import os
import signal
from datetime import timedelta

from pydantic import BaseModel

from tether import DurableContext, Tether, WaitTimeoutError

app = Tether(nats_url=os.environ.get("TETHER_NATS_URL", "nats://127.0.0.1:4222"))


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


worker = app.worker(
    "payments",
    tasks=[payment_approval],
    slots=int(os.environ.get("TETHER_WORKER_SLOTS", "4")),
)


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
