"""Reflective memories: patterns across a caller's calls ("usually calls on Friday afternoons").

How it runs: after each processed call the worker enqueues one internal queue event
``voxmem_reflection`` for the user, deduplicated per time window (event id
``reflection:{user}:{window}``, ``run_after`` = end of the window). So a burst of calls gives
one reflection, it runs on the same leased, retried, crash-safe queue as the webhooks, and the
write happens in the transaction that completes the event. Intake never accepts this type from
outside (unknown types are ignored there).

What it does (``reflect``), all derived from stored rows, so running it twice changes nothing:
call-time habits (weekday / part of day in the call's own time zone when ElevenLabs sent one),
the dominant topic, a call-back on the same topic within days, repeated unresolved outcomes and
typical call length. Each is a ``reflective`` memory with a stable key (:mod:`memory.derived`):
unchanged text only refreshes recency, changed text supersedes, a pattern that no longer holds
is archived. The same job relinks entity mentions, applies a pending LLM profile enrichment
and sweeps expired session memory.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Conversation, User, WebhookEvent
from memory import derived
from memory.embedders import Embedder
from memory.session import GENERAL

if TYPE_CHECKING:
    from db.settings import Settings

REFLECTION_EVENT = "voxmem_reflection"
KIND = "reflection"
HISTORY = 50
SALIENCE = 0.6
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def daypart(hour: int) -> str:
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 22:
        return "evening"
    return "night"


# --------------------------------------------------------------------------------------------
# Scheduling (called inside the post-call transaction)
# --------------------------------------------------------------------------------------------
def event_id_for(user_id: str, now: datetime, interval: float) -> tuple[str, datetime]:
    interval = max(1.0, interval)
    window = int(now.timestamp() // interval)
    run_after = datetime.fromtimestamp((window + 1) * interval, tz=UTC)
    return f"reflection:{user_id}:{window}", run_after


def schedule(
    session: Session, settings: Settings, tenant_id: int, user_id: str, now: datetime
) -> bool:
    """Queue this user's reflection for the end of the current window (once per window)."""
    event_id, run_after = event_id_for(user_id, now, settings.reflection_interval_secs)
    exists = session.scalar(
        select(WebhookEvent.id).where(
            WebhookEvent.tenant_id == tenant_id, WebhookEvent.event_id == event_id
        )
    )
    if exists is not None:
        return False
    body = json.dumps({"type": REFLECTION_EVENT, "data": {"user_id": user_id}})
    try:
        with session.begin_nested():
            session.add(
                WebhookEvent(
                    tenant_id=tenant_id,
                    event_id=event_id,
                    event_type=REFLECTION_EVENT,
                    payload=body,
                    conversation_id=None,
                    ordering_key=f"reflect:{user_id}"[:128],
                    status="pending",
                    max_attempts=settings.queue_max_attempts,
                    run_after=run_after,
                    created_at=now,
                    payload_bytes=len(body),
                )
            )
    except IntegrityError:
        return False  # another worker queued the same window first
    return True


# --------------------------------------------------------------------------------------------
# Reflecting
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallRow:
    conversation_id: str
    start: datetime
    task_type: str
    outcome: str | None
    duration: int | None


def _local(start: datetime, tz_name: Any) -> datetime:
    if isinstance(tz_name, str) and tz_name:
        try:
            return start.astimezone(ZoneInfo(tz_name))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return start.astimezone(UTC)


def history(session: Session, user_id: str, limit: int = HISTORY) -> list[CallRow]:
    rows = session.execute(
        select(
            Conversation.conversation_id,
            Conversation.start_time,
            Conversation.metadata_,
            Conversation.call_successful,
            Conversation.duration_secs,
        )
        .where(Conversation.user_id == user_id, Conversation.status != "initiation_failed")
        .order_by(Conversation.start_time.desc())
        .limit(limit)
    )
    out = []
    for cid, start, meta, outcome, duration in rows:
        meta = meta or {}
        out.append(
            CallRow(
                cid,
                _local(start, meta.get("timezone")),
                str(meta.get("task_type") or GENERAL),
                outcome,
                duration,
            )
        )
    return list(reversed(out))  # oldest first


