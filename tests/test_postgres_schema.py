"""PostgreSQL: one migration history builds the models' schema, plus pgvector (0002)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from db.engine import make_engine
from db.migrate import alembic_config, current_revision, head_revision, upgrade_to_head
from db.models import Base
from db.settings import Settings
from db.vectors import INDEXED_DIMENSIONS, include_object
from tests.conftest import make_settings
from tests.pg import PgServer


def test_pg_migrated_schema_equals_the_models(pg_settings: Settings) -> None:
    engine = make_engine(pg_settings)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"include_object": include_object})
            diff = compare_metadata(ctx, Base.metadata)
            assert current_revision(engine) == head_revision(pg_settings)
    finally:
        engine.dispose()
    assert diff == []


def test_pgvector_column_and_hnsw_indexes_exist(pg_settings: Settings) -> None:
    engine = make_engine(pg_settings)
    try:
        insp = inspect(engine)
        columns = {c["name"]: c for c in insp.get_columns("memory_embeddings")}
        assert "embedding_vec" in columns
        with engine.connect() as conn:
            defs = dict(
                conn.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes "
                        "WHERE tablename = 'memory_embeddings' "
                        "AND indexname LIKE 'idx_embeddings_vec_%'"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert set(defs) == {f"idx_embeddings_vec_{d}" for d in INDEXED_DIMENSIONS}
    for dim in INDEXED_DIMENSIONS:
        definition = defs[f"idx_embeddings_vec_{dim}"]
        assert "USING hnsw" in definition and "vector_cosine_ops" in definition
        assert f"vector({dim})" in definition and f"dimension = {dim}" in definition


def test_0002_backfills_rows_written_at_0001(pg_server: PgServer, tmp_path: Path) -> None:
    """A PostgreSQL deployment created before pgvector: its embeddings get vectors on upgrade.

    Starts from an empty database without the extension, as a managed server hands it out."""
    url = pg_server.new_database(template="template0")
    settings = make_settings(tmp_path / "data", database_url=url)
    engine = create_engine(url)
    try:
        cfg = alembic_config(settings)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        vec = np.array([0.1, -2.5, 3.0e-8, 1.0], dtype="<f4")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (slug, created_at) VALUES ('t', now())"))
            conn.execute(
                text(
                    "INSERT INTO users (user_id, tenant_id, created_at, updated_at) "
                    "SELECT 'u1', id, now(), now() FROM tenants"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO memories (user_id, content, sector_type, recency, created_at, "
                    "updated_at) VALUES ('u1', 'x', 'semantic', now(), now(), now())"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO memory_embeddings (memory_id, sector, embedding, embedding_model,"
                    " dimension, created_at) SELECT id, 'semantic', :b, 'm', 4, now() FROM memories"
                ),
                {"b": vec.tobytes()},
            )
        upgrade_to_head(settings)
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT embedding_vec::text FROM memory_embeddings")
            ).scalar()
        assert stored is not None
        got = np.array([float(x) for x in stored.strip("[]").split(",")], dtype=np.float32)
        assert got.tobytes() == vec.tobytes()
    finally:
        engine.dispose()
        pg_server.drop_database(url)


def test_0002_is_a_no_op_on_sqlite(settings: Settings) -> None:
    upgrade_to_head(settings)
    engine = make_engine(settings)
    try:
        assert current_revision(engine) == head_revision(settings)
        columns = {c["name"] for c in inspect(engine).get_columns("memory_embeddings")}
        assert "embedding_vec" not in columns
    finally:
        engine.dispose()
