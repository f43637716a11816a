"""Copy a whole deployment between databases (``voxmem migrate-data``, SQLite → PostgreSQL).

Rules:
- The target is migrated to head first (same Alembic history on both dialects); the source
  must already be at head, and is only read.
- Tables go in foreign-key order, in batches by primary key, each batch committed on its own:
  an interrupted copy resumes where it stopped. A row whose primary key already exists in the
  target is not copied again, but it is compared with the source; a difference stops the copy
  (the target holds another deployment, e.g. one made by ``voxmem migrate``, with its own
  tenant and secrets).
- Encrypted columns are read and written as plain text: ciphertext moves as is and is never
  decrypted, so the target needs the same ``VOXMEM_ENCRYPTION_KEYS`` / key file.
- A column that references its own table (``memories.superseded_by``) is copied as NULL first
  and filled once the whole table is present, since a row may point at a later one.
- Afterwards: row counts are verified per table, PostgreSQL sequences are moved past the copied
  ids, and pgvector columns are filled from the embedding bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Engine, MetaData, Table, Text, func, select, text, update

from db.crypto import EncryptedText
from db.engine import make_engine
from db.migrate import current_revision, head_revision, upgrade_to_head
from db.models import Base
from db.settings import Settings
from db.vectors import backfill_vectors

DEFAULT_BATCH = 1000


class TransferError(RuntimeError):
    """The copy cannot proceed or did not verify; the message says why in one line."""


@dataclass
class TableReport:
    name: str
    source_rows: int = 0
    copied: int = 0
    already_present: int = 0
    target_rows: int = 0

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows


@dataclass
class TransferReport:
    tables: list[TableReport] = field(default_factory=list)
    vectors_filled: int = 0
    sequences_reset: int = 0

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)


def storage_metadata() -> MetaData:
    """The models' tables with encrypted columns typed as plain ``Text``: Core reads and writes
    the stored ciphertext unchanged. Other types keep their converters (UTC datetimes, JSON),
    which carry no secrets and make values portable across dialects."""
    plain = MetaData()
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(plain)
        for column in copy.columns:
            if isinstance(column.type, EncryptedText):
                column.type = Text()
            # A copy keeps the source's values: no Python-side defaults, and no `onupdate`
            # bumping updated_at when the self-references are filled in.
            column.default = None
            column.onupdate = None
    return plain


def _single_pk(table: Table) -> Column[Any]:
    pk = list(table.primary_key.columns)
    if len(pk) != 1:
        raise TransferError(f"{table.name}: expected a single-column primary key")
    return pk[0]


def _self_references(table: Table) -> list[str]:
    return [fk.parent.name for fk in table.foreign_keys if fk.column.table.name == table.name]


def _count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _differences(src: dict[str, Any], dst: dict[str, Any], skip: Sequence[str]) -> list[str]:
    return [k for k, v in src.items() if k not in skip and dst.get(k) != v]


def copy_table(
    source: Engine, target: Engine, table: Table, *, batch: int = DEFAULT_BATCH
) -> TableReport:
    report = TableReport(table.name)
    pk = _single_pk(table)
    self_refs = _self_references(table)
    last: Any = None
    while True:
        stmt = select(table).order_by(pk).limit(batch)
        if last is not None:
            stmt = stmt.where(pk > last)
        with source.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        if not rows:
            break
        last = rows[-1][pk.name]
        keys = [r[pk.name] for r in rows]
        with target.begin() as conn:
            present: dict[Any, dict[str, Any]] = {}
            for r in conn.execute(select(table).where(pk.in_(keys))):
                mapping = dict(r._mapping)
                present[mapping[pk.name]] = mapping
            for row in rows:
                existing = present.get(row[pk.name])
                if existing is not None:
                    diff = _differences(row, existing, self_refs)
                    if diff:
                        raise TransferError(
                            f"{table.name} {pk.name}={row[pk.name]!r} already exists in the "
                            f"target with other values ({', '.join(diff)}): the target holds "
                            "another deployment; migrate-data needs an empty or partly "
                            "copied database"
                        )
            missing = [{**r, **dict.fromkeys(self_refs)} for r in rows if r[pk.name] not in present]
            if missing:
                conn.execute(table.insert(), missing)
        report.copied += len(missing)
        report.already_present += len(present)
    if self_refs:
        _fill_self_references(source, target, table, pk, self_refs, batch)
    report.source_rows = _count(source, table)
    report.target_rows = _count(target, table)
    return report


def _fill_self_references(
    source: Engine, target: Engine, table: Table, pk: Column[Any], columns: list[str], batch: int
) -> None:
    for name in columns:
        col = table.c[name]
        last: Any = None
        while True:
            stmt = select(pk, col).where(col.is_not(None)).order_by(pk).limit(batch)
            if last is not None:
                stmt = stmt.where(pk > last)
            with source.connect() as conn:
                pairs = conn.execute(stmt).all()
            if not pairs:
                break
            last = pairs[-1][0]
            with target.begin() as conn:
                for key, value in pairs:
                    conn.execute(
                        update(table).where(pk == key, col.is_(None)).values({name: value})
                    )


def reset_sequences(target: Engine, tables: Sequence[Table]) -> int:
    """PostgreSQL: serial sequences past the copied ids, or the next insert collides."""
    if target.dialect.name != "postgresql":
        return 0
    done = 0
    with target.begin() as conn:
        for table in tables:
            pk = list(table.primary_key.columns)
            if len(pk) != 1 or pk[0].autoincrement is False or not _is_integer(pk[0]):
                continue
            seq = conn.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": pk[0].name}
            ).scalar()
            if seq is None:
                continue
            # Names come from our own metadata, never from input.
            top = f"(SELECT MAX({pk[0].name}) FROM {table.name})"  # noqa: S608
            conn.execute(
                text(f"SELECT setval(:seq, COALESCE({top}, 1), {top} IS NOT NULL)"),
                {"seq": seq},
            )
            done += 1
    return done


def _is_integer(column: Column[Any]) -> bool:
    try:
        return column.type.python_type is int
    except NotImplementedError:
        return False


def transfer(
    settings: Settings,
    source_url: str,
    target_url: str,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[TableReport], None] | None = None,
) -> TransferReport:
    """Copy every table from ``source_url`` to ``target_url`` (see the module docstring)."""
    if source_url == target_url:
        raise TransferError("source and target are the same database")
    src_settings = settings.model_copy(update={"database_url": source_url})
    dst_settings = settings.model_copy(update={"database_url": target_url})
    source = make_engine(src_settings, read_only=True)
    try:
        at = current_revision(source)
        head = head_revision(src_settings)
        if at != head:
            raise TransferError(
                f"source schema is at {at or 'nothing'}, not {head}: run `voxmem migrate` "
                "against the source first"
            )
        upgrade_to_head(dst_settings)
        target = make_engine(dst_settings)
        try:
            report = TransferReport()
            tables = storage_metadata().sorted_tables
            for table in tables:
                table_report = copy_table(source, target, table, batch=batch)
                report.tables.append(table_report)
                if progress is not None:
                    progress(table_report)
            report.sequences_reset = reset_sequences(target, tables)
            with target.begin() as conn:
                report.vectors_filled = backfill_vectors(conn, batch=batch)
            return report
        finally:
            target.dispose()
    finally:
        source.dispose()
