"""Prometheus metrics for every voxmem process, and one-line helpers to record them.

Why multiprocess mode (not a /metrics endpoint per worker): the API (possibly several uvicorn
processes) and N queue workers are separate processes, but operators and seed 001's alert rules
expect one scrape target. With prometheus-client's multiprocess mode every process writes its
samples to small mmap files in one shared directory and the API's ``GET /metrics`` merges them
at scrape time, so no port per worker has to be allocated, discovered or firewalled, and a
worker that restarts keeps its counters' history (a dead process's files stay and keep counting
in the totals). The directory is ``PROMETHEUS_MULTIPROC_DIR`` when set, else
``<data_dir>/metrics``; ``voxmem up`` wipes it at start (``prepare_multiproc_dir``) and every
worker calls ``mark_process_dead`` when it exits. File names carry ``<hostname>-<pid>``, not
just the pid, so containers that share the data volume (pid 1 in each) cannot collide.

Queue figures (depth, oldest pending age, dead letters, live workers) and the SQLite WAL size
are *not* process metrics: they are read from the database at scrape time by
``DatabaseCollector`` so they are right even when no worker is running.

Metric objects are created lazily, on first use, because prometheus-client picks the storage
(in-memory or mmap) when a metric is created: a process must be able to switch to multiprocess
mode (``configure_process``) before that. Callers never touch metric objects; they use the
helpers at the bottom (``observe_webhook``, ``time_stage``, ``observe_llm_call``, ...).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db.settings import Settings

if TYPE_CHECKING:
    from db.engine import Database

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Seed 001's buckets (0.1 … 5 s) plus finer ones below: the voice budget is ~500 ms, so most of
# the interesting distribution sits under 0.25 s.
QUERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

WEBHOOK_OUTCOMES = ("accepted", "duplicate", "ignored", "rejected")


def _process_identifier() -> str:
    # Must be stable for the life of the process and free of "_" (the collector splits file
    # names on it).
    host = socket.gethostname().replace("_", "-")
    return f"{host}-{os.getpid()}"


# --------------------------------------------------------------------------------------------
# Process set-up
# --------------------------------------------------------------------------------------------
_lock = Lock()
_metrics: _Metrics | None = None
_multiproc_dir: Path | None = None


def multiproc_dir_for(settings: Settings) -> Path:
    if settings.prometheus_multiproc_dir:
        return settings.prometheus_multiproc_dir
    return settings.metrics_dir or settings.data_dir / "metrics"


def prepare_multiproc_dir(settings: Settings, *, wipe: bool) -> Path:
    """Create (optionally wipe) the shared directory and export it to child processes.

    Called by the launcher of a process tree (``voxmem up`` wipes; standalone ``serve`` and
    ``worker`` do not, because the other half of the deployment may be writing there).
    """
    path = multiproc_dir_for(settings)
    if wipe and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    # prometheus-client and every child process (whose Settings read it) find it here.
    os.environ[ENV_DIR] = str(path)
    _configure(path)
    return path


def configure_process(settings: Settings) -> None:
    """Switch this process to multiprocess storage when ``PROMETHEUS_MULTIPROC_DIR`` is set.

    Idempotent; must run before the first metric is recorded (process entry points call it).
    A process without the variable (tests, one-off CLI commands) keeps in-memory metrics.
    """
    if settings.prometheus_multiproc_dir is not None:
        _configure(settings.prometheus_multiproc_dir)


def _configure(path: Path) -> None:
    global _multiproc_dir
    with _lock:
        if _multiproc_dir is not None:
            return
        if _metrics is not None:
            # Too late to switch storage; samples so far would be lost, so keep in-memory.
            return
        path.mkdir(parents=True, exist_ok=True)
        values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
            process_identifier=_process_identifier
        )
        _multiproc_dir = path


def multiprocess_enabled() -> bool:
    return _multiproc_dir is not None


def mark_process_dead() -> None:
    """Drop this process's live gauges from the shared directory (worker exit)."""
    if _multiproc_dir is not None:
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            _process_identifier(), str(_multiproc_dir)
        )


