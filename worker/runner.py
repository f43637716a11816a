"""Builds the function a worker process calls on every poll.

Foundation stage: the queue consumer of the post-call intake issue replaces this with claim →
process → complete. Until then a worker only polls and heartbeats.
"""

from __future__ import annotations

from db.engine import Database
from db.settings import Settings
from worker.loop import ProcessNext


def make_process_next(settings: Settings, db: Database) -> ProcessNext:
    def process_next() -> bool:
        return False

    return process_next
