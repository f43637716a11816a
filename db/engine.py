"""Engines and sessions.

SQLite rules (see docs/architecture.md):
- WAL is set once (it persists in the file) and verified at start-up.
- Every connection: busy_timeout, foreign_keys=ON, synchronous=FULL (an acknowledgement to
  ElevenLabs depends on the commit surviving power loss) — except the "relaxed" write engine
  (synchronous=NORMAL) for writes that may be lost with the machine but not with the process:
  call bindings, tool logs, token touches. On this disk an fsync is 0.4 ms p50 but 8 ms p95,
  which alone was the conversation-init p95 target; wal_autocheckpoint=0 (only the
  designated checkpointer checkpoints: the WAL-reset bug of SQLite < 3.51.3 needs two
  checkpointers racing a writer).
- Write transactions start with BEGIN IMMEDIATE so the busy timeout applies at BEGIN instead
  of failing later with SQLITE_BUSY_SNAPSHOT; read transactions use a deferred BEGIN on a
  separate engine whose connections are query_only. A write waits for the lock in steps of
  at most 1 ms, 5 ms past 50 ms of waiting (``begin_immediate`` says why), not in SQLite's
  1–100 ms sleeps.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.settings import Settings

BUSY_TIMEOUT_MS = 10_000
# LockWait's schedule.
_FIRST_PAUSE_SECS = 50e-6
_LONGEST_PAUSE_SECS = 1e-3
_PATIENT_AFTER_SECS = 0.05
_PATIENT_PAUSE_SECS = 5e-3
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024


class WalNotEnabledError(RuntimeError):
    """The SQLite file is not in WAL mode and could not be switched: refuse to start."""


def _sqlite_pragmas(*, read_only: bool, durable: bool = True) -> list[str]:
    pragmas = [
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
        # WAL + NORMAL: a commit reaches the OS before it returns (a killed process loses
        # nothing) but is fsynced only by the next FULL commit or checkpoint.
        "PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL",
        "PRAGMA wal_autocheckpoint=0",
        f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}",
        "PRAGMA temp_store=MEMORY",
        "PRAGMA cache_size=-16000",
    ]
    if read_only:
        pragmas.append("PRAGMA query_only=ON")
    return pragmas


def _install_sqlite_hooks(engine: Engine, *, read_only: bool, durable: bool = True) -> None:
    pragmas = _sqlite_pragmas(read_only=read_only, durable=durable)
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # pysqlite's implicit transactions are deferred and start only before DML; take
        # control so that the BEGIN below is the only one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in pragmas:
            cur.execute(pragma)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if read_only:
            conn.exec_driver_sql(begin)
        else:
            _begin_immediate(conn, BUSY_TIMEOUT_MS)


def _begin_immediate(conn: Connection, timeout_ms: int) -> None:
    """The write engine's BEGIN: ``begin_immediate`` through SQLAlchemy, so a failure is the
    OperationalError its callers expect."""
    raw = cast(sqlite3.Connection, conn.connection.driver_connection)
    begin_immediate(raw, timeout_ms, execute=conn.exec_driver_sql)


def begin_immediate(
    raw: sqlite3.Connection,
    timeout_ms: int,
    *,
    execute: Callable[[str], object] | None = None,
) -> None:
    """BEGIN IMMEDIATE on ``raw``, retrying for the write lock in ``LockWait`` steps for up to
    ``timeout_ms``; ``execute`` runs the BEGIN (default: ``raw.execute``).

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between
    tries, so a writer that finds the lock held for 1.1 ms sleeps 3 ms, and one that finds it
    held for 8.1 ms sleeps 18 ms. At 200 webhooks/s that turned the checkpointer's RESTART
    (which holds the write lock through one fsync of the database) and any other writer of the
    moment into 8–78 ms intake commits: the p99 of the acknowledgement. Python's sqlite3 does
    not expose ``sqlite3_busy_handler``, so the busy timeout is off for the BEGIN alone and
    this loop waits instead; every other statement keeps SQLite's handler as a safety net.
    """
    run = execute or raw.execute
    raw.execute("PRAGMA busy_timeout=0")
    try:
        wait = LockWait(timeout_ms / 1000)
        while True:
            try:
                run("BEGIN IMMEDIATE")
                return
            except (OperationalError, sqlite3.OperationalError) as exc:
                if not is_busy(exc) or not wait.pause():
                    raise
    finally:
        raw.execute(f"PRAGMA busy_timeout={timeout_ms}")


class LockWait:
    """Pauses between tries for a lock SQLite reported busy, in place of its busy handler
    (``begin_immediate`` says why): 50 µs doubling to 1 ms, since a commit holds the write
    lock ~0.5 ms; past 50 ms of waiting (a long worker transaction, not a commit) up to 5 ms,
    so a process stuck behind a long writer polls at 200 Hz (a failed try costs ~26 µs of
    CPU), not 1 kHz."""

    def __init__(self, timeout_secs: float) -> None:
        self._started = time.monotonic()
        self._deadline = self._started + timeout_secs
        self._pause = _FIRST_PAUSE_SECS

    def pause(self) -> bool:
        """Sleep before the next try; False, without sleeping, once the timeout has passed."""
        now = time.monotonic()
        if now >= self._deadline:
            return False
        time.sleep(self._pause)
        patient = now - self._started > _PATIENT_AFTER_SECS
        self._pause = min(self._pause * 2, _PATIENT_PAUSE_SECS if patient else _LONGEST_PAUSE_SECS)
        return True


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY (any extended code), raised by sqlite3 itself or wrapped by SQLAlchemy."""
    code = getattr(getattr(exc, "orig", exc), "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


def make_engine(settings: Settings, *, read_only: bool = False, durable: bool = True) -> Engine:
    url = settings.database_url
    if settings.is_sqlite:
        path = settings.sqlite_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            pool_size=8 if durable else 2,
            max_overflow=8,
        )
        _install_sqlite_hooks(engine, read_only=read_only, durable=durable)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def ensure_wal(engine: Engine) -> str:
    """Switch the file to WAL (persistent) and verify it took. Returns the journal mode."""
    if engine.dialect.name != "sqlite":
        return "n/a"
    # Outside any transaction: journal_mode cannot change inside BEGIN IMMEDIATE.
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        mode = str(cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        cur.close()
    finally:
        raw.close()
    if mode != "wal":
        raise WalNotEnabledError(f"journal_mode is {mode!r}, expected 'wal'")
    return mode


@dataclass
class Database:
    """The process's engines and session factories. Built once (API lifespan, worker start)."""

    settings: Settings
    write_engine: Engine
    read_engine: Engine
    write_sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]
    # SQLite: connections with synchronous=NORMAL; None means "use the write engine" (and on
    # PostgreSQL a relaxed transaction turns synchronous_commit off for itself).
    relaxed_sessions: sessionmaker[Session] | None = None
    relaxed_engine: Engine | None = None

    @property
    def dialect(self) -> str:
        return self.write_engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: commit on success, roll back on any exception."""
        with self.write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def write_relaxed(self) -> Iterator[Session]:
        """A write transaction that survives a killed process but not necessarily a power
        loss: for what can be rebuilt or lost without breaking a promise (call bindings — the
        post-call resolves the caller again —, tool logs, token touches). Never for anything
        acknowledged to ElevenLabs or the worker's results."""
        factory = self.relaxed_sessions or self.write_sessions
        with factory() as session, session.begin():
            if self.relaxed_sessions is None and self.dialect == "postgresql":
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def lookup(self) -> Iterator[Connection]:
        """A read connection without an ORM session, for one or two prebuilt statements on a
        hot path (token checks): a Session's set-up and tear-down cost ~0.15 ms, which was a
        third of a memory_query's auth."""
        with self.read_engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.write_engine.dispose()
        self.read_engine.dispose()
        if self.relaxed_engine is not None:
            self.relaxed_engine.dispose()


def open_database(settings: Settings) -> Database:
    write_engine = make_engine(settings)
    read_engine = make_engine(settings, read_only=True)
    relaxed = make_engine(settings, durable=False) if settings.is_sqlite else None
    return Database(
        settings=settings,
        write_engine=write_engine,
        read_engine=read_engine,
        write_sessions=sessionmaker(write_engine, expire_on_commit=False),
        read_sessions=sessionmaker(read_engine, expire_on_commit=False),
        relaxed_sessions=sessionmaker(relaxed, expire_on_commit=False) if relaxed else None,
        relaxed_engine=relaxed,
    )


def ping(db: Database) -> None:
    with db.read_engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def sqlite_version() -> str:
    return sqlite3.sqlite_version