# --------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Metrics:
    # Seed 001's names, so its alert rules work as written.
    memory_query_latency: Histogram
    memory_query_total: Counter
    memory_query_stage: Histogram
    http_request_duration: Histogram
    webhook_events: Counter
    queue_claims: Counter
    job_duration: Histogram
    job_retries: Counter
    job_dead_letters: Counter
    pipeline_stage: Histogram
    extraction_latency: Histogram
    embedding_latency: Histogram
    llm_calls: Counter
    llm_latency: Histogram
    llm_tokens: Counter
    llm_fallbacks: Counter
    init_requests: Counter
    init_fallbacks: Counter
    init_latency: Histogram
    backups: Counter
    forgotten_drops: Counter


def _build() -> _Metrics:
    return _Metrics(
        memory_query_latency=Histogram(
            "memory_query_latency_seconds",
            "Memory query (server tool) latency",
            buckets=QUERY_BUCKETS,
        ),
        memory_query_total=Counter(
            "memory_query_total", "Memory queries by status (ok, empty, error, ...)", ["status"]
        ),
        memory_query_stage=Histogram(
            "memory_query_stage_seconds",
            "Memory query time per stage (embed, search, expand, summarise)",
            ["stage"],
            buckets=QUERY_BUCKETS,
        ),
        http_request_duration=Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template, method and status code",
            ["route", "method", "status"],
            buckets=REQUEST_BUCKETS,
        ),
        webhook_events=Counter(
            "webhook_events_total",
            "Post-call webhooks by outcome (accepted, duplicate, ignored, rejected) and reason",
            ["outcome", "reason"],
        ),
        queue_claims=Counter("queue_claims_total", "Queue events claimed by workers"),
        job_duration=Histogram(
            "queue_job_duration_seconds",
            "Time to process one queued event, by event type and outcome",
            ["event_type", "outcome"],
            buckets=JOB_BUCKETS,
        ),
        job_retries=Counter(
            "queue_job_retries_total", "Failed attempts scheduled for retry", ["event_type"]
        ),
        job_dead_letters=Counter(
            "queue_dead_letters_total", "Events moved to the dead-letter state", ["event_type"]
        ),
        pipeline_stage=Histogram(
            "pipeline_stage_duration_seconds",
            "Post-call pipeline time per stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
        ),
        extraction_latency=Histogram(
            "memory_extraction_latency_seconds",
            "Memory extraction latency per call, by extractor",
            ["extractor"],
            buckets=STAGE_BUCKETS,
        ),
        embedding_latency=Histogram(
            "embedding_latency_seconds",
            "Embedding latency per batch, by embedder",
            ["embedder"],
            buckets=STAGE_BUCKETS,
        ),
        llm_calls=Counter(
            "llm_calls_total",
            "Calls to external model APIs by API (chat, embeddings), model and outcome",
            ["api", "model", "outcome"],
        ),
        llm_latency=Histogram(
            "llm_call_latency_seconds",
            "External model API latency",
            ["api", "model"],
            buckets=STAGE_BUCKETS,
        ),
        llm_tokens=Counter(
            "llm_tokens_total", "Tokens used by kind (prompt, completion)", ["model", "kind"]
        ),
        llm_fallbacks=Counter(
            "llm_fallbacks_total",
            "Times a component fell back from the external API to the local path",
            ["component", "reason"],
        ),
        init_requests=Counter(
            "conversation_init_total", "Conversation-init requests by outcome", ["outcome"]
        ),
        init_fallbacks=Counter(
            "conversation_init_fallbacks_total",
            "Conversation-init answered with neutral values, by reason (deadline, error, ...)",
            ["reason"],
        ),
        init_latency=Histogram(
            "conversation_init_latency_seconds",
            "Conversation-init latency",
            buckets=QUERY_BUCKETS,
        ),
        backups=Counter("backups_total", "Backups taken by outcome", ["outcome"]),
        forgotten_drops=Counter(
            "forgotten_writes_dropped_total",
            "Writes of a forgotten user's data refused after the forget, by where (worker, "
            "tool_log, init) and what matched (conversation, call_sid, user, external, number, "
            "user_gone)",
            ["source", "matched"],
        ),
    )


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        # Entry points (API lifespan, worker start) call configure_process first.
        with _lock:
            if _metrics is None:
                _metrics = _build()
    return _metrics


