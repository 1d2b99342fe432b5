"""The matcher's side of a match that cannot be published at once: the event is consumed, so
the resume command must be retried until the stream takes it, never dropped."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tether.engine import events as ev
from tether.engine.config import Settings
from tether.engine.tracing import Tracing
from tether.projections import matcher as matcher_module
from tether.projections.matcher import Matcher


@dataclass
class _Seq:
    stream: int


@dataclass
class _Meta:
    sequence: _Seq


@dataclass
class FakeMsg:
    subject: str
    data: bytes
    headers: dict[str, str] | None
    metadata: _Meta


class FlakyJetStream:
    """Refuses the first ``failures`` publishes, as a stream without a leader does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TimeoutError("no response from stream")
        self.published.append((subject, orjson.loads(data)))


def wait_started(run_id: str) -> bytes:
    spec = ev.ConditionSpec(
        id="c0.0",
        key="approval:decision",
        kind="event",
        event_key="approval:decision",
        expression=f"input.runId == '{run_id}'",
    )
    event = ev.WaitStarted(
        run_id=run_id,
        at=1.0,
        position=1,
        wait_id=f"{run_id}:1",
        task="t",
        event_key="approval:decision",
        expression=spec.expression,
        events_position=0,
        timeout_at=None,
        clauses=[[spec]],
    )
    return ev.encode(event)


async def test_resume_command_is_retried_until_published(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matcher_module, "PUBLISH_RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(matcher_module, "PUBLISH_RETRY_MAX_S", 0.01)
    settings = Settings(namespace="t")
    names = settings.names
    js = FlakyJetStream(failures=12)  # more than any fixed number of tries would allow
    conn = SimpleNamespace(settings=settings, js=js, reader=None, tracing=Tracing())
    matcher = Matcher(conn)  # type: ignore[arg-type]
    matcher.events_cursor = 0

    matcher._on_run_msg(
        FakeMsg(names.run_subject("r1", "wait_started"), wait_started("r1"), None, _Meta(_Seq(5)))
    )
    assert "r1:1" in matcher.waits
    approval = orjson.dumps({"runId": "r1", "decision": "approve"})
    matcher._on_event_msg(
        FakeMsg(names.event_subject("approval:decision"), approval, None, _Meta(_Seq(1)))
    )

    deadline = time.monotonic() + 10
    while not js.published:
        assert time.monotonic() < deadline, f"never published after {js.attempts} attempts"
        await asyncio.sleep(0.005)
    [(subject, command)] = js.published
    assert js.attempts == 13
    assert subject == names.command_subject("resume", "r1")
    assert command["wait_id"] == "r1:1" and command["payload"]["decision"] == "approve"
    assert "r1:1" not in matcher.waits  # resolved once, not reopened for a later event
    await matcher.stop()
