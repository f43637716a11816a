"""`voxmem backup DEST_DIR` and `voxmem restore FILE` (CONTRACT §2; see db/backup.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from db import crypto
from db.backup import BackupError, create_backup, restore_backup
from db.metrics import observe_backup
from db.settings import get_settings


def backup(
    dest_dir: Annotated[Path, typer.Argument(help="directory for backups (created if missing)")],
) -> None:
    """Consistent online backup (safe while the service runs); prints the file as last line."""
    settings = get_settings()
    try:
        result = create_backup(settings, dest_dir)
    except (BackupError, OSError) as exc:
        observe_backup("error")
        typer.echo(f"error: backup failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    observe_backup("ok")
    for path in result.pruned:
        typer.echo(f"pruned {path} (older than {settings.backup_retention_days:g} days)")
    if result.uploaded:
        typer.echo("upload command succeeded")
    typer.echo(f"sha256 {result.sha256} ({result.bytes} bytes), checksum in {result.checksum_path}")
    typer.echo(str(result.path))


def restore(
    file: Annotated[Path, typer.Argument(help="a voxmem-*.db.gz backup with its .sha256 beside")],
    skip_key_check: Annotated[
        bool, typer.Option(help="restore even if the configured keys cannot decrypt it")
    ] = False,
) -> None:
    """Verify a backup (checksum, integrity_check, schema, keys), then replace the database.

    Refuses while the API or a worker is running against the database.
    """
    settings = get_settings()
    keyring = None
    if not skip_key_check:
        try:
            keyring = crypto.load_keyring(settings)
        except crypto.CryptoNotConfiguredError as exc:
            typer.echo(f"error: {exc} (or pass --skip-key-check)", err=True)
            raise typer.Exit(1) from exc
    try:
        result = restore_backup(settings, file, keyring)
    except (BackupError, OSError) as exc:
        typer.echo(f"error: restore refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    if result.previous is not None:
        typer.echo(f"previous database kept as {result.previous}")
    typer.echo(f"restored {file} into {result.restored}; run `voxmem migrate` before starting")
