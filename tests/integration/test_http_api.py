"""The HTTP API over real HTTP (aiohttp's client) against a real nats-server: open waits, approval
with a bearer token recorded as the approver, refusals that write nothing, validation errors,
cancellation, live updates and the OpenAPI description."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import wait_for_status, wait_until
from tests.integration.conftest import ALICE, BOB, READER, bearer, served_api_routes
from tether import DurableContext, Tether
from tether.operator.auth import AuthConfigError, load_token_auth
from tether.serve import TetherServer


def define(app: Tether) -> Any:
    @app.durable_task(name="payment-approval", execution_timeout=timedelta(minutes=5))
    async def payment_approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step("propose", lambda: {"pay": input["amount"], "to": "ACME"})
        decision = await ctx.wait_for_event(
            "approval:decision",
            expression=f"input.runId == '{ctx.run_id}'",
            timeout=timedelta(hours=1),
        )
        return {"decision": decision["decision"], "reason": decision.get("reason"), **action}

    return payment_approval


async def events_last_seq(app: Tether) -> int:
    conn = await app.connection()
    info = await conn.js.stream_info(conn.settings.names.events_stream)
    return int(info.state.last_seq)


async def open_waits(http: aiohttp.ClientSession, **params: str) -> list[dict[str, Any]]:
    async with http.get("/api/waits", params=params, headers=bearer(READER)) as response:
        assert response.status == 200
        waits: list[dict[str, Any]] = (await response.json())["waits"]
        return waits


async def test_list_waits_approve_with_token_and_approver_on_run_events(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    task = define(app)
    async with app.worker("payments", slots=2):
        ref = await task.run_no_wait({"amount": 120})
        before = time.time()
        waits = await wait_until(lambda: open_waits(http), message="the wait to be listed")
        [wait] = waits
        assert wait["run_id"] == ref.run_id
        assert wait["task"] == "payment-approval"
        assert wait["event_key"] == "approval:decision"
        assert wait["expression"] == f"input.runId == '{ref.run_id}'"
        assert wait["conventional"] is True
        assert wait["proposed_action"] == {
            "source": "step",
            "step": "propose",
            "output": {"pay": 120, "to": "ACME"},
        }
        assert wait["since"] <= before + 1
        assert wait["deadline"] == pytest.approx(wait["since"] + 3600)
        assert wait["run_deadline"] > wait["since"]
        assert await open_waits(http, task="other") == []
        assert len(await open_waits(http, key="approval:decision")) == 1

        async with http.post(
            f"/api/runs/{ref.run_id}/approve",
            json={"reason": "within budget"},
            headers=bearer(ALICE),
        ) as response:
            assert response.status == 202, await response.text()
            body = await response.json()
        assert body["approver"] == "alice"
        assert body["payload"] == {
            "runId": ref.run_id,
            "decision": "approve",
            "reason": "within budget",
        }
        assert await ref.result(timeout=15) == {
            "decision": "approve",
            "reason": "within budget",
            "pay": 120,
            "to": "ACME",
        }

        # a second decision for the same run is refused and writes nothing
        seq = await events_last_seq(app)
        async with http.post(
            f"/api/runs/{ref.run_id}/reject", json={"reason": "late"}, headers=bearer(ALICE)
        ) as response:
            assert response.status == 409
            assert (
                "has already ended (status: completed)"
                in (await response.json())["error"]["message"]
            )
        assert await events_last_seq(app) == seq

    # the approver's identity is on the run's events, through the API and the SDK alike
    async with http.get(f"/api/runs/{ref.run_id}", headers=bearer(READER)) as response:
        assert response.status == 200
        detail = await response.json()
    assert detail["run"]["status"] == "completed"
    assert detail["wait"] is None
    types = [e["type"] for e in detail["events"]]
    # resumed: the next attempt's only write, which names its worker
    resumed = detail["events"][types.index("run.wait_satisfied.v1") + 1]
    assert resumed["type"] == "run.completed.v1" and resumed["data"]["worker"]
    satisfied = next(e for e in detail["events"] if e["type"] == "run.wait_satisfied.v1")
    assert satisfied["data"]["metadata"] == {"approver": "alice"}
    assert satisfied["note"] == "approve by alice"
    info = await app.runs.get(ref.run_id)
    [sdk_view] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert sdk_view.data["metadata"]["approver"] == "alice"
    assert sdk_view.data["payload"]["reason"] == "within budget"

    assert await wait_until(lambda: _no_waits(http), message="the wait to leave the list")
    async with http.get(
        "/api/runs",
        params={"status": "completed", "task": "payment-approval"},
        headers=bearer(READER),
    ) as response:
        runs = (await response.json())["runs"]
    assert [r["run_id"] for r in runs] == [ref.run_id]
    async with http.get("/api/runs", params={"status": "waiting"}, headers=bearer(READER)) as r:
        assert (await r.json())["runs"] == []


async def _no_waits(http: aiohttp.ClientSession) -> bool:
    return await open_waits(http) == []


async def test_token_without_rights_gets_403_and_nothing_is_pushed(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    task = define(app)
    async with app.worker("payments", slots=2):
        ref = await task.run_no_wait({"amount": 5})
        await wait_for_status(app, ref.run_id, "waiting")
        seq = await events_last_seq(app)
        attempts = [
            (BOB, f"/api/runs/{ref.run_id}/approve", {}, "'bob' may not decide"),
            (READER, f"/api/runs/{ref.run_id}/reject", {"reason": "x"}, "allowed keys: none"),
            (
                BOB,
                "/api/events/approval:decision",
                {"data": {"runId": ref.run_id, "decision": "approve"}},
                "may not push",
            ),
            (BOB, f"/api/runs/{ref.run_id}/cancel", {}, "may not cancel"),
        ]
        for token, path, body, message in attempts:
            async with http.post(path, json=body, headers=bearer(token)) as response:
                assert response.status == 403, (path, await response.text())
                assert message in (await response.json())["error"]["message"]
        assert await events_last_seq(app) == seq  # the events stream did not grow
        assert (await app.runs.get(ref.run_id)).status == "waiting"
        # bob may push to his own keys
        async with http.post(
            "/api/events/payments:settled", json={"data": {"ok": True}}, headers=bearer(BOB)
        ) as response:
            assert response.status == 202
        assert await events_last_seq(app) == seq + 1


async def test_missing_or_unknown_token_gets_401(
    api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer not-a-known-token"},
        {"Authorization": "Basic x"},
    ):
        async with http.get("/api/waits", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in (await response.json())["error"]["message"]
    async with http.post("/api/events/approval:decision", json={"data": {}}) as response:
        assert response.status == 401


async def test_malformed_requests_get_422_with_a_clear_message(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    seq = await events_last_seq(app)
    push = "/api/events/approval:decision"
    cases: list[tuple[str, str, bytes | None, str]] = [
        ("POST", push, b"{not json", "request body is not valid JSON"),
        ("POST", push, b"", "request body is empty"),
        ("POST", push, b"[1, 2]", "must be a JSON object"),
        ("POST", push, b'{"payload": {}}', "data: Field required"),
        ("POST", push, b'{"data": "approve"}', "data: Input should be a valid dictionary"),
        ("POST", push, b'{"data": {}, "extra": 1}', "extra: Extra inputs are not permitted"),
        ("POST", push, b'{"data": {}, "id": "has space"}', "id: String should match"),
        ("POST", "/api/events/bad%20key", b'{"data": {}}', "invalid event key"),
        ("POST", "/api/runs/r1/approve", b'{"reason": 42}', "reason: Input should be a valid"),
        ("POST", "/api/runs/bad.id/approve", b"{}", "invalid run id"),
        ("GET", "/api/runs?status=done", None, "unknown status done"),
        ("GET", "/api/runs?limit=lots", None, "limit must be an integer"),
        ("GET", "/api/runs?limit=0", None, "limit must be between 1 and 1000"),
        ("GET", "/api/waits?limit=-1", None, "limit must be between 1 and 5000"),
    ]
    for method, path, body, message in cases:
        async with http.request(method, path, data=body, headers=bearer(ALICE)) as response:
            assert response.status == 422, (path, body, await response.text())
            error = (await response.json())["error"]
            assert error["status"] == 422
            assert message in error["message"], (path, body, error)
    big = {"data": {"blob": "x" * (api_server.settings.max_event_bytes + 10)}}
    async with http.post(push, json=big, headers=bearer(ALICE)) as response:
        assert response.status == 413
        assert "over the" in (await response.json())["error"]["message"]
    assert await events_last_seq(app) == seq
    async with http.get("/api/runs/nosuchrun", headers=bearer(ALICE)) as response:
        assert response.status == 404
        assert "no run with id 'nosuchrun'" in (await response.json())["error"]["message"]


async def test_wait_description_and_custom_expression(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    """An explicit description is the proposed action. A wait whose expression is not the
    approve/reject convention is flagged; approving it is refused (nothing pushed) when the
    decision payload would not match, and pushing a matching event resumes it."""

    @app.durable_task(name="refund")
    async def refund(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        await ctx.step("lookup", lambda: {"order": 7})
        event = await ctx.wait_for_event(
            "approval:refund",
            expression=f"input.order == 7 && input.runId == '{ctx.run_id}'",
            description="Refund 30 EUR on order 7",
            details={"amount": 30, "currency": "EUR"},
        )
        return {"ok": event["ok"]}

    async with app.worker("w", slots=1):
        ref = await refund.run_no_wait({})
        [wait] = await wait_until(lambda: open_waits(http), message="the refund wait")
        assert wait["proposed_action"] == {
            "source": "wait",
            "description": "Refund 30 EUR on order 7",
            "details": {"amount": 30, "currency": "EUR"},
        }
        assert wait["conventional"] is False
        seq = await events_last_seq(app)
        async with http.post(f"/api/runs/{ref.run_id}/approve", headers=bearer(ALICE)) as response:
            assert response.status == 409
            message = (await response.json())["error"]["message"]
        assert "does not satisfy" in message and "/api/events/approval:refund" in message
        assert await events_last_seq(app) == seq
        body = {"data": {"runId": ref.run_id, "order": 7, "ok": True}, "id": "refund-7"}
        async with http.post("/api/events/approval:refund", json=body, headers=bearer(ALICE)) as r:
            assert r.status == 202
            first = await r.json()
        assert first["duplicate"] is False
        async with http.post("/api/events/approval:refund", json=body, headers=bearer(ALICE)) as r:
            assert (await r.json()) == {**first, "duplicate": True}  # idempotent by id
        assert await ref.result(timeout=15) == {"ok": True}
    info = await app.runs.get(ref.run_id)
    [satisfied] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert satisfied.data["metadata"] == {"approver": "alice"}
    assert satisfied.data["event_id"] == "refund-7"


async def test_cancel_through_the_api(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    task = define(app)
    async with app.worker("payments", slots=1):
        ref = await task.run_no_wait({"amount": 1})
        await wait_for_status(app, ref.run_id, "waiting")
        path = f"/api/runs/{ref.run_id}/cancel"
        async with http.post(path, json={"reason": "duplicate"}, headers=bearer(ALICE)) as r:
            assert r.status == 200
            assert (await r.json())["status"] == "cancelled"
        info = await app.runs.get(ref.run_id)
        assert info.status == "cancelled"
        assert info.error == {
            "type": "RunCancelledError",
            "message": "cancelled by alice: duplicate",
        }
        async with http.post(path, headers=bearer(ALICE)) as response:
            assert response.status == 409
            assert (
                "has already ended (status: cancelled)"
                in (await response.json())["error"]["message"]
            )
        async with http.post("/api/runs/nosuch/cancel", headers=bearer(ALICE)) as response:
            assert response.status == 404


async def test_stream_announces_changes(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    task = define(app)
    async with http.get("/api/stream", headers=bearer(READER)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert (await response.content.readline()).startswith(b"event: hello")
        async with app.worker("payments", slots=1):
            ref = await task.run_no_wait({"amount": 3})
            seen: set[str] = set()

            async def changed() -> bool:
                line = await response.content.readline()
                if line.startswith(b"data: ") and b'"runs"' in line:
                    seen.update(json.loads(line[6:])["runs"] or [])
                return ref.run_id in seen

            await wait_until(changed, message="a change event naming the run", interval=0)
            await wait_for_status(app, ref.run_id, "waiting")
            await app.runs.cancel(ref.run_id)


async def test_openapi_document_lists_every_route(
    api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    async with http.get("/openapi.json") as response:  # public, no token needed
        assert response.status == 200
        doc = await response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert api_server.api is not None
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    async with http.get("/healthz") as response:
        assert response.status == 200
    for route in served_api_routes(api_server):
        served.add(route)
    assert served and served <= documented, served - documented
    assert ("/api/runs/{run_id}/approve", "post") in documented
    push_body = doc["paths"]["/api/events/{key}"]["post"]["requestBody"]
    assert push_body["content"]["application/json"]["schema"]["$ref"].endswith("/PushBody")
    assert "data" in doc["components"]["schemas"]["PushBody"]["required"]


def test_token_configuration_from_env_and_file(tmp_path: Path) -> None:
    entry = {"name": "carol", "keys": ["approval:*"]}
    file = tmp_path / "tokens.json"
    file.write_text(json.dumps({"file-token-0123456789": {"name": "dan", "cancel": True}}))
    auth = load_token_auth(
        environ={
            "TETHER_API_TOKENS": json.dumps({"env-token-0123456789": entry}),
            "TETHER_API_TOKENS_FILE": str(file),
        }
    )
    carol = auth.identify("env-token-0123456789")
    dan = auth.identify("file-token-0123456789")
    assert carol is not None and carol.may_push("approval:decision")
    assert not carol.may_push("payments:settle") and not carol.can_cancel
    assert dan is not None and dan.can_cancel and not dan.may_push("approval:decision")
    assert auth.identify("env-token-012345678") is None
    bad = [
        ("[]", "expected a JSON object"),
        ("{not json", "is not valid JSON"),
        ('{"short": {"name": "x"}}', "shorter than 16 characters"),
        ('{"long-enough-token-123": {"keys": []}}', "'name' must be a non-empty string"),
        ('{"long-enough-token-123": {"name": "x", "keys": "approval:*"}}', "'keys' must be a list"),
        ('{"long-enough-token-123": {"name": "x", "role": "admin"}}', "unknown field(s) ['role']"),
    ]
    for raw, message in bad:
        with pytest.raises(AuthConfigError, match=re.escape(message)):
            load_token_auth(environ={"TETHER_API_TOKENS": raw})
