"""A Flask backend that starts payment approvals, shows them, and lets a person decide.

The worker runs elsewhere (examples/worker.py); this process only triggers runs, reads them
and pushes decisions, with the SDK's synchronous calls (`*_sync`), which share one NATS
connection across requests and threads.

    tether dev                                  # terminal 1: NATS + engine + dashboard
    python examples/worker.py                   # terminal 2
    flask --app examples/flask_view.py run      # terminal 3 (http://127.0.0.1:5000)

    curl -X POST localhost:5000/payments -H 'Content-Type: application/json' -d '{"amount": 120}'
    curl localhost:5000/payments/RUN_ID
    curl -X POST localhost:5000/payments/RUN_ID/approve -H 'X-User: alice' \
         -H 'Content-Type: application/json' -d '{"reason": "within budget"}'

Decisions follow Tether's convention, `{"runId", "decision": "approve" | "reject",
"reason"}` on the task's event key, so the dashboard and `tether approve` decide the same
runs with no glue.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from payment_approval import DECISION_KEY, Proposal, app, payment_approval
from pydantic import ValidationError

from tether import RunInfo, RunNotFoundError

web = Flask(__name__)


def error(status: int, message: str) -> ResponseReturnValue:
    return jsonify(error=message), status


def describe(info: RunInfo) -> dict[str, Any]:
    return {
        "runId": info.run_id,
        "status": info.status,
        "output": info.output,
        "error": info.error,
    }


def find_run(run_id: str) -> RunInfo | None:
    try:
        info = app.runs.get_sync(run_id)
    except RunNotFoundError:
        return None
    return info if info.task == payment_approval.name else None


@web.post("/payments")
def start_payment() -> ResponseReturnValue:
    try:
        proposal = Proposal.model_validate(request.get_json(silent=True) or {})
    except ValidationError as exc:
        return error(422, str(exc))
    ref = payment_approval.run_no_wait_sync(proposal)
    return jsonify(runId=ref.run_id), 202


@web.get("/payments/<run_id>")
def show_payment(run_id: str) -> ResponseReturnValue:
    info = find_run(run_id)
    if info is None:
        return error(404, f"no payment approval {run_id}")
    return jsonify(describe(info))


@web.post("/payments/<run_id>/approve")
def approve_payment(run_id: str) -> ResponseReturnValue:
    return decide(run_id, "approve")


@web.post("/payments/<run_id>/reject")
def reject_payment(run_id: str) -> ResponseReturnValue:
    return decide(run_id, "reject")


def decide(run_id: str, decision: str) -> ResponseReturnValue:
    # Stand-in for your login session: who is deciding. Tether records it on the run.
    approver = request.headers.get("X-User")
    if not approver:
        return error(401, "say who decides (X-User header)")
    info = find_run(run_id)
    if info is None:
        return error(404, f"no payment approval {run_id}")
    # A decision only matches a wait that exists: pushed earlier, it would be ignored.
    if info.status != "waiting":
        return error(409, f"run {run_id} is {info.status}, not waiting for a decision")
    payload: dict[str, Any] = {"runId": run_id, "decision": decision}
    body = request.get_json(silent=True)
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason:
        payload["reason"] = str(reason)
    try:
        app.events.push_sync(DECISION_KEY, payload, metadata={"approver": approver})
    except ValueError as exc:  # e.g. an approver name that is not a valid identity
        return error(400, str(exc))
    return jsonify(runId=run_id, decision=decision, approver=approver), 202


if __name__ == "__main__":
    web.run(port=5000)
