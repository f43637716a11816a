"""The pipeline's forget check: a job whose event belongs to erased data is dropped, not run.

``memory.tombstones`` explains what a forget leaves behind. Here: which identifiers of a queued
event to look up (the same ones the resolve stage would use to find or create the user), and
what dropping means (the job is completed with its payload cleared, counted in
``forgotten_writes_dropped_total{source="worker"}`` and logged with the event's queue id and
the matched kind only — no conversation id, number or user id).

The authoritative check runs inside the completing transaction, before any stage writes, so it
is serialised with the forget (see ``memory.tombstones``). A cheaper read before ``prepare``
lets a job that is already known to be forgotten skip the slow stages, so a forgotten caller's
transcript is not sent to an LLM or embedder after the forget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from db import metrics
from db import queue as q
from db.engine import Database
from db.settings import Settings
from db.types import utcnow
from memory import tombstones
from memory.identity import normalize_number, own_numbers
from worker.payload import (
    InitiationFailure,
    PostCallTranscription,
    claimed_user_ids,
    customer_number,
    from_unix,
)

log = structlog.get_logger("voxmem.forgotten")


@dataclass(frozen=True)
class EventKeys:
    """What identifies a queued event's call and caller, and when the call started."""

    ids: tombstones.Identifiers
    started_at: datetime | None

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        conversation_id: str | None,
        data: dict[str, Any],
        event_timestamp: int | None,
        call: PostCallTranscription | None,
        failure: InitiationFailure | None,
    ) -> EventKeys | None:
        """None for events that are not about a call (internal events check for themselves)."""
        if call is not None:
            ours, external = claimed_user_ids(data)
            number = customer_number(data, own_numbers(settings))
            conversations = [call.conversation_id, conversation_id]
            call_sid = call.call_sid
            started = call.start_time or from_unix(event_timestamp)
        elif failure is not None:
            raw = failure.dynamic_variables.get("user_id")
            ours = raw if isinstance(raw, str) else None
            external = None
            number = failure.customer_number
            conversations = [failure.conversation_id, conversation_id]
            call_sid = failure.call_sid
            started = from_unix(event_timestamp)
        else:
            return None
        return cls(
            ids=tombstones.Identifiers.of(
                conversation_ids=conversations,
                call_sids=[call_sid],
                # data.user_id may be one of ours as well as an outside id (resolve tries both).
                user_ids=[ours, external],
                external_ids=[external],
                numbers=[normalize_number(number) if number else None],
            ),
            started_at=started,
        )

    def match(self, session: Session, tenant_id: int, now: datetime) -> tombstones.Match | None:
        return tombstones.find(session, tenant_id, self.ids, started_at=self.started_at, now=now)


class ForgetGuard:
    """The pipeline's side of forget tombstones (one per Pipeline)."""

    # Every forget prunes expired tombstones; workers also do, at most this often per process,
    # so they stay bounded when forgets stop.
    PRUNE_EVERY_SECS = 3600.0

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._next_prune = 0.0

    def keys(
        self,
        job: q.Job,
        *,
        data: dict[str, Any],
        event_timestamp: int | None,
        call: PostCallTranscription | None,
        failure: InitiationFailure | None,
    ) -> EventKeys | None:
        return EventKeys.of(
            self.settings,
            conversation_id=job.conversation_id,
            data=data,
            event_timestamp=event_timestamp,
            call=call,
            failure=failure,
        )

    def known_forgotten(self, job: q.Job, keys: EventKeys | None) -> bool:
        """The read before ``prepare``: True when a tombstone already covers the event."""
        if keys is None:
            return False
        with self.db.read() as session:
            return keys.match(session, job.tenant_id, utcnow()) is not None

    def lock(self, session: Session, job: q.Job) -> None:
        """First statement of the completing transaction (PostgreSQL; see memory.tombstones)."""
        tombstones.serialise_with_forget(session, job.tenant_id, exclusive=False)

    def drop_if_forgotten(
        self, session: Session, job: q.Job, keys: EventKeys | None, *, now: datetime
    ) -> bool:
        """Inside the completing transaction, after :meth:`lock` and the lease check: complete
        the job as dropped when its event belongs to forgotten data."""
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.PRUNE_EVERY_SECS
            tombstones.prune(session, now=now)
        found = keys.match(session, job.tenant_id, now) if keys is not None else None
        if found is None:
            return False
        q.complete_dropped(
            session,
            job,
            now=now,
            reason=(
                f"dropped: the {found.kind} of this event was forgotten at "
                f"{found.forgotten_at.isoformat()} (forget tombstone)"
            ),
        )
        metrics.observe_forgotten_drop("worker", found.kind)
        log.info(
            "job.dropped_forgotten",
            event_id=job.id,
            type=job.event_type,
            matched=found.kind,
            forgotten_at=found.forgotten_at.isoformat(),
        )
        return True
