"""Read models for the operator console (``/console``, issue 11). No HTTP here: the console's
admin endpoints (``api/routes/console_api.py``) call these.

Everything is scoped to one tenant. Names, numbers and transcript turns are stored encrypted;
they are decrypted here only for the one caller or call an operator opened ("on demand"), and a
caller search by name decrypts names of the tenant's most recently active callers only
(``NAME_SCAN_LIMIT``), since an encrypted column cannot be searched in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    CallerNumber,
    Conversation,
    ConversationAnalysis,
    ConversationTurn,
    Entity,
    Memory,
    User,
)
from memory.entities import self_hash
from memory.identity import get_user, normalize_number, user_for_number
from memory.privacy import iso, normalise_sources

NAME_SCAN_LIMIT = 5000
"""A name search decrypts at most this many callers' names (most recently active first)."""


def mask_number(number: str | None) -> str | None:
    """``+1•••••0142``: enough for an operator to recognise a caller, not to dial them."""
    if not number:
        return None
    if len(number) <= 6:
        return "•" * len(number)
    return number[:2] + "•" * (len(number) - 6) + number[-4:]


def _counts(session: Session, user_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {u: {"memories": 0, "calls": 0} for u in user_ids}
    if not user_ids:
        return out
    for uid, n in session.execute(
        select(Memory.user_id, func.count())
        .where(Memory.user_id.in_(list(user_ids)), Memory.state == "active")
        .group_by(Memory.user_id)
    ):
        out[uid]["memories"] = int(n)
    for uid, n in session.execute(
        select(Conversation.user_id, func.count())
        .where(Conversation.user_id.in_(list(user_ids)))
        .group_by(Conversation.user_id)
    ):
        out[uid]["calls"] = int(n)
    return out


def _numbers(session: Session, user_ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not user_ids:
        return out
    for uid, enc in session.execute(
        select(CallerNumber.user_id, CallerNumber.number_enc).where(
            CallerNumber.user_id.in_(list(user_ids))
        )
    ):
        masked = mask_number(enc)
        if masked:
            out.setdefault(uid, []).append(masked)
    return out


def spoken_names(session: Session, user_ids: Sequence[str]) -> dict[str, str]:
    """The name each caller gave on a call (their self node in the entity graph), for callers
    an operator has not named: the pipeline learns it before anyone sets ``users.name``."""
    out: dict[str, str] = {}
    if not user_ids:
        return out
    for uid, name in session.execute(
        select(Entity.user_id, Entity.name).where(
            Entity.user_id.in_(list(user_ids)), Entity.name_hash == self_hash()
        )
    ):
        if name and name != "caller":
            out[uid] = name
    return out


def caller_rows(session: Session, users: Sequence[User]) -> list[dict[str, Any]]:
    ids = [u.user_id for u in users]
    counts = _counts(session, ids)
    numbers = _numbers(session, ids)
    spoken = spoken_names(session, ids)
    return [
        {
            "user_id": u.user_id,
            "name": u.name,
            "spoken_name": spoken.get(u.user_id),
            "tier": u.tier,
            "is_guest": u.is_guest,
            "last_interaction": iso(u.last_interaction),
            "numbers": numbers.get(u.user_id, []),
            "memories": counts[u.user_id]["memories"],
            "calls": counts[u.user_id]["calls"],
        }
        for u in users
    ]


def _looks_like_number(query: str) -> bool:
    """Digits with the usual punctuation: ``+1 (555) 010-0142``, ``555.010.0142``."""
    compact = re.sub(r"[\s().+-]", "", query)
    return len(compact) >= 3 and compact.isdigit()


def search_callers(
    session: Session, tenant_id: int, query: str, *, limit: int = 50
) -> list[dict[str, Any]]:
    """Callers by exact user id, phone number (normalised, matched by its keyed hash) or a
    case-insensitive part of their name; with an empty query, the most recently active."""
    query = query.strip()
    recent = (
        select(User)
        .where(User.tenant_id == tenant_id)
        .order_by(User.last_interaction.desc().nulls_last(), User.created_at.desc())
    )
    if not query:
        return caller_rows(session, list(session.scalars(recent.limit(limit))))
    found: dict[str, User] = {}
    exact = get_user(session, tenant_id, query)
    if exact is not None:
        found[exact.user_id] = exact
    if _looks_like_number(query):
        e164 = normalize_number(query)
        if e164:
            by_number = user_for_number(session, tenant_id, e164)
            if by_number is not None and by_number.tenant_id == tenant_id:
                found[by_number.user_id] = by_number
    needle = query.casefold()
    scanned = list(session.scalars(recent.limit(NAME_SCAN_LIMIT)))
    spoken = spoken_names(session, [u.user_id for u in scanned])
    for user in scanned:
        if len(found) >= limit:
            break
        names = (user.name or "", spoken.get(user.user_id, ""))
        if any(needle in name.casefold() for name in names if name):
            found.setdefault(user.user_id, user)
    return caller_rows(session, list(found.values())[:limit])


def _conversation(session: Session, tenant_id: int, conversation_id: str) -> Conversation | None:
    return session.scalar(
        select(Conversation).where(
            Conversation.tenant_id == tenant_id, Conversation.conversation_id == conversation_id
        )
    )


def _turns(session: Session, conv: Conversation) -> list[ConversationTurn]:
    return list(
        session.scalars(
            select(ConversationTurn)
            .where(ConversationTurn.conversation_fk == conv.id)
            .order_by(ConversationTurn.turn_order)
        )
    )


def _turn_out(turn: ConversationTurn) -> dict[str, Any]:
    return {
        "index": turn.turn_order,
        "role": turn.role,
        "message": turn.message,
        "time_in_call_secs": turn.timestamp,
    }


def conversation_detail(
    session: Session, tenant_id: int, conversation_id: str
) -> dict[str, Any] | None:
    """One call: its transcript (decrypted) and, per turn, the memories extracted from it."""
    conv = _conversation(session, tenant_id, conversation_id)
    if conv is None:
        return None
    analysis = session.scalar(
        select(ConversationAnalysis).where(ConversationAnalysis.conversation_fk == conv.id)
    )
    by_turn: dict[int, list[dict[str, Any]]] = {}
    unplaced: list[dict[str, Any]] = []
    for memory in session.scalars(
        select(Memory).where(Memory.user_id == conv.user_id).order_by(Memory.id)
    ):
        for source in normalise_sources(memory.sources):
            if source["conversation_id"] != conversation_id:
                continue
            brief = {
                "id": memory.id,
                "content": memory.content,
                "sector": memory.sector_type,
                "salience": round(float(memory.salience), 4),
                "state": memory.state,
            }
            if not source["turns"]:
                unplaced.append(brief)
            for index in source["turns"]:
                by_turn.setdefault(index, []).append(brief)
    user = session.get(User, conv.user_id)
    return {
        "conversation_id": conv.conversation_id,
        "user_id": conv.user_id,
        "user_name": user.name if user is not None else None,
        "agent_id": conv.agent_id,
        "start_time": iso(conv.start_time),
        "duration_secs": conv.duration_secs,
        "status": conv.status,
        "call_successful": conv.call_successful,
        "summary": analysis.summary if analysis is not None else None,
        "title": analysis.summary_title if analysis is not None else None,
        "turns": [
            {**_turn_out(t), "memories": by_turn.get(t.turn_order, [])}
            for t in _turns(session, conv)
        ],
        "memories_without_turns": unplaced,
    }


def memory_sources(
    session: Session, tenant_id: int, user_id: str, memory_id: int
) -> list[dict[str, Any]] | None:
    """The transcript turns a memory came from, decrypted: None when the memory is not this
    tenant's user's. A source whose call was since forgotten is listed with no turns."""
    user = get_user(session, tenant_id, user_id)
    memory = session.get(Memory, memory_id)
    if user is None or memory is None or memory.user_id != user.user_id:
        return None
    out: list[dict[str, Any]] = []
    for source in normalise_sources(memory.sources):
        conv = _conversation(session, tenant_id, source["conversation_id"])
        wanted = set(source["turns"])
        turns = [] if conv is None else [t for t in _turns(session, conv) if t.turn_order in wanted]
        out.append(
            {
                "conversation_id": source["conversation_id"],
                "start_time": iso(conv.start_time) if conv is not None else None,
                "turns": [_turn_out(t) for t in turns],
                "missing": conv is None,
            }
        )
    return out
