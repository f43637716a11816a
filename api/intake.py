"""Post-call intake internals: tenant secret cache, ordering keys, and the group-commit writer.

Why a single writer thread per API process: SQLite has one write lock. Many request threads
each running BEGIN IMMEDIATE … COMMIT would contend through SQLite's busy handler, which sleeps
in 1–100 ms steps and wrecks tail latency. One thread draining a queue commits every waiting
event in one transaction (group commit: one WAL fsync for the batch under synchronous=FULL),
then resolves each request's future. A request is acknowledged only after the commit that
holds its row returned, so an acknowledged event survives a crash or a power cut.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import structlog
from sqlalchemy import PoolProxiedConnection, Table, bindparam, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from db.crypto import Keyring
from db.engine import BUSY_TIMEOUT_MS, Database, begin_immediate
from db.models import DEFAULT_TENANT, ConversationBinding, Tenant, WebhookEvent
from db.settings import Settings
from db.tenancy import active_webhook_secrets
from db.types import utcnow
from memory.identity import ANONYMOUS
from worker.payload import (
    INITIATION_FAILURE,
    Envelope,
    as_str,
    claimed_user_ids,
    customer_number,
    parse_initiation_failure,
)

log = structlog.get_logger("voxmem.intake")
_NOT_DIGITS = re.compile(r"\D")


# --------------------------------------------------------------------------------------------
# Tenants and their secrets (cached: one DB read per tenant per TTL, not per request)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TenantSecrets:
    tenant_id: int
    slug: str
    secrets: tuple[str, ...]


class SecretCache:
    """Tenant slug → active secrets, for ``ttl`` seconds.

    A revoked secret keeps verifying for at most ``ttl`` seconds in a running API process;
    a new tenant is found at once (a miss is not cached, but looked up per request).
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._ttl = settings.intake_secret_cache_secs
        self._entries: dict[str, tuple[float, TenantSecrets]] = {}
        self._lock = threading.Lock()

    def lookup(self, slug: str) -> TenantSecrets | None:
        """Blocking (DB on a miss): call from a worker thread."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(slug)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        with self._db.read() as session:
            tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
            if tenant is None:
                return None
            found = active_webhook_secrets(session, tenant.id)
        if slug == DEFAULT_TENANT:
            # VOXMEM_WEBHOOK_SECRETS always verifies for the default tenant, even before a
            # re-run of `voxmem migrate` has copied a newly added secret into the database.
            found = found + [s for s in self._settings.webhook_secret_list if s not in found]
        entry = TenantSecrets(tenant_id=tenant.id, slug=slug, secrets=tuple(found))
        with self._lock:
            self._entries[slug] = (now, entry)
        return entry

    def cached(self, slug: str) -> TenantSecrets | None:
        """Non-blocking: a fresh cache entry or None."""
        with self._lock:
            hit = self._entries.get(slug)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        return None


# --------------------------------------------------------------------------------------------
# Ordering keys: events of one customer are processed one at a time
# --------------------------------------------------------------------------------------------
def _short(prefix: str, value: str) -> str:
    if len(value) <= 100:
        return f"{prefix}:{value}"
    return f"{prefix}#:{hashlib.sha256(value.encode('utf-8')).hexdigest()[:40]}"


def _canonical_number(raw: str) -> str | None:
    """A cheap stand-in for full E.164 parsing (phonenumbers costs ~50 µs a request).

    ElevenLabs sends E.164 already; keys only need to agree with each other, and the worker
    resolves the user with the full normaliser. Withheld numbers give no key.
    """
    value = raw.strip()
    if value.lower() in ANONYMOUS:
        return None
    digits = _NOT_DIGITS.sub("", value)
    if len(digits) < 3:
        return None
    return ("+" if value.startswith("+") else "") + digits


@dataclass(frozen=True)
class OrderingHint:
    """What intake can tell about the customer without the database; the writer thread
    upgrades it to the bound user when a conversation-init binding exists."""

    user_key: str | None
    fallback_key: str | None


def ordering_hint(
    envelope: Envelope, keyring: Keyring, own_numbers: frozenset[str]
) -> OrderingHint:
    data = envelope.data
    ours, external = claimed_user_ids(data)
    claimed = ours or external
    user_key = _short("user", claimed) if claimed else None
    if envelope.type == INITIATION_FAILURE:
        try:
            raw_number = parse_initiation_failure(data).customer_number
        except ValueError:
            raw_number = None
    else:
        raw_number = customer_number(data, own_numbers)
    number = _canonical_number(raw_number) if raw_number else None
    if number is not None:
        # The same keyed hash identity uses for caller lookup, shortened; never the number.
        fallback: str | None = "num:" + keyring.lookup_hash("caller:" + number)[:40]
    else:
        conversation_id = as_str(data.get("conversation_id"))
        fallback = _short("conv", conversation_id) if conversation_id else None
    return OrderingHint(user_key=user_key, fallback_key=fallback)


# --------------------------------------------------------------------------------------------
# Group-commit writer
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PendingEvent:
    tenant_id: int
    event_id: str
    event_type: str
    conversation_id: str | None
    payload: str | None
    hint: OrderingHint
    signature_timestamp: int
    payload_bytes: int
    trace_context: Mapping[str, Any] | None
    max_attempts: int


@dataclass(frozen=True)
class InsertResult:
    event_row_id: int | None  # None: a row with this (tenant, event_id) already existed

    @property
    def duplicate(self) -> bool:
        return self.event_row_id is None


class WriterStoppedError(RuntimeError):
    """The ingest writer is shut down: the event was not stored (the route answers 503)."""


_STOP = object()
Outcome = InsertResult | BaseException


@dataclass(frozen=True)
class _Waiting:
    item: PendingEvent
    future: asyncio.Future[InsertResult]  # its loop is the one to answer on


class IngestWriter:
    """A daemon thread that inserts queued events in batches, one transaction per batch.

    The hand-over between the event loop and the thread is per batch, not per request: the
    events that reach ``insert`` during one loop iteration go to the thread in one queue put,
    and each committed batch comes back as one ``call_soon_threadsafe`` that settles all its
    (loop-native) futures. Per-request hand-over (a concurrent Future wrapped per request, one
    wake-up each way) cost the loop ~0.3 ms of CPU per webhook, as much as the rest of the
    route (bench/notes.md).
    """

    def __init__(self, db: Database, *, batch_max: int) -> None:
        self._db = db
        self._sqlite = _SqliteBatchInsert(db) if db.dialect == "sqlite" else None
        # A SQLite batch is one INSERT statement: keep it within SQLite's variable limit.
        limit = _SqliteBatchInsert.MAX_ROWS if self._sqlite is not None else batch_max
        self._batch_max = max(1, min(batch_max, limit))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Events of the current loop iteration, per loop (tests may drive one app from several).
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Waiting]] = {}
        self._thread = threading.Thread(target=self._run, name="voxmem-ingest", daemon=True)
        self._stopped = False
        self._insert_stmt = _build_insert(db.dialect)
        self._raw: PoolProxiedConnection | None = None  # SQLite: owned by the thread
        self._thread.start()

    async def insert(self, item: PendingEvent, *, deadline_secs: float) -> InsertResult:
        """Resolve once the event's row is committed; ``TimeoutError`` after ``deadline_secs``
        (the row may still be committed later: a retry then finds it as a duplicate)."""
        if self._stopped:
            raise WriterStoppedError("ingest writer stopped")
        if not self._thread.is_alive():
            # Never expected (the loop catches per-batch errors), but a dead writer would turn
            # every webhook into a 503 after the timeout: start a fresh one.
            log.error("intake.writer_restarted")
            self._thread = threading.Thread(target=self._run, name="voxmem-ingest", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InsertResult] = loop.create_future()
        gathering = self._gathering.get(loop)
        if gathering is None:
            gathering = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop, deadline_secs)
        gathering.append(_Waiting(item, future))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop, deadline_secs: float) -> None:
        batch = self._gathering.pop(loop, [])
        if self._stopped:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(WriterStoppedError("ingest writer stopped"))
            return
        # One timer for the whole hand-over instead of one per request: everything in it
        # arrived in the same loop iteration, so it shares the deadline. The timer holds the
        # futures only, not the events' payloads.
        loop.call_later(deadline_secs, _expire, [waiting.future for waiting in batch])
        self._queue.put(batch)

    def close(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- thread body ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._drain()
        finally:
            # Also when the thread dies: a connection left inside a transaction would keep the
            # write lock; the pool rolls it back on return.
            self._release_connection()

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Waiting] = list(first)
            stop_after = False
            while len(batch) < self._batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.extend(nxt)
            for start in range(0, len(batch), self._batch_max):
                self._write(batch[start : start + self._batch_max])
            if stop_after:
                return

    def _write(self, batch: list[_Waiting]) -> None:
        # A request that timed out (or was cancelled) before its turn is not written: it was
        # answered 503 and the sender may retry.
        live = [waiting for waiting in batch if not waiting.future.done()]
        if not live:
            return
        outcomes: list[Outcome]
        try:
            outcomes = self._insert_many([waiting.item for waiting in live])
        except Exception as exc:  # noqa: BLE001 - isolate the bad row, then report per event
            if len(live) == 1:
                outcomes = [exc]
            else:
                log.warning("intake.batch_failed_retrying_singly", size=len(live), error=str(exc))
                outcomes = [self._write_alone(waiting.item) for waiting in live]
        # Only now is every row of the batch durable: acknowledge.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiting, Outcome]]] = {}
        for waiting, outcome in zip(live, outcomes, strict=True):
            by_loop.setdefault(waiting.future.get_loop(), []).append((waiting, outcome))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting for these answers any more

    def _write_alone(self, item: PendingEvent) -> Outcome:
        try:
            return self._insert_many([item])[0]
        except Exception as exc:  # noqa: BLE001 - reported to that event's request alone
            return exc

    def _insert_many(self, items: list[PendingEvent]) -> list[Outcome]:
        now: datetime = utcnow()
        rows = [_row(item, now) for item in items]
        if self._sqlite is None:
            with self._db.write_engine.begin() as conn:
                return [
                    InsertResult(event_row_id=conn.execute(self._insert_stmt, row).scalar())
                    for row in rows
                ]
        # Encrypted before the write lock is taken: workers and the checkpointer wait for
        # the lock, not for this thread's Fernet.
        prepared = [self._sqlite.prepare(row) for row in rows]
        raw = self._connection()
        try:
            begin_immediate(raw, BUSY_TIMEOUT_MS)
            ids = self._sqlite.execute(raw, prepared)
            raw.execute("COMMIT")
        except BaseException:
            self._abandon_transaction(raw)
            raise
        return [InsertResult(event_row_id=row_id) for row_id in ids]

    # -- the thread's own SQLite connection ----------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """The writer's DBAPI connection, taken from the write engine's pool (its pragmas set)
        and kept from one batch to the next until a batch fails.

        Why not ``write_engine.begin()`` per batch: the pool check-out and return, and the
        BEGIN and COMMIT through SQLAlchemy's execution machinery, cost ~0.2 ms of this
        thread's CPU per single-event batch (bench/notes.md), most of it holding the GIL the
        event loop needs for the next request. Here a batch is six sqlite3 calls.
        """
        if self._raw is None:
            self._raw = self._db.write_engine.raw_connection()
        return cast(sqlite3.Connection, self._raw.driver_connection)

    def _abandon_transaction(self, raw: sqlite3.Connection) -> None:
        """Roll back and hand the connection back to the pool; the next batch checks one
        out afresh. Failures are rare (disk full, I/O error, a refused row), and whatever a
        failure left in the connection's state must not follow every later webhook."""
        try:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back is closed, not pooled.
            self._release_connection(invalidate=True)
            return
        self._release_connection()

    def _release_connection(self, *, invalidate: bool = False) -> None:
        proxied, self._raw = self._raw, None
        if proxied is None:
            return
        try:
            if invalidate:
                proxied.invalidate()
            proxied.close()
        except Exception as exc:  # noqa: BLE001 - the connection is dropped either way
            log.warning("intake.connection_release_failed", error=str(exc))


