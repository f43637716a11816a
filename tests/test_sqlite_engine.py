"""The SQLite engine: WAL verified, pragmas on every connection, BEGIN IMMEDIATE on writes."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from db.engine import Database, is_busy
from tests.conftest import Deployment, write_lock_held


def _pragma(db_conn: object, name: str) -> object:
    from sqlalchemy import Connection

    assert isinstance(db_conn, Connection)
    return db_conn.exec_driver_sql(f"PRAGMA {name}").scalar()


@pytest.mark.parametrize("role", ["write", "read"])
def test_every_connection_carries_the_pragmas(deployment: Deployment, role: str) -> None:
    db: Database = deployment.db
    engine = db.write_engine if role == "write" else db.read_engine
    with engine.connect() as conn:
        assert _pragma(conn, "journal_mode") == "wal"
        assert _pragma(conn, "foreign_keys") == 1
        assert _pragma(conn, "synchronous") == 2  # FULL
        assert _pragma(conn, "wal_autocheckpoint") == 0
        assert int(str(_pragma(conn, "busy_timeout"))) >= 5000
        assert _pragma(conn, "query_only") == (1 if role == "read" else 0)


def test_relaxed_writes_skip_only_the_fsync(deployment: Deployment) -> None:
    """Bindings and tool logs commit with synchronous=NORMAL: still WAL, still BEGIN
    IMMEDIATE (so they serialise with every other writer), visible to readers at once."""
    path = deployment.settings.sqlite_path
    assert path is not None
    with deployment.db.write_relaxed() as session:
        assert session.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()
        session.execute(text("UPDATE tenants SET name = 'relaxed' WHERE slug = 'default'"))
    with deployment.db.read() as session:
        name = session.execute(text("SELECT name FROM tenants WHERE slug = 'default'")).scalar()
        assert name == "relaxed"
    with deployment.db.write() as session:  # the durable engine is untouched
        assert session.execute(text("PRAGMA synchronous")).scalar() == 2


def test_read_sessions_cannot_write(deployment: Deployment) -> None:
    with pytest.raises(OperationalError, match="readonly"), deployment.db.read() as session:
        session.execute(text("UPDATE tenants SET name = 'x'"))


def test_write_transactions_take_the_write_lock_at_begin(deployment: Deployment) -> None:
    path = deployment.settings.sqlite_path
    assert path is not None
    with deployment.db.write() as session:
        session.execute(text("SELECT 1"))  # no write yet: a deferred BEGIN would hold no lock
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


def test_write_rolls_back_on_error(deployment: Deployment) -> None:
    def change_then_fail() -> None:
        with deployment.db.write() as session:
            session.execute(text("UPDATE tenants SET name = 'changed'"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        change_then_fail()
    with deployment.db.read() as session:
        assert session.execute(text("SELECT name FROM tenants")).scalar() == "default"


def test_foreign_keys_are_enforced(deployment: Deployment) -> None:
    insert = text(
        "INSERT INTO caller_numbers (tenant_id, user_id, number_hash, number_enc, created_at) "
        "VALUES (1, 'usr_missing', 'h', 'e', '2026-01-01')"
    )
    with pytest.raises(Exception, match="FOREIGN KEY"), deployment.db.write() as session:
        session.execute(insert)


def test_a_write_waits_for_the_lock_in_short_steps(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20, 25 … ms between tries, so a write
    that met another writer's lock slept well past its release (8–78 ms intake commits at
    200 webhooks/s). Our BEGIN retries in pauses of at most 1 ms and then restores the busy
    timeout for the rest of the transaction."""
    # However slow this machine's sleeps, the wait here stays in its first, short-step phase.
    monkeypatch.setattr("db.engine._PATIENT_AFTER_SECS", 60.0)
    path = deployment.settings.sqlite_path
    assert path is not None
    with write_lock_held(path, monkeypatch, release_after=20) as held:
        with deployment.db.write() as session:
            # The session's first statement runs the BEGIN: it returns once the lock is free.
            assert session.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
            assert held.released.is_set()
            session.execute(text("UPDATE tenants SET name = 'waited' WHERE slug = 'default'"))
    assert len(held.pauses) >= 20
    assert max(held.pauses) <= 0.001
    with deployment.db.read() as session:
        name = session.execute(text("SELECT name FROM tenants WHERE slug = 'default'")).scalar()
    assert name == "waited"


def test_a_long_wait_for_the_lock_polls_less_often(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the short-step phase (50 ms; zero here) a waiting writer backs off to 5 ms
    between tries, so a process stuck behind a long transaction does not spin at 1 kHz."""
    monkeypatch.setattr("db.engine._PATIENT_AFTER_SECS", 0.0)
    path = deployment.settings.sqlite_path
    assert path is not None
    with write_lock_held(path, monkeypatch, release_after=10) as held:
        with deployment.db.write() as session:
            session.execute(text("SELECT 1"))
            assert held.released.is_set()
    assert held.pauses[0] == pytest.approx(50e-6)
    assert max(held.pauses) == pytest.approx(5e-3)


def test_a_write_still_gives_up_after_the_busy_timeout(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("db.engine.BUSY_TIMEOUT_MS", 30)
    path = deployment.settings.sqlite_path
    assert path is not None
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"), deployment.db.write() as session:
            session.execute(text("SELECT 1"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The pooled connection is usable afterwards, with its busy timeout back.
    with deployment.db.write() as session:
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30


def test_is_busy_knows_a_held_lock_raw_or_wrapped_and_nothing_else(
    deployment: Deployment,
) -> None:
    # The write BEGIN, the checkpoint RESTART and the worker's failure recording all retry on
    # it: a real SQLITE_BUSY must match however it is raised, and other errors must not.
    path = deployment.settings.sqlite_path
    assert path is not None
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError) as raw:
            other.execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(sqlite3.OperationalError) as missing:
        other.execute("SELECT * FROM no_such_table")
    other.close()
    # As SQLAlchemy wraps a DBAPI error (the original kept in ``.orig``).
    wrapped = OperationalError("BEGIN IMMEDIATE", None, raw.value)
    assert is_busy(raw.value)
    assert is_busy(wrapped)
    assert not is_busy(missing.value)
    assert not is_busy(OperationalError("SELECT", None, missing.value))
