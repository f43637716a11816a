"""WAL-reset bug mitigation: exactly one checkpointer, automatic checkpoints off everywhere,
and a multi-process write + checkpoint storm leaves an intact database."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from db.checkpoint import Checkpointer, mitigation_in_force, sqlite_has_wal_reset_fix
from tests.conftest import Deployment


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