# --------------------------------------------------------------------------------------------
# Scrape-time figures from the database
# --------------------------------------------------------------------------------------------
DATABASE_GAUGES = (
    "voxmem_database_up",
    "webhook_queue_depth",
    "webhook_queue_events",
    "webhook_queue_oldest_pending_age_seconds",
    "webhook_dead_letters",
    "worker_heartbeats_alive",
    "sqlite_wal_size_bytes",
    "sqlite_db_size_bytes",
)


class DatabaseCollector(Collector):
    """Queue gauges and SQLite file sizes, read when Prometheus scrapes."""

    def __init__(self, db: Database, heartbeat_window_secs: float) -> None:
        self.db = db
        self.heartbeat_window_secs = heartbeat_window_secs

    def collect(self) -> Iterable[Metric]:
        from db.queue_stats import live_workers, oldest_pending_age_secs, status_counts

        up = GaugeMetricFamily("voxmem_database_up", "1 when the database answered the scrape")
        try:
            with self.db.read() as session:
                counts = status_counts(session)
                oldest = oldest_pending_age_secs(session)
                alive = len(live_workers(session, within_secs=self.heartbeat_window_secs))
        except Exception:  # noqa: BLE001 - a scrape must still answer; the alert keys off this
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        depth = GaugeMetricFamily(
            "webhook_queue_depth", "Webhook events not yet processed (pending + processing)"
        )
        depth.add_metric([], float(counts["pending"] + counts["processing"]))
        yield depth
        by_status = GaugeMetricFamily(
            "webhook_queue_events", "Webhook events by queue status", labels=["status"]
        )
        for status, count in counts.items():
            by_status.add_metric([status], float(count))
        yield by_status
        yield GaugeMetricFamily(
            "webhook_queue_oldest_pending_age_seconds",
            "Age of the oldest pending webhook event (0 when none)",
            value=oldest,
        )
        yield GaugeMetricFamily(
            "webhook_dead_letters", "Events in the dead-letter state", value=counts["dead_letter"]
        )
        yield GaugeMetricFamily(
            "worker_heartbeats_alive",
            "Workers whose heartbeat is recent and that have not stopped",
            value=alive,
        )
        path = self.db.settings.sqlite_path
        if path is not None:
            wal = path.with_name(path.name + "-wal")
            yield GaugeMetricFamily(
                "sqlite_wal_size_bytes",
                "Size of the SQLite write-ahead log (grows when checkpoints fall behind)",
                value=wal.stat().st_size if wal.exists() else 0,
            )
            yield GaugeMetricFamily(
                "sqlite_db_size_bytes",
                "Size of the SQLite database file",
                value=path.stat().st_size if path.exists() else 0,
            )


