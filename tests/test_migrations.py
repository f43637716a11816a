"""Alembic: idempotent upgrade, schema identical to the models, key files created safely."""

from __future__ import annotations

import stat

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.bootstrap import bootstrap
from db.engine import make_engine
from db.migrate import current_revision, head_revision, is_migrated, upgrade_to_head
from db.models import Base
from db.settings import Settings

SEED_TABLES = {
    "webhook_events": {
        "event_id",
        "event_type",
        "payload",
        "conversation_id",
        "status",
        "retry_count",
        "error_message",
        "created_at",
        "processed_at",
    },
    "conversations": {
        "conversation_id",
        "agent_id",
        "user_id",
        "start_time",
        "end_time",
        "duration_secs",
        "status",
        "metadata",
        "created_at",
    },
    "conversation_turns": {"conversation_fk", "role", "message", "timestamp", "turn_order"},
    "conversation_analysis": {
        "conversation_fk",
        "summary",
        "call_successful",
        "evaluation_json",
        "data_collection",
    },
    "tool_invocations": {
        "conversation_fk",
        "tool_name",
        "request_params",
        "response_data",
        "latency_ms",
        "success",
        "error_message",
        "timestamp",
    },
    "users": {"user_id", "summary", "total_memories", "last_interaction", "metadata", "created_at"},
    "memories": {
        "user_id",
        "content",
        "sector_type",
        "salience",
        "recency",
        "decay_rate",
        "state",
        "source_conversation",
        "metadata",
        "created_at",
        "updated_at",
    },
    "memory_embeddings": {
        "memory_id",
        "sector",
        "embedding",
        "embedding_model",
        "dimension",
        "created_at",
    },
    "memory_links": {
        "source_memory_id",
        "target_memory_id",
        "link_weight",
        "link_type",
        "created_at",
    },
    "conversation_memories": {
        "conversation_fk",
        "memory_id",
        "extraction_type",
        "confidence",
        "created_at",
    },
}


def test_upgrade_is_idempotent_and_reaches_head(settings: Settings) -> None:
    bootstrap(settings)
    upgrade_to_head(settings)
    engine = make_engine(settings)
    try:
        assert current_revision(engine) == head_revision(settings)
        assert is_migrated(engine, settings)
    finally:
        engine.dispose()


def test_migrated_schema_equals_the_models(settings: Settings) -> None:
    bootstrap(settings)
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_seed_tables_keep_their_names_and_columns(settings: Settings) -> None:
    bootstrap(settings)
    engine = make_engine(settings)
    try:
        insp = inspect(engine)
        for table, columns in SEED_TABLES.items():
            present = {c["name"] for c in insp.get_columns(table)}
            assert columns <= present, (table, columns - present)
    finally:
        engine.dispose()


def test_migrate_creates_private_key_files_once(settings: Settings) -> None:
    first = bootstrap(settings)
    key = settings.key_file.read_text()
    second = bootstrap(settings)
    assert settings.key_file in first.created_key_files
    assert second.created_key_files == []
    assert settings.key_file.read_text() == key
    for path in (settings.key_file, settings.lookup_key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.credentials_file is not None
    assert stat.S_IMODE(first.credentials_file.stat().st_mode) == 0o600
    text = first.credentials_file.read_text()
    assert "webhook_secret" in text and "tool_token" in text
    assert key.strip() not in text  # never the encryption key


def test_configured_keys_mean_no_key_file(tmp_path: object) -> None:
    from pathlib import Path

    from cryptography.fernet import Fernet

    from tests.conftest import make_settings

    s = make_settings(Path(str(tmp_path)) / "d", encryption_keys=Fernet.generate_key().decode())
    bootstrap(s)
    assert not s.key_file.exists()


def test_configured_webhook_secrets_are_the_only_active_ones(tmp_path: object) -> None:
    """With VOXMEM_WEBHOOK_SECRETS set, the default tenant gets exactly those secrets: no
    generated spare that nobody was shown (and that every webhook would be checked against)."""
    from pathlib import Path

    from db import crypto
    from db.engine import open_database
    from db.tenancy import DEFAULT_TENANT, active_webhook_secrets, require_tenant
    from tests.conftest import make_settings

    configured = "wsec_configured_one_0123456789,wsec_configured_two_0123456789"
    s = make_settings(Path(str(tmp_path)) / "d", webhook_secrets=configured)
    result = bootstrap(s)
    bootstrap(s)  # a second migrate adds nothing
    crypto.configure(crypto.load_keyring(s))
    db = open_database(s)
    try:
        with db.read() as session:
            tenant = require_tenant(session, DEFAULT_TENANT)
            active = active_webhook_secrets(session, tenant.id)
    finally:
        db.dispose()
    assert sorted(active) == sorted(configured.split(","))
    text = result.credentials_file.read_text() if result.credentials_file else ""
    assert "webhook_secret" not in text  # nothing generated, so nothing to show
