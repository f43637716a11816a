"""Load a user's memories, vectors and links from the database into a :class:`UserIndex`.

Shared by retrieval (read engine) and the writer (inside the worker's write transaction), with
one process-wide cache keyed by (database, user) and validated by ``users.memory_version``.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from db.models import Memory, MemoryEmbedding, MemoryLink, User
from memory.index import IndexCache, IndexedMemory, Link, UserIndex, build_index

CACHE = IndexCache()


def vector_to_bytes(vector: np.ndarray[tuple[int], np.dtype[np.float32]]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def bytes_to_vector(raw: bytes, dim: int) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
    v = np.frombuffer(raw, dtype="<f4")
    if v.shape[0] != dim:
        raise ValueError(f"stored vector has {v.shape[0]} floats, row says {dim}")
    return v.astype(np.float32)


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def cache_key(session: Session, user_id: str) -> tuple[str, str]:
    # Keyed by database too: tests and tools may open several databases in one process.
    return (str(session.get_bind().engine.url), user_id)


def user_version(session: Session, user_id: str) -> int | None:
    return session.execute(
        select(User.memory_version).where(User.user_id == user_id)
    ).scalar_one_or_none()


def load_memories(
    session: Session, user_id: str, model: str, ids: Collection[int] | None = None
) -> list[IndexedMemory]:
    """The user's memories with a ``model`` embedding (decrypted), by id; only ``ids`` when
    given (database-side search loads its candidates, never the whole user)."""
    query = (
        select(
            Memory.id,
            Memory.content,
            Memory.sector_type,
            Memory.state,
            Memory.salience,
            Memory.recency,
            Memory.sources,
            Memory.created_at,
            Memory.valid_to,
            MemoryEmbedding.embedding,
            MemoryEmbedding.dimension,
        )
        .join(MemoryEmbedding, MemoryEmbedding.memory_id == Memory.id)
        .where(Memory.user_id == user_id, MemoryEmbedding.embedding_model == model)
        .order_by(Memory.id)
    )
    if ids is not None:
        if not ids:
            return []
        query = query.where(Memory.id.in_(list(ids)))
    return [
        IndexedMemory(
            id=r.id,
            content=r.content,
            sector=r.sector_type,
            state=r.state,
            salience=float(r.salience),
            last_seen_epoch=_epoch(r.recency),
            vector=bytes_to_vector(r.embedding, r.dimension),
            sources=tuple(r.sources or ()),
            created_epoch=_epoch(r.created_at),
            valid_to_epoch=_epoch(r.valid_to) if r.valid_to is not None else None,
        )
        for r in session.execute(query).all()
    ]


def load_links_from(
    session: Session, user_id: str, model: str, source_ids: Collection[int]
) -> list[Link]:
    """Outgoing links of ``source_ids`` whose target is one of the user's memories with a
    ``model`` embedding: exactly the links a full index of the user would keep for them."""
    if not source_ids:
        return []
    target = aliased(Memory)
    has_vector = (
        select(MemoryEmbedding.id)
        .where(
            MemoryEmbedding.memory_id == MemoryLink.target_memory_id,
            MemoryEmbedding.embedding_model == model,
        )
        .exists()
    )
    rows = session.execute(
        select(MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight)
        .join(target, target.id == MemoryLink.target_memory_id)
        .where(
            MemoryLink.source_memory_id.in_(list(source_ids)),
            MemoryLink.source_memory_id != MemoryLink.target_memory_id,
            target.user_id == user_id,
            has_vector,
        )
    ).all()
    return [Link(int(s), int(t), float(w)) for s, t, w in rows]


def load_index(session: Session, user_id: str, model: str, version: int) -> UserIndex:
    memories = load_memories(session, user_id, model)
    link_rows = session.execute(
        select(MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight)
        .join(Memory, Memory.id == MemoryLink.source_memory_id)
        .where(Memory.user_id == user_id)
    ).all()
    links = [Link(int(s), int(t), float(w)) for s, t, w in link_rows]
    return build_index(version, model, memories, links)


def cached_index(
    session: Session, user_id: str, model: str, version: int | None = None
) -> UserIndex | None:
    """The user's index if this process already holds it at ``version`` (the current one when
    not given), without loading anything: one small query at most."""
    if version is None:
        version = user_version(session, user_id) or 0
    return CACHE.get(cache_key(session, user_id), version, model)


def is_cached(session: Session, user_id: str, model: str, version: int | None = None) -> bool:
    return cached_index(session, user_id, model, version) is not None


def get_index(session: Session, user_id: str, model: str) -> UserIndex:
    """The user's index at its current version (cached; rebuilt after any write)."""
    version = user_version(session, user_id) or 0
    key = cache_key(session, user_id)
    index = CACHE.get(key, version, model)
    if index is None:
        index = load_index(session, user_id, model, version)
        CACHE.put(key, index)
    return index
