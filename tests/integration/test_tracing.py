"""OpenTelemetry traces across the wait, with an in-memory exporter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import nats
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, TaskContext, Tether, UserEventCondition, WaitTimeoutError
from tether.engine.config import Settings
from tether.serve import TetherServer


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(
    settings: Settings, exporter: InMemorySpanExporter
) -> AsyncIterator[tuple[Tether, TetherServer]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Tether(settings=settings, tracer_provider=provider)
    server = TetherServer(settings, tracer_provider=provider)
    await server.start()
    yield app, server
    await server.stop()
    await app.close()


def define(app: Tether) -> Any:
    @app.durable_task(name="payment")
    async def payment(input: Any, ctx: DurableContext) -> str:
        await ctx.step("propose", lambda: {"amount": 5})
        decision = await ctx.wait_for_event("approval:decision", f"input.runId == '{ctx.run_id}'")
        return str(decision["decision"])

    return payment


def named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def finished(
    exporter: InMemorySpanExporter, prefix: str, count: int = 1
) -> list[ReadableSpan]:
    async def enough() -> list[ReadableSpan] | None:
        spans = named(list(exporter.get_finished_spans()), prefix)
        return spans if len(spans) >= count else None

    return await wait_until(enough, message=f"{count} span(s) named {prefix!r}")


async def test_approval_flow_is_one_trace(
    traced: tuple[Tether, TetherServer], exporter: InMemorySpanExporter, namespace: str
) -> None:
    app, _ = traced
    payment = define(app)
    async with app.worker("payments", slots=2):
        ref = await payment.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push(
            "approval:decision",
            {"runId": ref.run_id, "decision": "approve"},
            metadata={"approver": "alice"},
        )
        assert await ref.result(timeout=15) == "approve"
        await finished(exporter, "run payment")
    spans = list(exporter.get_finished_spans())

    [trigger] = named(spans, f"publish {namespace}.runs.")
    assert trigger.kind == SpanKind.PRODUCER
    assert trigger.attributes["messaging.system"] == "nats"
    assert trigger.attributes["messaging.destination.template"] == (
        f"{namespace}.runs.{{run_id}}.requested.{{partition}}"
    )
    assert trigger.attributes["tether.run_id"] == ref.run_id
    trace_id = trigger.context.trace_id

    attempts = named(spans, "process payment")
    assert len(attempts) == 2
    assert [a.attributes["tether.attempt"] for a in attempts] == [1, 2]
    for attempt in attempts:  # the resumed attempt joins the trigger's trace
        assert attempt.context.trace_id == trace_id
        assert attempt.parent is not None and attempt.parent.span_id == trigger.context.span_id
        assert attempt.kind == SpanKind.CONSUMER

    [step] = named(spans, "step propose")  # recorded once, not on replay
    assert step.parent is not None and step.parent.span_id == attempts[0].context.span_id

    [push] = named(spans, f"publish {namespace}.events.")
    assert push.kind == SpanKind.PRODUCER
    assert push.attributes["tether.event_key"] == "approval:decision"
    assert push.attributes["tether.approver"] == "alice"
    assert push.context.trace_id != trace_id  # pushed from elsewhere: linked, not parented

    [wait] = named(spans, "wait approval:decision")
    assert wait.context.trace_id == trace_id
    assert wait.parent is not None and wait.parent.span_id == attempts[0].context.span_id
    assert wait.attributes["tether.wait.outcome"] == "satisfied"
    assert wait.attributes["tether.expression"] == f"input.runId == '{ref.run_id}'"
    assert [link.context.span_id for link in wait.links] == [push.context.span_id]
    assert wait.end_time is not None and wait.start_time is not None
    assert wait.end_time > wait.start_time

    [match] = named(spans, f"process {namespace}.events.")
    assert match.context.trace_id == trace_id
    assert [link.context.span_id for link in match.links] == [push.context.span_id]
    [command] = named(spans, f"process {namespace}.cmd.{{partition}}.resume")
    assert command.parent is not None and command.parent.span_id == match.context.span_id

    [run] = named(spans, "run payment")
    assert run.context.trace_id == trace_id
    assert run.attributes["tether.status"] == "completed"


async def test_cancelled_run_ends_its_trace(
    traced: tuple[Tether, TetherServer], exporter: InMemorySpanExporter, namespace: str
) -> None:
    app, _ = traced
    payment = define(app)
    async with app.worker("payments", slots=1):
        ref = await payment.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.runs.cancel(ref.run_id, reason="withdrawn")
    [run] = await finished(exporter, "run payment")
    [trigger] = named(list(exporter.get_finished_spans()), f"publish {namespace}.runs.")
    assert run.context.trace_id == trigger.context.trace_id
    assert run.parent is not None and run.parent.span_id == trigger.context.span_id
    assert run.attributes["tether.status"] == "cancelled"
    assert run.attributes["tether.run_id"] == ref.run_id
    info = await app.runs.get(ref.run_id)
    assert info.ended_at is not None
    assert run.end_time == int(info.ended_at * 1e9)  # ends when the cancel was recorded


async def test_traceparent_from_plain_nats_client_links_into_run(
    traced: tuple[Tether, TetherServer],
    exporter: InMemorySpanExporter,
    namespace: str,
    nats_url: str,
) -> None:
    app, _ = traced
    payment = define(app)
    foreign_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    foreign_span = "00f067aa0ba902b7"
    async with app.worker("payments", slots=1):
        ref = await payment.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        nc = await nats.connect(nats_url)
        await nc.jetstream().publish(
            f"{namespace}.events.approval:decision",
            json.dumps({"runId": ref.run_id, "decision": "reject"}).encode(),
            headers={"traceparent": f"00-{foreign_trace}-{foreign_span}-01"},
        )
        await nc.close()
        assert await ref.result(timeout=15) == "reject"
        [wait] = await finished(exporter, "wait approval:decision")
    [link] = wait.links
    assert format(link.context.trace_id, "032x") == foreign_trace
    assert format(link.context.span_id, "016x") == foreign_span
    [match] = named(list(exporter.get_finished_spans()), f"process {namespace}.events.")
    assert format(match.links[0].context.trace_id, "032x") == foreign_trace


async def test_no_context_stored_when_tracing_is_off(app: Tether, server: TetherServer) -> None:
    payment = define(app)  # the default app: the global (no-op) provider
    async with app.worker("payments", slots=1):
        ref = await payment.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push("approval:decision", {"runId": ref.run_id, "decision": "approve"})
        assert await ref.result(timeout=15) == "approve"
    conn = await app.connection()
    assert not conn.tracing.enabled
    stored = await conn.store.read_raw(ref.run_id)
    assert stored and all("traceparent" not in headers for _, _, headers in stored)


async def test_fired_timeout_appears_in_the_run_trace(
    traced: tuple[Tether, TetherServer], exporter: InMemorySpanExporter, namespace: str
) -> None:
    app, _ = traced

    @app.durable_task(name="expiring")
    async def expiring(input: Any, ctx: DurableContext) -> str:
        try:
            await ctx.wait_for_event("approval:decision", timeout=timedelta(milliseconds=300))
        except WaitTimeoutError:
            return "expired"
        return "decided"

    async with app.worker("w", slots=1):
        ref = await expiring.run_no_wait({})
        assert await ref.result(timeout=15) == "expired"
        [fired] = await finished(exporter, f"publish {namespace}.cmd.{{partition}}.expire_wait")
        [wait] = await finished(exporter, "wait approval:decision")
    [trigger] = named(list(exporter.get_finished_spans()), f"publish {namespace}.runs.")
    assert fired.kind == SpanKind.PRODUCER
    assert fired.context.trace_id == trigger.context.trace_id
    assert fired.attributes["tether.run_id"] == ref.run_id
    assert wait.attributes["tether.wait.outcome"] == "timed_out"


async def test_a_workflow_run_is_one_trace_with_a_span_per_task(
    traced: tuple[Tether, TetherServer], exporter: InMemorySpanExporter
) -> None:
    app, _ = traced
    flow = app.workflow(name="traced-review")

    @flow.task()
    async def draft(input: Any, ctx: TaskContext) -> str:
        return "text"

    @flow.task(
        parents=[draft],
        wait_for=[UserEventCondition("review:decision", "input.runId == run.id")],
    )
    async def gate(input: Any, ctx: TaskContext) -> str:
        return str(ctx.wait_result.payloads["review:decision"]["decision"])

    @flow.task(parents=[gate])
    async def publish(input: Any, ctx: TaskContext) -> str:
        return "published"

    async with app.worker("reviews", workflows=[flow], slots=2):
        ref = await flow.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push("review:decision", {"runId": ref.run_id, "decision": "approve"})
        assert (await ref.result(timeout=15))["publish"] == "published"
        [run] = await finished(exporter, "run traced-review")
    spans = list(exporter.get_finished_spans())
    tasks = {s.name: s for s in spans if s.name.startswith("task ")}
    assert set(tasks) == {"task draft", "task gate", "task publish"}
    [wait] = named(spans, "wait task:gate")
    assert run.context is not None
    trace_id = run.context.trace_id
    for span in [*tasks.values(), wait]:
        assert span.context is not None and span.context.trace_id == trace_id, span.name
        assert span.attributes is not None and span.attributes["tether.run_id"] == ref.run_id
