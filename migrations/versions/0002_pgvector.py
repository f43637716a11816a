"""pgvector: memory_embeddings.embedding_vec with HNSW cosine indexes (PostgreSQL only)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 07:10:00

One column for every embedding model: ``embedding_vec vector`` without a fixed dimension, so a
deployment can hold the local 384-d model and an OpenAI model side by side (``voxmem reembed``
switches models without a schema change). HNSW needs a fixed dimension, so each indexed
dimension gets a partial expression index ``((embedding_vec::vector(N))) WHERE dimension = N``;
``db.vectors.search_pg`` writes its ORDER BY with the same expression so the planner can use it.

Indexed here: 384 (the local MiniLM model, the default) and 1536 (OpenAI text-embedding-3-small
and ada-002). Another dimension still works (exact search over the user's rows); to index it,
see docs/scaling.md ("Other embedding dimensions"). HNSW on ``vector`` stops at 2,000
dimensions; 3072-d models need a ``halfvec(3072)`` expression index instead.

The bytes column ``embedding`` stays the source of truth on every dialect (the in-process index
and SQLite read it); ``embedding_vec`` is written beside it by ``db.vectors`` and backfilled
here for rows that already exist. On SQLite this migration does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Keep in step with db/vectors.py (INDEXED_DIMENSIONS).
INDEXED_DIMENSIONS = (384, 1536)
BACKFILL_BATCH = 1000


def _literal(raw: bytes) -> str:
    values = np.frombuffer(raw, dtype="<f4")
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("ALTER TABLE memory_embeddings ADD COLUMN IF NOT EXISTS embedding_vec vector")
    for dim in INDEXED_DIMENSIONS:
        op.execute(
            f"CREATE INDEX IF NOT EXISTS idx_embeddings_vec_{dim} ON memory_embeddings "
            f"USING hnsw ((embedding_vec::vector({dim})) vector_cosine_ops) "
            f"WHERE dimension = {dim}"
        )
    # Rows written before this migration (a PostgreSQL deployment created at 0001).
    last_id = 0
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT id, embedding FROM memory_embeddings "
                "WHERE embedding_vec IS NULL AND id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last_id, "n": BACKFILL_BATCH},
        ).all()
        if not rows:
            break
        bind.execute(
            sa.text(
                "UPDATE memory_embeddings SET embedding_vec = CAST(:v AS vector) WHERE id = :id"
            ),
            [{"id": r.id, "v": _literal(bytes(r.embedding))} for r in rows],
        )
        last_id = rows[-1].id


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for dim in INDEXED_DIMENSIONS:
        op.execute(f"DROP INDEX IF EXISTS idx_embeddings_vec_{dim}")
    op.execute("ALTER TABLE memory_embeddings DROP COLUMN IF EXISTS embedding_vec")
