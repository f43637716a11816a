"""Online backup and verified restore of a SQLite deployment.

Backup: SQLite's online backup API copies every page inside one read transaction, so the copy is
a consistent snapshot while API and workers keep writing (WAL readers do not block writers and
writers do not block readers). Everything committed before the backup started is in it, which
includes every webhook event ElevenLabs got a 200 for. The copy is gzip-compressed and a
``sha256sum``-compatible checksum file is written beside it; then old backups are pruned by age
and the optional upload command runs.

The encryption keys are deliberately *not* in the backup: a stolen backup must be useless on its
own. Keep ``data/voxmem.key`` / ``VOXMEM_ENCRYPTION_KEYS`` and the lookup key in a secret store;
a restore needs the keys the backup was written under.

Restore: checksum, decompress next to the database, ``PRAGMA integrity_check``, schema present,
the current keys decrypt it; only then is the live file swapped (atomic rename), the previous
one kept as ``<db>.pre-restore-<time>``. It refuses while any voxmem process has the database
open: every API and worker process runs the WAL checkpointer, whose leader holds an exclusive
``flock`` on ``<db>.checkpoint.lock``; restore takes that lock itself and holds it throughout,
so it fails fast instead of pulling the file from under a running service.

PostgreSQL deployments use ``pg_dump``/``pg_restore`` (docs/operations.md).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import InvalidToken

from db.crypto import Keyring
from db.settings import Settings

BACKUP_PREFIX = "voxmem-"
BACKUP_SUFFIX = ".db.gz"
CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup or restore step failed; the message is the one-line reason for the operator."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    checksum_path: Path
    sha256: str
    bytes: int
    pruned: list[Path]
    uploaded: bool


@dataclass(frozen=True)
class RestoreResult:
    restored: Path
    previous: Path | None


def _sqlite_path(settings: Settings) -> Path:
    path = settings.sqlite_path
    if path is None:
        raise BackupError(
            "voxmem backup/restore handles SQLite files; for PostgreSQL use pg_dump/pg_restore "
            "(docs/operations.md)"
        )
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        # The designated checkpointer is the only one allowed to checkpoint (db/checkpoint.py).
        src.execute("PRAGMA wal_autocheckpoint=0")
        dst = sqlite3.connect(target)
        try:
            # pages=-1: the whole database in one step, i.e. one read transaction, one snapshot.
            # Stepwise copying would restart whenever the service writes and might never finish.
            src.backup(dst, pages=-1)
            # The copy is a single self-contained file: no -wal beside it when it is compressed.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _gzip(source: Path, target: Path) -> None:
    with source.open("rb") as raw, target.open("wb") as out:
        with gzip.GzipFile(filename="voxmem.db", fileobj=out, mode="wb", compresslevel=6) as gz:
            shutil.copyfileobj(raw, gz, CHUNK)
        out.flush()
        # On disk before the rename publishes it: a backup that vanishes on power loss is none.
        os.fsync(out.fileno())


def prune(dest_dir: Path, retention_days: float, *, keep: Path) -> list[Path]:
    """Delete backups (and their checksum files) older than the retention, never ``keep``."""
    cutoff = time.time() - retention_days * 86400
    removed: list[Path] = []
    for path in sorted(dest_dir.glob(f"{BACKUP_PREFIX}*{BACKUP_SUFFIX}")):
        if path == keep or path.stat().st_mtime >= cutoff:
            continue
        path.unlink(missing_ok=True)
        Path(f"{path}.sha256").unlink(missing_ok=True)
        removed.append(path)
    return removed


def _upload(command: str, file: Path, checksum: Path) -> None:
    if "{file}" in command:
        args = [
            part.replace("{file}", str(file)).replace("{sha256}", str(checksum))
            for part in shlex.split(command)
        ]
    else:
        args = [*shlex.split(command), str(file)]
    # No shell: the command comes from the operator's settings, the file name from us.
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise BackupError(f"upload command exited with {proc.returncode}: {reason[0][:200]}")


def create_backup(
    settings: Settings, dest_dir: Path, *, now: datetime | None = None
) -> BackupResult:
    source = _sqlite_path(settings)
    if not source.exists():
        raise BackupError(f"no database at {source}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    final = dest_dir / f"{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}"
    raw = dest_dir / f".{final.name}.raw.tmp"
    packed = dest_dir / f".{final.name}.tmp"
    try:
        _snapshot(source, raw)
        _gzip(raw, packed)
        digest = sha256_file(packed)
        os.replace(packed, final)
    except sqlite3.Error as exc:
        raise BackupError(f"snapshot failed: {exc}") from exc
    finally:
        raw.unlink(missing_ok=True)
        packed.unlink(missing_ok=True)
    checksum = Path(f"{final}.sha256")
    checksum.write_text(f"{digest}  {final.name}\n")
    pruned = prune(dest_dir, settings.backup_retention_days, keep=final)
    uploaded = False
    if settings.backup_upload_command.strip():
        _upload(settings.backup_upload_command, final, checksum)
        uploaded = True
    return BackupResult(
        path=final,
        checksum_path=checksum,
        sha256=digest,
        bytes=final.stat().st_size,
        pruned=pruned,
        uploaded=uploaded,
    )


# --------------------------------------------------------------------------------------------
# Restore
# --------------------------------------------------------------------------------------------
def verify_checksum(backup: Path) -> str:
    checksum = Path(f"{backup}.sha256")
    if not checksum.exists():
        raise BackupError(f"no checksum file {checksum.name} beside the backup")
    expected = checksum.read_text().split()[0].strip().lower() if checksum.read_text() else ""
    actual = sha256_file(backup)
    if actual != expected:
        raise BackupError(f"checksum mismatch for {backup.name}: the file is damaged")
    return actual


def _check_database(path: Path, keyring: Keyring | None) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            raise BackupError(f"integrity_check failed: {'; '.join(rows)[:300]}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = {"alembic_version", "webhook_events", "tenants"} - tables
        if missing:
            raise BackupError(f"not a voxmem database (missing {', '.join(sorted(missing))})")
        if keyring is not None:
            row = conn.execute("SELECT secret FROM webhook_secrets LIMIT 1").fetchone()
            if row is not None:
                try:
                    keyring.decrypt(str(row[0]))
                except InvalidToken as exc:
                    raise BackupError(
                        "the configured encryption keys cannot decrypt this backup; configure "
                        "the keys it was written under (or pass --skip-key-check)"
                    ) from exc
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()


@contextmanager
def exclusive_service_lock(db_path: Path) -> Iterator[None]:
    """Hold the checkpoint lock every running voxmem process competes for (see module doc)."""
    lock_path = db_path.with_name(db_path.name + ".checkpoint.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BackupError(
                "voxmem is running against this database (a process holds "
                f"{lock_path.name}); stop the API and workers before restoring"
            ) from exc
        yield
    finally:
        os.close(fd)


def restore_backup(
    settings: Settings, backup: Path, keyring: Keyring | None, *, now: datetime | None = None
) -> RestoreResult:
    """Verify ``backup`` completely, then swap it in. Nothing is replaced unless every check
    passes. ``keyring`` None skips the "current keys decrypt it" check."""
    target = _sqlite_path(settings)
    if not backup.is_file():
        raise BackupError(f"no backup file at {backup}")
    verify_checksum(backup)
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_service_lock(target):
        staged = target.with_name(f".{target.name}.restore.tmp")
        staged.unlink(missing_ok=True)
        try:
            try:
                with gzip.open(backup, "rb") as packed, staged.open("wb") as raw:
                    shutil.copyfileobj(packed, raw, CHUNK)
                    raw.flush()
                    os.fsync(raw.fileno())
            except (OSError, EOFError) as exc:
                raise BackupError(f"cannot decompress {backup.name}: {exc}") from exc
            _check_database(staged, keyring)
            previous: Path | None = None
            if target.exists():
                stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
                previous = target.with_name(f"{target.name}.pre-restore-{stamp}")
                # The WAL holds committed transactions not yet in the main file: it moves with
                # it, and must not stay behind to be replayed onto the restored file.
                for suffix in ("", "-wal", "-shm"):
                    side = Path(f"{target}{suffix}")
                    if side.exists():
                        os.replace(side, Path(f"{previous}{suffix}"))
            os.replace(staged, target)
            _fsync_dir(target.parent)
            # Back to WAL, the mode the service expects (the backup was stored self-contained).
            conn = sqlite3.connect(target)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
            # Per-user index snapshots (memory/snapshot.py) describe the replaced database, and a
            # restored user can reach the same memory_version again with other memories.
            shutil.rmtree(settings.memory_index_dir or settings.data_dir / "index", True)
        finally:
            staged.unlink(missing_ok=True)
    return RestoreResult(restored=target, previous=previous)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
