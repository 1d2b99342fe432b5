"""The HTTP API's request bodies and its OpenAPI 3 description (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tether.engine.state import TERMINAL_STATUSES

STATUSES = ("queued", "running", "waiting", *sorted(TERMINAL_STATUSES))
MAX_REASON = 2000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PushBody(_Body):
    """An event to push: ``data`` is the payload the waits' CEL sees as ``input``."""

    data: dict[str, Any]
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[\x21-\x7e]+$",
        description="idempotency key: the same id within 2 minutes stores nothing new",
    )


class DecisionBody(_Body):
    """Approve or reject; ``reason`` is passed to the task in the payload."""

    reason: str | None = Field(default=None, max_length=MAX_REASON)


class CancelBody(_Body):
    reason: str | None = Field(default=None, max_length=MAX_REASON)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ref("Error"), "missing or unknown bearer token"),
    "422": _json(_ref("Error"), "malformed request: the message says what to fix"),
}
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
}
_NUM = {"type": "number", "description": "epoch seconds"}
_NUM_OR_NULL = {"type": ["number", "null"], "description": "epoch seconds"}


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": _ref(model.__name__)}},
    }


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


def _decision(verb: str) -> dict[str, Any]:
    return _op(
        f"{verb.capitalize()} the run's open wait: pushes "
        f'{{"runId": <run>, "decision": "{verb}", "reason": ...}} to its event key',
        {
            "202": _json(_ref("Decision"), "decision event stored; the run resumes"),
            "403": _json(_ref("Error"), "the token may not push to the wait's event key"),
            "404": _json(_ref("Error"), "no such run"),
            "409": _json(
                _ref("Error"),
                "no open wait, a decision already pushed, or the wait's expression does not "
                "accept the decision payload (push a matching event instead)",
            ),
        },
        parameters=[_RUN_ID],
        requestBody=_body(DecisionBody, required=False),
    )


