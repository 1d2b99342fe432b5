"""About 300 fuzzed requests against ``tether serve --http``: random methods, paths (long,
odd and unicode event keys and run ids), bodies (deep JSON, not JSON, wrong types, huge
values) and headers (missing, wrong and oversized tokens). None may answer 5xx or drop the
connection, and afterwards ``/healthz`` and a normal approval still work.

The requests come from ``random.Random(SEED)``: a failure names the request, and the same
seed sends the same requests again (``TETHER_CHAOS_SEED`` picks another set).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.chaos.report import approved, emit, settle, tally
from tests.helpers import wait_for_status
from tests.integration.procs import APPROVAL_KEY, define_tasks, trigger_approvals
from tether import Tether
from tether.engine.config import Settings
from tether.operator.auth import TokenAuth
from tether.serve import TetherServer

pytestmark = pytest.mark.chaos

# Fixed, so that a failure reproduces; TETHER_CHAOS_SEED explores other request sets.
SEED = int(os.environ.get("TETHER_CHAOS_SEED", "20240608"))
REQUESTS = 300
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = TokenAuth.parse(
    {TOKEN: {"name": "fuzzer", "keys": ["approval:*", "fuzz:*"], "cancel": True}},
    source="chaos",
)
METHODS = ["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
ODD = ["", "x" * 300, "é", "ü" * 40, "..", "%00", "a.b", "*", ">", "a b", "😀", "-" * 129]


@dataclass
class Sent:
    method: str
    path: str
    body: bytes | None
    status: int | None  # None: no HTTP answer
    answer: str

    def describe(self) -> str:
        body = "" if self.body is None else f" body {self.body[:60]!r}"
        return f"{self.method} {self.path[:100]}{body} -> {self.status} {self.answer[:160]}"


ROUTES = [
    ("GET", "/"), ("GET", "/runs"), ("GET", "/runs/{run}"), ("GET", "/healthz"),
    ("GET", "/openapi.json"), ("GET", "/static/app.js"), ("GET", "/static/../pyproject.toml"),
    ("GET", "/static/%2e%2e/%2e%2e/etc/passwd"), ("GET", "/api/me"), ("GET", "/api/overview"),
    ("GET", "/api/waits"), ("GET", "/api/runs"), ("GET", "/api/runs/{run}"),
    ("GET", "/api/stream"), ("POST", "/api/runs/{run}/approve"),
    ("POST", "/api/runs/{run}/reject"), ("POST", "/api/runs/{run}/cancel"),
    ("POST", "/api/runs/{run}/bogus"), ("POST", "/api/events/{key}"),
    ("POST", "/api/events/{key}"), ("POST", "/api/events/{key}"), ("GET", "/api/" + "x" * 2000),
    ("GET", "/nowhere"),
]  # fmt: skip


def fuzz_target(rng: random.Random, decoy: str) -> tuple[str, str]:
    """A route of the API (a quarter of the time with a random method), with odd run ids,
    event keys and query strings filled in."""
    method, template = rng.choice(ROUTES)
    if rng.random() < 0.25:
        method = rng.choice(METHODS)
    run_id = rng.choice([decoy, decoy, uuid.uuid4().hex, *ODD])
    key = rng.choice([APPROVAL_KEY, APPROVAL_KEY, "fuzz:x", "k" * 300, "k" * 5000, *ODD])
    query = rng.choice(
        ["", "", "", "?limit=-1", "?limit=abc", "?limit=" + "9" * 30, "?status=bogus",
         "?status=waiting,,completed", "?task=" + "t" * 500, "?key=*", "?x=%ff"]
    )  # fmt: skip
    path = template.replace("{run}", run_id).replace("{key}", key)
    return method, quote(path, safe="/%.*>:-_") + query


def raw(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def fuzz_body(rng: random.Random, decoy: str) -> bytes | None:
    deep = rng.choice([50, 65, 300, 5000])
    nested = '{"a":' * deep + "1" + "}" * deep
    return rng.choice(
        [
            None, None, b"{}", b"", b"not json", b"\xff\xfe\x00", b"null", b"[]", b'"s"',
            b"1e999", b"{",
            f'{{"data": {nested}}}'.encode(), f'{{"reason": {nested}}}'.encode(),
            b'{"reason": 5}', b'{"reason": null}', raw({"reason": "r" * 3000}),
            b'{"reason": "\\ud800"}', b'{"data": [1]}', b'{"data": "text"}', b'{"data": null}',
            b'{"data": {"n": 1180591620717411303424}}', b'{"data": {"n": 1e400}}',
            raw({"data": {"runId": decoy, "decision": "approve"}, "id": 5}),
            raw({"data": {"x": "😀" * 1000}}), raw({"data": {}, "id": "i" * 10000}),
            b'{"data": {"runId": "x"}, "unknown": 1}', b'{"data": {"a": "b"}}',
            b"x" * 400_000,
        ]
    )  # fmt: skip


def fuzz_headers(rng: random.Random) -> dict[str, str]:
    auth = rng.choice(
        [*[f"Bearer {TOKEN}"] * 4, "", "Bearer", "Bearer wrong-token-000000000",
         "Basic YWxpY2U6cHc=", "Bearer " + "x" * 8000, f"bearer  {TOKEN} "]
    )  # fmt: skip
    headers = {"Authorization": auth} if auth else {}
    content_type = rng.choice(["application/json", "text/plain", "", "application/json; x=ü"])
    if content_type:
        headers["Content-Type"] = content_type
    if rng.random() < 0.2:
        headers["X-Fuzz"] = "ÿ" * rng.choice([10, 4000])
    return headers


async def send(http: aiohttp.ClientSession, base: str, rng: random.Random, decoy: str) -> Sent:
    method, path = fuzz_target(rng, decoy)
    body, headers = fuzz_body(rng, decoy), fuzz_headers(rng)
    try:
        async with http.request(
            method, URL(base + path, encoded=True), data=body, headers=headers
        ) as response:
            # /api/stream answers 200 and stays open: its status is all there is to check
            answer = "" if "stream" in path else await response.text(errors="replace")
            return Sent(method, path, body, response.status, answer)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sent(method, path, body, None, repr(exc))


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[TetherServer]:
    srv = TetherServer(settings, http="127.0.0.1:0", auth=AUTH)
    await srv.start()
    yield srv
    await srv.stop()


async def test_http_fuzz_has_no_server_errors(
    app: Tether, api: TetherServer, tmp_path: Path
) -> None:
    assert api.api is not None
    base = api.api.url
    tasks = define_tasks(app)
    rng = random.Random(SEED)
    timeout = aiohttp.ClientTimeout(total=15)
    async with app.worker("w", tasks=[tasks["approval"]], slots=4):
        # the decoy may be approved, rejected or cancelled by the fuzz; the target is not
        # named by any fuzzed request
        decoy, target = await trigger_approvals(tasks["approval"], 2, tmp_path)
        for ref in (decoy, target):
            await wait_for_status(app, ref.run_id, "waiting")
        async with aiohttp.ClientSession(timeout=timeout) as http:
            sent = [await send(http, base, rng, decoy.run_id) for _ in range(REQUESTS)]
            async with http.get(f"{base}/healthz") as response:
                healthy = response.status
            async with http.post(
                f"{base}/api/runs/{target.run_id}/approve",
                json={"reason": "after the fuzz"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response:
                approval = (response.status, await response.text())
        await settle(app, [target.run_id], within=30)
        errors = [s for s in sent if s.status is None or s.status >= 500]
        statuses = dict(sorted(Counter(s.status or 0 for s in sent).items()))
        row = await tally(
            app,
            "http fuzz",
            [target.run_id],
            approved,
            http_5xx=sum(1 for s in sent if s.status is not None and s.status >= 500),
            note=f"{REQUESTS} requests (seed {SEED}), statuses {statuses}, "
            f"{sum(s.status is None for s in sent)} without an answer",
        )
        row.problems += [s.describe() for s in errors]
    emit(row)
    assert not errors, row.explain()
    assert healthy == 200
    assert approval[0] == 202, approval
    assert row.clean, row.explain()
