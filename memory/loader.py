"""Load a user's memories, vectors and links from the database into a :class:`UserIndex`.

Shared by retrieval (read engine) and the writer (inside the worker's write transaction), with
one process-wide cache keyed by (database, user) and validated by ``users.memory_version``.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

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


def load_index(session: Session, user_id: str, model: str, version: int) -> UserIndex:
    rows = session.execute(
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
    ).all()
    memories = [
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
        for r in rows
    ]
    link_rows = session.execute(
        select(MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight)
        .join(Memory, Memory.id == MemoryLink.source_memory_id)
        .where(Memory.user_id == user_id)
    ).all()
    links = [Link(int(s), int(t), float(w)) for s, t, w in link_rows]
    return build_index(version, model, memories, links)


def get_index(session: Session, user_id: str, model: str) -> UserIndex:
    """The user's index at its current version (cached; rebuilt after any write)."""
    version = user_version(session, user_id) or 0
    key = cache_key(session, user_id)
    index = CACHE.get(key, version, model)
    if index is None:
        index = load_index(session, user_id, model, version)
        CACHE.put(key, index)
    return index
