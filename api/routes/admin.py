"""Admin API ``/v1`` (``admin`` token; CONTRACT §4 "Operators").

Every query is filtered by the token's tenant: a user, memory or event of another tenant is a
404 here, exactly like one that does not exist. Memory edits bump the user's
``memory_version`` so retrieval caches and the init digest never serve a stale view.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from api.auth import AdminAuth
from api.deps import MAX_SQL_INT, StateDep
from db import queue
from db.models import (
    MEMORY_STATES,
    QUEUE_STATUSES,
    Conversation,
    ConversationMemory,
    EntityMention,
    Memory,
    MemoryEmbedding,
    MemoryLink,
    ToolInvocation,
    User,
    UserProfile,
    WebhookEvent,
)
from db.settings import Settings
from db.types import utcnow
from memory import analytics, privacy
from memory import entities as entity_graph
from memory import session as session_memory
from memory.embedders import EmbedderError, get_embedder
from memory.identity import get_user
from memory.loader import vector_to_bytes
from memory.scoring import decay_rate
from memory.store import content_hash

log = structlog.get_logger("voxmem.admin")

router = APIRouter(prefix="/v1", tags=["admin"])

UserId = Annotated[str, Path(max_length=200, examples=["usr_3f9a1c2b4d5e6f70"])]
MemoryId = Annotated[int, Path(ge=1, le=MAX_SQL_INT)]
SectorName = Literal["semantic", "episodic", "procedural", "emotional", "reflective"]
ManualState = Literal["active", "paused", "archived"]

MEMORY_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "content": "John's company uses Salesforce CRM.",
    "sector": "semantic",
    "salience": 0.82,
    "state": "active",
    "created_at": "2025-10-15T10:00:00Z",
    "links": [{"memory_id": 43, "weight": 0.87}],
    "sources": [{"conversation_id": "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p", "turns": [1, 3]}],
    "valid_from": "2025-10-15T10:00:00Z",
    "valid_to": None,
    "superseded_by": None,
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such user (or memory) in this tenant"}
}


def not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} not found in this tenant")


def require_user(session: Session, tenant_id: int, user_id: str) -> User:
    user = get_user(session, tenant_id, user_id)
    if user is None:
        raise not_found(f"user {user_id!r}")
    return user


def require_memory(session: Session, user: User, memory_id: int) -> Memory:
    memory = session.get(Memory, memory_id)
    if memory is None or memory.user_id != user.user_id:
        raise not_found(f"memory {memory_id}")
    return memory


def memory_out(session: Session, memory: Memory) -> dict[str, Any]:
    links = privacy.links_for(session, [memory.id]).get(memory.id, [])
    return privacy.memory_record(memory, links)


# --- users ----------------------------------------------------------------------------------
class UserPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "John Doe", "tier": "premium"}]}
    )
    name: str | None = Field(default=None, max_length=200)
    tier: str | None = Field(default=None, min_length=1, max_length=16, pattern=r"^[a-z0-9_-]+$")


def user_out(session: Session, user: User) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "name": user.name,
        "summary": user.summary,
        "tier": user.tier,
        "profile": privacy.profile_dict(session.get(UserProfile, user.user_id)),
        "last_interaction": privacy.iso(user.last_interaction),
        "is_guest": user.is_guest,
        "external_id": user.external_id,
        "created_at": privacy.iso(user.created_at),
    }


USER_EXAMPLE = {
    "user_id": "usr_3f9a1c2b4d5e6f70",
    "name": "John Doe",
    "summary": "Runs a small agency on Salesforce; prefers email follow-ups.",
    "tier": "trial",
    "profile": {"communication_style": "concise", "completeness": 0.4, "call_count": 3},
    "last_interaction": "2025-11-01T14:30:00Z",
    "is_guest": False,
    "external_id": None,
    "created_at": "2025-10-01T09:00:00Z",
}


@router.get("/users", summary="List users, most recently active first")
def list_users(
    identity: AdminAuth,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_SQL_INT)] = 0,
) -> dict[str, Any]:
    with state.db.read() as session:
        users = session.scalars(
            select(User)
            .where(User.tenant_id == identity.tenant_id)
            .order_by(User.last_interaction.desc().nulls_last(), User.created_at.desc())
            .offset(offset)
            .limit(limit)
        )
        return {
            "users": [
                {
                    "user_id": u.user_id,
                    "name": u.name,
                    "tier": u.tier,
                    "is_guest": u.is_guest,
                    "last_interaction": privacy.iso(u.last_interaction),
                }
                for u in users
            ]
        }


@router.get(
    "/users/{user_id}",
    summary="A user: name, summary, tier, profile, last interaction",
    responses={200: {"content": {"application/json": {"example": USER_EXAMPLE}}}, **NOT_FOUND},
)
def read_user(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.read() as session:
        return user_out(session, require_user(session, identity.tenant_id, user_id))


@router.patch("/users/{user_id}", summary="Set a user's name or tier", responses=NOT_FOUND)
def patch_user(
    user_id: UserId, patch: UserPatch, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    with state.db.write() as session:
        user = require_user(session, identity.tenant_id, user_id)
        if patch.name is not None:
            user.name = patch.name.strip() or None
            user.is_guest = user.is_guest and not user.name
        if patch.tier is not None:
            user.tier = patch.tier
        privacy.touch_memories(session, user)  # the init digest shows the name
        session.flush()
        return user_out(session, user)


@router.delete(
    "/users/{user_id}",
    summary="Forget a user: erase everything about them, everywhere",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "user_id": "usr_3f9a1c2b4d5e6f70",
                        "forgotten": True,
                        "deleted": {"memories": 12, "conversations": 3, "webhook_events": 3},
                        "tombstone_expires_at": "2026-01-08T10:00:00Z",
                    }
                }
            }
        },
        **NOT_FOUND,
    },
)
def forget_user(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    try:
        with state.db.write() as session:
            report = privacy.forget_user(
                session,
                identity.tenant_id,
                user_id,
                tombstone_days=state.settings.forget_tombstone_days,
            )
    except privacy.UserNotFound as exc:
        raise not_found(f"user {user_id!r}") from exc
    return {
        "user_id": user_id,
        "forgotten": True,
        "deleted": report.deleted,
        # Until then a late or redelivered webhook of their calls is dropped (docs/security.md).
        "tombstone_expires_at": privacy.iso(report.tombstone_expires_at),
    }


@router.get(
    "/users/{user_id}/export",
    summary="Export everything about a user as JSON (decrypted)",
    responses=NOT_FOUND,
)
def export_user(user_id: UserId, identity: AdminAuth, state: StateDep) -> JSONResponse:
    try:
        with state.db.read() as session:
            data = privacy.export_user(session, identity.tenant_id, user_id)
    except privacy.UserNotFound as exc:
        raise not_found(f"user {user_id!r}") from exc
    return JSONResponse(
        data, headers={"Content-Disposition": f'attachment; filename="{user_id}.json"'}
    )


# --- memories -------------------------------------------------------------------------------
class MemoryCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "content": "Prefers to be called after 5 pm.",
                    "sector": "procedural",
                    "salience": 0.8,
                }
            ]
        },
    )
    content: str = Field(min_length=1, max_length=2000)
    sector: SectorName = "semantic"
    salience: float = Field(default=0.7, ge=0.0, le=1.0)


class MemoryPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"salience": 0.9}, {"state": "paused"}]}
    )
    salience: float | None = Field(default=None, ge=0.0, le=1.0)
    state: ManualState | None = None


@router.get(
    "/users/{user_id}/memories",
    summary="A user's memories (active by default; ?state= for others, ?state=all for every one)",
    responses={
        200: {"content": {"application/json": {"example": {"memories": [MEMORY_EXAMPLE]}}}},
        **NOT_FOUND,
    },
)
def list_memories(
    user_id: UserId,
    identity: AdminAuth,
    state: StateDep,
    state_filter: Annotated[
        Literal["active", "paused", "archived", "superseded", "all"],
        Query(alias="state"),
    ] = "active",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    states = None if state_filter == "all" else (state_filter,)
    with state.db.read() as session:
        require_user(session, identity.tenant_id, user_id)
        return {"memories": privacy.memory_records(session, user_id, states=states, limit=limit)}


@router.post(
    "/users/{user_id}/memories",
    status_code=201,
    summary="Add a memory by hand (operator-entered; no transcript source)",
    responses={201: {"content": {"application/json": {"example": MEMORY_EXAMPLE}}}, **NOT_FOUND},
)
def add_memory(
    user_id: UserId, body: MemoryCreate, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    content = " ".join(body.content.split())
    if not content:
        raise HTTPException(status_code=422, detail="content must not be blank")
    with state.db.write() as session:
        user = require_user(session, identity.tenant_id, user_id)
        memory = add_manual_memory(
            session, state.settings, user, content, body.sector, body.salience
        )
        return memory_out(session, memory)


def add_manual_memory(
    session: Session, settings: Settings, user: User, content: str, sector: str, salience: float
) -> Memory:
    """An operator-entered fact, embedded with the configured embedder so retrieval finds it.

    If the embedder cannot run (say, the OpenAI key expired) the row is still stored and
    ``voxmem reembed`` embeds it later; the operator's input is not lost to an outage.
    """
    now = utcnow()
    memory = Memory(
        user_id=user.user_id,
        content=content,
        content_hash=content_hash(content),
        sector_type=sector,
        salience=salience,
        recency=now,
        decay_rate=decay_rate(sector),
        state="active",
        sources=[],
        metadata_={"kind": "manual", "added_by": "admin"},
        valid_from=now,
        extractor="manual",
    )
    session.add(memory)
    session.flush()
    try:
        embedder = get_embedder(settings)
        vector = embedder.embed([content])[0]
        session.add(
            MemoryEmbedding(
                memory_id=memory.id,
                sector=sector,
                embedding=vector_to_bytes(vector),
                embedding_model=embedder.name,
                dimension=int(vector.shape[0]),
            )
        )
    except (EmbedderError, OSError, ValueError) as exc:
        log.warning("admin.manual_memory_not_embedded", error=str(exc)[:200])
    user.total_memories = (user.total_memories or 0) + 1
    privacy.touch_memories(session, user)
    session.flush()
    return memory


@router.patch(
    "/users/{user_id}/memories/{memory_id}",
    summary="Edit a memory's salience or state (active, paused, archived)",
    responses={200: {"content": {"application/json": {"example": MEMORY_EXAMPLE}}}, **NOT_FOUND},
)
def patch_memory(
    user_id: UserId, memory_id: MemoryId, patch: MemoryPatch, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    with state.db.write() as session:
        user = require_user(session, identity.tenant_id, user_id)
        memory = require_memory(session, user, memory_id)
        if patch.state is not None:
            if memory.state == "superseded":
                raise HTTPException(
                    status_code=409, detail="a superseded memory keeps its history; add a new one"
                )
            memory.state = patch.state
        if patch.salience is not None:
            memory.salience = patch.salience
        privacy.touch_memories(session, user)
        session.flush()
        return memory_out(session, memory)


@router.post(
    "/users/{user_id}/memories/{memory_id}/pause",
    summary="Pause a memory (kept, not retrieved)",
    responses=NOT_FOUND,
)
def pause_memory(
    user_id: UserId, memory_id: MemoryId, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    return patch_memory(user_id, memory_id, MemoryPatch(state="paused"), identity, state)


@router.post(
    "/users/{user_id}/memories/{memory_id}/archive",
    summary="Archive a memory (kept for the record, not retrieved)",
    responses=NOT_FOUND,
)
def archive_memory(
    user_id: UserId, memory_id: MemoryId, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    return patch_memory(user_id, memory_id, MemoryPatch(state="archived"), identity, state)


@router.post(
    "/users/{user_id}/memories/{memory_id}/resume",
    summary="Make a paused or archived memory active again",
    responses=NOT_FOUND,
)
def resume_memory(
    user_id: UserId, memory_id: MemoryId, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    return patch_memory(user_id, memory_id, MemoryPatch(state="active"), identity, state)


@router.delete(
    "/users/{user_id}/memories/{memory_id}",
    summary="Delete a memory with its embeddings, links and mentions",
    responses=NOT_FOUND,
)
def delete_memory(
    user_id: UserId, memory_id: MemoryId, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    with state.db.write() as session:
        user = require_user(session, identity.tenant_id, user_id)
        memory = require_memory(session, user, memory_id)
        for stmt in (
            delete(MemoryEmbedding).where(MemoryEmbedding.memory_id == memory_id),
            delete(MemoryLink).where(
                or_(
                    MemoryLink.source_memory_id == memory_id,
                    MemoryLink.target_memory_id == memory_id,
                )
            ),
            delete(EntityMention).where(EntityMention.memory_id == memory_id),
            delete(ConversationMemory).where(ConversationMemory.memory_id == memory_id),
        ):
            session.execute(stmt.execution_options(synchronize_session=False))
        # Memories it superseded point forward to it; they keep their own history.
        for older in session.scalars(select(Memory).where(Memory.superseded_by == memory_id)):
            older.superseded_by = None
        session.delete(memory)
        user.total_memories = max(0, (user.total_memories or 0) - 1)
        privacy.touch_memories(session, user)
    return {"deleted": True, "memory_id": memory_id}


# --- session, graph, calls ------------------------------------------------------------------
@router.get(
    "/users/{user_id}/session",
    summary="Recent interactions (session memory), newest first, at most 10",
    responses=NOT_FOUND,
)
def user_session(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.read() as session:
        require_user(session, identity.tenant_id, user_id)
        # Issue 7's session memory: unexpired, newest first, with ids for the rating endpoint.
        rows = session_memory.recent_interactions(session, user_id, limit=10)
        return {"interactions": [session_memory.interaction_out(i) for i in rows]}


@router.get("/users/{user_id}/graph", summary="The user's entity graph", responses=NOT_FOUND)
def user_graph(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.read() as session:
        require_user(session, identity.tenant_id, user_id)
        return entity_graph.graph(session, user_id)  # issue 7: names, relation names, memories


def conversation_out(conv: Conversation) -> dict[str, Any]:
    return {
        "conversation_id": conv.conversation_id,
        "user_id": conv.user_id,
        "agent_id": conv.agent_id,
        "start_time": privacy.iso(conv.start_time),
        "duration_secs": conv.duration_secs,
        "status": conv.status,
        "direction": conv.direction,
        "call_successful": conv.call_successful,
    }


@router.get("/users/{user_id}/conversations", summary="A user's recent calls", responses=NOT_FOUND)
def user_conversations(
    user_id: UserId,
    identity: AdminAuth,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    with state.db.read() as session:
        require_user(session, identity.tenant_id, user_id)
        rows = session.scalars(
            select(Conversation)
            .where(Conversation.user_id == user_id, Conversation.tenant_id == identity.tenant_id)
            .order_by(Conversation.start_time.desc())
            .limit(limit)
        )
        return {"conversations": [conversation_out(c) for c in rows]}


@router.get("/conversations", summary="Recent calls across the tenant")
def recent_conversations(
    identity: AdminAuth,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    with state.db.read() as session:
        rows = session.scalars(
            select(Conversation)
            .where(Conversation.tenant_id == identity.tenant_id)
            .order_by(Conversation.start_time.desc())
            .limit(limit)
        )
        return {"conversations": [conversation_out(c) for c in rows]}


# --- queue ----------------------------------------------------------------------------------
def event_out(e: WebhookEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "conversation_id": e.conversation_id,
        "status": e.status,
        "retry_count": e.retry_count,
        "max_attempts": e.max_attempts,
        "error_class": e.error_class,
        "error_message": e.error_message,
        "run_after": privacy.iso(e.run_after),
        "created_at": privacy.iso(e.created_at),
        "processed_at": privacy.iso(e.processed_at),
    }


@router.get("/queue/events", summary="Webhook events of this tenant, newest first (no payloads)")
def list_events(
    identity: AdminAuth,
    state: StateDep,
    status: Annotated[Literal[QUEUE_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    from sqlalchemy.orm import defer

    with state.db.read() as session:
        stmt = (
            select(WebhookEvent)
            .options(defer(WebhookEvent.payload))
            .where(WebhookEvent.tenant_id == identity.tenant_id)
        )
        if status is not None:
            stmt = stmt.where(WebhookEvent.status == status)
        rows = session.scalars(stmt.order_by(WebhookEvent.id.desc()).limit(limit))
        return {"events": [event_out(e) for e in rows]}


@router.post(
    "/queue/events/{event_id}/retry",
    summary="Requeue a failed or dead-lettered event",
    responses={
        404: {"description": "no such event in this tenant"},
        409: {"description": "event is not failed or dead_letter"},
    },
)
def retry_event(
    event_id: Annotated[int, Path(ge=1, le=MAX_SQL_INT)], identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    with state.db.write() as session:
        row = session.get(WebhookEvent, event_id)
        if row is None or row.tenant_id != identity.tenant_id:
            raise not_found(f"event {event_id}")
        try:
            row = queue.retry(session, event_id)
        except queue.QueueOperationError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return event_out(row)


# --- analytics ------------------------------------------------------------------------------
@router.get("/stats", summary="Counts for this tenant")
def stats(identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    tid = identity.tenant_id
    with state.db.read() as session:
        users = session.scalar(select(func.count()).select_from(User).where(User.tenant_id == tid))
        guests = session.scalar(
            select(func.count()).select_from(User).where(User.tenant_id == tid, User.is_guest)
        )
        memories: dict[str, int] = dict.fromkeys(MEMORY_STATES, 0)
        for st, n in session.execute(
            select(Memory.state, func.count())
            .join(User, User.user_id == Memory.user_id)
            .where(User.tenant_id == tid)
            .group_by(Memory.state)
        ):
            memories[st] = int(n)
        sectors: dict[str, int] = {}
        for sector, n in session.execute(
            select(Memory.sector_type, func.count())
            .join(User, User.user_id == Memory.user_id)
            .where(User.tenant_id == tid, Memory.state == "active")
            .group_by(Memory.sector_type)
        ):
            sectors[sector] = int(n)
        conversations = session.scalar(
            select(func.count()).select_from(Conversation).where(Conversation.tenant_id == tid)
        )
        tools = session.scalar(
            select(func.count()).select_from(ToolInvocation).where(ToolInvocation.tenant_id == tid)
        )
        queue_counts: dict[str, int] = dict.fromkeys(QUEUE_STATUSES, 0)
        for st, n in session.execute(
            select(WebhookEvent.status, func.count())
            .where(WebhookEvent.tenant_id == tid)
            .group_by(WebhookEvent.status)
        ):
            queue_counts[st] = int(n)
        insight_counts = analytics.tenant_counts(session, tid)  # issue 7: sister-system counts
    return {
        "tenant": identity.tenant_slug,
        "generated_at": privacy.iso(utcnow()),
        "users": int(users or 0),
        "guests": int(guests or 0),
        "memories": {"by_state": memories, "active_by_sector": sectors},
        "conversations": int(conversations or 0),
        "tool_invocations": int(tools or 0),
        "queue": queue_counts,
        **insight_counts,
    }
