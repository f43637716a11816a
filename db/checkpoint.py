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

    def __init__(self, db_path: Path, *, interval: float = 1.0, truncate_bytes: int = 64 << 20):
        self.db_path = db_path
        self.lock_path = db_path.with_name(db_path.name + ".checkpoint.lock")
        self.interval = interval
        self.truncate_bytes = truncate_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self.checkpoints = 0
        self.last_result: tuple[int, int, int] | None = None

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
        """Run one checkpoint if this process is the leader; returns (busy, log, checkpointed)."""
        if not self.try_acquire() or not self.db_path.exists():
            return None
        conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            wal = self.db_path.with_name(self.db_path.name + "-wal")
            big = wal.exists() and wal.stat().st_size > self.truncate_bytes
            mode = "TRUNCATE" if big else "PASSIVE"
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.close()
        self.checkpoints += 1
        self.last_result = (int(row[0]), int(row[1]), int(row[2]))
        return self.last_result

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
