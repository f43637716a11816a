"""Memories the gateway derives itself (issue patterns, reflections), kept one per key.

Extracted memories go through :class:`memory.store.MemoryWriter` (consolidation by meaning).
Derived ones are different: they are restated on every run, and their wording changes when
what they summarise changes ("usually calls on Fridays" → "… on Mondays"). So each has a stable
``metadata.key``; an unchanged text only refreshes recency, a changed one supersedes the old row
(history kept, like any superseded fact), and a condition that no longer holds archives it.
Running the same job twice therefore writes nothing new: the reflection job is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Memory, MemoryEmbedding, User
from memory.embedders import Embedder, EmbedderError
from memory.loader import vector_to_bytes
from memory.scoring import decay_rate
from memory.store import content_hash

log = structlog.get_logger("voxmem.derived")


def derived_memories(session: Session, user_id: str, kind: str) -> dict[str, list[Memory]]:
    """Active derived memories of ``kind`` (the ``extractor`` column) by key."""
    out: dict[str, list[Memory]] = {}
    for m in session.scalars(
        select(Memory).where(
            Memory.user_id == user_id, Memory.extractor == kind, Memory.state == "active"
        )
    ):
        key = str((m.metadata_ or {}).get("key") or "")
        out.setdefault(key, []).append(m)
    return out


def _bump(user: User, inserted: int) -> None:
    # Retrieval indexes and the init digest are keyed by memory_version.
    user.memory_version = (user.memory_version or 0) + 1
    user.total_memories = (user.total_memories or 0) + inserted


def upsert(
    session: Session,
    user: User,
    *,
    kind: str,
    key: str,
    content: str,
    sector: str,
    salience: float,
    embedder: Embedder,
    now: datetime,
    conversation_ids: Sequence[str] = (),
    existing: dict[str, list[Memory]] | None = None,
) -> Memory | None:
    """Make ``content`` the one active memory for (user, kind, key). Returns the active row,
    or None when the embedder failed (nothing is written; the next run retries)."""
    current = existing if existing is not None else derived_memories(session, user.user_id, kind)
    rows = sorted(current.get(key, []), key=lambda m: m.id)
    same = next((m for m in rows if m.content == content), None)
    if same is not None:
        same.recency = now
        for other in rows:
            if other is not same:
                other.state, other.valid_to, other.superseded_by = "superseded", now, same.id
        return same
    try:
        vector = embedder.embed([content])[0]
    except (EmbedderError, OSError, ValueError) as exc:
        log.warning("derived.embed_failed", kind=kind, error=str(exc)[:200])
        return None
    memory = Memory(
        user_id=user.user_id,
        content=content,
        content_hash=content_hash(content),
        sector_type=sector,
        salience=salience,
        recency=now,
        decay_rate=decay_rate(sector),
        state="active",
        source_conversation=conversation_ids[-1] if conversation_ids else None,
        sources=[{"conversation_id": c, "turns": []} for c in conversation_ids[-5:]],
        metadata_={"kind": kind, "key": key},
        valid_from=now,
        extractor=kind,
        created_at=now,
        updated_at=now,
    )
    session.add(memory)
    session.flush()
    session.add(
        MemoryEmbedding(
            memory_id=memory.id,
            sector=sector,
            embedding=vector_to_bytes(vector),
            embedding_model=embedder.name,
            dimension=int(vector.shape[0]),
        )
    )
    for old in rows:
        old.state, old.valid_to, old.superseded_by = "superseded", now, memory.id
    _bump(user, 1)
    session.flush()
    return memory


def retire(session: Session, user: User, rows: Sequence[Memory], now: datetime) -> int:
    """Archive derived memories whose condition no longer holds."""
    for m in rows:
        m.state, m.valid_to = "archived", now
    if rows:
        _bump(user, 0)
    return len(rows)
