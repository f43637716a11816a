"""`voxmem backup` while the service writes, and `voxmem restore` that verifies before it
replaces anything."""

from __future__ import annotations

import gzip
import hashlib
import os
import sqlite3
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from db.backup import BackupError, create_backup, exclusive_service_lock, restore_backup
from db.models import DEFAULT_TENANT, WebhookEvent
from db.tenancy import require_tenant
from tests.conftest import REPO, Deployment, LiveServer, make_settings, settings_env, voxmem_cmd


def run_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        voxmem_cmd(*args),
        env=settings_env(deployment.settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def event_ids(db_file: Path) -> set[str]:
    conn = sqlite3.connect(db_file)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM webhook_events")}
    finally:
        conn.close()


def integrity(db_file: Path) -> str:
    conn = sqlite3.connect(db_file)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


class AckingWriter(threading.Thread, ABC):
    """Writes one event after another until stopped and records each one's id once it was
    acknowledged (what ElevenLabs would have got a 200 for). Subclasses say how to write."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.acked)

    @abstractmethod
    def writing(self) -> AbstractContextManager[Callable[[int], str]]:
        """A context holding what writing needs, yielding "write event i, return its id"."""

    def run(self) -> None:
        try:
            with self.writing() as write_one:
                i = 0
                while not self.stop.is_set():
                    acked = write_one(i)
                    with self.lock:
                        self.acked.append(acked)
                    i += 1
        except BaseException as exc:
            self.error = exc


class Writer(AckingWriter):
    """Queues events one transaction at a time, like the intake route."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__()
        self.deployment = deployment

    @contextmanager
    def writing(self) -> Iterator[Callable[[int], str]]:
        with self.deployment.db.read() as session:
            tenant_id = require_tenant(session, DEFAULT_TENANT).id

        def write_one(i: int) -> str:
            event_id = f"post_call_transcription:conv_{i:06d}"
            with self.deployment.db.write() as session:
                session.add(
                    WebhookEvent(
                        tenant_id=tenant_id,
                        event_id=event_id,
                        event_type="post_call_transcription",
                        conversation_id=f"conv_{i:06d}",
                        # Realistic size, so the snapshot takes a while under writes.
                        payload="x" * 4000,
                    )
                )
            return event_id

        yield write_one


def backup_while_writing(
    writer: AckingWriter, deployment: Deployment, dest: Path, *, first: int, more: int
) -> tuple[set[str], set[str], subprocess.CompletedProcess[str]]:
    """Back up once `first` writes were acknowledged, keep writing `more`, then stop.
    Returns (acknowledged before the backup, acknowledged in all, the backup command)."""
    writer.start()
    try:
        wait_for(lambda: len(writer.snapshot()) >= first)
        acked_before = writer.snapshot()
        result = run_cli(deployment, "backup", str(dest))
        assert result.returncode == 0, result.stderr
        # Writes went on while the backup ran (it must not stop the service).
        wait_for(lambda: len(writer.snapshot()) > len(acked_before) + more)
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error
    return acked_before, writer.snapshot(), result


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_backup_under_concurrent_writes_then_restore(
    deployment: Deployment, tmp_path: Path
) -> None:
    db_file = deployment.settings.sqlite_path
    assert db_file is not None
    acked_before, acked_total, result = backup_while_writing(
        Writer(deployment), deployment, tmp_path / "backups", first=50, more=20
    )

    backup = Path(result.stdout.strip().splitlines()[-1])
    assert backup.is_file()
    assert backup.name.startswith("voxmem-") and backup.name.endswith(".db.gz")
    checksum_line = Path(f"{backup}.sha256").read_text()
    assert checksum_line == f"{hashlib.sha256(backup.read_bytes()).hexdigest()}  {backup.name}\n"

    deployment.db.dispose()
    restored = run_cli(deployment, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert integrity(db_file) == "ok"
    in_backup = event_ids(db_file)
    # Every event acknowledged before the backup began is in it; nothing invented.
    assert acked_before <= in_backup
    assert in_backup <= acked_total
    # The replaced database was kept, with everything written after the backup too.
    previous = [p for p in db_file.parent.iterdir() if ".pre-restore-" in p.name]
    kept = next(p for p in previous if p.name.endswith("Z"))
    assert event_ids(kept) == acked_total
    # The service can use the restored file again.
    conn = sqlite3.connect(db_file)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def make_backup(deployment: Deployment, dest: Path) -> Path:
    return create_backup(deployment.settings, dest).path


def db_digest(deployment: Deployment) -> str:
    path = deployment.settings.sqlite_path
    assert path is not None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_restore_refuses_damaged_or_unverifiable_files(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.db.dispose()
    before = db_digest(deployment)
    backup = make_backup(deployment, tmp_path / "b")

    damaged = bytearray(backup.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    bad = tmp_path / "b" / "voxmem-damaged.db.gz"
    bad.write_bytes(bytes(damaged))
    Path(f"{bad}.sha256").write_text(Path(f"{backup}.sha256").read_text())
    result = run_cli(deployment, "restore", str(bad))
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr

    unchecked = tmp_path / "voxmem-nochecksum.db.gz"
    unchecked.write_bytes(backup.read_bytes())
    result = run_cli(deployment, "restore", str(unchecked))
    assert result.returncode != 0
    assert "no checksum file" in result.stderr

    # A correct checksum of a file that is not a healthy database: integrity_check stops it.
    garbage = tmp_path / "voxmem-garbage.db.gz"
    raw = gzip.decompress(backup.read_bytes())
    corrupt = bytearray(raw)
    page = 4096
    for offset in range(2 * page + 16, min(len(corrupt), 6 * page), 7):
        corrupt[offset] ^= 0x5A
    garbage.write_bytes(gzip.compress(bytes(corrupt)))
    Path(f"{garbage}.sha256").write_text(
        f"{hashlib.sha256(garbage.read_bytes()).hexdigest()}  {garbage.name}\n"
    )
    with pytest.raises(BackupError):
        restore_backup(deployment.settings, garbage, None)

    # Nothing was replaced by any of the refused restores.
    assert db_digest(deployment) == before
    db_dir = deployment.settings.data_dir
    assert not [p for p in db_dir.iterdir() if ".pre-restore-" in p.name]


def test_restore_refuses_backup_the_configured_keys_cannot_read(
    deployment: Deployment, tmp_path: Path
) -> None:
    from cryptography.fernet import Fernet

    from db import crypto

    backup = make_backup(deployment, tmp_path / "b")
    other = make_settings(tmp_path / "other", encryption_keys=Fernet.generate_key().decode())
    crypto.ensure_key_files(other)
    with pytest.raises(BackupError, match="cannot decrypt"):
        restore_backup(other, backup, crypto.load_keyring(other))
    assert not (tmp_path / "other" / "voxmem.db").exists()


def test_restore_refuses_while_the_service_runs(live_server: LiveServer, tmp_path: Path) -> None:
    deployment = live_server.deployment
    backup = make_backup(deployment, tmp_path / "b")
    before = event_ids(deployment.settings.sqlite_path)  # type: ignore[arg-type]

    db_file = deployment.settings.sqlite_path
    assert db_file is not None

    def service_holds_lock() -> bool:
        try:
            with exclusive_service_lock(db_file):
                return False
        except BackupError:
            return True

    # The API's checkpointer takes the lock on its first round (one interval after start).
    wait_for(service_holds_lock, timeout=15)
    result = run_cli(deployment, "restore", str(backup))
    assert result.returncode != 0
    assert "stop the API and workers" in result.stderr
    assert event_ids(deployment.settings.sqlite_path) == before  # type: ignore[arg-type]
    assert not [p for p in deployment.settings.data_dir.iterdir() if "pre-restore" in p.name]


def test_retention_and_upload_command(deployment: Deployment, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    old = make_backup(deployment, dest)
    recent = make_backup(deployment, dest)
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    settings = deployment.settings.model_copy(
        update={"backup_upload_command": f"cp {{file}} {{sha256}} {uploads}/"}
    )
    result = create_backup(settings, dest)
    assert result.pruned == [old]
    assert not old.exists() and not Path(f"{old}.sha256").exists()
    assert recent.exists() and result.path.exists()
    assert result.uploaded
    assert (uploads / result.path.name).read_bytes() == result.path.read_bytes()
    assert (uploads / f"{result.path.name}.sha256").exists()

    failing = deployment.settings.model_copy(update={"backup_upload_command": "false"})
    with pytest.raises(BackupError, match="upload command exited with 1"):
        create_backup(failing, dest)


class WebhookWriter(AckingWriter):
    """Posts signed post-call webhooks to the live API; a 200 `accepted` is the ack."""

    def __init__(self, server: LiveServer) -> None:
        super().__init__()
        self.server = server

    @contextmanager
    def writing(self) -> Iterator[Callable[[int], str]]:
        import httpx

        from tests.insight_helpers import signed_post_call

        secret = self.server.deployment.webhook_secret
        with httpx.Client(base_url=self.server.base_url, timeout=30) as http:

            def write_one(i: int) -> str:
                conversation_id = f"conv_bk_{i:06d}"
                turns = [("user", f"Order number {i} is late."), ("agent", "Sorry.")]
                body, headers = signed_post_call(
                    secret, conversation_id, "+14155550199", turns, duration_secs=30
                )
                r = http.post("/webhook/post-call", content=body, headers=headers)
                if r.status_code != 200 or r.json() != {"status": "accepted"}:
                    raise AssertionError(f"{r.status_code} {r.text}")
                return conversation_id

            yield write_one


def conversation_ids(db_file: Path) -> set[str]:
    conn = sqlite3.connect(db_file)
    try:
        return {row[0] for row in conn.execute("SELECT conversation_id FROM webhook_events")}
    finally:
        conn.close()


@pytest.mark.slow
def test_backup_under_real_webhook_load_then_restore(
    live_server: LiveServer, tmp_path: Path
) -> None:
    deployment = live_server.deployment
    db_file = deployment.settings.sqlite_path
    assert db_file is not None
    acked_before, acked_total, result = backup_while_writing(
        WebhookWriter(live_server), deployment, tmp_path / "backups", first=30, more=10
    )

    # restore refuses while the service runs: stop it first, as the runbook says.
    live_server.proc.terminate()
    live_server.proc.wait(timeout=30)
    deployment.db.dispose()
    backup = Path(result.stdout.strip().splitlines()[-1])
    restored = run_cli(deployment, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert integrity(db_file) == "ok"
    in_backup = conversation_ids(db_file)
    assert acked_before <= in_backup  # every webhook acknowledged before the backup began
    assert in_backup <= acked_total  # and nothing that was never acknowledged
