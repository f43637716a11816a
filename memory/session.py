"""Session memory (seed 000, story 5.1.1): the last calls of a user, FIFO, with a TTL.

Seed 000 kept this in Redis (``LPUSH`` + ``LTRIM`` + ``EXPIRE``). Here it is the
``session_interactions`` table, written by a worker stage in the same transaction that completes
the post-call event, so a call is in session memory exactly once or not at all:

- one row per conversation (unique ``conversation_fk``: a replayed event updates its row);
- after each insert only the newest ``session_size`` rows of the user are kept (FIFO);
- ``expires_at`` = recorded time + 7 days (trial) or 30 days (paid tiers); reads ignore
  expired rows, so expiry is exact even between sweeps, and :func:`sweep_expired` deletes them;
- a read is one index range scan on ``(user_id, occurred_at)`` (well under 50 ms).

No HTTP and no queue here: the admin API, the init webhook and the worker call these functions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.expiry import delete_expired
from db.models import Conversation, SessionInteraction, User
from db.types import utcnow
from memory.context import clip, speakable

if TYPE_CHECKING:
    from db.settings import Settings
    from worker.payload import PostCallTranscription

# Task types (seed 004's "common topics" plus what support lines hear most). The first listed
# wins a tie, so the more specific categories come first.
TOPIC_KEYWORDS: dict[str, tuple[str, ...]] = {
    "login": (
        "log in",
        "login",
        "log-in",
        "logging in",
        "sign in",
        "signin",
        "password",
        "locked out",
        "2fa",
        "two-factor",
        "authentication",
        "reset link",
        "reset email",
        "verification code",
    ),
    "billing": (
        "bill",
        "billing",
        "invoice",
        "payment",
        "charge",
        "charged",
        "refund",
        "subscription",
        "credit card",
        "card on file",
        "pricing",
        "price",
        "renewal",
        "receipt",
    ),
    "cancellation": ("cancel", "cancellation", "close my account", "terminate"),
    "shipping": ("order", "delivery", "shipping", "shipment", "tracking", "package", "parcel"),
    "technical": (
        "error",
        "bug",
        "crash",
        "crashes",
        "not working",
        "doesn't work",
        "broken",
        "outage",
        "slow",
        "integration",
        "api",
        "sync",
    ),
    "account": ("profile", "settings", "account details", "email address", "username", "update my"),
    "scheduling": ("appointment", "reschedule", "booking", "book a", "schedule"),
}
GENERAL = "general"
_WORD = re.compile(r"[a-z0-9'+-]+")
# Words that make a caller's sentence "the ask" rather than small talk.
_ASK_CUES = re.compile(
    r"\b(can't|cannot|can not|won't|doesn't|didn't|isn't|not|error|problem|issue|help|how|"
    r"why|what|need|want|would like|could you|can you|please)\b|\?",
    re.I,
)
TOPIC_CHARS = 80
ASKED_CHARS = 200
DONE_CHARS = 300


def _count(text: str, phrase: str) -> int:
    return len(re.findall(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text))


def topic_scores(texts: Iterable[str]) -> Counter[str]:
    scores: Counter[str] = Counter()
    for raw in texts:
        text = raw.lower()
        for topic, words in TOPIC_KEYWORDS.items():
            hits = sum(_count(text, w) for w in words)
            if hits:
                scores[topic] += hits
    return scores


def classify_topic(texts: Iterable[str]) -> str:
    """The task type of a call from what was said (keyword votes; ``general`` if none)."""
    scores = topic_scores(texts)
    if not scores:
        return GENERAL
    order = list(TOPIC_KEYWORDS)
    return max(scores, key=lambda t: (scores[t], -order.index(t)))


def caller_lines(call: PostCallTranscription) -> list[str]:
    return [t.message.strip() for t in call.transcript if t.role == "user" and t.message]


def agent_lines(call: PostCallTranscription) -> list[str]:
    return [t.message.strip() for t in call.transcript if t.role == "agent" and t.message]


def ttl_for(settings: Settings, tier: str | None) -> timedelta:
    paid = (tier or "").lower() in settings.session_paid_tier_set
    days = settings.session_ttl_paid_days if paid else settings.session_ttl_trial_days
    return timedelta(days=days)


@dataclass(frozen=True, slots=True)
class CallDigest:
    """What session memory keeps of one call, derived without an LLM."""

    task_type: str
    topic: str
    asked: str | None
    done: str | None
    outcome: str | None
    duration_secs: int | None


def digest_call(call: PostCallTranscription) -> CallDigest:
    said = caller_lines(call)
    analysis = call.analysis
    summary = (analysis.transcript_summary or "").strip() if analysis else ""
    title = (analysis.call_summary_title or "").strip() if analysis else ""
    # The caller's words decide the task type; the title and summary break ties and cover
    # calls whose transcript was trimmed.
    task_type = classify_topic([*said, title, summary])
    asked = next((s for s in said if len(s.split()) >= 3 and _ASK_CUES.search(s)), None)
    asked = asked or (said[0] if said else None)
    done = summary or next(reversed(agent_lines(call)), None)
    topic = title or (task_type if task_type != GENERAL else (asked or GENERAL))
    return CallDigest(
        task_type=task_type,
        topic=clip(" ".join(topic.split()), TOPIC_CHARS),
        asked=clip(" ".join(asked.split()), ASKED_CHARS) if asked else None,
        done=clip(" ".join(done.split()), DONE_CHARS) if done else None,
        outcome=analysis.call_successful if analysis else None,
        duration_secs=call.duration_secs,
    )


def record_interaction(
    session: Session,
    settings: Settings,
    user: User,
    conversation: Conversation,
    call: PostCallTranscription,
    *,
    now: datetime | None = None,
) -> SessionInteraction:
    """Upsert the call's interaction, then trim the user's session to ``session_size``."""
    now = now or utcnow()
    digest = digest_call(call)
    row = session.scalar(
        select(SessionInteraction).where(SessionInteraction.conversation_fk == conversation.id)
    )
    if row is None:
        row = SessionInteraction(user_id=user.user_id, conversation_fk=conversation.id)
        session.add(row)
    row.user_id = user.user_id
    row.occurred_at = conversation.start_time
    row.topic = digest.topic
    row.task_type = digest.task_type
    row.asked = digest.asked
    row.done = digest.done
    row.outcome = digest.outcome
    row.duration_secs = digest.duration_secs
    row.expires_at = now + ttl_for(settings, user.tier)
    # Analytics group calls by task type in SQL; a category name is not caller speech, so it
    # may live in the plaintext metadata column (session rows are trimmed, conversations stay).
    conversation.metadata_ = {**(conversation.metadata_ or {}), "task_type": digest.task_type}
    session.flush()
    trim(session, user.user_id, settings.session_size)
    return row


def trim(session: Session, user_id: str, keep: int) -> int:
    """FIFO: delete all but the newest ``keep`` interactions of the user."""
    keep_ids = select(SessionInteraction.id).where(SessionInteraction.user_id == user_id)
    keep_ids = keep_ids.order_by(
        SessionInteraction.occurred_at.desc(), SessionInteraction.id.desc()
    ).limit(max(0, keep))
    kept = list(session.scalars(keep_ids))
    stmt = delete(SessionInteraction).where(SessionInteraction.user_id == user_id)
    if kept:
        stmt = stmt.where(SessionInteraction.id.not_in(kept))
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


def recent_interactions(
    session: Session, user_id: str, *, limit: int = 10, now: datetime | None = None
) -> list[SessionInteraction]:
    """Unexpired interactions, newest first (one index range scan)."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(SessionInteraction)
            .where(SessionInteraction.user_id == user_id, SessionInteraction.expires_at > now)
            .order_by(SessionInteraction.occurred_at.desc(), SessionInteraction.id.desc())
            .limit(limit)
        )
    )


