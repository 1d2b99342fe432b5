"""The OpenAPI 3.1 description of the HTTP API (served at ``/openapi.json``): the schemas are
generated from the models in ``tether.http.schemas``, this module adds the paths."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from tether.engine.subjects import MAX_EVENT_KEY_LENGTH
from tether.http import schemas

REF = "#/components/schemas/{model}"
REQUESTS: tuple[type[BaseModel], ...] = (schemas.PushBody, schemas.DecisionBody, schemas.CancelBody)
RESPONSES: tuple[type[BaseModel], ...] = (
    schemas.Error,
    schemas.Health,
    schemas.RunList,
    schemas.RunSummary,
    schemas.RunDetail,
    schemas.WaitList,
    schemas.Decision,
    schemas.PushResult,
    schemas.Overview,
    schemas.Identity,
)


class _Generator(GenerateJsonSchema):
    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        # an answer carries every field of its model, defaulted ones included
        return self.mode == "serialization" or super().field_is_required(field, total)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "Run Id" above run_id says nothing the name does not


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


# What each status means when an operation does not say more.
_STATUS = {
    401: "no or unknown bearer token",
    404: "no such run",
    413: "body over TETHER_MAX_EVENT_BYTES",
    422: "malformed request: the message says what to fix",
    500: "internal error; see the server log",
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _limit(default: int, maximum: int) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}
    return _query("limit", "how many to return at most", schema)


_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "letters, digits, _ and -, at most 128 characters",
    "schema": {"type": "string"},
}
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "letters, digits and _ - : . (dot-separated tokens)",
    "schema": {"type": "string", "maxLength": MAX_EVENT_KEY_LENGTH},
}


def _op(
    summary: str,
    ok: dict[int, dict[str, Any]],
    errors: dict[int, str | None],
    *,
    parameters: tuple[dict[str, Any], ...] = (),
    body: type[BaseModel] | None = None,
    body_required: bool = False,
    public: bool = False,
) -> dict[str, Any]:
    """One operation. ``errors`` maps each error status to its meaning (None: the usual one);
    every /api operation may also answer 401, and every operation 500."""
    codes = {**errors, 500: None} if public else {401: None, **errors, 500: None}
    responses = {str(code): answer for code, answer in ok.items()}
    for code, meaning in sorted(codes.items()):
        responses[str(code)] = _json(schemas.Error, meaning or _STATUS[code])
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        content = {"application/json": {"schema": _ref(body)}}
        op["requestBody"] = {"required": body_required, "content": content}
    if public:
        op["security"] = []
    return op


def _runs_page() -> dict[str, Any]:
    answer = _json(schemas.RunList, "runs")
    answer["headers"] = {
        schemas.NEXT_BEFORE_HEADER: {
            "description": "the before of the next page of older finished runs; absent when "
            "there is none (or the status filter admits no finished run)",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return answer


def _decision(verb: str) -> dict[str, Any]:
    return _op(
        f"{verb.capitalize()} the run's open wait: pushes "
        f'{{"runId": <run>, "decision": "{verb}", "reason": ...}} to its event key',
        {202: _json(schemas.Decision, "decision event stored; the run resumes")},
        {
            403: "the token may not push to the wait's event key",
            404: None,
            409: "no open wait, a decision already pushed, or the wait's expression does not "
            "accept the decision payload (push a matching event instead)",
            413: None,
            422: None,
        },
        parameters=(_RUN_ID,),
        body=schemas.DecisionBody,
    )


def _paths() -> dict[str, dict[str, Any]]:
    statuses = ", ".join(schemas.STATUSES)
    return {
        "/api/runs": {
            "get": _op(
                "List runs: without before, the open runs and the most recently finished "
                "ones, most recently updated first; with before, finished runs whose final "
                "event is stored before that run-log sequence, most recently finished first",
                {200: _runs_page()},
                {422: None},
                parameters=(
                    _query("status", f"comma-separated, of: {statuses}"),
                    _query("task", "only runs of this task"),
                    _limit(100, 1000),
                    _query(
                        "before",
                        "page through older finished runs: a run-log sequence, as the "
                        f"{schemas.NEXT_BEFORE_HEADER} header of the previous page gives "
                        "(any number past the end starts from the most recently finished)",
                        {"type": "integer", "minimum": 1},
                    ),
                ),
            )
        },
        "/api/runs/{run_id}": {
            "get": _op(
                "A run with its open wait and its full event timeline",
                {200: _json(schemas.RunDetail, "the run")},
                {404: None, 422: None},
                parameters=(_RUN_ID,),
            )
        },
        "/api/runs/{run_id}/approve": {"post": _decision("approve")},
        "/api/runs/{run_id}/reject": {"post": _decision("reject")},
        "/api/runs/{run_id}/cancel": {
            "post": _op(
                "Cancel a queued, running or waiting run (the token needs cancel)",
                {200: _json(schemas.RunSummary, "the cancelled run")},
                {
                    403: "the token may not cancel runs",
                    404: None,
                    409: "the run has already ended",
                    413: None,
                    422: None,
                },
                parameters=(_RUN_ID,),
                body=schemas.CancelBody,
            )
        },
        "/api/waits": {
            "get": _op(
                "Open waits a person may decide, longest waiting first",
                {200: _json(schemas.WaitList, "open waits")},
                {422: None},
                parameters=(
                    _query("task", "only waits of runs of this task"),
                    _query("key", "only waits on this event key"),
                    _limit(500, 5000),
                ),
            )
        },
        "/api/events/{key}": {
            "post": _op(
                "Push an event to an event key: every open wait whose expression it "
                "satisfies resumes; the caller is recorded as metadata.approver",
                {202: _json(schemas.PushResult, "event stored")},
                {403: "the token may not push to this key", 413: None, 422: None},
                parameters=(_KEY,),
                body=schemas.PushBody,
                body_required=True,
            )
        },
        "/api/overview": {
            "get": _op(
                "Task names and run counts by status, for filters",
                {200: _json(schemas.Overview, "overview")},
                {},
            )
        },
        "/api/me": {
            "get": _op("The caller's identity and rights", {200: _json(schemas.Identity, "me")}, {})
        },
        "/api/stream": {
            "get": _op(
                "Server-sent events: `hello` with {version} first, then `change` with "
                "{version, runs} whenever runs change (runs null: reload everything), and a "
                "comment every 15 s",
                {200: {"description": "the stream", "content": {"text/event-stream": {}}}},
                {},
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                {
                    200: {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
                {},
                public=True,
            )
        },
        "/healthz": {
            "get": _op(
                "Health, for load balancers and supervisors",
                {
                    200: _json(schemas.Health, "the API can reach NATS"),
                    503: _json(schemas.Health, "NATS is unreachable: every action would fail"),
                },
                {},
                public=True,
            )
        },
    }


@functools.cache
def document(version: str) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in REQUESTS),
        *((model, "serialization") for model in RESPONSES),
    ]
    _, defs = models_json_schema(models, ref_template=REF, schema_generator=_Generator)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tether approval API",
            "version": version,
            "description": "Runs, open waits and decisions of Tether durable tasks. Every "
            "/api route needs `Authorization: Bearer <token>`. Times are epoch seconds.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": defs["$defs"],
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
