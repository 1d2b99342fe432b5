"""OpenTelemetry tracing for Tether: span helpers and W3C context carried in NATS headers.

Tracing is off unless a tracer provider is configured: with the API's default provider every
span here is a no-op. A run's trace is anchored on the context of the span that triggered
it; that context is stored in the headers of the run's ``run.requested`` event, so an attempt
that resumes days later joins the same trace. Things that happen in another trace (an event
pushed by another service) are attached with span links, not parents.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from tether.engine.state import RunState

TRACEPARENT = "traceparent"
# on a wait's resolution: the context of the pushed event that resolved it (for a span link)
EVENT_TRACEPARENT = "Tether-Event-Traceparent"
# The stored headers that carry trace context (of a request, a wait, a pushed event).
TRACE_HEADERS = (TRACEPARENT, "tracestate", EVENT_TRACEPARENT)
_PROPAGATOR = TraceContextTextMapPropagator()


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The trace-context headers among ``headers``."""
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


_VERSION = "0.1.0"

# Until a global provider is set, asking for it costs an environment lookup per call (a few
# per message handled), so a "none yet" answer is reused this long. The provider can be set
# once per process, and ``setup_tracing`` forgets the answer when it sets one.
_GLOBAL_RECHECK_S = 0.5
_global_enabled = False
_global_checked_at = -math.inf


def _records(provider: TracerProvider) -> bool:
    return not isinstance(provider, trace.NoOpTracerProvider | trace.ProxyTracerProvider)


def _global_tracing_enabled() -> bool:
    global _global_enabled, _global_checked_at
    if not _global_enabled:
        now = time.monotonic()
        if now - _global_checked_at >= _GLOBAL_RECHECK_S:
            _global_checked_at = now
            _global_enabled = _records(trace.get_tracer_provider())
    return _global_enabled


def _forget_global_check() -> None:
    global _global_checked_at
    _global_checked_at = -math.inf


class Tracing:
    """The tracer every Tether component uses, bound to one provider."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._provider_records = provider is not None and _records(provider)
        self.tracer: Tracer = (provider or trace.get_tracer_provider()).get_tracer(
            "tether", _VERSION
        )

    @property
    def enabled(self) -> bool:
        """False while only the API's default (no-op) provider exists: then spans and
        headers are skipped outright, which keeps tracing free when it is off."""
        if self._provider is not None:
            return self._provider_records
        return _global_tracing_enabled()

    # -- context in headers -------------------------------------------------------------------

    def inject(self, headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
        """Add ``traceparent`` for ``context`` (default: the current one) to ``headers``."""
        if self.enabled:
            _PROPAGATOR.inject(headers, context=context)
        return headers

    @staticmethod
    def context_from(headers: Mapping[str, str] | None) -> Context | None:
        """The remote context in ``headers``, or None when they carry none."""
        if not headers or TRACEPARENT not in headers:
            return None
        context = _PROPAGATOR.extract({TRACEPARENT: headers[TRACEPARENT]})
        span_context = trace.get_current_span(context).get_span_context()
        return context if span_context.is_valid else None

    @staticmethod
    def link_from(headers: Mapping[str, str] | None) -> list[Link]:
        context = Tracing.context_from(headers)
        if context is None:
            return []
        return [Link(trace.get_current_span(context).get_span_context())]

    # -- spans ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
        start_time: float | None = None,
    ) -> Iterator[Span]:
        """A span made current for the block. ``start_time`` is epoch seconds."""
        if not self.enabled:
            yield trace.INVALID_SPAN
            return
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            links=list(links),
            attributes=_clean(attributes),
            start_time=_ns(start_time),
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span

    def record(
        self,
        name: str,
        *,
        start_time: float,
        end_time: float,
        parent: Context | None = None,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        """A span for something that already happened (a wait, the run as a whole)."""
        if not self.enabled:
            return
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=kind,
            links=list(links),
            attributes=_clean(attributes),
            start_time=_ns(start_time),
        )
        span.end(end_time=_ns(end_time))

    def record_run(
        self,
        state: RunState,
        status: str,
        trigger_headers: Mapping[str, str] | None,
        end_time: float,
    ) -> None:
        """The span of the run as a whole, from its request to its end, in the run's trace."""
        self.record(
            f"run {state.task}",
            start_time=state.requested_at,
            end_time=end_time,
            parent=self.context_from(trigger_headers),
            attributes={
                "tether.run_id": state.run_id,
                "tether.task": state.task,
                "tether.status": status,
                "tether.attempts": state.attempt,
            },
        )


def messaging(
    operation: str, operation_type: str, destination: str, template: str
) -> dict[str, Any]:
    """OpenTelemetry messaging attributes for a NATS operation."""
    return {
        "messaging.system": "nats",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation_type,
        "messaging.destination.name": destination,
        "messaging.destination.template": template,
    }


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def configure_from_env() -> SdkTracerProvider | None:
    """Set up an SDK tracer provider from the standard ``OTEL_*`` variables, if asked to.

    ``OTEL_TRACES_EXPORTER=console`` prints spans; ``otlp`` (or an
    ``OTEL_EXPORTER_OTLP_ENDPOINT``) sends them over OTLP/HTTP, which needs the ``otlp``
    extra (``pip install 'tether[otlp]'``). ``none`` or nothing set leaves tracing off.
    """
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter_name and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporter_name = "otlp"
    if exporter_name in ("", "none") or os.environ.get("OTEL_SDK_DISABLED") == "true":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: "
                "pip install 'tether[otlp]' (opentelemetry-exporter-otlp-proto-http)"
            ) from exc
        exporter = OTLPSpanExporter()
    else:
        raise RuntimeError(
            f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported; use otlp, console or none"
        )
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tether")})
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _forget_global_check()
    return provider
