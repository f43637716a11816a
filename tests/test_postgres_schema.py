"""PostgreSQL: the one migration history builds the same schema as the models, plus pgvector."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.engine import make_engine
from db.models import Base
from db.settings import Settings


def test_pg_migrated_schema_equals_the_models(pg_settings: Settings) -> None:
    engine = make_engine(pg_settings)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
