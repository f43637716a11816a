"""``POST /webhook/conversation-init``: ElevenLabs conversation initiation (SPEC §1, CONTRACT §4).

ElevenLabs calls this while the phone rings and may refuse to start the call when it fails or
omits a variable the agent uses. So, after authentication, nothing here can fail: the work runs
in a thread under ``settings.init_deadline_ms`` and any error or overrun answers 200 with the
neutral body (``fixtures/initiation_response_unknown_caller.json`` shape), logged and counted.

The lookup is split so that a returning caller's answer never waits for the write lock: the
read phase (binding, caller number, digest) builds the answer first, then the binding write
runs; if that write is slow the answer already computed is sent and the write finishes behind
it. Only a first-time caller needs the write (the guest's id) before answering.
"""

from __future__ import annotations

import asyncio
import json
import string
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import InitAuth
from api.deps import StateDep
from api.search import get_search
from api.state import AppState
from db import metrics
from db.models import ConversationBinding, User
from db.settings import Settings
from db.tenancy import TokenIdentity
from memory.context import NO_HISTORY, iso_utc, user_context
from memory.identity import (
    bind_conversation,
    bound_user,
    create_guest,
    normalize_number,
    own_numbers,
    resolve_or_create_by_number,
    user_for_number,
)
from memory.profile import NEUTRAL_INIT_VARIABLES, init_variables

log = structlog.get_logger("voxmem.init")
router = APIRouter(tags=["agent"])

RESPONSE_TYPE = "conversation_initiation_client_data"
# Its own pool: init work that overran its deadline keeps running, and must not starve the
# threadpool every other endpoint uses (nor be starved by it).
INIT_EXECUTOR = ThreadPoolExecutor(max_workers=16, thread_name_prefix="voxmem-init")
RETURNING_NO_MEMORIES = "No stored details from earlier calls yet."
# Extra variables beyond CONTRACT's six (documented in docs/elevenlabs.md). All strings.
REQUIRED_VARIABLES = (
    "user_id",
    "user_name",
    "memory_context",
    "recent_topics",
    "last_interaction",
    "caller_status",
)


@dataclass(frozen=True, slots=True)
class InitRequest:
    caller_id: str | None
    called_number: str | None
    agent_id: str | None
    call_sid: str | None
    conversation_id: str | None

    @classmethod
    def parse(cls, raw: bytes) -> InitRequest:
        """Tolerant: missing, null, non-string or unknown fields never raise."""
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
            body = {}
        if not isinstance(body, dict):
            body = {}

        def field(name: str, max_len: int = 128) -> str | None:
            value = body.get(name)
            if isinstance(value, bool) or value is None:
                return None
            if isinstance(value, int | float):
                value = str(value)
            if not isinstance(value, str):
                return None
            value = value.strip()
            return value[:max_len] or None

        return cls(
            caller_id=field("caller_id", 200),
            called_number=field("called_number", 200),
            agent_id=field("agent_id"),
            call_sid=field("call_sid"),
            conversation_id=field("conversation_id"),
        )


def neutral_variables() -> dict[str, str]:
    return {
        "user_id": "",
        "user_name": "",
        "memory_context": NO_HISTORY,
        "recent_topics": "",
        "last_interaction": "",
        "caller_status": "new",
        "is_returning_caller": "false",
        **NEUTRAL_INIT_VARIABLES,  # issue 7: profile variables, always present (features.md)
    }


def neutral_response() -> dict[str, Any]:
    return {"type": RESPONSE_TYPE, "dynamic_variables": neutral_variables()}


def counterpart_number(req: InitRequest, own_numbers: frozenset[str]) -> str | None:
    """The customer's number: ``caller_id`` inbound; ``called_number`` when we dialled out
    (ElevenLabs then puts *our* number in ``caller_id``, SPEC §4.7)."""
    caller = normalize_number(req.caller_id)
    if caller is not None and caller in own_numbers:
        return normalize_number(req.called_number)
    return caller


def is_returning(session: Session, user: User, req: InitRequest) -> bool:
    if user.last_interaction is not None:
        return True
    # Seen on an earlier call that has not been processed yet (post-call still queued).
    stmt = select(ConversationBinding.id).where(ConversationBinding.user_id == user.user_id)
    if req.conversation_id:
        stmt = stmt.where(
            (ConversationBinding.conversation_id != req.conversation_id)
            | ConversationBinding.conversation_id.is_(None)
        )
    if req.call_sid:
        stmt = stmt.where(
            (ConversationBinding.call_sid != req.call_sid) | ConversationBinding.call_sid.is_(None)
        )
    return session.scalar(stmt.limit(1)) is not None


