"""Schema migrations (Alembic, configured in code) and first-run bootstrap."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from db.engine import ensure_wal, make_engine
from db.settings import Settings

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.database_url)
    cfg.attributes["database_url"] = settings.database_url
    return cfg


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_migrated(engine: Engine, settings: Settings) -> bool:
    return current_revision(engine) == head_revision(settings)


def upgrade_to_head(settings: Settings) -> None:
    """Idempotent: an up-to-date schema is left alone."""
    if settings.is_sqlite and settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)
    try:
        ensure_wal(engine)
        cfg = alembic_config(settings)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
