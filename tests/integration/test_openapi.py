"""The OpenAPI document: valid OpenAPI 3.1 by openapi-spec-validator, generated from the
models the handlers answer with, covering every route; and the check that holds every answer
of the HTTP tests to it (``ResponseCheck`` in conftest) catches an answer that does not fit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from tests.integration.conftest import ResponseCheck, served_api_routes
from tether.http.openapi import document
from tether.serve import TetherServer

WAIT = {
    "run_id": "r1",
    "task": "payment-approval",
    "wait_id": "w1",
    "started_seq": 4,
    "event_key": "approval:decision",
    "expression": "input.runId == 'r1'",
    "conventional": True,
    "other_conditions": 0,
    "label": None,
    "since": 1.0,
    "deadline": None,
    "run_deadline": 2.0,
    "description": None,
    "details": None,
    "proposed_action": {"source": "step", "step": "propose", "output": {"pay": 1}},
}


async def test_the_served_document_is_valid_openapi_3_1_and_covers_every_route(
    api_server: TetherServer, http: aiohttp.ClientSession
) -> None:
    async with http.get("/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    validate(doc)  # raises OpenAPIValidationError naming what is wrong
    assert doc["openapi"] == "3.1.0"
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = served_api_routes(api_server) | {("/healthz", "get"), ("/openapi.json", "get")}
    assert documented == served
    schemas = doc["components"]["schemas"]
    # generated from the models: descriptions and the stored events' own schemas included
    assert schemas["Wait"]["properties"]["conventional"]["description"]
    assert "run.wait_satisfied.v1" in json.dumps(schemas["RunEvent"]["properties"]["data"])
    assert schemas["WaitSatisfied"]["properties"]["metadata"]["type"] == "object"
    for public in ("/healthz", "/openapi.json"):
        assert doc["paths"][public]["get"]["security"] == []


def test_the_check_names_the_path_the_status_and_the_schema_error() -> None:
    check = ResponseCheck(document("0"))
    json_type = "application/json; charset=utf-8"

    def problem(method: str, path: str, status: int, body: Any, media: str = json_type) -> str:
        found = check.problem(method, path, status, media, json.dumps(body).encode())
        assert found is not None
        return found

    good = {"waits": [WAIT], "total": 1}
    assert check.problem("GET", "/api/waits", 200, json_type, json.dumps(good).encode()) is None
    wrong = {"waits": [{**WAIT, "since": "yesterday"}], "total": 1}
    found = problem("GET", "/api/waits", 200, wrong)
    assert found.startswith("GET /api/waits -> 200: 'yesterday' is not of type 'number'")
    assert "$.waits[0].since" in found
    missing = {"waits": [{k: v for k, v in WAIT.items() if k != "task"}], "total": 1}
    assert "'task' is a required property" in problem("GET", "/api/waits", 200, missing)
    extra = {"name": "a", "keys": [], "cancel": False, "admin": True}
    assert "Additional properties are not allowed" in problem("GET", "/api/me", 200, extra)
    error = {"error": {"status": 404, "message": "no run", "details": []}}
    assert "status 404 is not documented" in problem("GET", "/api/me", 404, error)
    assert problem("GET", "/api/nowhere", 404, error).endswith("the document has no such path")
    assert "DELETE is not documented" in problem("DELETE", "/api/runs/r1", 200, {})
    refused = {"error": {"status": 405, "message": "method not allowed", "details": []}}
    assert (
        check.problem("DELETE", "/api/runs/r1", 405, json_type, json.dumps(refused).encode())
        is None
    )
    assert "content type 'text/html'" in problem("GET", "/api/me", 200, {}, "text/html")


@pytest.fixture
async def misfit_server() -> AsyncIterator[tuple[str, ResponseCheck]]:
    """A stand-in API whose /api/me answers with a body its document does not allow."""

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"name": "alice", "keys": "approval:*", "cancel": False})

    check = ResponseCheck(document("0"))
    app = web.Application(middlewares=[check.middleware])
    app.router.add_get("/api/me", me)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", check
    await runner.cleanup()


async def test_an_answer_that_does_not_fit_reaches_the_test_as_a_500_naming_it(
    misfit_server: tuple[str, ResponseCheck],
) -> None:
    url, check = misfit_server
    async with aiohttp.ClientSession(url) as http, http.get("/api/me") as response:
        assert response.status == 500
        message = (await response.json())["error"]["message"]
    assert message.startswith("the answer does not fit the OpenAPI document: GET /api/me -> 200")
    assert "'approval:*' is not of type 'array' at $.keys" in message
    assert check.problems == [
        message.removeprefix("the answer does not fit the OpenAPI document: ")
    ]