def first_message(settings: Settings, variables: dict[str, str], returning: bool) -> str | None:
    """The template for this caller, or None when disabled, empty, or a variable it uses is
    empty ("Hi , welcome back" is worse than the agent's own first message)."""
    if not settings.first_message_enabled:
        return None
    template = settings.first_message_template if returning else settings.first_message_template_new
    if not template.strip():
        return None
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        if any(not variables.get(name) for name in names):
            return None
        return template.format_map(variables).strip() or None
    except (ValueError, KeyError, IndexError, AttributeError):
        log.warning("init.bad_first_message_template")
        return None


def render(settings: Settings, session: Session, user: User, returning: bool) -> dict[str, Any]:
    ctx = user_context(session, user)
    memory_context = ctx.memory_context or (RETURNING_NO_MEMORIES if returning else NO_HISTORY)
    variables = {
        "user_id": user.user_id,
        "user_name": user.name or "",
        "memory_context": memory_context,
        "recent_topics": ctx.recent_topics,
        "last_interaction": iso_utc(user.last_interaction),
        "caller_status": "returning" if returning else "new",
        "is_returning_caller": "true" if returning else "false",
    }
    # Issue 7: recent calls (session memory) lead memory_context; profile variables added.
    variables.update(init_variables(session, user, ctx.memory_context))
    body: dict[str, Any] = {
        "type": RESPONSE_TYPE,
        "dynamic_variables": variables,
        "user_id": user.user_id,
    }
    message = first_message(settings, variables, returning)
    if message:
        body["conversation_config_override"] = {"agent": {"first_message": message}}
    return body


class InitWork:
    """The lookup, run in a worker thread; ``response`` is set as soon as it is known."""

    def __init__(self, settings: Settings, identity: TokenIdentity, req: InitRequest) -> None:
        self.settings = settings
        self.tenant_id = identity.tenant_id
        self.req = req
        self.response: dict[str, Any] | None = None
        self.error: Exception | None = None
        self._notify: Callable[[], None] = lambda: None

    def run_guarded(self, db: Any, notify: Callable[[], None]) -> None:
        """``run`` for the executor: never raises; ``notify`` fires once the answer is final
        (at the latest when the work ends).

        A caller whose number already maps to a user is answered right after the read phase:
        the number -> user mapping is settled, so a racing init of the same conversation
        reads the same user, and the binding's commit (which waits for the write lock a worker
        may hold for tens of milliseconds) happens behind the answer. A first-time caller's
        answer waits for the commit that creates the guest: two racing inits must not hand
        out two different guests. Past the deadline the read-phase answer, if any, is sent."""
        self._notify = notify
        try:
            self.run(db)
        except Exception as exc:  # noqa: BLE001 - reported through self.error
            self.error = exc
            if self.response is not None:
                # The answer already went out; only the binding write failed. The tool still
                # resolves the caller by user_id / caller_id.
                log.error("init.bind_failed", error=str(exc)[:200], error_class=type(exc).__name__)
        finally:
            notify()

    def run(self, db: Any) -> None:
        req, tenant_id = self.req, self.tenant_id
        number = counterpart_number(req, own_numbers(self.settings))
        with db.read() as session:
            user = bound_user(
                session, tenant_id, conversation_id=req.conversation_id, call_sid=req.call_sid
            )
            already_bound = user is not None
            if user is None and number is not None:
                user = user_for_number(session, tenant_id, number)
            if user is not None:
                self.response = render(
                    self.settings, session, user, is_returning(session, user, req)
                )
        if already_bound:
            return  # a redelivered init: the binding exists, nothing to write
        if user is not None:
            self._notify()  # known caller: the answer is final, the binding follows it
        if user is None and number is None and not (req.conversation_id or req.call_sid):
            return  # nobody to remember and nothing to bind: the neutral answer is right
        # Relaxed (no fsync of its own): a binding and a first caller's guest are routing
        # state a killed process keeps and a power cut may lose — the post-call resolves the
        # caller again by number, and the next durable commit syncs these frames with it.
        # An fsync here was 8 ms at p95 on this disk, most of init's budget.
        with db.write_relaxed() as session:
            if user is None:
                if number is not None:
                    resolved = resolve_or_create_by_number(session, tenant_id, number)
                    user, created = resolved.user, resolved.created
                else:
                    # Withheld number: a guest for this call only. Anonymous callers are never
                    # merged, but the call's own tool lookups and memories still need a user.
                    user, created = create_guest(session, tenant_id), True
                bind_conversation(
                    session,
                    tenant_id,
                    user,
                    conversation_id=req.conversation_id,
                    call_sid=req.call_sid,
                    agent_id=req.agent_id,
                )
                returning = not created and is_returning(session, user, req)
                self.response = render(self.settings, session, user, returning)
            elif session.get(User, user.user_id) is None:
                # Forgotten between the read phase and this write (SQLite serialises the write
                # with the forget; PostgreSQL's foreign key would refuse the binding anyway).
                # Bind nothing and hand out nothing of theirs: an answer not yet sent becomes
                # the neutral one. The post-call of this call is judged by the forget's
                # tombstone (memory/tombstones.py).
                self.response = neutral_response()
                metrics.observe_forgotten_drop("init", "user_gone")
                log.info("init.user_forgotten_meanwhile")
            else:
                bind_conversation(
                    session,
                    tenant_id,
                    user,
                    conversation_id=req.conversation_id,
                    call_sid=req.call_sid,
                    agent_id=req.agent_id,
                )