def document(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/runs": {
            "get": _op(
                "List runs, most recently updated first",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"runs": {"type": "array", "items": _ref("RunSummary")}},
                        },
                        "runs",
                    )
                },
                parameters=[
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": f"comma-separated, of: {', '.join(STATUSES)}",
                    },
                    {"name": "task", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                ],
            )
        },
        "/api/runs/{run_id}": {
            "get": _op(
                "A run with its full event timeline and its open wait",
                {
                    "200": _json(_ref("RunDetail"), "the run"),
                    "404": _json(_ref("Error"), "no such run"),
                },
                parameters=[_RUN_ID],
            )
        },
        "/api/runs/{run_id}/approve": {"post": _decision("approve")},
        "/api/runs/{run_id}/reject": {"post": _decision("reject")},
        "/api/runs/{run_id}/cancel": {
            "post": _op(
                "Cancel a queued, running or waiting run",
                {
                    "200": _json(_ref("RunSummary"), "the cancelled run"),
                    "403": _json(_ref("Error"), "the token may not cancel runs"),
                    "404": _json(_ref("Error"), "no such run"),
                    "409": _json(_ref("Error"), "the run has already ended"),
                },
                parameters=[_RUN_ID],
                requestBody=_body(CancelBody, required=False),
            )
        },
        "/api/waits": {
            "get": _op(
                "Open waits a person may decide, longest waiting first",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "waits": {"type": "array", "items": _ref("Wait")},
                                "total": {"type": "integer", "description": "before limit"},
                            },
                        },
                        "open waits",
                    )
                },
                parameters=[
                    {"name": "task", "in": "query", "schema": {"type": "string"}},
                    {"name": "key", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 5000,
                            "default": 500,
                        },
                    },
                ],
            )
        },
        "/api/events/{key}": {
            "post": _op(
                "Push an event to an event key (any open wait whose expression it satisfies "
                "resumes); the caller is recorded as metadata.approver",
                {
                    "202": _json(_ref("PushResult"), "event stored"),
                    "403": _json(_ref("Error"), "the token may not push to this key"),
                    "413": _json(_ref("Error"), "payload over the size limit"),
                },
                parameters=[
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                requestBody=_body(PushBody),
            )
        },
        "/api/overview": {
            "get": _op(
                "Task names and run counts by status, for filters",
                {"200": _json(_ref("Overview"), "overview")},
            )
        },
        "/api/me": {
            "get": _op("The caller's identity and rights", {"200": _json(_ref("Identity"), "me")})
        },
        "/api/stream": {
            "get": _op(
                "Server-sent events: `change` with {version, runs} whenever runs change",
                {
                    "200": {
                        "description": "text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "integer"},
                        "message": {"type": "string"},
                        "details": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
        },
        "RunSummary": {
            "type": "object",
            "properties": {
                "run_id": {"type": "string"},
                "task": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "attempt": {"type": "integer"},
                "created_at": _NUM,
                "updated_at": _NUM,
                "ended_at": _NUM_OR_NULL,
                "deadline": _NUM_OR_NULL,
                "error": {"type": ["object", "null"]},
                "waiting_on": {"type": ["string", "null"]},
                "last_events": {"type": "array", "items": _ref("EventBrief")},
            },
        },
        "EventBrief": {
            "type": "object",
            "properties": {
                "seq": {"type": "integer"},
                "type": {"type": "string"},
                "at": _NUM,
                "note": {"type": "string"},
            },
        },
        "RunEvent": {
            "type": "object",
            "properties": {
                "seq": {"type": "integer"},
                "type": {"type": "string"},
                "at": _NUM,
                "note": {"type": "string"},
                "data": {
                    "type": "object",
                    "description": "the stored event; run.wait_satisfied.v1 carries "
                    "payload and metadata.approver",
                },
            },
        },
        "RunDetail": {
            "type": "object",
            "properties": {
                "run": {
                    "allOf": [
                        _ref("RunSummary"),
                        {
                            "type": "object",
                            "properties": {
                                "input": {},
                                "output": {},
                                "metadata": {"type": "object"},
                            },
                        },
                    ]
                },
                "wait": {"oneOf": [_ref("Wait"), {"type": "null"}]},
                "events": {"type": "array", "items": _ref("RunEvent")},
            },
        },
        "Wait": {
            "type": "object",
            "properties": {
                "run_id": {"type": "string"},
                "task": {"type": "string"},
                "wait_id": {"type": "string"},
                "started_seq": {"type": "integer"},
                "event_key": {"type": "string"},
                "expression": {"type": ["string", "null"]},
                "conventional": {
                    "type": "boolean",
                    "description": "the expression is input.runId == '<run>': approve and "
                    "reject match it; otherwise push a matching event",
                },
                "other_conditions": {"type": "integer"},
                "label": {"type": ["string", "null"]},
                "since": _NUM,
                "deadline": _NUM_OR_NULL,
                "run_deadline": _NUM,
                "description": {"type": ["string", "null"]},
                "details": {"type": ["object", "null"]},
                "proposed_action": {
                    "type": ["object", "null"],
                    "description": "{source: wait, description, details} or "
                    "{source: step, step, output}",
                },
            },
        },
        "PushResult": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "seq": {"type": "integer"},
                "duplicate": {"type": "boolean"},
                "key": {"type": "string"},
            },
        },
        "Decision": {
            "type": "object",
            "properties": {
                "run_id": {"type": "string"},
                "wait_id": {"type": "string"},
                "event_key": {"type": "string"},
                "decision": {"type": "string", "enum": ["approve", "reject"]},
                "payload": {"type": "object"},
                "approver": {"type": "string"},
                "event": {"type": "object"},
            },
        },
        "Overview": {
            "type": "object",
            "properties": {
                "tasks": {"type": "array", "items": {"type": "string"}},
                "statuses": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "Identity": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "keys": {"type": "array", "items": {"type": "string"}},
                "cancel": {"type": "boolean"},
            },
        },
    }
    for model in (PushBody, DecisionBody, CancelBody):
        schemas[model.__name__] = model.model_json_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tether approval API",
            "version": version,
            "description": "Runs, open waits and decisions of Tether durable tasks. Every "
            "/api route needs `Authorization: Bearer <token>`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
