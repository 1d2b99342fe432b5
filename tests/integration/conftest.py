"""Fixtures of the HTTP API tests: ``tether serve`` with the API on a free port, tokens of
three kinds, and an HTTP session on it.

Every answer of that API is checked against its OpenAPI document as it leaves the server
(``ResponseCheck``): one that does not fit is replaced by a 500 naming the misfit, and the
test fails at teardown with the list of them, whichever client sent the request.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

import tether.http.server
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.http.openapi import document
from tether.http.routes import CONTEXT, ApiContext, build_app
from tether.operator.auth import TokenAuth
from tether.serve import TetherServer

ALICE = "alice-token-0123456789"  # may decide approval:* and cancel
BOB = "bob-token-0123456789ab"  # may only push payments:*
READER = "reader-token-012345678"  # read-only

AUTH = TokenAuth.parse(
    {
        ALICE: {"name": "alice", "keys": ["approval:*"], "cancel": True},
        BOB: {"name": "bob", "keys": ["payments:*"]},
        READER: {"name": "auditor"},
    },
    source="test",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class ResponseCheck:
    """Checks answers against an OpenAPI 3.1 document: the status must be documented for the
    path and method, the content type for the status, and a JSON body must fit its schema."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.problems: list[str] = []
        self._paths = [(_template_pattern(template), template) for template in doc["paths"]]

    def problem(
        self, method: str, path: str, status: int, content_type: str, body: bytes | None
    ) -> str | None:
        """What does not fit, naming the request, the status and the schema error; or None."""
        where = f"{method} {path} -> {status}"
        template = next((t for pattern, t in self._paths if pattern.fullmatch(path)), None)
        if template is None:
            return f"{where}: the document has no such path"
        operations = self.doc["paths"][template]
        operation = operations.get(method.lower())
        if operation is None and method == "HEAD" and status != 405:
            operation = operations.get("get")  # aiohttp answers HEAD wherever it serves GET
        if operation is None:
            # a method the path does not have: the answer must be the 405 error
            if status != 405:
                return f"{where}: {method} is not documented for {template}"
            return self._misfit(where, {"$ref": "#/components/schemas/Error"}, body)
        answer = operation["responses"].get(str(status))
        if answer is None:
            documented = ", ".join(operation["responses"])
            return f"{where}: status {status} is not documented for {template} ({documented})"
        media = content_type.split(";")[0].strip()
        content = answer.get("content", {})
        if media not in content:
            return f"{where}: content type {media!r} is not documented ({', '.join(content)})"
        schema = content[media].get("schema")
        return None if schema is None else self._misfit(where, schema, body)

    def _misfit(self, where: str, schema: dict[str, Any], body: bytes | None) -> str | None:
        try:
            value = json.loads(body or b"")
        except ValueError as exc:
            return f"{where}: the body is not JSON ({exc}): {body!r:.200}"
        # the schema's references point into the document's components
        validator = Draft202012Validator({**schema, "components": self.doc["components"]})
        error = best_match(validator.iter_errors(value))
        if error is None:
            return None
        return f"{where}: {error.message} at {error.json_path} (schema {schema})"

    def wrap(self, build: Callable[..., web.Application]) -> Callable[..., web.Application]:
        """``build_app`` with this check as the outermost middleware, so that it sees every
        answer, the error middleware's included."""

        def checked(context: ApiContext, *, max_body_bytes: int) -> web.Application:
            app = build(context, max_body_bytes=max_body_bytes)
            app.middlewares.insert(0, self.middleware)
            return app

        return checked

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not request.path.startswith(("/api/", "/healthz", "/openapi.json")):
            return response
        body = response.body if isinstance(response, web.Response) else None
        problem = self.problem(
            request.method,
            request.path,
            response.status,
            response.content_type,
            body if isinstance(body, bytes) else None,
        )
        if problem is None:
            return response
        self.problems.append(problem)
        if response.prepared:  # a stream already under way: the teardown reports it
            return response
        message = f"the answer does not fit the OpenAPI document: {problem}"
        error = {"error": {"status": 500, "message": message, "details": []}}
        return web.json_response(error, status=500)


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def served_api_routes(api_server: TetherServer) -> set[tuple[str, str]]:
    """The (path template, method) of every /api route the running server has."""
    assert api_server.api is not None and api_server.api._runner is not None
    app = api_server.api._runner.app
    assert isinstance(app, web.Application) and CONTEXT in app
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if path and path.startswith("/api/") and route.method != "HEAD":
            routes.add((path, route.method.lower()))
    return routes


@pytest.fixture
async def api_server(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TetherServer]:
    check = ResponseCheck(document("0"))
    monkeypatch.setattr(tether.http.server, "build_app", check.wrap(build_app))
    srv = TetherServer(settings, http="127.0.0.1:0", auth=AUTH)
    await srv.start()
    yield srv
    await srv.stop()
    if check.problems:
        pytest.fail("answers that do not fit the OpenAPI document:\n" + "\n".join(check.problems))


@pytest.fixture
async def http(api_server: TetherServer) -> AsyncIterator[aiohttp.ClientSession]:
    assert api_server.api is not None
    async with aiohttp.ClientSession(api_server.api.url) as session:
        yield session


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[Connection]:
    """An engine's connection to the test's namespace, streams provisioned."""
    conn = await Connection.open(settings, name="test-conn", manage_streams=True)
    try:
        yield conn
    finally:
        await conn.close()
