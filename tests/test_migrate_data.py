"""`voxmem migrate-data`: SQLite deployment → embedded PostgreSQL, verified, resumable."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text

from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.models import (
    DEFAULT_TENANT,
    CallerNumber,
    Conversation,
    ConversationMemory,
    ConversationTurn,
    Memory,
    MemoryEmbedding,
    MemoryLink,
    User,
    WebhookEvent,
)
from db.settings import Settings
from db.tenancy import require_tenant
from db.transfer import TransferError, storage_metadata, transfer
from db.types import utcnow
from tests.conftest import REPO, make_settings, settings_env, voxmem_cmd
from tests.pg import PgServer

SECRET_FACT = "Prefers to be called Sam; allergic to penicillin."


def populate(settings: Settings) -> dict[str, int]:
    """A small but complete deployment: every kind of row the copy must carry."""
    bootstrap(settings)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    rng = np.random.default_rng(0)
    try:
        with db.write() as s:
            tenant = require_tenant(s, DEFAULT_TENANT)
            for u in range(3):
                user = User(
                    user_id=f"u{u}",
                    tenant_id=tenant.id,
                    name=f"Caller {u}",
                    metadata_={"k": u},
                    is_guest=u == 0,
                )
                s.add(user)
                s.flush()
                s.add(
                    CallerNumber(
                        tenant_id=tenant.id,
                        user_id=user.user_id,
                        number_hash=f"h{u}",
                        number_enc=f"+4420794600{u}",
                    )
                )
                conv = Conversation(
                    tenant_id=tenant.id,
                    conversation_id=f"conv{u}",
                    user_id=user.user_id,
                    start_time=utcnow(),
                    status="done",
                )
                s.add(conv)
                s.flush()
                for t in range(4):
                    s.add(
                        ConversationTurn(
                            conversation_fk=conv.id, role="user", message=f"turn {t}", turn_order=t
                        )
                    )
                ids = []
                for m in range(5):
                    content = SECRET_FACT if (u, m) == (1, 2) else f"user {u} fact {m}"
                    mem = Memory(
                        user_id=user.user_id,
                        content=content,
                        sector_type="semantic",
                        sources=[{"conversation_id": f"conv{u}", "turns": [m]}],
                        recency=utcnow() - timedelta(days=m),
                    )
                    s.add(mem)
                    s.flush()
                    ids.append(mem.id)
                    vec = rng.standard_normal(384).astype(np.float32)
                    s.add(
                        MemoryEmbedding(
                            memory_id=mem.id,
                            sector="semantic",
                            embedding=vec.tobytes(),
                            embedding_model="local",
                            dimension=384,
                        )
                    )
                    s.add(
                        ConversationMemory(
                            conversation_fk=conv.id,
                            memory_id=mem.id,
                            extraction_type="auto",
                            turns=[m],
                        )
                    )
                # An older memory superseded by a newer one: the reference points forward.
                older = s.get(Memory, ids[0])
                assert older is not None
                older.state = "superseded"
                older.superseded_by = ids[4]
                s.add(MemoryLink(source_memory_id=ids[1], target_memory_id=ids[2], link_weight=0.9))
                s.add(
                    WebhookEvent(
                        tenant_id=tenant.id,
                        event_id=f"post_call:conv{u}",
                        event_type="post_call_transcription",
                        payload='{"x": 1}',
                        status="completed",
                    )
                )
    finally:
        db.dispose()
    counts = {}
    engine = open_database(settings).write_engine
    try:
        with engine.connect() as conn:
            for table in storage_metadata().sorted_tables:
                counts[table.name] = conn.execute(
                    select(func.count()).select_from(table)
                ).scalar_one()
    finally:
        engine.dispose()
    return counts


@pytest.mark.postgres
def test_sqlite_deployment_moves_to_postgres(
    settings: Settings, pg_server: PgServer, tmp_path: Path
) -> None:
    counts = populate(settings)
    assert counts["memories"] == 15 and counts["tenants"] == 1
    # An empty server database, as an operator creates it: the command migrates it first.
    target = pg_server.new_database(template="template0")
    try:
        proc = subprocess.run(
            voxmem_cmd(
                "migrate-data", "--from", settings.database_url, "--to", target, "--batch-size", "4"
            ),
            env=settings_env(settings),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "counts verified" in proc.stdout

        pg = make_settings(settings.data_dir, database_url=target)
        db = open_database(pg)
        try:
            with db.read() as s:
                for table in storage_metadata().sorted_tables:
                    got = s.execute(select(func.count()).select_from(table)).scalar_one()
                    assert got == counts[table.name], table.name
                # Ciphertext moved as is: the same keys decrypt it to the same text.
                fact = (
                    s.execute(select(Memory).where(Memory.user_id == "u1").order_by(Memory.id))
                    .scalars()
                    .all()[2]
                )
                assert fact.content == SECRET_FACT
                superseded = (
                    s.execute(select(Memory).where(Memory.state == "superseded")).scalars().all()
                )
                assert len(superseded) == 3 and all(m.superseded_by for m in superseded)
                user = s.get(User, "u0")
                assert user is not None and user.name == "Caller 0" and user.is_guest
                missing_vec = s.execute(
                    text("SELECT count(*) FROM memory_embeddings WHERE embedding_vec IS NULL")
                ).scalar_one()
                assert missing_vec == 0
            # A rerun copies nothing and still verifies.
            again = transfer(settings, settings.database_url, target, batch=7)
            assert again.ok
            assert sum(t.copied for t in again.tables) == 0
            # Sequences moved past the copied ids: new rows insert normally.
            with db.write() as s:
                s.add(Memory(user_id="u0", content="after the move", sector_type="semantic"))
            # ...and a later rerun notices the target no longer matches the source.
            assert not transfer(settings, settings.database_url, target).ok
        finally:
            db.dispose()

    finally:
        pg_server.drop_database(target)


@pytest.mark.postgres
def test_an_interrupted_copy_resumes(settings: Settings, pg_server: PgServer) -> None:
    counts = populate(settings)
    target = pg_server.new_database()
    try:
        # Simulate a crash half-way: the first tables (and part of conversation_turns) landed.
        report = transfer(settings, settings.database_url, target, batch=5)
        assert report.ok
        pg = make_settings(settings.data_dir, database_url=target)
        db = open_database(pg)
        try:
            with db.write() as s:
                s.execute(text("DELETE FROM conversation_turns WHERE id > 5"))
                s.execute(text("DELETE FROM memory_links"))
        finally:
            db.dispose()
        resumed = transfer(settings, settings.database_url, target, batch=5)
        assert resumed.ok
        by_name = {t.name: t for t in resumed.tables}
        assert by_name["conversation_turns"].copied == counts["conversation_turns"] - 5
        assert by_name["memory_links"].copied == counts["memory_links"]
        assert by_name["memories"].copied == 0
    finally:
        pg_server.drop_database(target)


@pytest.mark.postgres
def test_refuses_a_target_holding_another_deployment(
    settings: Settings, pg_server: PgServer, tmp_path: Path
) -> None:
    populate(settings)
    target = pg_server.new_database()
    try:
        # `voxmem migrate` run against the new server: its own default tenant and secret.
        other = make_settings(settings.data_dir, database_url=target)
        bootstrap(other, issue_tokens=False)
        with pytest.raises(TransferError, match="another deployment"):
            transfer(settings, settings.database_url, target)
    finally:
        pg_server.drop_database(target)


def test_refuses_a_source_behind_head(settings: Settings, tmp_path: Path) -> None:
    empty = make_settings(tmp_path / "empty")
    with pytest.raises(TransferError, match="source schema"):
        transfer(empty, empty.database_url, settings.database_url)
