"""``tether demo``: the approval walkthrough on an embedded nats-server.

A worker runs a payment-approval task that proposes a payment and waits for a human; a
separate plain nats-py process pushes the decision; the run resumes, and its output and
event log are printed. With ``--interactive`` the run is left waiting and a person decides
it in the dashboard.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tether.app import Tether
from tether.engine import codec
from tether.engine.nats_server import NatsServer
from tether.errors import RunError, WaitTimeoutError
from tether.operator.auth import dev_token, load_token_auth
from tether.runtime.context import DurableContext
from tether.serve import TetherServer


class Proposal(BaseModel):
    amount: int
    payee: str


def propose_payment(amount: int, payee: str) -> dict[str, Any]:
    return {"action": "pay", "amount": amount, "payee": payee}


def define_demo(nats_url: str) -> tuple[Tether, Any]:
    app = Tether(nats_url=nats_url)

    @app.durable_task(name="payment-approval", execution_timeout=timedelta(hours=24))
    async def payment_approval(input: Proposal, ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step("propose", propose_payment, input.amount, input.payee)
        try:
            decision = await ctx.wait_for_event(
                "approval:decision",
                expression=f"input.runId == '{ctx.run_id}'",
                timeout=timedelta(hours=1),
                description=f"Pay {input.amount} to {input.payee}",
                details=action,
            )
        except WaitTimeoutError:
            return {"status": "expired", "action": action}
        if decision["decision"] == "approve":
            return {"status": "approved", "action": action}
        return {"status": "rejected", "reason": decision.get("reason")}

    return app, payment_approval


def _detail(data: dict[str, Any]) -> str:
    """Who decided what, for a resolved wait; the step name for a step."""
    if data.get("type") == "run.wait_satisfied.v1":
        payload = data.get("payload") or {}
        approver = (data.get("metadata") or {}).get("approver", "an anonymous client")
        reason = f": {payload['reason']!r}" if payload.get("reason") else ""
        return f"{payload.get('decision', 'decided')} by {approver}{reason}"
    if data.get("type") == "run.step.v1":
        return f"step {data.get('name')}"
    return ""


def _say(text: str) -> None:
    print(text, flush=True)


async def _wait_for_status(app: Tether, run_id: str, status: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (await app.runs.get(run_id)).status != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not reach {status!r} in {timeout}s")
        await asyncio.sleep(0.02)


async def run_demo(nats_url: str | None, *, decision: str = "approve") -> dict[str, Any]:
    embedded: NatsServer | None = None
    if nats_url is None:
        _say("1/6 starting an embedded nats-server with JetStream ...")
        embedded = NatsServer().start()
        nats_url = embedded.url
    else:
        _say(f"1/6 using nats-server at {nats_url}")
    app, payment_approval = define_demo(nats_url)
    server = TetherServer(app.settings)
    try:
        _say("2/6 starting tether serve (engine, matcher, timer) and a worker with 2 slots")
        await server.start()
        async with app.worker("payments", slots=2) as worker:
            ref = await payment_approval.run_no_wait(Proposal(amount=120, payee="ACME Ltd"))
            _say(f"3/6 triggered run {ref.run_id}: proposing a payment of 120 to ACME Ltd")
            await _wait_for_status(app, ref.run_id, "waiting")
            _say(f"4/6 run is waiting for a human; worker slots in use: {worker.active}/2")
            script = Path(__file__).with_name("plain_nats_decision.py")
            _say(f"5/6 a separate plain nats-py process pushes '{decision}':")
            reason = "within budget" if decision == "approve" else "over budget"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                nats_url,
                ref.run_id,
                decision,
                reason,
                "reviewer",
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            _say("    " + out.decode().strip())
            if proc.returncode != 0:
                raise RuntimeError("the decision could not be pushed")
            result = await ref.result(timeout=30)
            _say(f"6/6 run resumed and finished: {codec.dumps(result).decode()}")
            info = await app.runs.get(ref.run_id)
            _say("\nevent log:")
            start = info.events[0].at
            for number, event in enumerate(info.events, 1):
                elapsed = f"+{(event.at - start) * 1000:.1f} ms"
                _say(f"  {number:>2}  {elapsed:>11}  {event.type:<22} {_detail(event.data)}")
            return dict(result)
    finally:
        await server.stop()
        await app.close()
        if embedded is not None:
            embedded.cleanup()


async def run_interactive_demo(nats_url: str | None, *, http: str) -> Any:
    """Leave a payment approval waiting and print the dashboard link; a person decides it."""
    embedded: NatsServer | None = None
    if nats_url is None:
        embedded = NatsServer().start()
        nats_url = embedded.url
    app, payment_approval = define_demo(nats_url)
    auth, token = load_token_auth(), None
    if not len(auth):
        token, auth = dev_token("reviewer")
    server = TetherServer(app.settings, http=http, auth=auth)
    try:
        await server.start()
        assert server.api is not None
        async with app.worker("payments", slots=2):
            ref = await payment_approval.run_no_wait(Proposal(amount=120, payee="ACME Ltd"))
            await _wait_for_status(app, ref.run_id, "waiting")
            link = f"{server.api.url}/" + (f"#token={token}" if token else "")
            _say(f"run {ref.run_id} proposes paying 120 to ACME Ltd and waits for a human.")
            _say(f"open the inbox and click Approve or Reject: {link}")
            _say(f"  (or: tether approve {ref.run_id} --nats-url {nats_url}); Ctrl-C stops")
            try:
                result = await ref.result()
            except RunError as exc:
                _say(f"run ended without output: {exc}")
                return None
            _say(f"run resumed and finished: {codec.dumps(result).decode()}")
            info = await app.runs.get(ref.run_id)
            for number, event in enumerate(info.events, 1):
                _say(f"  {number:>2}  {event.type:<22} {_detail(event.data)}")
            return result
    finally:
        await server.stop()
        await app.close()
        if embedded is not None:
            embedded.cleanup()
