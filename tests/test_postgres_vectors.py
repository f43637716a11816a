"""pgvector: ORM writes keep embedding_vec in step; search_pg agrees with exact cosine."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import insert, text

from db import crypto
from db.bootstrap import bootstrap
from db.engine import Database, open_database
from db.models import DEFAULT_TENANT, Memory, MemoryEmbedding, User
from db.settings import Settings
from db.tenancy import require_tenant
from db.vectors import backfill_vectors, search_pg, vector_literal

DIM = 384


@pytest.fixture
def pg_db(pg_settings: Settings) -> Iterator[Database]:
    bootstrap(pg_settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(pg_settings))
    db = open_database(pg_settings)
    yield db
    db.dispose()


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _add_user(db: Database, user_id: str) -> None:
    with db.write() as s:
        tenant = require_tenant(s, DEFAULT_TENANT)
        s.add(User(user_id=user_id, tenant_id=tenant.id))


def _add_memories(
    db: Database,
    user_id: str,
    vectors: npt.NDArray[np.float32],
    *,
    state: str = "active",
    model: str = "local",
) -> list[int]:
    ids = []
    with db.write() as s:
        for i, v in enumerate(vectors):
            m = Memory(
                user_id=user_id,
                content=f"{user_id} memory {i}",
                sector_type="semantic",
                state=state,
            )
            s.add(m)
            s.flush()
            s.add(
                MemoryEmbedding(
                    memory_id=m.id,
                    sector="semantic",
                    embedding=v.tobytes(),
                    embedding_model=model,
                    dimension=int(v.shape[0]),
                )
            )
            ids.append(m.id)
    return ids


def _stored_vec(db: Database, memory_id: int) -> npt.NDArray[np.float32]:
    with db.read() as s:
        raw = s.execute(
            text("SELECT embedding_vec::text FROM memory_embeddings WHERE memory_id = :m"),
            {"m": memory_id},
        ).scalar_one()
    return np.array([float(x) for x in raw.strip("[]").split(",")], dtype=np.float32)


def test_vector_literal_round_trips_float32_exactly() -> None:
    v = np.array([1e-38, -3.4e38, 0.1, 1 / 3], dtype=np.float32)
    back = np.array(vector_literal(v).strip("[]").split(","), dtype=np.float64).astype(np.float32)
    assert back.tobytes() == v.tobytes()
    with pytest.raises(ValueError, match="NaN"):
        vector_literal(np.array([np.nan], dtype=np.float32))


def test_orm_insert_and_update_write_the_vector_column(pg_db: Database) -> None:
    rng = np.random.default_rng(1)
    _add_user(pg_db, "u1")
    [mid] = _add_memories(pg_db, "u1", _unit(rng, 1))
    with pg_db.read() as s:
        raw = s.query(MemoryEmbedding.embedding).filter_by(memory_id=mid).scalar()
    assert _stored_vec(pg_db, mid).tobytes() == raw
    # `voxmem reembed` assigns new bytes to the existing row: the vector must follow.
    new = _unit(rng, 1)[0]
    with pg_db.write() as s:
        row = s.query(MemoryEmbedding).filter_by(memory_id=mid).one()
        row.embedding = new.tobytes()
    assert _stored_vec(pg_db, mid).tobytes() == new.tobytes()


def test_search_pg_matches_exact_cosine_and_filters(pg_db: Database) -> None:
    rng = np.random.default_rng(7)
    _add_user(pg_db, "alice")
    _add_user(pg_db, "bob")
    alice_vecs = _unit(rng, 60)
    alice_ids = _add_memories(pg_db, "alice", alice_vecs)
    archived = _add_memories(pg_db, "alice", _unit(rng, 5), state="archived")
    other_model = _add_memories(pg_db, "alice", _unit(rng, 5), model="openai")
    bob_ids = _add_memories(pg_db, "bob", _unit(rng, 40))
    query = alice_vecs[3] + 0.05 * _unit(rng, 1)[0]

    with pg_db.read() as s:
        hits = search_pg(s, "alice", query, 10, model="local")
    expected_sims = alice_vecs @ (query / np.linalg.norm(query))
    order = np.argsort(-expected_sims)[:10]
    assert [h.memory_id for h in hits] == [alice_ids[i] for i in order]
    assert hits[0].memory_id == alice_ids[3]
    for h, i in zip(hits, order, strict=True):
        assert h.similarity == pytest.approx(float(expected_sims[i]), abs=1e-5)
    returned = {h.memory_id for h in hits}
    assert not returned & (set(archived) | set(other_model) | set(bob_ids))

    with pg_db.read() as s:
        with_archived = search_pg(
            s, "alice", query, 200, model="local", states=("active", "archived")
        )
        none_for_sector = search_pg(s, "alice", query, 5, sectors=["episodic"])
        other_dim = search_pg(s, "alice", query[:10], 5)
    assert {h.memory_id for h in with_archived} == set(alice_ids) | set(archived)
    assert none_for_sector == []
    assert other_dim == []


def test_search_pg_uses_the_hnsw_index_for_a_large_user(pg_db: Database) -> None:
    """The ORDER BY expression must match the partial expression index, or PostgreSQL sorts
    every row of the user: prove the planner can pick the index."""
    rng = np.random.default_rng(3)
    _add_user(pg_db, "big")
    vecs = _unit(rng, 800)
    # Core bulk insert + backfill (as migrate-data does): the ORM path row by row is slow here.
    with pg_db.write_engine.begin() as conn:
        ids = list(
            conn.execute(
                insert(Memory).returning(Memory.id, sort_by_parameter_order=True),
                [{"user_id": "big", "content": "x", "sector_type": "semantic"} for _ in vecs],
            ).scalars()
        )
        conn.execute(
            insert(MemoryEmbedding),
            [
                {
                    "memory_id": mid,
                    "sector": "semantic",
                    "embedding": v.tobytes(),
                    "embedding_model": "local",
                    "dimension": DIM,
                }
                for mid, v in zip(ids, vecs, strict=True)
            ],
        )
        assert backfill_vectors(conn) == len(vecs)
        conn.execute(text("ANALYZE memory_embeddings"))
        conn.execute(text("ANALYZE memories"))
    q = vecs[42]
    with pg_db.read() as s:
        s.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            r[0]
            for r in s.execute(
                text(
                    "EXPLAIN SELECT e.memory_id FROM memory_embeddings e "
                    "JOIN memories m ON m.id = e.memory_id "
                    "WHERE m.user_id = 'big' AND e.dimension = 384 AND m.state IN ('active') "
                    "ORDER BY e.embedding_vec::vector(384) <=> CAST(:q AS vector(384)) LIMIT 5"
                ),
                {"q": vector_literal(q)},
            )
        )
        hits = search_pg(s, "big", q, 5)
    assert "idx_embeddings_vec_384" in plan, plan
    assert hits[0].memory_id == ids[42]


def test_search_pg_refuses_sqlite(settings: Settings) -> None:
    bootstrap(settings, issue_tokens=False)
    db = open_database(settings)
    try:
        with db.read() as s, pytest.raises(RuntimeError, match="PostgreSQL"):
            search_pg(s, "u", np.zeros(3, dtype=np.float32), 1)
    finally:
        db.dispose()


def test_relaxed_writes_turn_synchronous_commit_off_for_their_transaction_only(
    pg_db: Database,
) -> None:
    with pg_db.write() as session:
        # The test server runs with synchronous_commit=off (tests/pg.py); a deployment's "on".
        session.execute(text("SET synchronous_commit TO on"))  # session-level, this connection
    with pg_db.write_relaxed() as session:
        assert session.execute(text("SHOW synchronous_commit")).scalar() == "off"
        session.execute(text("UPDATE tenants SET name = 'relaxed' WHERE slug = 'default'"))
    with pg_db.write() as session:
        # SET LOCAL ended with its transaction: the pooled connection is back to "on".
        assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"
        name = session.execute(text("SELECT name FROM tenants WHERE slug = 'default'")).scalar()
        assert name == "relaxed"
