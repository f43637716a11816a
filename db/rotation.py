"""Re-encrypt every ``EncryptedText`` column under the primary (first) Fernet key.

Online and resumable: each batch is its own short write transaction (the service keeps
answering between batches), rows already under the primary key are skipped
(``Keyring.is_primary``), and an interrupted run simply continues on the next one. Each update
is a compare-and-set on the ciphertext read in the same transaction, so a value the service
rewrote meanwhile is never overwritten with an older one. When a run reports nothing left
under old keys, the old keys can be removed from the configuration.

The columns are discovered from the ORM metadata (every column whose type is
``EncryptedText``), so a table added later is rotated without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.fernet import InvalidToken
from sqlalchemy import Column, MetaData, Table, Text, and_, select, update

from db.crypto import EncryptedText, Keyring
from db.engine import Database
from db.models import Base


@dataclass(frozen=True)
class EncryptedColumn:
    table: Table
    column: Column[str]

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column.name}"


@dataclass
class ColumnReport:
    name: str
    scanned: int = 0
    rotated: int = 0
    already_primary: int = 0
    # Values no configured key can decrypt: reported, never touched.
    undecryptable: int = 0


@dataclass
class RotationReport:
    columns: list[ColumnReport] = field(default_factory=list)
    complete: bool = True

    @property
    def rotated(self) -> int:
        return sum(c.rotated for c in self.columns)

    @property
    def undecryptable(self) -> int:
        return sum(c.undecryptable for c in self.columns)


def encrypted_columns() -> list[EncryptedColumn]:
    found: list[EncryptedColumn] = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, EncryptedText):
                found.append(EncryptedColumn(table=table, column=column))
    return found


@dataclass(frozen=True)
class _RawView:
    """A type-less view of one encrypted column: the ciphertext as stored, so neither the
    select decrypts nor the update encrypts again."""

    table: Table
    pk: Column[object]
    value: Column[str]


def _raw_view(target: EncryptedColumn) -> _RawView:
    pks = list(target.table.primary_key.columns)
    if len(pks) != 1:
        raise RuntimeError(f"{target.table.name}: rotation needs a single-column primary key")
    pk = pks[0]
    table = Table(
        target.table.name,
        MetaData(),
        Column(pk.name, pk.type),
        Column(target.column.name, Text()),
    )
    return _RawView(table=table, pk=table.c[pk.name], value=table.c[target.column.name])


def _rotate_batch(
    db: Database,
    view: _RawView,
    keyring: Keyring,
    report: ColumnReport,
    *,
    after: object,
    batch_size: int,
) -> object | None:
    """Rotate one batch in one write transaction; returns the last key seen (None: done)."""
    with db.write() as session:
        query = select(view.pk, view.value).where(view.value.is_not(None)).order_by(view.pk)
        if after is not None:
            query = query.where(view.pk > after)
        rows = session.execute(query.limit(batch_size)).all()
        for key, value in rows:
            report.scanned += 1
            if keyring.is_primary(value):
                report.already_primary += 1
                continue
            try:
                fresh = keyring.rotate(value)
            except InvalidToken:
                report.undecryptable += 1
                continue
            result = session.execute(
                update(view.table)
                .where(and_(view.pk == key, view.value == value))
                .values({view.value: fresh})
            )
            report.rotated += int(getattr(result, "rowcount", 0) or 0)
    if len(rows) < batch_size:
        return None
    return rows[-1][0]


def rotate_all(
    db: Database,
    keyring: Keyring,
    *,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: Callable[[ColumnReport], None] | None = None,
) -> RotationReport:
    """Re-encrypt everything not under the primary key. ``max_batches`` bounds the work of
    one run (the rest is left for the next run; ``complete`` is False then)."""
    report = RotationReport()
    batches = 0
    for target in encrypted_columns():
        view = _raw_view(target)
        col_report = ColumnReport(name=target.name)
        report.columns.append(col_report)
        after: object | None = None
        while True:
            if max_batches is not None and batches >= max_batches:
                report.complete = False
                return report
            batches += 1
            after = _rotate_batch(
                db, view, keyring, col_report, after=after, batch_size=batch_size
            )
            if progress is not None:
                progress(col_report)
            if after is None:
                break
    return report


def count_not_primary(db: Database, keyring: Keyring) -> dict[str, int]:
    """Values per column still under an old key (or under none), for ``keys status``."""
    out: dict[str, int] = {}
    for target in encrypted_columns():
        view = _raw_view(target)
        with db.read() as session:
            values = session.execute(
                select(view.value)
                .where(view.value.is_not(None))
                .execution_options(yield_per=1000)
            ).scalars()
            out[target.name] = sum(1 for v in values if not keyring.is_primary(v))
    return out
