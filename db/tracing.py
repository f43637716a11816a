"""OpenTelemetry tracing for the API and the workers, configured only by the standard ``OTEL_*``
variables.

When ``OTEL_EXPORTER_OTLP_ENDPOINT`` is unset (or ``OTEL_SDK_DISABLED=true``) nothing is
installed and ``span()`` returns one shared ``nullcontext``: no tracer lookup, no context
manipulation, no allocation on the hot paths (webhook intake, memory-query).

One trace covers a call from arrival to queryable: the webhook request's span context is
serialised with ``carrier()`` into ``WebhookEvent.trace_context`` when the event is queued, and
the worker parents its processing span on it with ``span(..., parent=event.trace_context)``.
The worker's span is a child of the request span in another process, minutes later perhaps;
that is what W3C trace context propagation is for.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode

from db.settings import Settings

_NOOP: AbstractContextManager[None] = nullcontext()
_enabled = False
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _enabled


def init_tracing(
    settings: Settings, service_name: str, *, exporter: SpanExporter | None = None
) -> bool:
    """Install the tracer provider for this process; returns whether tracing is on.

    ``exporter`` is for tests (an in-memory exporter); production uses OTLP over HTTP to
    ``OTEL_EXPORTER_OTLP_ENDPOINT``. ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` are
    honoured by the SDK's resource detection.
    """
    global _enabled, _provider, _tracer
    if _enabled:
        return True
    if exporter is None:
        if not settings.otel_exporter_otlp_endpoint or settings.otel_sdk_disabled:
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads OTEL_EXPORTER_OTLP_* itself; the endpoint is passed only when it
        # came from a .env file that the process environment does not hold.
        if settings.otel_exporter_otlp_traces_endpoint:
            exporter = OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_traces_endpoint)
        else:
            base = settings.otel_exporter_otlp_endpoint.rstrip("/")
            exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces")
    attributes: dict[str, Any] = {"service.name": service_name}
    if settings.otel_service_name:
        attributes["service.name"] = settings.otel_service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    # Batching: the request path only appends to a queue; export happens on a thread.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("voxmem")
    _enabled = True
    return True


def shutdown_tracing() -> None:
    """Flush and stop (process exit); tracing is off afterwards."""
    global _enabled, _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _enabled = False
    _provider = None
    _tracer = None


def force_flush() -> None:
    if _provider is not None:
        _provider.force_flush()


def span(
    name: str,
    *,
    parent: Mapping[str, str] | Context | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    start_time_ns: int | None = None,
) -> AbstractContextManager[Span | None]:
    """``with span("intake.verify"): ...`` — a child of the current span, or of ``parent``
    (a carrier dict from ``carrier()`` or an OTel context). A no-op when tracing is off."""
    if not _enabled:
        return _NOOP
    return _recording_span(name, parent, attributes, kind, start_time_ns)


@contextmanager
def _recording_span(
    name: str,
    parent: Mapping[str, str] | Context | None,
    attributes: Mapping[str, str | int | float | bool] | None,
    kind: trace.SpanKind,
    start_time_ns: int | None,
) -> Iterator[Span | None]:
    assert _tracer is not None  # noqa: S101 - set together with _enabled
    # Context is itself a dict, so test for it first.
    context = parent if parent is None or isinstance(parent, Context) else extract(parent)
    with _tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=dict(attributes or {}),
        start_time=start_time_ns,
    ) as current:
        yield current


def carrier() -> dict[str, str] | None:
    """The current span context as W3C headers (for ``WebhookEvent.trace_context``); None when
    tracing is off or no span is active."""
    if not _enabled:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def extract(headers: Mapping[str, str] | None) -> Context | None:
    if not _enabled or not headers:
        return None
    return propagate.extract(dict(headers))


def set_attributes(**attributes: str | int | float | bool | None) -> None:
    """Annotate the current span (no-op when tracing is off); None values are skipped."""
    if not _enabled:
        return
    current = trace.get_current_span()
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key, value)


def record_error(exc: BaseException) -> None:
    if not _enabled:
        return
    current = trace.get_current_span()
    current.record_exception(exc)
    current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
