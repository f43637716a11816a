"""Entry points for worker processes and the process supervisor."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from types import FrameType

import structlog

from db import crypto, metrics, tracing
from db.checkpoint import Checkpointer
from db.engine import ensure_wal, open_database
from db.logs import configure_logging
from db.settings import Settings, get_settings
from worker.loop import WorkerLoop
from worker.pipeline import BoundaryHook
from worker.runner import make_process_next

log = structlog.get_logger("voxmem.worker")

RESTART_BACKOFF_MAX = 30.0


def run_worker_process(
    settings: Settings | None = None, *, on_boundary: BoundaryHook | None = None
) -> None:
    """Body of one worker process. ``on_boundary`` is the pipeline's fault-injection hook
    (see worker.pipeline.BoundaryHook); only the crash-test harness passes one."""
    settings = settings or get_settings()
    configure_logging(settings)
    metrics.configure_process(settings)
    tracing.init_tracing(settings, "voxmem-worker")
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    checkpointer = None
    if db.dialect == "sqlite":
        ensure_wal(db.write_engine)
        if settings.sqlite_path is not None:
            checkpointer = Checkpointer.from_settings(settings, settings.sqlite_path)
            checkpointer.start()
    loop = WorkerLoop(settings=settings, db=db, process_next=lambda: False)
    # The loop owns the worker id and the counters its heartbeat reports; the consumer
    # claims under that id and updates those counters.
    loop.process_next = make_process_next(
        settings, db, worker_id=loop.worker_id, stats=loop.stats, on_boundary=on_boundary
    )
    loop.install_signal_handlers()
    try:
        loop.run()
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        db.dispose()
        tracing.shutdown_tracing()
        metrics.mark_process_dead()


def _child_main() -> None:
    run_worker_process()


def supervise_workers(processes: int) -> int:
    """Run N worker processes; restart any that die; stop all on SIGTERM/SIGINT."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    children: list[multiprocessing.process.BaseProcess | None] = [None] * processes
    restarts = [0] * processes
    next_start = [0.0] * processes
    log.info("workers.supervisor_started", processes=processes, pid=os.getpid())
    while not stopping:
        now = time.monotonic()
        for i in range(processes):
            child = children[i]
            if child is not None and child.is_alive():
                continue
            if child is not None:
                log.warning("workers.child_died", index=i, exitcode=child.exitcode)
                restarts[i] += 1
                # Crash loops back off instead of spinning on a broken database or config.
                next_start[i] = now + min(RESTART_BACKOFF_MAX, 0.5 * 2 ** min(restarts[i], 6))
                children[i] = None
            if now >= next_start[i]:
                proc = ctx.Process(target=_child_main, name=f"voxmem-worker-{i}", daemon=False)
                proc.start()
                children[i] = proc
        time.sleep(0.2)
    for child in children:
        if child is not None and child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child in children:
        if child is not None:
            child.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join()
    log.info("workers.supervisor_stopped")
    return 0
