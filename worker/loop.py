"""One worker process: poll the queue, process one event at a time, back off when idle.

SIGTERM/SIGINT set a flag; the current job finishes (its transaction commits or rolls back)
before the process exits, so a graceful stop never leaves a half-processed event.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import structlog

from db.engine import Database
from db.settings import Settings
from worker import heartbeat

log = structlog.get_logger("voxmem.worker")

# Processes one queued event if one is ready. Returns True when it did some work.
ProcessNext = Callable[[], bool]


@dataclass
class WorkerStats:
    processed: int = 0
    failed: int = 0
    current_event_id: int | None = None


@dataclass
class WorkerLoop:
    settings: Settings
    db: Database
    process_next: ProcessNext
    worker_id: str = field(
        default_factory=lambda: (
            f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"
        )
    )
    stats: WorkerStats = field(default_factory=WorkerStats)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        log.info("worker.stop_requested", worker_id=self.worker_id, signal=signum)
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _heartbeat_forever(self) -> None:
        while not self.stop_event.wait(self.settings.worker_heartbeat_secs):
            try:
                heartbeat.beat(
                    self.db,
                    self.worker_id,
                    current_event_id=self.stats.current_event_id,
                    processed=self.stats.processed,
                    failed=self.stats.failed,
                )
            except Exception as exc:  # noqa: BLE001 - a missed beat is reported, not fatal
                log.warning("worker.heartbeat_failed", error=str(exc))

    def run(self, *, max_idle_polls: int | None = None) -> None:
        heartbeat.register(self.db, self.worker_id)
        beater = threading.Thread(target=self._heartbeat_forever, daemon=True, name="heartbeat")
        beater.start()
        log.info("worker.started", worker_id=self.worker_id, pid=os.getpid())
        delay = self.settings.queue_poll_min_secs
        idle_polls = 0
        try:
            while not self.stop_event.is_set():
                try:
                    did_work = self.process_next()
                except Exception as exc:
                    log.exception("worker.loop_error", error=str(exc))
                    did_work = False
                if did_work:
                    delay = self.settings.queue_poll_min_secs
                    idle_polls = 0
                    continue
                idle_polls += 1
                if max_idle_polls is not None and idle_polls >= max_idle_polls:
                    break
                # Adaptive idle backoff with jitter, so N idle workers do not poll in lockstep.
                self.stop_event.wait(delay * random.uniform(0.8, 1.2))
                delay = min(self.settings.queue_poll_max_secs, delay * 2)
        finally:
            self.stop_event.set()
            try:
                heartbeat.stopped(self.db, self.worker_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("worker.stop_record_failed", error=str(exc))
            log.info("worker.stopped", worker_id=self.worker_id, processed=self.stats.processed)