def observations(calls: list[CallRow], who: str, min_calls: int) -> dict[str, str]:
    """key → reflective sentence, for every pattern that currently holds."""
    found: dict[str, str] = {}
    n = len(calls)
    if n >= min_calls:
        days = Counter(c.start.weekday() for c in calls)
        parts = Counter(daypart(c.start.hour) for c in calls)
        day, day_n = days.most_common(1)[0]
        part, part_n = parts.most_common(1)[0]
        day_ok = day_n >= 2 and day_n / n >= 0.5
        part_ok = part_n / n >= 0.6
        if day_ok and part_ok:
            found["call_time"] = f"{who} usually calls on {DAYS[day]} {part}s."
        elif day_ok:
            found["call_time"] = f"{who} usually calls on {DAYS[day]}s."
        elif part_ok:
            found["call_time"] = f"{who} usually calls in the {part}."
        topics = Counter(c.task_type for c in calls if c.task_type != GENERAL)
        if topics:
            topic, topic_n = topics.most_common(1)[0]
            if topic_n >= 2 and topic_n / n >= 0.5:
                found["main_topic"] = f"Most of {_possessive(who)} calls are about {topic}."
        durations = [c.duration for c in calls if c.duration]
        if len(durations) >= min_calls:
            average = sum(durations) / len(durations)
            if average < 120:
                found["duration"] = (
                    f"{_possessive(who).capitalize()} calls are usually short, under two minutes."
                )
            elif average > 600:
                found["duration"] = (
                    f"{_possessive(who).capitalize()} calls are usually long, over ten minutes."
                )
    recent = [c for c in calls[-5:] if c.outcome in ("success", "failure")]
    if len(recent) >= 3 and sum(1 for c in recent if c.outcome == "failure") >= 2:
        found["outcomes"] = (
            f"Several of {_possessive(who)} recent calls ended unresolved; offer escalation early."
        )
    if n >= 2:
        last, before = calls[-1], calls[-2]
        gap = last.start - before.start
        if last.task_type == before.task_type != GENERAL and gap <= timedelta(days=3):
            days_apart = max(1, round(gap.total_seconds() / 86400))
            when = "the same day" if gap < timedelta(hours=20) else f"within {days_apart} days"
            found["callback"] = (
                f"{who} called back about {last.task_type} {when}; "
                "the earlier fix may not have held."
            )
    return found


def _possessive(who: str) -> str:
    return "the caller's" if who == "The caller" else f"{who}'s"


@dataclass(slots=True)
class ReflectionReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


def reflect(
    session: Session, settings: Settings, user: User, embedder: Embedder, now: datetime
) -> ReflectionReport:
    report = ReflectionReport()
    calls = history(session, user.user_id)
    who = (user.name or "").split(" ")[0] or "The caller"
    found = observations(calls, who, settings.reflection_min_calls)
    existing = derived.derived_memories(session, user.user_id, KIND)
    sources = [c.conversation_id for c in calls]
    for key, content in sorted(found.items()):
        before = {m.id for m in existing.get(key, [])}
        memory = derived.upsert(
            session,
            user,
            kind=KIND,
            key=key,
            content=content,
            sector="reflective",
            salience=SALIENCE,
            embedder=embedder,
            now=now,
            conversation_ids=sources,
            existing=existing,
        )
        if memory is None:
            continue
        (report.unchanged if memory.id in before else report.written).append(key)
    stale = [m for key, rows in existing.items() if key not in found for m in rows]
    if stale:
        derived.retire(session, user, stale, now)
        report.retired = sorted({str((m.metadata_ or {}).get("key")) for m in stale})
    return report
