"""The post-call pipeline: an ordered list of stages run for each claimed event.

Each stage has two optional halves:

- ``prepare(PrepareContext) -> artifact``: slow work (LLM extraction, embeddings) done **outside**
  any write transaction, so it never holds SQLite's single write lock; it may read through
  ``ctx.db.read()``. The lease is extended in the background while it runs; long loops can call
  ``ctx.check_lease()`` to stop early once the lease is lost. Artifacts land in
  ``StageContext.prepared[stage.name]``.
- ``apply(StageContext)``: database writes, all in **one** transaction together with the
  lease check and the completion of the event. A crash anywhere before that commit leaves no
  trace and the event is re-run; after it, the event is completed. So effects happen exactly
  once without every stage having to be idempotent on its own (replays by an operator re-run
  stages against existing rows: stages should still upsert rather than blindly insert).

Stages run in list order in both phases. Later issues append their stages in
``worker.stages.default_stages()``.

Forgotten data (issue 5, ``worker/forgotten.py``): the completing transaction first checks the
forget tombstones; an event of a call whose user was forgotten is completed as ``dropped``
(payload cleared, nothing written) instead of running the stages. A job already known to be
forgotten skips ``prepare`` too.

Stage boundaries (fault injection): ``Pipeline(on_boundary=...)`` is called at every point
where a crash leaves a distinct state — ``claimed`` (lease held, nothing prepared),
``prepared:<stage>`` after each prepare, ``applied:<stage>`` after each apply (inside the
completing transaction, with the session so the hook can flush the uncommitted rows),
``completed`` (the event marked done, not yet committed) and ``committed`` (durable, outcome
not yet recorded in metrics or logs). ``tests/test_worker_crash_stages.py`` SIGKILLs a real
worker process at each of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from db import metrics, tracing
from db import queue as q
from db.engine import Database, is_busy
from db.models import Conversation, ConversationTurn, User
from db.settings import Settings
from db.types import utcnow
from worker.forgotten import ForgetGuard
from worker.payload import (
    INITIATION_FAILURE,
    TRANSCRIPTION,
    InitiationFailure,
    PayloadError,
    PostCallTranscription,
    parse_envelope,
    parse_initiation_failure,
    parse_transcription,
)

log = structlog.get_logger("voxmem.pipeline")


class PermanentError(Exception):
    """Raise from a stage when retrying cannot help (bad data): the event is dead-lettered."""


class RetryableError(Exception):
    """Raise from a stage for a transient failure; ``retry_after`` (seconds) is honoured."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class PrepareContext:
    """What a stage's ``prepare`` sees. No write session: prepare must not write."""

    settings: Settings
    db: Database
    tenant_id: int
    job: q.Job
    event_type: str
    event_timestamp: int | None
    data: dict[str, Any]
    call: PostCallTranscription | None
    failure: InitiationFailure | None
    lease_lost: threading.Event
    prepared: dict[str, Any] = field(default_factory=dict)

    def check_lease(self) -> None:
        if self.lease_lost.is_set():
            raise q.LeaseLostError(f"event {self.job.id}: lease lost during prepare")


@dataclass
class StageContext:
    """What a stage's ``apply`` sees: the completing write transaction and what earlier stages
    produced (``user`` after the resolve stage, ``conversation``/``turns`` after the store
    stage)."""

    session: Session
    settings: Settings
    tenant_id: int
    job: q.Job
    event_type: str
    # The envelope's event_timestamp (unix seconds), when it was a number.
    event_timestamp: int | None
    # The payload's raw ``data`` object (e.g. for memory.call_input.call_from_elevenlabs).
    data: dict[str, Any]
    call: PostCallTranscription | None
    failure: InitiationFailure | None
    now: datetime
    prepared: dict[str, Any]
    user: User | None = None
    user_created: bool = False
    conversation: Conversation | None = None
    # Stored turns in transcript order; turns[i].turn_order == transcript index.
    turns: list[ConversationTurn] = field(default_factory=list)

    def require_user(self) -> User:
        if self.user is None:
            raise RuntimeError("stage order: the user is resolved by the resolve_user stage")
        return self.user

    def require_conversation(self) -> Conversation:
        if self.conversation is None:
            raise RuntimeError("stage order: the conversation is stored by store_conversation")
        return self.conversation


