"""Privacy: export everything about a user, or forget it everywhere. No HTTP here — the admin
API (``DELETE /v1/users/{id}``, ``GET /v1/users/{id}/export``) and the CLI
(``voxmem users forget|export``) share these functions.

"Everywhere" means every table that can hold something the caller said or that identifies
them: memories with their embeddings, links and entity mentions; conversations with turns,
analyses and tool invocations; session memory, profile and entity graph; caller numbers and
conversation bindings; issue occurrences (and patterns only this user reported); and queued
webhook payloads of the user's calls, which are still plaintext-equivalent to a transcript.

Deletes are explicit rather than left to ``ON DELETE CASCADE``: cascades depend on
``PRAGMA foreign_keys`` being on for the connection, and a forget must not depend on that.

The forget also leaves a tombstone (``memory.tombstones``): keyed hashes of the user's ids,
numbers, conversation ids and call SIDs, so that work arriving or completing after the forget
(a job claimed before it, a redelivered webhook) is dropped instead of writing the data back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from db.models import (
    CallerNumber,
    Conversation,
    ConversationAnalysis,
    ConversationBinding,
    ConversationMemory,
    ConversationTurn,
    Entity,
    EntityMention,
    EntityRelation,
    IssueOccurrence,
    IssuePattern,
    Memory,
    MemoryEmbedding,
    MemoryLink,
    SessionInteraction,
    ToolInvocation,
    User,
    UserProfile,
    WebhookEvent,
)
from db.types import utcnow
from memory import context, patterns, tombstones
from memory.identity import get_user


class UserNotFound(LookupError):
    """No such user in this tenant (an admin request answers 404)."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _loads(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


