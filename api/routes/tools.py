"""``POST /tools/memory-query``: the ElevenLabs server tool (SPEC §2, CONTRACT §4).

Who is asking is decided here, never by the LLM: the conversation bound at init wins; only an
unbound conversation falls back to ``user_id`` and then ``caller_id``, and every lookup is inside
the token's tenant. "Nothing found" (including "no such user") is a 200 with no memories,
because ElevenLabs hides error bodies from the agent by default (SPEC §2.4).

The invocation is logged to ``tool_invocations`` by the background writer after the answer is
computed; the request never waits for that write.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, cast

import structlog
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from slowapi import Limiter
from sqlalchemy import Table, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import ToolAuth
from api.background import Insert, get_writer
from api.deps import StateDep
from api.search import SearchHit, SearchUnavailable, get_search
from api.state import AppState
from db import metrics, tracing
from db.models import Conversation, ToolInvocation
from db.settings import Settings
from db.tenancy import TokenIdentity
from db.types import utcnow
from memory import tombstones
from memory.context import clip
from memory.identity import (
    bound_user_id,
    normalize_number,
    own_numbers,
    user_id_for_external_id,
    user_id_for_number,
    user_id_in_tenant,
)
from memory.privacy import normalise_sources

log = structlog.get_logger("voxmem.tools")
router = APIRouter(tags=["agent"])

TOOL_NAME = "memory_query"
EMPTY_SUMMARY = "No stored memories match this query."
UNAVAILABLE_SUMMARY = "Memory lookup is unavailable right now."
MAX_CONTENT_CHARS = 300
SectorName = Literal["semantic", "episodic", "procedural", "emotional", "reflective"]


class MemoryQueryRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "query": "caller CRM system preferences",
                    "sectors": ["semantic", "procedural"],
                    "limit": 3,
                    "user_id": "usr_3f9a1c2b4d5e6f70",
                    "conversation_id": "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p",
                    "caller_id": "+15551234567",
                }
            ]
        },
    )

    query: str = Field(min_length=1, max_length=1000, description="filled by the agent's LLM")
    conversation_id: str | None = Field(
        default=None, max_length=128, description="bind to `system__conversation_id`"
    )
    user_id: str | None = Field(default=None, max_length=200, description="bind to `user_id`")
    caller_id: str | None = Field(
        default=None, max_length=200, description="bind to `system__caller_id`"
    )
    limit: int = Field(default=5, ge=1, le=20)
    sectors: list[SectorName] | None = Field(default=None, max_length=5)
    include_sources: bool = False

    @field_validator("query")
    @classmethod
    def _query_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be blank")
        return value.strip()

    @field_validator("conversation_id", "user_id", "caller_id")
    @classmethod
    def _empty_is_absent(cls, value: str | None) -> str | None:
        # An unset dynamic variable arrives as "" (or a literal "{{user_id}}" on some setups).
        if value is None:
            return None
        value = value.strip()
        if not value or value.startswith("{{"):
            return None
        return value


class SourceOut(BaseModel):
    conversation_id: str
    turns: list[int]


class MemoryOut(BaseModel):
    id: int
    content: str
    sector: str
    salience: float
    score: float
    timestamp: str
    sources: list[SourceOut] | None = None


class MemoryQueryResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "summary": "The caller's company uses Salesforce CRM. They need an API "
                    "integration with Salesforce.",
                    "memories": [
                        {
                            "id": 42,
                            "content": "The caller's company uses Salesforce CRM.",
                            "sector": "procedural",
                            "salience": 0.9,
                            "score": 0.81,
                            "timestamp": "2025-10-15T10:00:00Z",
                        }
                    ],
                    "query_time_ms": 4,
                }
            ]
        }
    )

    summary: str
    memories: list[MemoryOut]
    query_time_ms: int


# --- rate limiting (slowapi's Limiter and storage, keyed by token id) ---------------------------
LIMITER_KEY = "tool_rate_limiter"


def _limiter(state: AppState) -> tuple[Limiter, RateLimitItem]:
    entry = state.extras.get(LIMITER_KEY)
    if entry is None:
        settings = state.settings
        limiter = Limiter(
            key_func=lambda: "unused",  # keys are passed explicitly: the token id
            storage_uri=settings.rate_limit_storage_uri,
            headers_enabled=False,
        )
        entry = (limiter, parse(settings.tool_rate_limit))
        state.extras[LIMITER_KEY] = entry
    return entry


async def tool_rate_limited(identity: ToolAuth, state: StateDep) -> TokenIdentity:
    if state.settings.rate_limit_storage_uri.startswith("memory://"):
        # In-process counters: a dictionary update, cheaper than a thread hop.
        return _check_rate(identity, state)
    return await run_in_threadpool(_check_rate, identity, state)


def _check_rate(identity: TokenIdentity, state: AppState) -> TokenIdentity:
    limiter, item = _limiter(state)
    key = str(identity.token_id)
    if not limiter.limiter.hit(item, TOOL_NAME, key):
        reset_at, _remaining = limiter.limiter.get_window_stats(item, TOOL_NAME, key)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        log.warning("tool.rate_limited", token_id=identity.token_id, retry_after=retry_after)
        metrics.observe_memory_query(0.0, "rate_limited")
        raise HTTPException(
            status_code=429,
            detail=f"rate limit {state.settings.tool_rate_limit} exceeded for this token",
            headers={"Retry-After": str(retry_after)},
        )
    return identity


RateLimitedTool = Annotated[TokenIdentity, Depends(tool_rate_limited)]


# --- user resolution ------------------------------------------------------------------------
def resolve_tool_user(
    session: Session, tenant_id: int, body: MemoryQueryRequest, own_numbers: frozenset[str]
) -> tuple[str | None, str]:
    """(user id, how it was found). A bound conversation is final: a different ``user_id`` in
    the body (an LLM talked into it) cannot switch users. Ids only: loading a whole User
    (and decrypting its summary) is not needed to search its memories."""
    if body.conversation_id:
        found = bound_user_id(session, tenant_id, conversation_id=body.conversation_id)
        if found is not None:
            return found, "conversation"
    if body.user_id:
        found = user_id_in_tenant(session, tenant_id, body.user_id) or user_id_for_external_id(
            session, tenant_id, body.user_id
        )
        if found is not None:
            return found, "user_id"
    if body.caller_id:
        number = normalize_number(body.caller_id)
        # On outbound calls system__caller_id is our own number: it identifies nobody.
        if number is not None and number not in own_numbers:
            found = user_id_for_number(session, tenant_id, number)
            if found is not None:
                return found, "caller_id"
    return None, "none"


# --- response -------------------------------------------------------------------------------
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def extractive_summary(hits: Sequence[SearchHit], max_chars: int = 300) -> str:
    """The first sentence of each of the best hits, best first, within ``max_chars``."""
    parts: list[str] = []
    used = 0
    for hit in hits[:3]:
        sentence = _SENTENCE.split(" ".join(hit.content.split()), maxsplit=1)[0]
        if not sentence or sentence in parts:
            continue
        if sentence[-1] not in ".!?":
            sentence += "."
        if used + len(sentence) + 1 > max_chars:
            if not parts:
                parts.append(clip(sentence, max_chars))
            break
        parts.append(sentence)
        used += len(sentence) + 1
    return " ".join(parts) or EMPTY_SUMMARY


def llm_summary(settings: Settings, query: str, hits: Sequence[SearchHit]) -> str | None:
    """One short sentence from the configured chat model, inside the hard budget; None on any
    failure or overrun (the caller falls back to the extractive summary)."""
    if not settings.openai_api_key and not settings.openai_base_url:
        return None
    budget = max(0.05, settings.tool_summary_budget_ms / 1000)
    called = time.perf_counter()
    try:
        from openai import OpenAI

        client = OpenAI(
            api_key=settings.openai_api_key or "unused",
            base_url=settings.openai_base_url,
            timeout=budget,
            max_retries=0,
        )
        facts = "\n".join(f"- {h.content}" for h in hits[:5])
        reply = client.chat.completions.create(
            model=settings.llm_model,
            max_tokens=80,
            temperature=0,
            messages=[
                {
                    "role": "system",
                    "content": "Summarise, in one or two short spoken sentences, what these "
                    "stored facts say that answers the question. Use only the facts.",
                },
                {"role": "user", "content": f"Question: {query}\nFacts:\n{facts}"},
            ],
        )
        usage = reply.usage
        metrics.observe_llm_call(
            "chat",
            settings.llm_model,
            "ok",
            time.perf_counter() - called,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )
        text = (reply.choices[0].message.content or "").strip()
        return clip(" ".join(text.split()), 300) or None
    except Exception as exc:  # noqa: BLE001 - any failure falls back to extractive
        log.warning("tool.llm_summary_failed", error=str(exc)[:200])
        metrics.observe_llm_call("chat", settings.llm_model, "error", time.perf_counter() - called)
        metrics.observe_llm_fallback("summary", type(exc).__name__)
        return None


def _iso(hit: SearchHit) -> str:
    return hit.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def memory_out(hit: SearchHit, include_sources: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": hit.memory_id,
        "content": clip(hit.content, MAX_CONTENT_CHARS),
        "sector": hit.sector,
        "salience": round(hit.salience, 3),
        "score": round(hit.score, 3),
        "timestamp": _iso(hit),
    }
    if include_sources:
        out["sources"] = normalise_sources(hit.sources)
    return out


DEFAULT_LIMIT = 5


def response_budget(settings: Settings, limit: int) -> int:
    """``tool_response_max_bytes`` is the budget of a default (5-memory) answer; an operator who
    configures a larger constant ``limit`` asked for more, so the budget grows with it instead
    of silently dropping ranks 6..limit (which cost LoCoMo recall@10 0.05)."""
    return int(settings.tool_response_max_bytes * max(1.0, limit / DEFAULT_LIMIT))


def build_response(
    summary: str, hits: Sequence[SearchHit], include_sources: bool, started: float, max_bytes: int
) -> dict[str, Any]:
    memories = [memory_out(h, include_sources) for h in hits]
    body: dict[str, Any] = {"summary": summary, "memories": memories, "query_time_ms": 0}
    # Drop the lowest-ranked memories until the body fits; the best one always stays.
    while len(memories) > 1 and len(json.dumps(body, separators=(",", ":"))) > max_bytes:
        memories.pop()
    body["query_time_ms"] = int((time.perf_counter() - started) * 1000)
    return body


TOOL_INVOCATIONS = cast(Table, ToolInvocation.__table__)

# Logged in place of a user_id or caller_id in the request that is not the answered user's.
NOT_THIS_USER = "<not the answered user>"


def log_invocation(
    state: AppState,
    identity: TokenIdentity,
    user_id: str | None,
    body: MemoryQueryRequest,
    response: dict[str, Any],
    latency_ms: int,
    error: str | None,
) -> None:
    writer = get_writer(state.extras)
    if writer is None:
        return
    tenant_id, conversation_id = identity.tenant_id, body.conversation_id
    params = body.model_dump_json(exclude_none=True)
    data = json.dumps(response, separators=(",", ":"))

    def job(session: Session) -> Insert | None:
        # The user may have been forgotten between the answer and this write: the row would
        # carry their query and the memories we answered with, after the forget. Drop it.
        if user_id and user_id_in_tenant(session, tenant_id, user_id) is None:
            metrics.observe_forgotten_drop("tool_log", "user_gone")
            return None
        if conversation_id:
            found = tombstones.find(
                session,
                tenant_id,
                tombstones.Identifiers.of(conversation_ids=[conversation_id]),
                started_at=None,
            )
            if found is not None:
                metrics.observe_forgotten_drop("tool_log", found.kind)
                return None
        # The row belongs to the answered user (a forget deletes it with them), so it names
        # nobody else: a user_id or caller_id in the body that is not theirs (a spoofing LLM, a
        # late tool call of a forgotten user's call, another tenant's id) is replaced by a
        # marker. Otherwise forgetting that person left their id or number in this row (found
        # by the isolation state machine, tests/test_isolation_property.py).
        stored_params = params
        foreign: dict[str, str] = {}
        if body.user_id and body.user_id != user_id:
            foreign["user_id"] = NOT_THIS_USER
        if body.caller_id:
            e164 = normalize_number(body.caller_id)
            owner = user_id_for_number(session, tenant_id, e164) if e164 else None
            if owner is None or owner != user_id:
                foreign["caller_id"] = NOT_THIS_USER
        if foreign:
            stored_params = body.model_copy(update=foreign).model_dump_json(exclude_none=True)
        conversation_fk = None
        if conversation_id:
            conversation_fk = session.connection().scalar(
                select(Conversation.id).where(
                    Conversation.tenant_id == tenant_id,
                    Conversation.conversation_id == conversation_id,
                )
            )
        return Insert(
            TOOL_INVOCATIONS,
            {
                "tenant_id": tenant_id,
                "user_id": user_id or None,
                "conversation_id": conversation_id,
                "conversation_fk": conversation_fk,
                "origin": "live",
                "tool_name": TOOL_NAME,
                "request_params": stored_params,
                "response_data": data,
                "latency_ms": latency_ms,
                "success": error is None,
                "error_message": error,
                "timestamp": utcnow(),
            },
        )

    writer.submit(job)


@router.post(
    "/tools/memory-query",
    summary="ElevenLabs server tool: memory_query",
    description=(
        "Ranked memories of the caller for `query`. The user is the one bound to "
        "`conversation_id` at init, else `user_id`, else `caller_id`, always inside the "
        "token's tenant; no resolvable user → 200 with no memories. Response kept under "
        "about 2 KB. Also served at `/t/{tenant}/tools/memory-query`."
    ),
    response_model=MemoryQueryResponse,
    responses={
        401: {"description": "missing, unknown, revoked, wrong-scope or other-tenant token"},
        422: {"description": "malformed body"},
        429: {"description": "rate limited (per token); see Retry-After"},
    },
)
async def memory_query(
    body: MemoryQueryRequest, identity: RateLimitedTool, state: StateDep
) -> JSONResponse:
    # Async with one explicit hop: the dependencies run on the loop (api/auth.py), the query
    # embedding starts at once on the embedder's pool, and the user resolution and search
    # (blocking reads, numpy) take a single threadpool hop instead of one per dependency.
    started = time.perf_counter()
    get_search(state).prefetch(body.query)
    return await run_in_threadpool(_answer, body, identity, state, started)


def _answer(
    body: MemoryQueryRequest, identity: TokenIdentity, state: AppState, started: float
) -> JSONResponse:
    settings = state.settings
    user_id: str | None = None
    via = "none"
    error: str | None = None
    hits: list[SearchHit] = []
    summary = EMPTY_SUMMARY
    search = get_search(state)
    try:
        with state.db.read() as session:
            user_id, via = resolve_tool_user(
                session, identity.tenant_id, body, own_numbers(settings)
            )
            if user_id is not None:
                hits = search.search(
                    session,
                    user_id,
                    body.query,
                    limit=body.limit,
                    sectors=body.sectors,
                    include_sources=body.include_sources,
                )
    except SearchUnavailable as exc:
        error, summary = str(exc)[:200], UNAVAILABLE_SUMMARY
        log.error("tool.search_unavailable", error=error)
    if hits:
        with metrics.time_query_stage("summarise"), tracing.span("memory_query.summarise"):
            summary = extractive_summary(hits)
            if settings.tool_summary_mode == "llm":
                summary = llm_summary(settings, body.query, hits) or summary
    response = build_response(
        summary, hits, body.include_sources, started, response_budget(settings, body.limit)
    )
    log.info(
        "tool.memory_query",
        tenant=identity.tenant_slug,
        resolved_by=via,
        hits=len(response["memories"]),
        query_time_ms=response["query_time_ms"],
    )
    status = "error" if error else ("ok" if hits else "empty")
    metrics.observe_memory_query(time.perf_counter() - started, status)
    log_invocation(state, identity, user_id, body, response, response["query_time_ms"], error)
    return JSONResponse(response)