ApplyFn = Callable[[StageContext], None]
PrepareFn = Callable[[PrepareContext], Any]
# Called with a boundary name (see the module docstring) and, inside the completing
# transaction, its session. Fault injection only: production passes None.
#
# Why a constructor argument and not a Settings field or an environment-driven plugin: a
# setting would put a "kill the worker here" switch on every deployment's configuration surface
# (one stray VOXMEM_* variable and every worker dies mid-job in a restart loop), and a plugin
# would have to monkeypatch private methods that silently stop matching after a refactor. A
# callable is inert unless code that builds the pipeline passes one; the only caller that does
# is the crash-test harness (tests/worker_harness.py), which runs the real worker process body
# (worker.main.run_worker_process) with it.
BoundaryHook = Callable[[str, Session | None], None]


@dataclass(frozen=True)
class Stage:
    name: str
    apply: ApplyFn | None = None
    prepare: PrepareFn | None = None
    # Event types the stage runs for; audio events (kept only on request) run none by default.
    event_types: frozenset[str] = frozenset({TRANSCRIPTION})


@dataclass(frozen=True)
class Outcome:
    status: str  # completed | dropped (forgotten data) | retry | dead_letter | lost
    error: str | None = None


class LeaseKeeper:
    """Extends the job's lease every ``lease/3`` seconds on its own thread and connection.

    If an extension touches no row the lease is gone (expired and taken by another worker):
    ``lost`` is set, and the completing transaction's lease check refuses to commit.
    """

    def __init__(self, db: Database, job: q.Job, lease_secs: float) -> None:
        self._db = db
        self._job = job
        self._lease_secs = lease_secs
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._lease_secs)

    def _run(self) -> None:
        interval = max(0.05, self._lease_secs / 3)
        while not self._stop.wait(interval):
            try:
                with self._db.write() as session:
                    q.heartbeat(session, self._job, now=utcnow(), lease_secs=self._lease_secs)
            except q.LeaseLostError:
                if not self._stop.is_set():
                    log.warning("job.lease_lost", event_id=self._job.id)
                    self.lost.set()
                return
            except Exception as exc:  # noqa: BLE001 - a missed extension is retried next tick
                log.warning("job.lease_extend_failed", event_id=self._job.id, error=str(exc))


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        stages: Sequence[Stage],
        *,
        on_boundary: BoundaryHook | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.stages = list(stages)
        self.forget_guard = ForgetGuard(settings, db)
        self.on_boundary = on_boundary
        self.backoff = q.Backoff(settings.queue_backoff_base_secs, settings.queue_backoff_cap_secs)

    def run(self, job: q.Job) -> Outcome:
        """Process one claimed job to its recorded outcome (never raises for job errors)."""
        started = time.perf_counter()
        with tracing.span(
            "worker.job",
            parent=job.trace_context,
            attributes={"event.type": job.event_type, "event.id": job.id, "attempt": job.attempt},
        ):
            outcome = self._run(job)
        metrics.observe_job(job.event_type, outcome.status, time.perf_counter() - started)
        log.info(
            "job.finished",
            event_id=job.id,
            type=job.event_type,
            attempt=job.attempt,
            outcome=outcome.status,
            error=outcome.error,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return outcome

    def _boundary(self, name: str, session: Session | None = None) -> None:
        if self.on_boundary is not None:
            self.on_boundary(name, session)

    def _run(self, job: q.Job) -> Outcome:
        try:
            with LeaseKeeper(self.db, job, self.settings.queue_lease_secs) as keeper:
                dropped = self._process(job, keeper.lost)
            self._boundary("committed")
        except q.LeaseLostError as exc:
            # Another worker owns the event now; anything we did was rolled back.
            return Outcome("lost", str(exc))
        except (PayloadError, PermanentError) as exc:
            return self._record_failure(job, exc, permanent=True)
        except RetryableError as exc:
            return self._record_failure(job, exc, permanent=False, retry_after=exc.retry_after)
        except Exception as exc:  # unknown errors are retried with backoff
            log.exception("job.error", event_id=job.id, error=str(exc))
            return self._record_failure(job, exc, permanent=False)
        return Outcome("dropped" if dropped else "completed")

    def _record_failure(
        self, job: q.Job, exc: BaseException, *, permanent: bool, retry_after: float | None = None
    ) -> Outcome:
        tracing.record_error(exc)
        status = _with_busy_retry(
            lambda: self._fail(job, exc, permanent=permanent, retry_after=retry_after)
        )
        mapped = {"pending": "retry", "dead_letter": "dead_letter", "lost": "lost"}[status]
        return Outcome(mapped, f"{type(exc).__name__}: {exc}"[:300])

    def _fail(
        self, job: q.Job, exc: BaseException, *, permanent: bool, retry_after: float | None
    ) -> str:
        with self.db.write() as session:
            return q.fail(
                session,
                job,
                now=utcnow(),
                error=exc,
                permanent=permanent,
                backoff=self.backoff,
                retry_after=retry_after,
            )

    def _process(self, job: q.Job, lease_lost: threading.Event) -> bool:
        """Run the job; True when it was dropped as forgotten data instead."""
        if job.payload is None:
            raise PayloadError("event has no stored payload")
        envelope = parse_envelope(job.payload)
        call = parse_transcription(envelope.data) if envelope.type == TRANSCRIPTION else None
        failure = (
            parse_initiation_failure(envelope.data) if envelope.type == INITIATION_FAILURE else None
        )
        stages = [s for s in self.stages if envelope.type in s.event_types]
        keys = self.forget_guard.keys(
            job,
            data=envelope.data,
            event_timestamp=envelope.event_timestamp,
            call=call,
            failure=failure,
        )
        # Nothing slow (LLM, embedder) for a call that is already known to be forgotten.
        skip_prepare = self.forget_guard.known_forgotten(job, keys)
        self._boundary("claimed")

        pctx = PrepareContext(
            settings=self.settings,
            db=self.db,
            tenant_id=job.tenant_id,
            job=job,
            event_type=envelope.type,
            event_timestamp=envelope.event_timestamp,
            data=envelope.data,
            call=call,
            failure=failure,
            lease_lost=lease_lost,
        )
        for stage in stages:
            if stage.prepare is None or skip_prepare:
                continue
            pctx.check_lease()
            with metrics.time_stage(stage.name), tracing.span(f"stage.{stage.name}.prepare"):
                pctx.prepared[stage.name] = stage.prepare(pctx)
            self._boundary(f"prepared:{stage.name}")

        pctx.check_lease()
        with self.db.write() as session:
            now = utcnow()
            self.forget_guard.lock(session, job)  # before any row lock (PostgreSQL)
            q.assert_lease(session, job, now=now)
            if self.forget_guard.drop_if_forgotten(session, job, keys, now=now):
                return True
            if skip_prepare:
                # The tombstone expired between the two checks: run the job in full.
                raise RetryableError("forget tombstone expired during the job; run it again")
            ctx = StageContext(
                session=session,
                settings=self.settings,
                tenant_id=job.tenant_id,
                job=job,
                event_type=envelope.type,
                event_timestamp=envelope.event_timestamp,
                data=envelope.data,
                call=call,
                failure=failure,
                now=now,
                prepared=pctx.prepared,
            )
            for stage in stages:
                if stage.apply is None:
                    continue
                with metrics.time_stage(stage.name), tracing.span(f"stage.{stage.name}"):
                    stage.apply(ctx)
                self._boundary(f"applied:{stage.name}", session)
            session.flush()
            q.complete(session, job, now=utcnow())
            self._boundary("completed", session)
        return False


def _with_busy_retry(fn: Callable[[], str], attempts: int = 5) -> str:
    """Recording a failure must not itself be lost to a momentary SQLITE_BUSY."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if i == attempts - 1 or not is_busy(exc):
                raise
            time.sleep(0.05 * (2**i))
    raise AssertionError("unreachable")
