"""`voxmem keys rotate|status|generate` (CONTRACT §2; see db/rotation.py and
docs/operations.md "Encryption key rotation")."""

from __future__ import annotations

from typing import Annotated

import typer
from cryptography.fernet import Fernet

from api.commands._runtime import database
from db import crypto
from db.rotation import ColumnReport, count_not_primary, rotate_all
from db.settings import get_settings

app = typer.Typer(help="Manage the Fernet encryption keys.", no_args_is_help=True)


@app.command("generate")
def generate() -> None:
    """Print a new Fernet key (put it first in VOXMEM_ENCRYPTION_KEYS or the key file)."""
    typer.echo(Fernet.generate_key().decode("ascii"))


@app.command("rotate")
def rotate(
    batch_size: Annotated[
        int | None, typer.Option(help="rows per transaction (default from settings)")
    ] = None,
    max_batches: Annotated[
        int | None, typer.Option(help="stop after this many batches; rerun to continue")
    ] = None,
) -> None:
    """Re-encrypt every encrypted column under the first key; safe online, resumable."""
    settings = get_settings()
    size = batch_size or settings.key_rotation_batch_size
    if size < 1:
        typer.echo("error: --batch-size must be at least 1", err=True)
        raise typer.Exit(1)
    with database() as db:
        keyring = crypto.keyring()
        if keyring.key_count == 1:
            typer.echo("only one key configured: everything is already under it")

        def progress(col: ColumnReport) -> None:
            typer.echo(
                f"{col.name}: scanned {col.scanned}, re-encrypted {col.rotated}, "
                f"already current {col.already_primary}"
            )

        report = rotate_all(
            db, keyring, batch_size=size, max_batches=max_batches, progress=progress
        )
    typer.echo(f"re-encrypted {report.rotated} values")
    if report.undecryptable:
        typer.echo(
            f"error: {report.undecryptable} values cannot be decrypted by any configured key; "
            "keep the old keys until they are resolved",
            err=True,
        )
        raise typer.Exit(1)
    if not report.complete:
        typer.echo("stopped at --max-batches; run again to continue")
        return
    typer.echo("all encrypted values are under the primary key; old keys can now be removed")


@app.command("status")
def status() -> None:
    """How many stored values are still under a non-primary key, per column."""
    with database() as db:
        keyring = crypto.keyring()
        counts = count_not_primary(db, keyring)
    for name, count in counts.items():
        if count:
            typer.echo(f"{name}: {count}")
    total = sum(counts.values())
    typer.echo(f"{keyring.key_count} keys configured; {total} values not under the primary key")
