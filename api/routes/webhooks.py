"""`POST /webhook/post-call` and `POST /t/{tenant}/webhook/post-call` (CONTRACT §4).

Order of work, cheapest refusal first, nothing stored for any refusal:
tenant (404) → body under the byte cap (413) → signature over the raw bytes (401; 503 when the
tenant has no secret: fail closed) → JSON envelope (400) → unknown type (200 ignored) →
durable insert with ON CONFLICT DO NOTHING (200 accepted / duplicate; 503 if the commit failed).
Processing happens later in a worker.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.intake import (
    IngestWriter,
    PendingEvent,
    SecretCache,
    TenantSecrets,
    ordering_hint,
)
from api.security.body import (
    BadContentLengthError,
    BodyTimeoutError,
    BodyTooLargeError,
    ClientDisconnectedError,
    read_capped_body,
)
from api.security.signatures import (
    HEADER,
    NoSecretConfiguredError,
    SignatureError,
    VerifiedSignature,
    verify_signature,
)
from api.state import AppState
from db import tracing
from db.metrics import observe_webhook
from db.models import DEFAULT_TENANT
from db.tenancy import SLUG_RE
from memory.identity import own_numbers
from worker.payload import AUDIO, KNOWN_TYPES, Envelope, PayloadError, parse_envelope

log = structlog.get_logger("voxmem.webhook")
router = APIRouter(tags=["elevenlabs"])

_SIGNATURE_HEADER = HEADER.lower().encode("latin-1")
_JSON = "application/json"
ACCEPTED = Response(b'{"status":"accepted"}', media_type=_JSON)
DUPLICATE = Response(b'{"status":"duplicate"}', media_type=_JSON)
IGNORED = Response(b'{"status":"ignored"}', media_type=_JSON)
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class IntakeRuntime:
    """Per-process intake machinery, created on first use and closed with the app."""

    def __init__(self, state: AppState) -> None:
        settings = state.settings
        self.secrets = SecretCache(state.db, settings)
        self.writer = IngestWriter(state.db, batch_max=settings.intake_batch_max)
        self.own_numbers = own_numbers(settings)

    def close(self) -> None:
        self.writer.close()


def intake_runtime(state: AppState) -> IntakeRuntime:
    runtime = state.extras.get("intake")
    if not isinstance(runtime, IntakeRuntime):
        # First request of this process. Requests run on one event loop, so there is no race.
        runtime = IntakeRuntime(state)
        state.extras["intake"] = runtime
    return runtime


def close_intake(state: AppState) -> None:
    runtime = state.extras.pop("intake", None)
    if isinstance(runtime, IntakeRuntime):
        runtime.close()


def _reject(status: int, reason: str, outcome: str) -> JSONResponse:
    observe_webhook("rejected", outcome)
    return JSONResponse({"detail": reason}, status_code=status)


def _header(request: Request, name: bytes) -> str | None:
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _event_key(envelope: Envelope, body: bytes) -> str:
    """Dedup key ``{type}:{conversation_id}`` (SPEC §3.8); a body hash when there is no id."""
    conversation_id = envelope.conversation_id
    key = f"{envelope.type}:{conversation_id}" if conversation_id else ""
    if not key or len(key) > 300:
        key = f"{envelope.type[:40]}:sha256:{hashlib.sha256(body).hexdigest()}"
    return key


def _verify_and_parse(
    body: bytes, signature: str | None, tenant: TenantSecrets, state: AppState
) -> tuple[Envelope, VerifiedSignature]:
    settings = state.settings
    verified = verify_signature(
        body,
        signature,
        tenant.secrets,
        now=time.time(),
        tolerance_secs=settings.signature_tolerance_secs,
        future_skew_secs=settings.signature_future_skew_secs,
    )
    return parse_envelope(body), verified


async def _intake(request: Request, slug: str) -> Response:
    # The state is taken from the app directly: a sync FastAPI dependency would cost a thread
    # hop on every request of the hottest endpoint.
    state: AppState = request.app.state.voxmem
    settings = state.settings
    runtime = intake_runtime(state)

    tenant = runtime.secrets.cached(slug)
    if tenant is None:
        if not SLUG_RE.match(slug):
            return _reject(404, f"unknown tenant {slug[:64]!r}", "tenant")
        tenant = await run_in_threadpool(runtime.secrets.lookup, slug)
        if tenant is None:
            return _reject(404, f"unknown tenant {slug!r}", "tenant")

    try:
        body = await read_capped_body(
            request.receive,
            request.scope["headers"],
            settings.max_body_bytes,
            settings.intake_body_timeout_secs,
        )
    except BodyTooLargeError as exc:
        log.warning("webhook.too_large", tenant=slug, limit=exc.limit)
        return _reject(413, str(exc), "too_large")
    except BodyTimeoutError as exc:
        log.warning("webhook.body_timeout", tenant=slug, timeout_secs=exc.timeout_secs)
        return _reject(408, str(exc), "body_timeout")
    except BadContentLengthError as exc:
        return _reject(400, str(exc), "content_length")
    except ClientDisconnectedError as exc:
        return _reject(400, str(exc), "disconnect")

    signature = _header(request, _SIGNATURE_HEADER)
    try:
        with tracing.span("intake.verify", attributes={"http.request.body.size": len(body)}):
            if len(body) > settings.intake_offload_bytes:
                envelope, verified = await run_in_threadpool(
                    _verify_and_parse, body, signature, tenant, state
                )
            else:
                envelope, verified = _verify_and_parse(body, signature, tenant, state)
    except NoSecretConfiguredError:
        log.error("webhook.no_secret", tenant=slug)
        return _reject(503, f"no webhook secret configured for tenant {slug!r}", "no_secret")
    except SignatureError as exc:
        # A valid HMAC with an out-of-window timestamp is clock skew or a late retry, not a
        # forgery: logged under its own event so operators can widen the tolerance.
        event = "webhook.stale_valid_signature" if exc.valid_hmac else "webhook.bad_signature"
        log.warning(event, tenant=slug, reason=exc.reason, bytes=len(body))
        return _reject(401, exc.reason, "signature")
    except PayloadError as exc:
        return _reject(400, f"signed body rejected: {exc}", "payload")

    if envelope.type not in KNOWN_TYPES:
        observe_webhook("ignored", "unknown_type")
        log.info("webhook.ignored_type", tenant=slug, type=envelope.type[:64], bytes=len(body))
        return IGNORED
    if envelope.type == AUDIO and not settings.keep_audio:
        observe_webhook("ignored", "audio_not_kept")
        log.info(
            "webhook.audio_not_kept",
            tenant=slug,
            conversation_id=envelope.conversation_id,
            bytes=len(body),
        )
        return IGNORED

    # With tracing on, the current (request) span's context travels with the event, so the
    # worker's spans join this trace; otherwise a sender's own traceparent is kept as is.
    trace: dict[str, Any] = dict(tracing.carrier() or {})
    for name in _TRACE_HEADERS if not trace else ():
        value = _header(request, name)
        if value:
            trace[name.decode()] = value[:512]
    conversation_id = envelope.conversation_id
    item = PendingEvent(
        tenant_id=tenant.tenant_id,
        event_id=_event_key(envelope, body),
        event_type=envelope.type,
        conversation_id=conversation_id[:128] if conversation_id else None,
        # The raw text as received, encrypted by the column type: the worker re-parses it, so
        # nothing is lost to a re-serialisation and no time is spent on one here.
        payload=body.decode("utf-8"),
        hint=ordering_hint(envelope, state.keyring, runtime.own_numbers),
        signature_timestamp=verified.timestamp,
        payload_bytes=len(body),
        trace_context=trace or None,
        max_attempts=settings.queue_max_attempts,
    )
    try:
        with tracing.span("intake.insert", attributes={"event.type": envelope.type}):
            result = await runtime.writer.insert(
                item, deadline_secs=settings.intake_commit_timeout_secs
            )
    except TimeoutError:
        log.error("webhook.commit_timeout", tenant=slug, event_id=item.event_id)
        return _reject(503, "could not persist the event in time; retry", "commit_timeout")
    except Exception as exc:  # noqa: BLE001 - any storage failure: 5xx so a sender may retry
        log.error("webhook.commit_failed", tenant=slug, event_id=item.event_id, error=str(exc))
        return _reject(503, "could not persist the event; retry", "commit_failed")
    if result.duplicate:
        observe_webhook("duplicate", envelope.type)
        log.info("webhook.duplicate", tenant=slug, event_id=item.event_id)
        return DUPLICATE
    observe_webhook("accepted", envelope.type)
    log.info(
        "webhook.accepted",
        tenant=slug,
        event_id=item.event_id,
        row_id=result.event_row_id,
        bytes=len(body),
    )
    return ACCEPTED


@dataclass(frozen=True)
class _RouteLabel:
    """What the request-context middleware reads from ``scope["route"]`` (metrics, spans)."""

    path: str


DEFAULT_PATH = "/webhook/post-call"
TENANT_PATH = "/t/{tenant}/webhook/post-call"
_DEFAULT_ROUTE = _RouteLabel(DEFAULT_PATH)
_TENANT_ROUTE = _RouteLabel(TENANT_PATH)
_TENANT_PATH_RE = re.compile(r"/t/([^/]+)/webhook/post-call")


class PostCallDispatch:
    """Serves ``POST`` on the two post-call paths straight from the ASGI stack, ahead of
    FastAPI's exception and exit-stack middlewares, its route matching and its dependency
    solving.

    Why: that machinery cost 0.12–0.17 ms of CPU per webhook, more than the intake's own work
    (bench/notes.md), on the one endpoint with a throughput target. It sits inside the request
    context middleware (request id, Server-Timing, access log, metrics, spans) and inside
    Starlette's ServerErrorMiddleware, so an unexpected error is still a logged 500. The
    FastAPI routes below stay registered: they document the endpoint in the OpenAPI schema,
    answer other methods with 405 and trailing-slash paths with the usual redirect, and both
    ways end in the same ``_intake``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]  # as Starlette's router matches (behind a proxy prefix)
            slug: str | None = None
            if path == DEFAULT_PATH:
                slug = DEFAULT_TENANT
                scope["route"] = _DEFAULT_ROUTE
            elif path.endswith(DEFAULT_PATH) and (match := _TENANT_PATH_RE.fullmatch(path)):
                slug = match.group(1)
                scope["route"] = _TENANT_ROUTE
                scope["path_params"] = {"tenant": slug}
            if slug is not None:
                response = await _intake(Request(scope, receive), slug)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@router.post(
    DEFAULT_PATH,
    summary="ElevenLabs post-call webhook (default tenant)",
    response_description='{"status": "accepted" | "duplicate" | "ignored"}',
)
async def post_call(request: Request) -> Response:
    return await _intake(request, DEFAULT_TENANT)


@router.post(
    TENANT_PATH,
    summary="ElevenLabs post-call webhook (named tenant)",
    response_description='{"status": "accepted" | "duplicate" | "ignored"}',
)
async def post_call_for_tenant(tenant: str, request: Request) -> Response:
    return await _intake(request, tenant)