def interaction_out(row: SessionInteraction) -> dict[str, Any]:
    """The admin API shape: the CONTRACT fields plus ``id`` (the rating endpoint needs it)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value is not None else None

    return {
        "id": row.id,
        "occurred_at": iso(row.occurred_at),
        "topic": row.topic,
        "task_type": row.task_type,
        "asked": row.asked,
        "done": row.done,
        "outcome": row.outcome,
        "rating": row.rating,
        "duration_secs": row.duration_secs,
        "expires_at": iso(row.expires_at),
    }


def sweep_expired(session: Session, *, now: datetime | None = None, batch: int = 1000) -> int:
    """Delete up to ``batch`` expired interactions (index on ``expires_at``)."""
    return delete_expired(session, SessionInteraction, now=now, batch=batch)


def clear_session(session: Session, user_id: str) -> int:
    result = session.execute(
        delete(SessionInteraction)
        .where(SessionInteraction.user_id == user_id)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


class InteractionNotFound(LookupError):
    pass


def rate_interaction(
    session: Session, user_id: str, interaction_id: int, rating: int
) -> SessionInteraction:
    """Set the 1–5 rating of one of the user's interactions (an expired one is gone)."""
    if not 1 <= rating <= 5:
        raise ValueError("rating must be between 1 and 5")
    row = session.get(SessionInteraction, interaction_id)
    if row is None or row.user_id != user_id or row.expires_at <= utcnow():
        raise InteractionNotFound(interaction_id)
    row.rating = rating
    session.flush()
    return row


