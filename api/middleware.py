"""Request id + access log as a pure ASGI middleware (BaseHTTPMiddleware adds a task hop per
request, which costs measurable latency on the webhook path)."""

from __future__ import annotations

import time
import uuid

import structlog
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db import metrics, tracing

log = structlog.get_logger("voxmem.http")

# httptools (uvicorn[standard]) puts no limit on request headers; real clients send a few KiB.
MAX_HEADER_BYTES = 32 * 1024
_TOO_LARGE_BODY = b'{"detail":"request headers too large"}'


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEADER_BYTES:
            await send(
                {
                    "type": "http.response.start",
                    "status": 431,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _TOO_LARGE_BODY})
            return
        request_id = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:64]
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                # W3C Server-Timing: the server's own time to the response head, so a client
                # (or bench/) can tell server time from network and client time.
                took = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={took:.2f}".encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            if tracing.enabled():
                await self._traced(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            # Route template (/t/{tenant}/...), never the raw path: bounded label cardinality.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.observe_request(
                route, str(scope.get("method")), status, time.perf_counter() - started
            )
            # The path, never the query string: tokens must not reach the logs.
            log.info(
                "http.request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A server span per request, parented on an incoming W3C traceparent if any; the
        # route's own spans (intake.verify, memory_query.embed, ...) become its children.
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", [])
            if name in (b"traceparent", b"tracestate")
        }
        with tracing.span(
            f"{scope.get('method')} {scope.get('path')}",
            parent=headers or None,
            kind=SpanKind.SERVER,
        ) as span:
            await self.app(scope, receive, send)
            route = getattr(scope.get("route"), "path", None)
            if span is not None and route:
                span.update_name(f"{scope.get('method')} {route}")
                span.set_attribute("http.route", route)
