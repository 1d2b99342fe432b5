"""Workflow runs through the HTTP API against a real nats-server: the run detail lists each
task with its status, parents, output and error (a durable task's run lists none), and a
workflow's gate is an open wait that approve decides. Every answer is checked against the
OpenAPI document (conftest's ``ResponseCheck``)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.helpers import wait_for_status, wait_until
from tests.integration.conftest import ALICE, READER, bearer
from tests.integration.content_review import PARENTS, Post, content_review
from tether import DurableContext, RunFailedError, TaskContext, Tether
from tether.serve import TetherServer

KEY = "approval:review"  # alice may decide approval:*


async def run_detail(http: aiohttp.ClientSession, run_id: str) -> dict[str, Any]:
    async with http.get(f"/api/runs/{run_id}", headers=bearer(READER)) as response:
        assert response.status == 200, await response.text()
        detail: dict[str, Any] = await response.json()
        return detail


def statuses(detail: dict[str, Any]) -> dict[str, str]:
    return {task["name"]: task["status"] for task in detail["tasks"]}


async def gate_listed(http: aiohttp.ClientSession, run_id: str) -> dict[str, Any] | None:
    async with http.get("/api/waits", headers=bearer(READER)) as response:
        assert response.status == 200
        waits = (await response.json())["waits"]
    return next((w for w in waits if w["run_id"] == run_id), None)


async def test_run_detail_lists_the_tasks_and_approve_decides_the_gate(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    review = content_review(app, KEY)
    async with app.worker("reviews", workflows=[review], slots=2):
        ref = await review.run_no_wait(Post(text="hello"))
        await wait_for_status(app, ref.run_id, "waiting")
        waiting = await run_detail(http, ref.run_id)
        listed = await wait_until(lambda: gate_listed(http, ref.run_id), message="the gate")
        async with http.post(
            f"/api/runs/{ref.run_id}/approve", json={"reason": "fine"}, headers=bearer(ALICE)
        ) as response:
            assert response.status == 202, await response.text()
            decision = await response.json()
        out = await ref.result(timeout=15)
    done = await run_detail(http, ref.run_id)

    assert [task["name"] for task in waiting["tasks"]] == list(PARENTS)  # the workflow's order
    assert {task["name"]: task["parents"] for task in waiting["tasks"]} == PARENTS
    assert statuses(waiting) == {
        "draft": "completed",
        "human_review": "waiting",
        "publish": "pending",
        "notify_author": "pending",
    }
    draft = waiting["tasks"][0]
    assert draft["output"] == {"text": "HELLO", "risk": 0.7} and draft["error"] is None
    assert waiting["tasks"][1]["output"] is None
    gate = waiting["wait"]
    assert gate["label"] == "task:human_review" and gate["event_key"] == KEY
    assert gate["expression"] == f"input.runId == '{ref.run_id}'" and gate["conventional"]
    assert gate["description"] == "content-review: human_review"
    assert listed["wait_id"] == gate["wait_id"]

    payload = {"runId": ref.run_id, "decision": "approve", "reason": "fine"}
    assert decision["payload"] == payload and decision["event_key"] == KEY
    assert out["publish"] == {"published": "HELLO"}
    assert done["run"]["status"] == "completed" and done["wait"] is None
    assert statuses(done) == {
        "draft": "completed",
        "human_review": "completed",
        "publish": "completed",
        "notify_author": "skipped",
    }
    outputs = {task["name"]: task["output"] for task in done["tasks"]}
    assert outputs["human_review"] == payload
    assert outputs["notify_author"] == {"skipped": True}
    satisfied = next(e for e in done["events"] if e["type"] == "run.wait_satisfied.v1")
    assert satisfied["data"]["metadata"] == {"approver": "alice"}


async def test_a_failed_task_has_its_error_and_a_durable_tasks_run_has_no_tasks(
    app: Tether, api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    flow = app.workflow(name="failing")

    @flow.task()
    async def fetch(input: dict[str, Any], ctx: TaskContext) -> str:
        return "fetched"

    @flow.task(parents=[fetch])
    async def charge(input: dict[str, Any], ctx: TaskContext) -> str:
        raise RuntimeError("card declined")

    @flow.task(parents=[charge])
    async def receipt(input: dict[str, Any], ctx: TaskContext) -> str:
        return "sent"

    @flow.on_failure()
    async def cleanup(input: dict[str, Any], ctx: TaskContext) -> str:
        return "cleaned"

    @app.durable_task(name="double")
    async def double(input: dict[str, int], ctx: DurableContext) -> int:
        return input["x"] * 2

    async with app.worker("w", slots=2):
        failing = await flow.run_no_wait({})
        with pytest.raises(RunFailedError, match="card declined"):
            await failing.result(timeout=15)
        plain = await double.run_no_wait({"x": 2})
        assert await plain.result(timeout=15) == 4
    failed = await run_detail(http, failing.run_id)
    assert failed["run"]["status"] == "failed"
    assert statuses(failed) == {
        "fetch": "completed",
        "charge": "failed",
        "receipt": "cancelled",
        "on_failure": "completed",  # listed once it ran, after the workflow's tasks
    }
    tasks = {task["name"]: task for task in failed["tasks"]}
    assert tasks["charge"]["error"] == {"type": "RuntimeError", "message": "card declined"}
    assert tasks["charge"]["output"] is None
    assert tasks["on_failure"]["parents"] == ["charge"]  # drawn after what failed
    assert tasks["on_failure"]["output"] == "cleaned"
    assert (await run_detail(http, plain.run_id))["tasks"] == []