def retier(session: Session, settings: Settings, user: User) -> int:
    """After a tier change, re-derive the TTL of the user's interactions from their call time."""
    rows = list(
        session.scalars(
            select(SessionInteraction).where(SessionInteraction.user_id == user.user_id)
        )
    )
    ttl = ttl_for(settings, user.tier)
    for row in rows:
        row.expires_at = row.occurred_at + ttl
    return len(rows)


def _ago(when: datetime, now: datetime) -> str:
    secs = max(0.0, (now - when).total_seconds())
    if secs < 3600:
        return "earlier today" if secs >= 600 else "a few minutes ago"
    if secs < 86400:
        return "earlier today" if when.date() == now.date() else "yesterday"
    days = int(secs // 86400)
    return "yesterday" if days <= 1 else f"{days} days ago"


OUTCOME_WORDS = {"success": "resolved", "failure": "not resolved", "unknown": "outcome unclear"}


def session_context(
    session: Session,
    user_id: str,
    *,
    now: datetime | None = None,
    calls: int = 2,
    limit: int = 320,
) -> str:
    """Plain sentences about the last calls, for ``memory_context`` at conversation-init."""
    now = now or utcnow()
    parts: list[str] = []
    for row in recent_interactions(session, user_id, limit=calls, now=now):
        about = row.topic or row.task_type or GENERAL
        outcome = OUTCOME_WORDS.get(row.outcome or "", "")
        sentence = f"Previous call {_ago(row.occurred_at, now)} about {about}"
        if outcome:
            sentence += f" ({outcome})"
        if row.asked:
            sentence += f": the caller said {clip(row.asked, 120)}"
        parts.append(speakable(sentence))
        if row.done:
            parts.append(speakable(clip(row.done, 160)))
    text = ""
    for part in parts:
        if len(text) + len(part) + 1 > limit:
            break
        text = f"{text} {part}".strip()
    return text


def topic_counts(session: Session, user_id: str, *, now: datetime | None = None) -> Counter[str]:
    now = now or utcnow()
    rows = session.execute(
        select(SessionInteraction.task_type, func.count())
        .where(SessionInteraction.user_id == user_id, SessionInteraction.expires_at > now)
        .group_by(SessionInteraction.task_type)
    )
    return Counter({str(t or GENERAL): int(n) for t, n in rows})


def common_topics(counts: Counter[str], top: int = 3) -> list[str]:
    return [t for t, _ in counts.most_common() if t != GENERAL][:top]
