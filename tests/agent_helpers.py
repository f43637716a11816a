"""Seeding helpers for the agent-endpoint tests: users, numbers, bindings and embedded memories
written straight through the models (no worker needed)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from db.engine import Database
from db.models import ConversationBinding, Memory, MemoryEmbedding, User
from db.settings import Settings
from db.tenancy import create_tenant, create_token, get_tenant
from memory.embedders import get_embedder
from memory.identity import attach_number, create_guest, normalize_number
from memory.loader import vector_to_bytes


def ensure_tenant(db: Database, slug: str) -> int:
    with db.write() as session:
        tenant = get_tenant(session, slug)
        if tenant is None:
            tenant, _ = create_tenant(session, slug)
        return tenant.id


def token(db: Database, slug: str, scope: str) -> str:
    ensure_tenant(db, slug)
    with db.write() as session:
        return create_token(session, slug, scope).token


def add_user(
    db: Database, tenant: str = "default", *, number: str | None = None, name: str | None = None
) -> str:
    tenant_id = ensure_tenant(db, tenant)
    with db.write() as session:
        user = create_guest(session, tenant_id)
        if name:
            user.name = name
            user.is_guest = False
        if number:
            attach_number(session, tenant_id, user, normalize_number(number) or number)
        return user.user_id


def bind(db: Database, tenant: str, user_id: str, conversation_id: str) -> None:
    tenant_id = ensure_tenant(db, tenant)
    with db.write() as session:
        session.add(
            ConversationBinding(
                tenant_id=tenant_id, conversation_id=conversation_id, user_id=user_id
            )
        )


def add_memories(
    db: Database,
    settings: Settings,
    user_id: str,
    contents: Sequence[str],
    *,
    sector: str = "semantic",
    salience: float = 0.7,
    state: str = "active",
    sources: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Memories with real embeddings from the configured (local) embedder."""
    embedder = get_embedder(settings)
    vectors = embedder.embed(list(contents)) if contents else []
    now = datetime.now(UTC)
    ids: list[int] = []
    with db.write() as session:
        for i, (content, vector) in enumerate(zip(contents, vectors, strict=True)):
            memory = Memory(
                user_id=user_id,
                content=content,
                sector_type=sector,
                salience=salience,
                state=state,
                recency=now - timedelta(minutes=i),
                sources=sources
                if sources is not None
                else [{"conversation_id": "conv_seed", "turns": [i]}],
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
            ids.append(memory.id)
        user = session.get(User, user_id)
        assert user is not None
        user.memory_version += 1
    return ids
