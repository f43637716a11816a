"""The designated WAL checkpointer.

SQLite 3.7.0–3.51.2 can corrupt a WAL database when two connections checkpoint while a third
writes (the "WAL-reset bug", fixed in 3.51.3 / 3.50.7 / 3.44.6). No PyPI driver usable through
SQLAlchemy ships a fixed SQLite (pysqlite3-binary 0.5.4.post2 bundles 3.51.1, sqlean-py
3.50.4.5 bundles 3.50.4; apsw bundles 3.54 but has no SQLAlchemy dialect), so voxmem turns
automatic checkpoints off on every connection (engine.py) and lets exactly one process
checkpoint: whichever holds an exclusive ``flock`` on ``<db>.checkpoint.lock``. The kernel
drops the lock when that process dies (even on kill -9), and the others keep trying, so a new
checkpointer takes over within one interval.

The checkpoint a connection runs when it is the last to close needs an exclusive lock on the
database, so it can never race a writer or a second checkpointer.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path

import structlog

from db.engine import LockWait, is_busy
from db.settings import Settings

log = structlog.get_logger("voxmem.checkpoint")

FIXED_VERSIONS = ((3, 51, 3), (3, 50, 7), (3, 44, 6))


def sqlite_has_wal_reset_fix(version: str | None = None) -> bool:
    parts = tuple(int(p) for p in (version or sqlite3.sqlite_version).split(".")[:3])
    major_minor = parts[:2]
    for fixed in FIXED_VERSIONS:
        if major_minor == fixed[:2]:
            return parts >= fixed
    return parts >= FIXED_VERSIONS[0]


def mitigation_in_force(version: str | None = None) -> str:
    if sqlite_has_wal_reset_fix(version):
        return "sqlite-fixed"
    return "designated-checkpointer"


class Checkpointer:
    """Background thread that checkpoints the WAL when this process holds the lock."""

    def __init__(
        self,
        db_path: Path,
        *,
        interval: float = 0.1,
        truncate_bytes: int = 64 << 20,
        restart_bytes: int = 16 << 20,
        restart_wait_ms: int = 5,
    ):
        self.db_path = db_path
        self.lock_path = db_path.with_name(db_path.name + ".checkpoint.lock")
        self.interval = interval
        self.truncate_bytes = truncate_bytes
        self.restart_bytes = restart_bytes
        self.restart_wait_ms = restart_wait_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self.checkpoints = 0
        self.restarts = 0
        self._page_bytes: int | None = None
        self.last_result: tuple[int, int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, db_path: Path) -> Checkpointer:
        """The checkpointer every API and worker process runs (the same thresholds in each)."""
        return cls(
            db_path,
            interval=settings.checkpoint_interval_secs,
            truncate_bytes=settings.wal_truncate_bytes,
            restart_bytes=settings.wal_restart_bytes,
            restart_wait_ms=settings.wal_restart_wait_ms,
        )

    @property
    def is_leader(self) -> bool:
        return self._lock_fd is not None

    def try_acquire(self) -> bool:
        if self._lock_fd is not None:
            return True
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        log.info("checkpoint.leader_acquired", pid=os.getpid())
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def checkpoint_once(self) -> tuple[int, int, int] | None:
        """Run one checkpoint if this process is the leader; returns (busy, log, checkpointed).

        PASSIVE first: it copies the WAL into the database without blocking anyone. Under a
        steady stream of writes it may never let the WAL start over: SQLite rewinds the WAL
        only when a write begins while every frame is already copied back. With one pass a
        second at 200 webhooks/s a write always landed while the pass ran (passes every 0.1 s
        are short enough that most end between two writes), and the WAL grew by ~9 MB/s until
        the TRUNCATE backstop, which stalled the intake writer 50–60 ms each time; appending
        to a freshly truncated WAL also made every fsync journal the file's new size.

        So once the WAL is past ``restart_bytes``, a RESTART follows: it copies the few frames
        written since the PASSIVE and makes the next writer reuse the WAL from its start. It
        is retried for up to ``restart_wait_ms`` while a writer or reader is in the way
        (``_restart``); one still busy then is tried again next interval, and TRUNCATE stays
        the backstop past ``truncate_bytes``. The RESTART holds the write lock through one
        fsync of the database file (a writer waits that long, ~0.3–10 ms on this disk), so it
        runs only every ``restart_bytes`` of WAL, not every interval.
        """
        if not self.try_acquire() or not self.db_path.exists():
            return None
        conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            wal = self.db_path.with_name(self.db_path.name + "-wal")
            size = wal.stat().st_size if wal.exists() else 0
            mode = "TRUNCATE" if size > self.truncate_bytes else "PASSIVE"
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            if mode == "PASSIVE" and int(row[1]) * self._page_size(conn) > self.restart_bytes:
                row = self._restart(conn)
                self.restarts += 1
        finally:
            conn.close()
        self.checkpoints += 1
        self.last_result = (int(row[0]), int(row[1]), int(row[2]))
        return self.last_result

    def _restart(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """RESTART without SQLite's busy handler, retried in ``LockWait`` steps for at most
        ``restart_wait_ms``. With the handler, a RESTART that met a writer slept 1, 2, 2 ms
        (coarse steps of sqliteDefaultBusyCallback), and one that met a reader held the write
        lock while it slept; without it, a try that meets either gives up at once and lets
        writers in, and the next try comes within a millisecond."""
        conn.execute("PRAGMA busy_timeout=0")
        wait = LockWait(self.restart_wait_ms / 1000)
        while True:
            try:
                row = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                row = (1, -1, -1)
            if int(row[0]) == 0 or not wait.pause():
                return int(row[0]), int(row[1]), int(row[2])

    def _page_size(self, conn: sqlite3.Connection) -> int:
        if self._page_bytes is None:
            self._page_bytes = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return self._page_bytes

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint_once()
            except Exception as exc:  # noqa: BLE001 - a failed checkpoint must not kill the process
                log.warning("checkpoint.failed", error=str(exc))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.release()
