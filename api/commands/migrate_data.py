"""`voxmem migrate-data --from URL --to URL`: copy a deployment between databases."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from db.settings import get_settings
from db.transfer import DEFAULT_BATCH, TableReport, TransferError, transfer


def migrate_data(
    source: Annotated[
        str, typer.Option("--from", help="source database URL, e.g. sqlite:///data/voxmem.db")
    ],
    target: Annotated[
        str,
        typer.Option("--to", help="target database URL, e.g. postgresql+psycopg://u:p@host/db"),
    ],
    batch_size: Annotated[
        int, typer.Option(min=1, help="rows per committed batch")
    ] = DEFAULT_BATCH,
) -> None:
    """Copy every table (ciphertext as is), verify counts; safe to rerun after an interruption.

    The target is migrated first and must be empty or a partial copy of the same source. Keep
    the same encryption and lookup keys for the target deployment: nothing is re-encrypted.
    Stop the API and workers on the source first, or rows written during the copy may be missed.
    """

    def show(t: TableReport) -> None:
        mark = "ok" if t.ok else "MISMATCH"
        typer.echo(
            f"{t.name:<24} source {t.source_rows:>9}  target {t.target_rows:>9}  "
            f"copied {t.copied:>9}  already there {t.already_present:>9}  {mark}"
        )

    try:
        report = transfer(get_settings(), source, target, batch=batch_size, progress=show)
    except (TransferError, SQLAlchemyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        typer.echo(f"error: migrate-data failed: {reason}", err=True)
        raise typer.Exit(1) from exc
    if not report.ok:
        bad = ", ".join(t.name for t in report.tables if not t.ok)
        typer.echo(f"error: row counts differ for {bad}", err=True)
        raise typer.Exit(1)
    copied = sum(t.copied for t in report.tables)
    typer.echo(
        f"copied {copied} rows in {len(report.tables)} tables; counts verified; "
        f"{report.sequences_reset} sequences reset; {report.vectors_filled} vectors filled"
    )
