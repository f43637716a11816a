"""Off-the-hot-path writes of the agent endpoints: tool invocation logs and token `last_used_at`.

The agent endpoints must never wait for a write lock they do not need for the answer (on
SQLite a worker committing a transcript holds it for milliseconds to seconds). These writes
go to one daemon thread that commits them in batches; the request only appends to a queue.

When the queue is full the item is dropped and counted rather than blocking the caller: an
audit row is worth less than a caller waiting in silence.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Table, insert, update
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import ApiToken
from db.types import utcnow

log = structlog.get_logger("voxmem.background")


@dataclass(frozen=True)
class Insert:
    """A row a job asks the writer to insert: rows of one batch go in one executemany."""

    table: Table
    values: dict[str, Any]


# A job reads what it needs to decide and returns the row to insert (or None); it may also
# write through the session itself.
Job = Callable[[Session], Insert | None]


@dataclass
class _Barrier:
    done: threading.Event = field(default_factory=threading.Event)


class BackgroundWriter:
    def __init__(
        self,
        db: Database,
        *,
        max_items: int = 10_000,
        batch_size: int = 200,
        interval_secs: float = 0.2,
        linger_secs: float = 0.1,
    ) -> None:
        self._db = db
        self._queue: queue.Queue[Job | _Barrier] = queue.Queue(maxsize=max_items)
        self._batch_size = batch_size
        self._interval = interval_secs
        self._linger = linger_secs
        # Touches are coalesced per token: a busy token costs one UPDATE per batch, not per call.
        self._touches: dict[int, datetime] = {}
        self._touch_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.failed = 0
        self.written = 0

    # --- producer side (request threads; never blocks) --------------------------------------
    def submit(self, job: Job) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            log.warning("background.dropped", reason="queue full", dropped=self.dropped)
            return False
        return True

    def touch_token(self, token_id: int) -> None:
        with self._touch_lock:
            self._touches[token_id] = utcnow()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted before this call is committed (tests, shutdown)."""
        if self._thread is None or not self._thread.is_alive():
            self._drain_once(block=False)
            return True
        barrier = _Barrier()
        try:
            self._queue.put(barrier, timeout=timeout)
        except queue.Full:
            return False
        return barrier.done.wait(timeout)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="voxmem-bg-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        # Whatever arrived after the thread's last pass still gets written.
        self._drain_once(block=False)

    # --- consumer side ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_once(block=True)
        self._drain_once(block=False)

    def _drain_once(self, *, block: bool) -> None:
        items: list[Job | _Barrier] = []
        try:
            first = self._queue.get(timeout=self._interval) if block else self._queue.get_nowait()
            items.append(first)
            # Linger for more: one transaction per busy tenth of a second instead of one per
            # tool call. Its CPU (about 2 ms a batch on SQLite) otherwise ran beside the next
            # request and took the GIL from it. A barrier (flush) ends the wait at once.
            deadline = time.monotonic() + (self._linger if block else 0.0)
            while len(items) < self._batch_size and not isinstance(items[-1], _Barrier):
                remaining = deadline - time.monotonic()
                if remaining > 0 and not self._stop.is_set():
                    items.append(self._queue.get(timeout=remaining))
                else:
                    items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        with self._touch_lock:
            touches, self._touches = self._touches, {}
        jobs = [item for item in items if not isinstance(item, _Barrier)]
        if jobs or touches:
            self._commit(jobs, touches)
        for item in items:
            if isinstance(item, _Barrier):
                item.done.set()

    def _commit(self, jobs: list[Job], touches: dict[int, datetime]) -> None:
        try:
            # Audit rows and touches may be lost with the machine (never with the process):
            # no fsync per batch competing with the intake's durable commits.
            postgres = self._db.dialect == "postgresql"
            with self._db.write_relaxed() as session:
                for token_id, when in touches.items():
                    session.execute(
                        update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=when)
                    )
                inserts: list[Insert] = []
                for job in jobs:
                    # A savepoint per job: one bad job must not take the batch with it. On
                    # SQLite a failed read leaves the transaction usable, so none is needed.
                    try:
                        with session.begin_nested() if postgres else nullcontext():
                            row = job(session)
                        if row is not None:
                            inserts.append(row)
                        else:
                            self.written += 1
                    except Exception as exc:  # noqa: BLE001 - logged and counted, never raised
                        self.failed += 1
                        log.warning("background.job_failed", error=str(exc)[:200])
                self._insert(session, inserts)
        except Exception as exc:  # noqa: BLE001 - the database may be down; keep running
            self.failed += len(jobs)
            log.error("background.batch_failed", error=str(exc)[:200], jobs=len(jobs))

    def _insert(self, session: Session, inserts: list[Insert]) -> None:
        """All rows in one executemany per table (the ORM's unit of work and a savepoint per
        row cost ~0.6 ms a row, which ran beside live requests and took the GIL from them);
        if that fails (a row's user was forgotten meanwhile), row by row so one bad row
        loses only itself."""
        by_table: dict[Table, list[dict[str, Any]]] = {}
        for item in inserts:
            by_table.setdefault(item.table, []).append(item.values)
        for table, rows in by_table.items():
            try:
                with session.begin_nested():
                    session.execute(insert(table), rows)
                self.written += len(rows)
                continue
            except Exception as exc:  # noqa: BLE001 - retried row by row below
                log.info("background.batch_insert_retry", error=str(exc)[:200], rows=len(rows))
            for row in rows:
                try:
                    with session.begin_nested():
                        session.execute(insert(table), [row])
                    self.written += 1
                except Exception as exc:  # noqa: BLE001 - logged and counted, never raised
                    self.failed += 1
                    log.warning("background.job_failed", error=str(exc)[:200])


EXTRA_KEY = "background_writer"


def get_writer(extras: dict[str, object]) -> BackgroundWriter | None:
    writer = extras.get(EXTRA_KEY)
    return writer if isinstance(writer, BackgroundWriter) else None