def _prewarm(state: AppState, body: dict[str, Any]) -> None:
    """A returning caller's call has started: have their memories loaded before the agent's
    first memory_query (off the answer's path; api/engine_search.py bounds the work)."""
    variables = body.get("dynamic_variables") or {}
    user_id = variables.get("user_id")
    if user_id and variables.get("caller_status") == "returning":
        get_search(state).prewarm(state.db, str(user_id))


def fallback(reason: str, started: float, **fields: Any) -> JSONResponse:
    metrics.observe_init(time.perf_counter() - started, fallback_reason=reason)
    log.warning("init.fallback", reason=reason, **fields)
    return JSONResponse(neutral_response())


def answer(body: dict[str, Any], started: float) -> JSONResponse:
    metrics.observe_init(time.perf_counter() - started)
    return JSONResponse(body)


INIT_EXAMPLES: dict[str, Any] = {
    "returning caller": {
        "value": {
            "type": RESPONSE_TYPE,
            "dynamic_variables": {
                "user_id": "usr_3f9a1c2b4d5e6f70",
                "user_name": "John Doe",
                "memory_context": "John's company uses Salesforce CRM. A refund for invoice "
                "4471 was promised within 5 business days.",
                "recent_topics": "billing discrepancy, CRM integration",
                "last_interaction": "2025-11-01T14:30:00Z",
                "caller_status": "returning",
                "is_returning_caller": "true",
            },
            "user_id": "usr_3f9a1c2b4d5e6f70",
        }
    },
    "fallback (error, deadline or no caller id)": {"value": neutral_response()},
}


@router.post(
    "/webhook/conversation-init",
    summary="ElevenLabs conversation initiation webhook",
    description=(
        "Maps the caller to a user (a guest on first contact), binds `conversation_id` and "
        "`call_sid` to that user for the rest of the call, and returns the dynamic variables. "
        "Body as ElevenLabs sends it (`caller_id`, `called_number`, `agent_id`, `call_sid`, "
        "optional `conversation_id`); unknown fields are ignored. Always 200 after "
        "authentication, with neutral values on any internal error or deadline. Also served "
        "at `/t/{tenant}/webhook/conversation-init`."
    ),
    responses={
        200: {"content": {"application/json": {"examples": INIT_EXAMPLES}}},
        401: {"description": "missing, unknown, revoked, wrong-scope or other-tenant token"},
    },
)
async def conversation_init(request: Request, identity: InitAuth, state: StateDep) -> JSONResponse:
    started = time.perf_counter()
    try:
        req = InitRequest.parse(await request.body())
    except Exception as exc:  # noqa: BLE001 - a broken body still gets a call started
        return fallback("bad_body", started, error=type(exc).__name__)
    work = InitWork(state.settings, identity, req)
    deadline = max(1, state.settings.init_deadline_ms) / 1000
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def notify() -> None:
        loop.call_soon_threadsafe(ready.set)

    # The work is never cancelled: on overrun, or once the answer is known, it goes on to
    # commit the binding by itself while the caller already has its answer.
    loop.run_in_executor(INIT_EXECUTOR, work.run_guarded, state.db, notify)
    try:
        await asyncio.wait_for(ready.wait(), deadline)
    except TimeoutError:
        if work.response is not None:
            return answer(work.response, started)
        return fallback("deadline", started, tenant=identity.tenant_slug)
    if work.response is not None:
        _prewarm(state, work.response)
        return answer(work.response, started)
    if work.error is not None:
        failure = work.error
        return fallback(
            "error", started, error=str(failure)[:200], error_class=type(failure).__name__
        )
    return fallback("no_caller", started, tenant=identity.tenant_slug)