# --- the CONTRACT §4 memory shape -----------------------------------------------------------
def normalise_sources(raw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in raw or []:
        if not isinstance(item, dict) or not item.get("conversation_id"):
            continue
        turns = [int(t) for t in item.get("turns") or [] if isinstance(t, int | float)]
        out.append({"conversation_id": str(item["conversation_id"]), "turns": turns})
    return out


def links_for(session: Session, memory_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Undirected neighbours with their weight, strongest first."""
    result: dict[int, dict[int, float]] = {mid: {} for mid in memory_ids}
    if not memory_ids:
        return {}
    for chunk in _chunks(list(memory_ids), 500):
        rows = session.execute(
            select(
                MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight
            ).where(
                or_(MemoryLink.source_memory_id.in_(chunk), MemoryLink.target_memory_id.in_(chunk))
            )
        )
        for src, dst, weight in rows:
            for mine, other in ((src, dst), (dst, src)):
                if mine in result and other != mine:
                    result[mine][other] = max(float(weight), result[mine].get(other, 0.0))
    return {
        mid: [
            {"memory_id": other, "weight": round(w, 4)}
            for other, w in sorted(neigh.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        for mid, neigh in result.items()
    }


def memory_record(memory: Memory, links: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": memory.id,
        "content": memory.content,
        "sector": memory.sector_type,
        "salience": round(float(memory.salience), 4),
        "state": memory.state,
        "created_at": iso(memory.created_at),
        "links": links,
        "sources": normalise_sources(memory.sources),
        "valid_from": iso(memory.valid_from),
        "valid_to": iso(memory.valid_to),
        "superseded_by": memory.superseded_by,
    }


def memory_records(
    session: Session,
    user_id: str,
    *,
    states: Iterable[str] | None = ("active",),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    stmt = select(Memory).where(Memory.user_id == user_id)
    if states is not None:
        stmt = stmt.where(Memory.state.in_(list(states)))
    stmt = stmt.order_by(Memory.created_at.desc(), Memory.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    memories = list(session.scalars(stmt))
    links = links_for(session, [m.id for m in memories])
    return [memory_record(m, links.get(m.id, [])) for m in memories]


def touch_memories(session: Session, user: User) -> None:
    """A memory write outside the engine: bump the version retrieval caches are keyed by."""
    user.memory_version = (user.memory_version or 0) + 1
    user.updated_at = utcnow()
    context.CACHE.invalidate(user.user_id)


# --- export ---------------------------------------------------------------------------------
def _user_conversation_ids(session: Session, tenant_id: int, user_id: str) -> set[str]:
    ids = set(
        session.scalars(select(Conversation.conversation_id).where(Conversation.user_id == user_id))
    )
    ids.update(
        c
        for c in session.scalars(
            select(ConversationBinding.conversation_id).where(
                ConversationBinding.tenant_id == tenant_id, ConversationBinding.user_id == user_id
            )
        )
        if c
    )
    return ids


def export_user(session: Session, tenant_id: int, user_id: str) -> dict[str, Any]:
    user = get_user(session, tenant_id, user_id)
    if user is None:
        raise UserNotFound(user_id)
    profile = session.get(UserProfile, user_id)
    numbers = list(
        session.scalars(select(CallerNumber.number_enc).where(CallerNumber.user_id == user_id))
    )
    conversations = []
    for conv in session.scalars(
        select(Conversation)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.start_time)
    ):
        turns = session.scalars(
            select(ConversationTurn)
            .where(ConversationTurn.conversation_fk == conv.id)
            .order_by(ConversationTurn.turn_order)
        )
        analysis = session.scalar(
            select(ConversationAnalysis).where(ConversationAnalysis.conversation_fk == conv.id)
        )
        conversations.append(
            {
                "conversation_id": conv.conversation_id,
                "agent_id": conv.agent_id,
                "start_time": iso(conv.start_time),
                "end_time": iso(conv.end_time),
                "duration_secs": conv.duration_secs,
                "status": conv.status,
                "direction": conv.direction,
                "call_successful": conv.call_successful,
                "failure_reason": conv.failure_reason,
                "metadata": conv.metadata_,
                "turns": [
                    {
                        "index": t.turn_order,
                        "role": t.role,
                        "message": t.message,
                        "time_in_call_secs": t.timestamp,
                        "tool_calls": _loads(t.tool_calls),
                        "tool_results": _loads(t.tool_results),
                    }
                    for t in turns
                ],
                "analysis": None
                if analysis is None
                else {
                    "summary": analysis.summary,
                    "title": analysis.summary_title,
                    "call_successful": analysis.call_successful,
                    "evaluation": analysis.evaluation_json,
                    "data_collection": _loads(analysis.data_collection),
                },
            }
        )
    entities = list(session.scalars(select(Entity).where(Entity.user_id == user_id)))
    relations = list(
        session.scalars(select(EntityRelation).where(EntityRelation.user_id == user_id))
    )
    return {
        "exported_at": iso(utcnow()),
        "user": {
            "user_id": user.user_id,
            "external_id": user.external_id,
            "name": user.name,
            "summary": user.summary,
            "tier": user.tier,
            "is_guest": user.is_guest,
            "created_at": iso(user.created_at),
            "last_interaction": iso(user.last_interaction),
            "metadata": user.metadata_,
            "caller_numbers": numbers,
        },
        "profile": profile_dict(profile),
        "memories": memory_records(session, user_id, states=None),
        "conversations": conversations,
        "bindings": [
            {
                "conversation_id": b.conversation_id,
                "call_sid": b.call_sid,
                "agent_id": b.agent_id,
                "created_at": iso(b.created_at),
            }
            for b in session.scalars(
                select(ConversationBinding).where(ConversationBinding.user_id == user_id)
            )
        ],
        "session": [
            interaction_dict(i) for i in session_interactions(session, user_id, limit=None)
        ],
        "tool_invocations": [
            {
                "conversation_id": t.conversation_id,
                "tool_name": t.tool_name,
                "origin": t.origin,
                "request": _loads(t.request_params),
                "response": _loads(t.response_data),
                "latency_ms": t.latency_ms,
                "success": t.success,
                "timestamp": iso(t.timestamp),
            }
            for t in session.scalars(
                select(ToolInvocation)
                .where(ToolInvocation.user_id == user_id)
                .order_by(ToolInvocation.id)
            )
        ],
        "graph": graph_dict(entities, relations),
        "issue_patterns": patterns.user_occurrences(session, user_id),  # issue 7
    }


def profile_dict(profile: UserProfile | None) -> dict[str, Any]:
    if profile is None:
        return {}
    data = _loads(profile.profile)
    out: dict[str, Any] = data if isinstance(data, dict) else {}
    out = dict(out)
    out.setdefault("communication_style", profile.communication_style)
    out.setdefault("completeness", profile.completeness)
    out.setdefault("call_count", profile.call_count)
    return out


def session_interactions(
    session: Session, user_id: str, *, limit: int | None = 10
) -> list[SessionInteraction]:
    stmt = (
        select(SessionInteraction)
        .where(SessionInteraction.user_id == user_id)
        .order_by(SessionInteraction.occurred_at.desc(), SessionInteraction.id.desc())
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def interaction_dict(i: SessionInteraction) -> dict[str, Any]:
    return {
        "occurred_at": iso(i.occurred_at),
        "topic": i.topic,
        "task_type": i.task_type,
        "asked": i.asked,
        "done": i.done,
        "outcome": i.outcome,
        "rating": i.rating,
        "duration_secs": i.duration_secs,
        "expires_at": iso(i.expires_at),
    }


def graph_dict(entities: Sequence[Entity], relations: Sequence[EntityRelation]) -> dict[str, Any]:
    return {
        "entities": [
            {
                "id": e.id,
                "kind": e.kind,
                "name": e.name,
                "mention_count": e.mention_count,
                "first_seen": iso(e.first_seen),
                "last_seen": iso(e.last_seen),
            }
            for e in entities
        ],
        "relations": [
            {
                "source": r.source_entity_id,
                "target": r.target_entity_id,
                "relation": r.relation,
                "strength": r.strength,
                "confidence": r.confidence,
            }
            for r in relations
        ],
    }


# --- forget ---------------------------------------------------------------------------------
@dataclass
class ForgetReport:
    user_id: str
    deleted: dict[str, int] = field(default_factory=dict)
    # The tombstone left behind: how many identifier hashes, and until when late work of the
    # forgotten data is dropped.
    tombstone_keys: int = 0
    tombstone_expires_at: datetime | None = None

    def add(self, table: str, count: int) -> None:
        self.deleted[table] = self.deleted.get(table, 0) + max(0, count)


# Rows that hang off a conversation by `conversation_fk`, deleted before the conversation.
CONVERSATION_CHILDREN: tuple[
    type[IssueOccurrence]
    | type[ConversationMemory]
    | type[ToolInvocation]
    | type[SessionInteraction]
    | type[ConversationAnalysis]
    | type[ConversationTurn],
    ...,
] = (
    IssueOccurrence,
    ConversationMemory,
    ToolInvocation,
    SessionInteraction,
    ConversationAnalysis,
    ConversationTurn,
)


def _chunks(values: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _payload_mentions(payload: str | None, needles: Sequence[str]) -> bool:
    return bool(payload) and any(n in payload for n in needles if n)  # type: ignore[operator]


def forget_user(
    session: Session,
    tenant_id: int,
    user_id: str,
    *,
    tombstone_days: float = tombstones.DEFAULT_DAYS,
) -> ForgetReport:
    """Erase everything about the user in one transaction (the caller commits), and leave a
    tombstone that drops late work of the erased data for ``tombstone_days``."""
    # PostgreSQL: wait for completing worker transactions of the tenant, and hold them off
    # until this commits (SQLite's BEGIN IMMEDIATE already did both).
    tombstones.serialise_with_forget(session, tenant_id, exclusive=True)
    user = get_user(session, tenant_id, user_id)
    if user is None:
        raise UserNotFound(user_id)
    external_id = user.external_id
    report = ForgetReport(user_id=user_id)
    numbers = list(
        session.scalars(select(CallerNumber.number_enc).where(CallerNumber.user_id == user_id))
    )
    conv_fks = list(session.scalars(select(Conversation.id).where(Conversation.user_id == user_id)))
    conv_ids = _user_conversation_ids(session, tenant_id, user_id)
    call_sids = {
        s
        for s in session.scalars(
            select(ConversationBinding.call_sid).where(ConversationBinding.user_id == user_id)
        )
        if s
    }
    for meta in session.scalars(
        select(Conversation.metadata_).where(Conversation.user_id == user_id)
    ):
        sid = meta.get("call_sid") if isinstance(meta, dict) else None
        if isinstance(sid, str) and sid:
            call_sids.add(sid)
    memory_ids = list(session.scalars(select(Memory.id).where(Memory.user_id == user_id)))
    entity_ids = list(session.scalars(select(Entity.id).where(Entity.user_id == user_id)))

    def run(table: str, stmt: Any) -> None:
        report.add(
            table, _rowcount(session.execute(stmt.execution_options(synchronize_session=False)))
        )

    for chunk in _chunks(memory_ids, 500):
        run("entity_mentions", delete(EntityMention).where(EntityMention.memory_id.in_(chunk)))
        run(
            "memory_links",
            delete(MemoryLink).where(
                or_(MemoryLink.source_memory_id.in_(chunk), MemoryLink.target_memory_id.in_(chunk))
            ),
        )
        run(
            "memory_embeddings", delete(MemoryEmbedding).where(MemoryEmbedding.memory_id.in_(chunk))
        )
        run(
            "conversation_memories",
            delete(ConversationMemory).where(ConversationMemory.memory_id.in_(chunk)),
        )
    for chunk in _chunks(entity_ids, 500):
        run("entity_mentions", delete(EntityMention).where(EntityMention.entity_id.in_(chunk)))
    run("entity_relations", delete(EntityRelation).where(EntityRelation.user_id == user_id))
    run("entities", delete(Entity).where(Entity.user_id == user_id))
    # superseded_by points between this user's own rows; clear it so delete order is free.
    session.execute(
        update(Memory)
        .where(Memory.user_id == user_id)
        .values(superseded_by=None)
        .execution_options(synchronize_session=False)
    )
    run("memories", delete(Memory).where(Memory.user_id == user_id))

    # Issue 7: text and counts they contributed to tenant-wide issue patterns (re-authored
    # from other reporters' calls, or the pattern removed when only they reported it).
    report.deleted.update(patterns.forget_contributions(session, tenant_id, user_id))
    pattern_ids = set(
        session.scalars(
            select(IssueOccurrence.pattern_id).where(IssueOccurrence.user_id == user_id)
        )
    )
    run("issue_occurrences", delete(IssueOccurrence).where(IssueOccurrence.user_id == user_id))
    for chunk in _chunks(conv_fks, 500):
        pattern_ids.update(
            session.scalars(
                select(IssueOccurrence.pattern_id).where(IssueOccurrence.conversation_fk.in_(chunk))
            )
        )
        for model in CONVERSATION_CHILDREN:
            run(model.__tablename__, delete(model).where(model.conversation_fk.in_(chunk)))
    # A pattern only this user ever reported still carries their words.
    for pid in pattern_ids:
        if (
            session.scalar(
                select(IssueOccurrence.id).where(IssueOccurrence.pattern_id == pid).limit(1)
            )
            is None
        ):
            run(
                "issue_patterns",
                delete(IssuePattern).where(
                    IssuePattern.id == pid, IssuePattern.tenant_id == tenant_id
                ),
            )
    run("tool_invocations", delete(ToolInvocation).where(ToolInvocation.user_id == user_id))
    for chunk in _chunks(sorted(conv_ids), 500):
        run(
            "tool_invocations",
            delete(ToolInvocation).where(
                ToolInvocation.tenant_id == tenant_id, ToolInvocation.conversation_id.in_(chunk)
            ),
        )
    run(
        "session_interactions",
        delete(SessionInteraction).where(SessionInteraction.user_id == user_id),
    )
    run("conversations", delete(Conversation).where(Conversation.user_id == user_id))

    # Queued payloads: by conversation id, plus any payload of the tenant that names the user
    # or one of their numbers (a post-call event for a call that was never bound at init).
    doomed: set[int] = set()
    for chunk in _chunks(sorted(conv_ids), 500):
        doomed.update(
            session.scalars(
                select(WebhookEvent.id).where(
                    WebhookEvent.tenant_id == tenant_id, WebhookEvent.conversation_id.in_(chunk)
                )
            )
        )
    needles = [user_id, *numbers, *call_sids]
    for event_id, payload in session.execute(
        select(WebhookEvent.id, WebhookEvent.payload).where(
            WebhookEvent.tenant_id == tenant_id, WebhookEvent.payload.is_not(None)
        )
    ):
        if event_id not in doomed and _payload_mentions(payload, needles):
            doomed.add(event_id)
    doomed_conversations: set[str] = set()
    for chunk in _chunks(sorted(doomed), 500):
        doomed_conversations.update(
            c
            for c in session.scalars(
                select(WebhookEvent.conversation_id).where(WebhookEvent.id.in_(chunk))
            )
            if c
        )
        run("webhook_events", delete(WebhookEvent).where(WebhookEvent.id.in_(chunk)))

    run("user_profiles", delete(UserProfile).where(UserProfile.user_id == user_id))
    run(
        "conversation_bindings",
        delete(ConversationBinding).where(ConversationBinding.user_id == user_id),
    )
    run("caller_numbers", delete(CallerNumber).where(CallerNumber.user_id == user_id))
    session.expunge(user)
    run("users", delete(User).where(User.user_id == user_id, User.tenant_id == tenant_id))

    now = utcnow()
    report.tombstone_keys, report.tombstone_expires_at = tombstones.record(
        session,
        tenant_id,
        tombstones.Identifiers.of(
            conversation_ids=conv_ids | doomed_conversations,
            call_sids=call_sids,
            user_ids=[user_id],
            external_ids=[external_id],
            numbers=numbers,
        ),
        now=now,
        days=tombstone_days,
    )
    tombstones.prune(session, now=now)
    context.CACHE.invalidate(user_id)
    _invalidate_engine_caches(session, user_id)
    return report


def _invalidate_engine_caches(session: Session, user_id: str) -> None:
    """Drop this process's cached retrieval index of the user (it holds decrypted text).

    Other processes cannot reach theirs again (the user row is gone, so no lookup resolves
    to this user id) and evict it by LRU.
    """
    try:
        from memory import loader
    except ImportError:
        return
    loader.CACHE.invalidate(loader.cache_key(session, user_id))