def _row(item: PendingEvent, now: datetime) -> dict[str, Any]:
    return {
        "tenant_id": item.tenant_id,
        "event_id": item.event_id,
        "event_type": item.event_type,
        "payload": item.payload,
        "conversation_id": item.conversation_id,
        # Used unless a conversation-init binding names the user (resolved in SQL).
        "ordering_hint": item.hint.user_key or item.hint.fallback_key,
        "status": "pending",
        "retry_count": 0,
        "max_attempts": item.max_attempts,
        "run_after": now,
        "created_at": now,
        "signature_timestamp": item.signature_timestamp,
        "payload_bytes": item.payload_bytes,
        "trace_context": dict(item.trace_context) if item.trace_context else None,
    }


def _expire(futures: list[asyncio.Future[InsertResult]]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(TimeoutError())


def _settle(settled: list[tuple[_Waiting, Outcome]]) -> None:
    for waiting, outcome in settled:
        if waiting.future.done():
            continue  # answered 503 on its deadline; the row is there for the retry
        if isinstance(outcome, BaseException):
            waiting.future.set_exception(outcome)
        else:
            waiting.future.set_result(outcome)


class _SqliteBatchInsert:
    """A whole batch in two statements on the writer's own DBAPI connection (SQLite only).

    Why not one INSERT … RETURNING per event: Python's sqlite3 releases the GIL around every
    ``sqlite3_step`` and must take it back afterwards, and under load the event loop holds it.
    Two steps per event (insert, then the RETURNING row) meant two GIL hand-overs per webhook
    between this thread and the loop, which cost the loop more CPU than its own work on the
    request (bench/notes.md). Here a batch costs four steps whatever its size: BEGIN IMMEDIATE,
    one SELECT that finds already-stored events (normally none), one multi-row INSERT of the
    rest, COMMIT.

    Row ids come from ``lastrowid``: the rows of one INSERT statement get consecutive rowids
    (the write lock is held and no row of the statement conflicts, which the pre-check under
    that lock guarantees and ``rowcount`` confirms; anything else raises, and the writer
    retries event by event). The SQL is written out rather than compiled from
    ``_build_insert`` because SQLAlchemy's multi-VALUES form cannot repeat the per-row
    subquery's parameters; each value still goes through its column type's bind processor, so
    the payload is encrypted by EncryptedText and datetimes are stored as the ORM stores them.
    """

    _ROW = (
        "(?, ?, ?, ?, ?, coalesce((SELECT 'user:' || b.user_id FROM conversation_bindings AS b"
        " WHERE b.tenant_id = ? AND b.conversation_id = ? ORDER BY b.id DESC LIMIT 1), ?),"
        " ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    _INSERT = (
        "INSERT INTO webhook_events (tenant_id, event_id, event_type, payload, conversation_id,"
        " ordering_key, status, retry_count, max_attempts, run_after, created_at,"
        " signature_timestamp, payload_bytes, trace_context) VALUES "
    )
    _SELECT = (
        "SELECT w.tenant_id, w.event_id FROM (VALUES {}) AS v"
        " CROSS JOIN webhook_events AS w ON w.tenant_id = v.column1 AND w.event_id = v.column2"
    )
    # Far below SQLite's 32,766 variables even at 16 per row.
    MAX_ROWS = 500

    def __init__(self, db: Database) -> None:
        dialect = db.write_engine.dialect
        table = cast(Table, WebhookEvent.__table__)
        self._process: dict[str, Any] = {
            name: table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in _INSERT_COLUMNS
        }
        self._sql: dict[tuple[str, int], str] = {}

    def _statement(self, kind: str, n: int) -> str:
        sql = self._sql.get((kind, n))
        if sql is None:
            if kind == "select":
                sql = self._SELECT.format(", ".join(["(?, ?)"] * n))
            else:
                sql = (
                    self._INSERT
                    + ", ".join([self._ROW] * n)
                    + " ON CONFLICT (tenant_id, event_id) DO NOTHING"
                )
            self._sql[(kind, n)] = sql
        return sql

    def prepare(self, row: dict[str, Any]) -> _PreparedRow:
        """The row's key and its SQL values, the payload encrypted (no lock needed)."""

        def bound(name: str) -> Any:
            value = row[name]
            processor = self._process[name]
            # None is SQL NULL (not JSON 'null'), as the ORM stores it.
            return processor(value) if processor is not None and value is not None else value

        values = [
            bound("tenant_id"),
            bound("event_id"),
            bound("event_type"),
            bound("payload"),
            bound("conversation_id"),
            bound("tenant_id"),
            bound("conversation_id"),
            row["ordering_hint"],
            bound("status"),
            bound("retry_count"),
            bound("max_attempts"),
            bound("run_after"),
            bound("created_at"),
            bound("signature_timestamp"),
            bound("payload_bytes"),
            bound("trace_context"),
        ]
        return _PreparedRow(key=(row["tenant_id"], row["event_id"]), values=values)

    def execute(self, raw: sqlite3.Connection, rows: list[_PreparedRow]) -> list[int | None]:
        """Row id per event, None for one already stored (or earlier in the same batch).
        Inside the caller's write transaction; at most ``MAX_ROWS`` rows (the writer's
        batches are capped to it)."""
        flat_keys = [part for row in rows for part in row.key]
        seen = set(raw.execute(self._statement("select", len(rows)), flat_keys).fetchall())
        fresh: list[int] = []
        for index, row in enumerate(rows):
            if row.key not in seen:
                seen.add(row.key)
                fresh.append(index)
        ids: list[int | None] = [None] * len(rows)
        if not fresh:
            return ids
        values = [value for index in fresh for value in rows[index].values]
        cursor = raw.execute(self._statement("insert", len(fresh)), values)
        try:
            inserted, last = cursor.rowcount, cursor.lastrowid
        finally:
            cursor.close()
        if inserted != len(fresh) or last is None:
            raise RuntimeError(f"intake batch inserted {inserted} of {len(fresh)} rows")
        for offset, index in enumerate(fresh):
            ids[index] = last - len(fresh) + 1 + offset
        return ids


@dataclass(frozen=True)
class _PreparedRow:
    key: tuple[int, str]
    values: list[Any]


def _build_insert(dialect: str) -> Any:
    """One statement per event, built once (its compiled form is cached):

    INSERT … VALUES (…, COALESCE((SELECT 'user:' || user_id FROM conversation_bindings …),
    :ordering_hint), …) ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING id

    The bound user, when conversation-init recorded one, is looked up inside the INSERT, so
    intake costs one round trip; ON CONFLICT makes a redelivery return no row (duplicate).
    """
    table = cast(Table, WebhookEvent.__table__)
    binding = cast(Table, ConversationBinding.__table__)
    bound_user = (
        select(literal("user:") + binding.c.user_id)
        .where(
            binding.c.tenant_id == bindparam("tenant_id"),
            binding.c.conversation_id == bindparam("conversation_id"),
        )
        .order_by(binding.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    values: dict[str, Any] = {
        name: bindparam(name, type_=table.c[name].type)
        for name in _INSERT_COLUMNS
        if name != "ordering_key"
    }
    values["ordering_key"] = func.coalesce(
        bound_user, bindparam("ordering_hint", type_=table.c.ordering_key.type)
    )
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(table)
        .values(values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "event_id"])
        .returning(table.c.id)
    )


_INSERT_COLUMNS = (
    "tenant_id",
    "event_id",
    "event_type",
    "payload",
    "conversation_id",
    "ordering_key",
    "status",
    "retry_count",
    "max_attempts",
    "run_after",
    "created_at",
    "signature_timestamp",
    "payload_bytes",
    "trace_context",
)
