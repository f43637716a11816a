"""Embeddings in pgvector: keep ``memory_embeddings.embedding_vec`` in step, search in PostgreSQL.

The float32 bytes in ``memory_embeddings.embedding`` stay the source of truth on every dialect:
SQLite and the per-user in-process index read them. On PostgreSQL, migration 0002 adds an
unmapped ``embedding_vec vector`` column (not in the ORM model, so SQLite never sees it) with
one HNSW cosine index per common dimension. This module:

- writes ``embedding_vec`` whenever the ORM inserts a ``MemoryEmbedding`` or changes its
  ``embedding`` (mapper events, registered when ``db.models`` is imported), so every writer —
  the memory writer, ``voxmem reembed``, tests — stays correct without knowing about pgvector;
- ``backfill_vectors`` fills rows written without the ORM (``voxmem migrate-data``);
- ``search_pg`` runs the cosine k-NN in the database, for users whose in-process index is cold
  or too large to load on the tool path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pgvector.sqlalchemy  # noqa: F401 - registers the `vector` type for reflection
from sqlalchemy import Connection, bindparam, event, inspect, text
from sqlalchemy.orm import Mapper, Session

if TYPE_CHECKING:
    # Imported lazily at run time: db.models registers these events at its end (a cycle).
    from db.models import MemoryEmbedding

# Dimensions with an HNSW index (migration 0002; keep in step). Others are searched exactly.
INDEXED_DIMENSIONS = (384, 1536)
# Objects that exist on PostgreSQL only and are deliberately not in the ORM metadata; schema
# comparisons (autogenerate, tests) must not read them as drift.
PG_ONLY_COLUMNS = frozenset({("memory_embeddings", "embedding_vec")})
PG_ONLY_INDEXES = frozenset(f"idx_embeddings_vec_{dim}" for dim in INDEXED_DIMENSIONS)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, _compare: Any) -> bool:
    """Alembic filter: autogenerate and schema comparisons skip the PostgreSQL-only objects
    (migration 0002 owns them) instead of proposing to drop them."""
    if type_ == "column" and reflected and (obj.table.name, name) in PG_ONLY_COLUMNS:
        return False
    return not (type_ == "index" and reflected and name in PG_ONLY_INDEXES)


# HNSW candidates examined per query; pgvector's default 40 is too few once the user filter
# discards most of them (iterative scan fetches more when needed).
EF_SEARCH = 100

FloatVector = npt.NDArray[np.float32]


def is_postgres(bind: Session | Connection) -> bool:
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    return dialect.name == "postgresql"


def vector_literal(values: FloatVector | Sequence[float] | bytes) -> str:
    """pgvector's text form. ``repr`` of the float64 widening of each float32 is exact, so the
    value PostgreSQL parses back into float4 is bit-identical to the stored bytes."""
    if isinstance(values, bytes | bytearray | memoryview):
        array = np.frombuffer(bytes(values), dtype="<f4")
    else:
        array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"expected a non-empty 1-d vector, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("vector has NaN or infinite components; pgvector rejects them")
    return "[" + ",".join(repr(float(v)) for v in array) + "]"


_SET_VEC = text("UPDATE memory_embeddings SET embedding_vec = CAST(:v AS vector) WHERE id = :id")


def write_vector(bind: Session | Connection, embedding_id: int, raw: bytes) -> None:
    """Set ``embedding_vec`` of one row from its float32 bytes (PostgreSQL; no-op elsewhere)."""
    if is_postgres(bind):
        bind.execute(_SET_VEC, {"id": embedding_id, "v": vector_literal(raw)})


def backfill_vectors(conn: Connection, *, batch: int = 1000) -> int:
    """Fill ``embedding_vec`` where it is NULL (rows copied with Core). Returns rows filled."""
    if conn.dialect.name != "postgresql":
        return 0
    filled = 0
    last_id = 0
    while True:
        rows = conn.execute(
            text(
                "SELECT id, embedding FROM memory_embeddings "
                "WHERE embedding_vec IS NULL AND id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last_id, "n": batch},
        ).all()
        if not rows:
            return filled
        params = [{"id": r.id, "v": vector_literal(bytes(r.embedding))} for r in rows]
        conn.execute(_SET_VEC, params)
        filled += len(rows)
        last_id = rows[-1].id


# --- keep the column in step with ORM writes ----------------------------------------------------
def _after_insert(_mapper: Mapper[Any], connection: Connection, target: MemoryEmbedding) -> None:
    if connection.dialect.name == "postgresql" and target.embedding is not None:
        connection.execute(_SET_VEC, {"id": target.id, "v": vector_literal(target.embedding)})


def _after_update(_mapper: Mapper[Any], connection: Connection, target: MemoryEmbedding) -> None:
    if connection.dialect.name != "postgresql":
        return
    if inspect(target).attrs.embedding.history.has_changes():
        connection.execute(_SET_VEC, {"id": target.id, "v": vector_literal(target.embedding)})


def register_events() -> None:
    """Idempotent; called from ``db.models`` so that any process using the models has it."""
    from db.models import MemoryEmbedding

    for name, fn in (("after_insert", _after_insert), ("after_update", _after_update)):
        if not event.contains(MemoryEmbedding, name, fn):
            event.listen(MemoryEmbedding, name, fn)


# --- search -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VectorHit:
    memory_id: int
    similarity: float  # cosine similarity, 1 - cosine distance


def search_pg(
    session: Session,
    user_id: str,
    query_vec: FloatVector | Sequence[float],
    k: int,
    *,
    model: str | None = None,
    states: Sequence[str] = ("active",),
    sectors: Sequence[str] | None = None,
    current_only: bool = True,
) -> list[VectorHit]:
    """The ``k`` memories of ``user_id`` nearest to ``query_vec`` by cosine, computed in
    PostgreSQL, best first.

    ``model`` restricts to one embedding model (pass the embedder's name: vectors of different
    models are not comparable). ``current_only`` drops memories whose ``valid_to`` has passed,
    like the in-process index does for the default states. When the dimension has an HNSW index
    the ORDER BY uses the indexed expression so the planner can walk the index (with pgvector's
    iterative scan, because the user filter discards most candidates); for a small user the
    planner prefers the per-user B-tree and an exact sort, which is also right.
    """
    if not is_postgres(session):
        raise RuntimeError("search_pg needs PostgreSQL; use the in-process index on SQLite")
    query = np.asarray(query_vec, dtype=np.float32)
    dim = int(query.shape[0])
    if k <= 0:
        return []
    cast = f"vector({dim})"
    # The cast expression must be written exactly as in the index for the index to apply.
    distance = f"(e.embedding_vec::{cast} <=> CAST(:q AS {cast}))"
    where = [
        "m.user_id = :user_id",
        "e.dimension = :dim",
        "e.embedding_vec IS NOT NULL",
        "m.state IN :states",
    ]
    params: dict[str, Any] = {
        "user_id": user_id,
        "dim": dim,
        "q": vector_literal(query),
        "k": int(k),
        "states": tuple(states),
    }
    if dim in INDEXED_DIMENSIONS:
        # A literal, so the partial index's predicate (dimension = N) is provably implied.
        where[1] = f"e.dimension = {dim}"
    if model is not None:
        where.append("e.embedding_model = :model")
        params["model"] = model
    if sectors:
        where.append("m.sector_type IN :sectors")
        params["sectors"] = tuple(sectors)
    if current_only:
        where.append("(m.valid_to IS NULL OR m.valid_to > now())")
    sql = text(
        f"SELECT e.memory_id AS memory_id, {distance} AS distance "  # noqa: S608 - fixed parts
        "FROM memory_embeddings e JOIN memories m ON m.id = e.memory_id "
        f"WHERE {' AND '.join(where)} ORDER BY distance LIMIT :k"
    ).bindparams(bindparam("states", expanding=True))
    if sectors:
        sql = sql.bindparams(bindparam("sectors", expanding=True))
    # SET LOCAL: scoped to this transaction, so pooled connections are not left altered.
    session.execute(text(f"SET LOCAL hnsw.ef_search = {EF_SEARCH}"))
    session.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    rows = session.execute(sql, params).all()
    return [VectorHit(int(r.memory_id), 1.0 - float(r.distance)) for r in rows]