class _DefaultRegistryCollector(Collector):
    """This process's in-memory metrics, for processes not in multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def render_latest(db: Database | None, heartbeat_window_secs: float) -> bytes:
    """The Prometheus text exposition for ``GET /metrics``."""
    metrics()  # every family exists (with zero samples) from the first scrape
    registry = CollectorRegistry(auto_describe=False)
    if _multiproc_dir is not None:
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(_multiproc_dir)
        )
    else:
        registry.register(_DefaultRegistryCollector())
    if db is not None:
        registry.register(DatabaseCollector(db, heartbeat_window_secs))
    return generate_latest(registry)


# --------------------------------------------------------------------------------------------
# One-line helpers for the rest of the code base
# --------------------------------------------------------------------------------------------
def _label(value: str | None, default: str = "none") -> str:
    # Bounded, printable label values: a free-form string here would explode cardinality.
    if not value:
        return default
    return value[:64]


@contextmanager
def _timed(observe: Callable[[float], None]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        observe(time.perf_counter() - started)


def observe_memory_query(seconds: float, status: str) -> None:
    """One finished /tools/memory-query: ``status`` is ok, empty, error, rate_limited, ..."""
    m = metrics()
    m.memory_query_latency.observe(seconds)
    m.memory_query_total.labels(status=_label(status)).inc()


def time_query_stage(stage: str) -> AbstractContextManager[None]:
    """``with time_query_stage("embed"): ...`` (embed, search, expand, summarise)."""
    return _timed(metrics().memory_query_stage.labels(stage=_label(stage)).observe)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    metrics().http_request_duration.labels(
        route=_label(route, "unmatched"), method=method, status=str(status)
    ).observe(seconds)


def observe_webhook(outcome: str, reason: str | None = None) -> None:
    """``observe_webhook("accepted")`` / ``observe_webhook("rejected", "signature")``."""
    metrics().webhook_events.labels(outcome=_label(outcome), reason=_label(reason)).inc()


def observe_claim() -> None:
    metrics().queue_claims.inc()


def observe_job(event_type: str, outcome: str, seconds: float) -> None:
    """One processed event: ``outcome`` is completed, retry or dead_letter."""
    m = metrics()
    event_type = _label(event_type)
    m.job_duration.labels(event_type=event_type, outcome=_label(outcome)).observe(seconds)
    if outcome == "retry":
        m.job_retries.labels(event_type=event_type).inc()
    elif outcome == "dead_letter":
        m.job_dead_letters.labels(event_type=event_type).inc()


def time_stage(stage: str) -> AbstractContextManager[None]:
    """``with time_stage("extract"): ...`` for each post-call pipeline stage."""
    return _timed(metrics().pipeline_stage.labels(stage=_label(stage)).observe)


def time_extraction(extractor: str) -> AbstractContextManager[None]:
    """``with time_extraction("llm"): ...`` around one call's memory extraction."""
    return _timed(metrics().extraction_latency.labels(extractor=_label(extractor)).observe)


def time_embedding(embedder: str) -> AbstractContextManager[None]:
    """``with time_embedding("local"): ...`` around one embedding batch."""
    return _timed(metrics().embedding_latency.labels(embedder=_label(embedder)).observe)


def observe_llm_call(
    api: str,
    model: str,
    outcome: str,
    seconds: float,
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> None:
    """One call to an OpenAI-compatible API: ``api`` is chat or embeddings, ``outcome`` ok,
    error, timeout or rate_limited."""
    m = metrics()
    model = _label(model)
    m.llm_calls.labels(api=_label(api), model=model, outcome=_label(outcome)).inc()
    m.llm_latency.labels(api=_label(api), model=model).observe(seconds)
    if prompt_tokens:
        m.llm_tokens.labels(model=model, kind="prompt").inc(prompt_tokens)
    if completion_tokens:
        m.llm_tokens.labels(model=model, kind="completion").inc(completion_tokens)


def observe_llm_fallback(component: str, reason: str) -> None:
    """The external path failed and ``component`` (extractor, embedder, summary) used the
    local one instead."""
    metrics().llm_fallbacks.labels(component=_label(component), reason=_label(reason)).inc()


def observe_init(seconds: float, fallback_reason: str | None = None) -> None:
    """One conversation-init answer; ``fallback_reason`` when neutral values were returned."""
    m = metrics()
    m.init_latency.observe(seconds)
    m.init_requests.labels(outcome="fallback" if fallback_reason else "ok").inc()
    if fallback_reason:
        m.init_fallbacks.labels(reason=_label(fallback_reason)).inc()


def observe_backup(outcome: str) -> None:
    metrics().backups.labels(outcome=_label(outcome)).inc()


def observe_forgotten_drop(source: str, matched: str) -> None:
    """Work for data a forget erased was refused instead of written back (issue 5)."""
    metrics().forgotten_drops.labels(source=_label(source), matched=_label(matched)).inc()


def exported_metric_names() -> set[str]:
    """Every sample name ``/metrics`` can expose (dashboards and alert rules are checked
    against it)."""
    names: set[str] = set()
    m = metrics()
    for metric in vars(m).values():
        for family in metric.describe():
            kind = family.type
            base = family.name
            if kind == "counter":
                names.update({f"{base}_total", f"{base}_created"})
            elif kind == "histogram":
                names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
                names.add(f"{base}_created")
            else:
                names.add(base)
    names.update(DATABASE_GAUGES)
    names.add("up")  # Prometheus's own per-target series
    return names
