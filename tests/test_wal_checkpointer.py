"""WAL-reset bug mitigation: exactly one checkpointer, automatic checkpoints off everywhere,
and a multi-process write + checkpoint storm leaves an intact database."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from db.checkpoint import Checkpointer, mitigation_in_force, sqlite_has_wal_reset_fix
from tests.conftest import Deployment, write_lock_held


@pytest.mark.parametrize(
    ("version", "fixed"),
    [
        ("3.40.1", False),
        ("3.44.5", False),
        ("3.44.6", True),
        ("3.50.6", False),
        ("3.50.7", True),
        ("3.51.2", False),
        ("3.51.3", True),
        ("3.54.1", True),
        ("3.45.0", False),
    ],
)
def test_fixed_versions_are_recognised(version: str, fixed: bool) -> None:
    assert sqlite_has_wal_reset_fix(version) is fixed
    assert mitigation_in_force(version) == ("sqlite-fixed" if fixed else "designated-checkpointer")


def _hold_leadership(db_path: str, ready: multiprocessing.synchronize.Event) -> None:
    cp = Checkpointer(Path(db_path))
    assert cp.try_acquire()
    ready.set()
    time.sleep(60)


def test_only_one_process_is_checkpointer_and_leadership_survives_kill9(
    deployment: Deployment,
) -> None:
    path = deployment.settings.sqlite_path
    assert path is not None
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_leadership, args=(str(path), ready))
    holder.start()
    try:
        assert ready.wait(30)
        here = Checkpointer(path)
        assert here.try_acquire() is False
        assert here.checkpoint_once() is None  # a follower never checkpoints
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert here.try_acquire() is True  # the kernel released the dead leader's lock
        assert here.checkpoint_once() is not None
        here.release()
    finally:
        if holder.is_alive():
            holder.kill()


def _writer(db_url: str, data_dir: str, rows: int, worker: int) -> None:
    from db import crypto
    from db.engine import open_database
    from db.models import Tenant
    from tests.conftest import make_settings

    settings = make_settings(Path(data_dir), database_url=db_url)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    for i in range(rows):
        with db.write() as session:
            session.add(Tenant(slug=f"w{worker}-{i}", name="x" * 200))
    db.dispose()


def _checkpointing(db_path: str, seconds: float) -> None:
    cp = Checkpointer(Path(db_path), interval=0.01)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cp.checkpoint_once()
        time.sleep(0.005)
    cp.release()


@pytest.mark.slow
def test_concurrent_writers_with_contending_checkpointers_keep_the_file_intact(
    deployment: Deployment,
) -> None:
    settings = deployment.settings
    path = settings.sqlite_path
    assert path is not None
    ctx = multiprocessing.get_context("spawn")
    rows, writers = 150, 3
    procs = [
        ctx.Process(target=_writer, args=(settings.database_url, str(settings.data_dir), rows, w))
        for w in range(writers)
    ]
    procs += [ctx.Process(target=_checkpointing, args=(str(path), 8.0)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = conn.execute("SELECT count(*) FROM tenants WHERE slug LIKE 'w%'").fetchone()[0]
        assert count == rows * writers
    finally:
        conn.close()


def test_under_a_steady_writer_the_wal_starts_over_instead_of_growing(tmp_path: Path) -> None:
    """A PASSIVE checkpoint alone never rewinds the WAL while writes keep arriving during it,
    so the WAL grew until the TRUNCATE backstop stalled writers. The RESTART that follows a
    PASSIVE past ``restart_bytes`` makes writers reuse the WAL: its frame count drops back
    and the file stays near the threshold, with no TRUNCATE."""
    import threading

    path = tmp_path / "steady.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO t (v) VALUES (?)", ("x" * 17_000,))
            writer.execute("COMMIT")
            time.sleep(0.002)

    restart_bytes = 1 << 20
    cp = Checkpointer(path, interval=0.1, truncate_bytes=1 << 40, restart_bytes=restart_bytes)
    thread = threading.Thread(target=write)
    thread.start()
    frames: list[int] = []
    wal_sizes: list[int] = []
    wal = path.with_name(path.name + "-wal")
    try:
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            result = cp.checkpoint_once()
            assert result is not None
            frames.append(result[1])
            wal_sizes.append(wal.stat().st_size)
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
        cp.release()
        writer.close()
    assert cp.restarts > 0
    # The frame count went back down at least once: the WAL started over.
    assert any(later < earlier for earlier, later in itertools.pairwise(frames)), frames
    # Without restarts 4 s of these writes make a WAL of ~25 MB; with them it stays small.
    assert max(wal_sizes) < 8 * restart_bytes, wal_sizes


def test_a_restart_waits_for_a_writer_in_short_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RESTART that meets a writer retries every ≤ 1 ms (not SQLite's 1, 2, 5 … ms sleeps,
    during which it could hold the write lock while waiting for readers), and completes in
    the same checkpoint once the writer is gone."""
    path = tmp_path / "restart.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("PRAGMA wal_autocheckpoint=0")
    setup.execute("CREATE TABLE t (v TEXT)")
    # Stays open: the last connection to close would checkpoint and delete the WAL.
    setup.execute("INSERT INTO t (v) VALUES (?)", ("x" * 50_000,))
    cp = Checkpointer(path, truncate_bytes=1 << 40, restart_bytes=1, restart_wait_ms=10_000)
    # However slow this machine's sleeps, the wait here stays in its first, short-step phase.
    monkeypatch.setattr("db.engine._PATIENT_AFTER_SECS", 60.0)
    try:
        statement = "INSERT INTO t (v) VALUES ('held')"
        with write_lock_held(path, monkeypatch, release_after=10, statement=statement) as held:
            result = cp.checkpoint_once()
    finally:
        setup.close()
        cp.release()
    assert result is not None
    assert result[0] == 0, result  # not busy: the WAL was restarted
    assert cp.restarts == 1
    assert len(held.pauses) >= 10
    assert max(held.pauses) <= 0.001
