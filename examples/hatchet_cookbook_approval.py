"""The approval task of Hatchet's human-in-the-loop cookbook, written the Tether way.

The cookbook's task proposes an action, waits durably for an event on
"approval:decision", and branches on the decision; another part of the application pushes
that event when a person clicks Approve or Reject. The same task here, with what Tether
does differently (docs/coming-from-hatchet.md has the whole mapping):

- The wait names its run with CEL over the payload (`input.runId == '<run id>'`), so one
  decision resolves exactly one run; a wait on the key alone would take any run's decision.
- The proposal is a recorded step (`ctx.step`): a replay returns it instead of proposing
  again.
- The decision payload follows Tether's convention, `{"runId", "decision": "approve" |
  "reject", "reason"}`, so the dashboard's buttons and `tether approve` work with no glue.
- The wait has its own deadline (an `or_` with a sleep), and the task an execution timeout
  that covers its waits, so a silent human cannot hold it forever.

    tether dev                                     # in another terminal
    python examples/hatchet_cookbook_approval.py   # add --reject for the other branch
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Any

from pydantic import BaseModel

from tether import DurableContext, SleepCondition, Tether, UserEventCondition, or_

app = Tether()  # TETHER_NATS_URL / TETHER_NAMESPACE, defaults match `tether dev`

DECISION_KEY = "approval:decision"


class ActionRequest(BaseModel):  # the input annotation plays Hatchet's input_validator
    to: str = "user@example.com"


def propose_action(to: str) -> dict[str, str]:
    return {"action": "send_email", "to": to}


@app.durable_task(name="approval-task", execution_timeout="24h")
async def approval_task(input: ActionRequest, ctx: DurableContext) -> dict[str, Any]:
    proposed = await ctx.step("propose", propose_action, input.to)
    result = await ctx.wait_for(
        "approval",
        or_(
            UserEventCondition(DECISION_KEY, f"input.runId == '{ctx.run_id}'", key="decision"),
            SleepCondition("4h", key="expired"),
        ),
    )
    if "expired" in result:
        return {"status": "expired", "action": proposed}
    decision = result.payloads["decision"]
    if decision["decision"] == "approve":
        return {"status": "approved", "action": proposed}
    return {"status": "rejected", "reason": decision.get("reason", "")}


async def push_decision(run_id: str, approve: bool, reason: str = "", *, by: str) -> None:
    """What the cookbook's trigger does when a person clicks Approve or Reject."""
    payload = {"runId": run_id, "decision": "approve" if approve else "reject"}
    if reason:
        payload["reason"] = reason
    await app.events.push(DECISION_KEY, payload, metadata={"approver": by})


async def demo(approve: bool) -> Any:
    async with app, app.worker("human-in-the-loop-worker", tasks=[approval_task], slots=2):
        ref = await approval_task.run_no_wait(ActionRequest())
        print(f"started run {ref.run_id}")
        # Push only once the run waits: a decision stored before its wait began does not
        # match (unless the condition sets `lookback=`).
        deadline = time.monotonic() + 30
        while (info := await app.runs.get(ref.run_id)).status != "waiting":
            if info.is_terminal or time.monotonic() > deadline:
                raise RuntimeError(f"run {ref.run_id} is {info.status}, not waiting")
            await asyncio.sleep(0.05)
        await push_decision(ref.run_id, approve, "" if approve else "needs review", by="bob")
        output = await ref.result(timeout="30s")
        print(f"result: {output}")
        return output


def main(nats_url: str | None = None, approve: bool = True) -> Any:
    if nats_url:  # overrides TETHER_NATS_URL; set before the app's first use
        app.settings = dataclasses.replace(app.settings, nats_url=nats_url)
    return asyncio.run(demo(approve))


if __name__ == "__main__":
    main(approve="--reject" not in sys.argv[1:])
