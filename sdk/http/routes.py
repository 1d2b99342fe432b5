"""The HTTP API and the dashboard's pages, as one aiohttp application.

Every ``/api`` route needs ``Authorization: Bearer <token>`` (see ``tether.operator.auth``). Errors
are JSON ``{"error": {"status", "message", "details"}}``; a refused request writes nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from tether.app import Tether
from tether.engine import codec
from tether.engine.subjects import check_event_key, check_run_id
from tether.errors import RunAlreadyFinishedError, RunNotFoundError
from tether.http import schemas
from tether.http.openapi import document
from tether.operator import views
from tether.operator.auth import Identity, TokenAuth
from tether.operator.decisions import (
    ActionRefusedError,
    Decision,
    cancel,
    push_decision,
    push_event,
)
from tether.projections.run_index import RunIndex

log = logging.getLogger("tether.api")

STATIC_DIR = Path(__file__).parent / "static"
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiContext:
    tether: Tether
    index: RunIndex
    auth: TokenAuth
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stream_interval_s: float = 0.2  # at most this often one live-update message per client


CONTEXT = web.AppKey("tether_api", ApiContext)
# Set by the authentication middleware for the request being handled (same asyncio task).
_caller: contextvars.ContextVar[Identity] = contextvars.ContextVar("tether_api_caller")


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, details: list[schemas.ErrorDetail] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json(body: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=body.model_dump_json(), status=status, content_type="application/json")


def _error(
    status: int, message: str, details: list[schemas.ErrorDetail] | None = None
) -> web.Response:
    body = schemas.ErrorBody(status=status, message=message, details=details or [])
    response = _json(schemas.Error(error=body), status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="tether"'
    return response


def _identity(request: web.Request) -> Identity:
    return _caller.get()


def _ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


# -- middleware ------------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.details)
    except ActionRefusedError as exc:
        return _error(exc.status, str(exc))
    except RunNotFoundError as exc:
        return _error(404, str(exc))
    except RunAlreadyFinishedError as exc:
        return _error(409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.text or exc.reason)
    except Exception:
        log.exception("request failed", extra={"path": request.path, "method": request.method})
        return _error(500, "internal error; see the server log")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        identity = _ctx(request).auth.identify(token.strip())
        if identity is None:
            log.warning("unknown API token", extra={"path": request.path})
            raise ApiError(401, "unknown bearer token")
        token_var = _caller.set(identity)
        try:
            return await handler(request)
        finally:
            _caller.reset(token_var)
    return await handler(request)


# -- request parsing -------------------------------------------------------------------------


async def _body(request: web.Request, model: type[M], *, required: bool = True) -> M:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(422, f"request body is empty; send a JSON object ({_shape(model)})")
        raw = b"{}"
    try:  # the body wraps event data one level down, so one more level is allowed
        data = codec.loads_object(raw, "request body", max_depth=codec.MAX_JSON_DEPTH + 1)
    except codec.InvalidJsonError as exc:
        raise ApiError(422, f"{exc} ({_shape(model)})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            schemas.ErrorDetail(field=".".join(str(p) for p in err["loc"]), message=err["msg"])
            for err in exc.errors(include_url=False, include_input=False)
        ]
        text = "; ".join(f"{d.field or 'body'}: {d.message}" for d in details)
        raise ApiError(422, f"invalid request body: {text}", details) from None


def _shape(model: type[BaseModel]) -> str:
    return "fields: " + ", ".join(model.model_fields)


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    try:
        return check_run_id(run_id)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


# -- handlers --------------------------------------------------------------------------------


def _limit(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(422, f"limit must be an integer, got {raw!r}") from None
    if not 1 <= limit <= maximum:
        raise ApiError(422, f"limit must be between 1 and {maximum}, got {limit}")
    return limit


async def list_runs(request: web.Request) -> web.Response:
    query = request.query
    statuses = [s.strip() for s in query.get("status", "").split(",") if s.strip()]
    unknown = [s for s in statuses if s not in schemas.STATUSES]
    if unknown:
        raise ApiError(
            422,
            f"unknown status {', '.join(unknown)}; use one or more of "
            f"{', '.join(schemas.STATUSES)}",
        )
    limit = _limit(request, 100, 1000)
    before = _before(request)
    task = query.get("task") or None
    index = _ctx(request).index
    if before is None:  # the runs held: open and recently finished
        runs = index.list_runs(statuses=statuses or None, task=task, limit=limit)
        next_before = index.next_before(runs, statuses or None)
    else:  # older finished runs, read from the run log where not held
        page = await index.list_finished(before, statuses=statuses or None, task=task, limit=limit)
        runs, next_before = page.runs, page.next_before
    response = _json(views.run_list(runs))
    if next_before is not None:
        response.headers[schemas.NEXT_BEFORE_HEADER] = str(next_before)
    return response


def _before(request: web.Request) -> int | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    try:
        before = int(raw)
    except ValueError:
        before = 0
    if before < 1:
        raise ApiError(
            422,
            f"before must be a run-log sequence (a positive integer, as the "
            f"{schemas.NEXT_BEFORE_HEADER} header of the previous page gives), got {raw!r}",
        )
    return before


async def get_run(request: web.Request) -> web.Response:
    return _json(await views.read_detail(_ctx(request).tether, _run_id(request)))


async def list_waits(request: web.Request) -> web.Response:
    limit = _limit(request, 500, 5000)
    waits = _ctx(request).index.list_waits(
        task=request.query.get("task") or None, key=request.query.get("key") or None
    )
    return _json(views.wait_list(waits, limit))


async def _decision(request: web.Request, decision: Decision) -> web.Response:
    run_id = _run_id(request)
    body = await _body(request, schemas.DecisionBody, required=False)
    made = await push_decision(
        _ctx(request).tether, run_id, decision, identity=_identity(request), reason=body.reason
    )
    return _json(made, 202)


async def approve(request: web.Request) -> web.Response:
    return await _decision(request, "approve")


async def reject(request: web.Request) -> web.Response:
    return await _decision(request, "reject")


async def cancel_run(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    body = await _body(request, schemas.CancelBody, required=False)
    app = _ctx(request).tether
    await cancel(app, run_id, identity=_identity(request), reason=body.reason)
    return _json(views.summary(await views.read_view(app, run_id)))


async def push(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    try:
        check_event_key(key)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    body = await _body(request, schemas.PushBody)
    try:
        result = await push_event(
            _ctx(request).tether, key, body.data, identity=_identity(request), event_id=body.id
        )
    except codec.InvalidJsonError as exc:  # too deep, integers beyond 64 bits
        raise ApiError(422, str(exc)) from None
    except ValueError as exc:  # over the size limit
        raise ApiError(413, str(exc)) from None
    pushed = schemas.PushResult(id=result.id, seq=result.seq, duplicate=result.duplicate, key=key)
    return _json(pushed, 202)


async def overview(request: web.Request) -> web.Response:
    index = _ctx(request).index
    counts = {"tasks": index.tasks(), "statuses": index.status_counts()}
    return _json(schemas.Overview.model_validate(counts))


async def me(request: web.Request) -> web.Response:
    caller = _identity(request)
    identity = schemas.Identity(name=caller.name, keys=list(caller.keys), cancel=caller.can_cancel)
    return _json(identity)


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a ``change`` message whenever runs change, a comment every 15 s."""
    ctx = _ctx(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    version = ctx.index.version
    try:
        await response.write(f"event: hello\ndata: {_dumps({'version': version})}\n\n".encode())
        while not ctx.stopping.is_set():
            current = await ctx.index.wait_changed(version, max_wait_s=15.0)
            if ctx.stopping.is_set():
                break
            if current == version:
                await response.write(b": keep-alive\n\n")
                continue
            runs = ctx.index.changed_runs(version)
            version = current
            data = {
                "version": current,
                "runs": runs if runs is not None and len(runs) <= 500 else None,
            }
            await response.write(f"event: change\ndata: {_dumps(data)}\n\n".encode())
            sent = time.monotonic()
            # coalesce bursts: one message per interval at most
            await asyncio.sleep(max(0.0, sent + ctx.stream_interval_s - time.monotonic()))
    except ConnectionResetError:  # the client went away
        pass
    return response


async def openapi(request: web.Request) -> web.Response:
    try:
        version = package_version("tether")
    except PackageNotFoundError:
        version = "0"
    return web.json_response(document(version), dumps=_dumps)


async def health(request: web.Request) -> web.Response:
    """200 while the API can reach NATS; 503 (with the connection's state) while it cannot,
    so a load balancer or supervisor sees an API that would answer every action with 5xx."""
    ctx = _ctx(request)
    nats_state = "closed" if ctx.index.connection_closed else ctx.tether.connection_state()
    ok = nats_state == "connected"
    body = schemas.Health(ok=ok, nats=nats_state, runs_cursor=ctx.index.cursor)
    return _json(body, 200 if ok else 503)


def _page(name: str) -> Handler:
    path = STATIC_DIR / name

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return handler


async def favicon(request: web.Request) -> web.StreamResponse:
    """The dashboard's icon (SVG), also where browsers look for it unasked."""
    return web.FileResponse(
        STATIC_DIR / "favicon.svg",
        headers={"Content-Type": "image/svg+xml", "Cache-Control": "max-age=86400"},
    )


async def _on_shutdown(app: web.Application) -> None:
    ctx = app[CONTEXT]
    ctx.stopping.set()
    ctx.index.wake()


def build_app(context: ApiContext, *, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=max_body_bytes)
    app[CONTEXT] = context
    app.on_shutdown.append(_on_shutdown)
    r = app.router
    r.add_get("/api/runs", list_runs)
    r.add_get("/api/runs/{run_id}", get_run)
    r.add_post("/api/runs/{run_id}/approve", approve)
    r.add_post("/api/runs/{run_id}/reject", reject)
    r.add_post("/api/runs/{run_id}/cancel", cancel_run)
    r.add_get("/api/waits", list_waits)
    r.add_post("/api/events/{key}", push)
    r.add_get("/api/overview", overview)
    r.add_get("/api/me", me)
    r.add_get("/api/stream", stream, allow_head=False)  # a HEAD must not get the stream
    r.add_get("/openapi.json", openapi)
    r.add_get("/healthz", health)
    r.add_get("/", _page("inbox.html"))
    r.add_get("/runs", _page("runs.html"))
    r.add_get("/runs/{run_id}", _page("run.html"))
    r.add_get("/favicon.ico", favicon)
    r.add_static("/static/", STATIC_DIR, append_version=False)
    return app
