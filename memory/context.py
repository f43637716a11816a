"""What the agent hears before the caller says a word: the conversation-init digest.

No vector search and no LLM: the init webhook runs during the ring, so the digest is a ranking
by decayed salience × recency over the user's active memories, rendered as plain sentences
(no markdown, no lists) because the agent may read it aloud.

The digest is cached per ``(user_id, memory_version)``: every memory write bumps the version in
the same transaction, so a cached digest is never older than the memories it summarises. A TTL
bounds how long decrypted text stays in process memory and lets recency move.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Conversation, ConversationAnalysis, Memory, SessionInteraction, User
from memory.scoring import days_between, decayed_salience, recency_score

MAX_CONTEXT_CHARS = 600
NO_HISTORY = "No previous interactions on record."
# Candidates fetched per ordering; the final ranking is computed in Python over their union.
CANDIDATES = 48
CACHE_TTL_SECS = 300.0
CACHE_MAX_USERS = 4096

_SPACE = re.compile(r"\s+")
# Characters a TTS voice would pronounce or stumble on.
_UNSPEAKABLE = re.compile(r"[*_#`>|\[\]{}<>~^]")


def speakable(text: str) -> str:
    text = _UNSPEAKABLE.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def clip(text: str, limit: int) -> str:
    """Cut at a word boundary; the result is at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)].rsplit(" ", 1)[0].rstrip(",;:")
    return (cut + "…")[:limit]


def iso_utc(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class _Candidate:
    id: int
    sector: str
    salience: float
    recency: datetime


def rank_score(sector: str, salience: float, last_seen: datetime, now: datetime) -> float:
    """Decayed salience × recency (both in (0, 1])."""
    days = days_between(last_seen, now)
    return decayed_salience(salience, sector, days) * recency_score(sector, last_seen, now)


def memory_digest(
    session: Session, user_id: str, *, now: datetime | None = None, limit: int = MAX_CONTEXT_CHARS
) -> str:
    """Whole sentences, best first, until the character budget is spent; "" when none."""
    now = now or datetime.now(UTC)
    active = (Memory.user_id == user_id, Memory.state == "active", Memory.valid_to.is_(None))
    cols = (Memory.id, Memory.sector_type, Memory.salience, Memory.recency)
    rows: dict[int, _Candidate] = {}
    # Two index-friendly candidate sets (most salient, most recent): the product ranking of
    # their union is exact for everything that could rank first and costs no full scan.
    for order in (Memory.salience.desc(), Memory.recency.desc()):
        for mid, sector, salience, recency in session.execute(
            select(*cols).where(*active).order_by(order).limit(CANDIDATES)
        ):
            rows[mid] = _Candidate(mid, sector, float(salience), recency)
    if not rows:
        return ""
    ranked = sorted(
        rows.values(), key=lambda c: rank_score(c.sector, c.salience, c.recency, now), reverse=True
    )[:12]
    contents: dict[int, str] = {
        mid: text
        for mid, text in session.execute(
            select(Memory.id, Memory.content).where(Memory.id.in_([c.id for c in ranked]))
        )
    }
    parts: list[str] = []
    used = 0
    seen: set[str] = set()
    for cand in ranked:
        sentence = speakable(contents.get(cand.id) or "")
        key = sentence.lower()
        if not sentence or key in seen:
            continue
        cost = len(sentence) + (1 if parts else 0)
        if used + cost > limit:
            if not parts:  # one long memory: keep its beginning rather than nothing
                parts.append(clip(sentence, limit))
            continue
        parts.append(sentence)
        seen.add(key)
        used += cost
    return " ".join(parts)


def recent_topics(session: Session, user_id: str, *, limit: int = 3) -> str:
    """Comma-separated topics of the last calls: session memory first, call titles second."""
    topics: list[str] = []
    for (topic,) in session.execute(
        select(SessionInteraction.topic)
        .where(SessionInteraction.user_id == user_id)
        .order_by(SessionInteraction.occurred_at.desc())
        .limit(limit * 2)
    ):
        _add_topic(topics, topic)
    if len(topics) < limit:
        for (title,) in session.execute(
            select(ConversationAnalysis.summary_title)
            .join(Conversation, Conversation.id == ConversationAnalysis.conversation_fk)
            .where(Conversation.user_id == user_id)
            .order_by(Conversation.start_time.desc())
            .limit(limit * 2)
        ):
            _add_topic(topics, title)
    return ", ".join(topics[:limit])


def _add_topic(topics: list[str], raw: str | None) -> None:
    if not raw:
        return
    topic = clip(_UNSPEAKABLE.sub(" ", _SPACE.sub(" ", raw)).strip().rstrip("."), 60)
    if topic and topic.lower() not in {t.lower() for t in topics}:
        topics.append(topic)


@dataclass(frozen=True, slots=True)
class UserContext:
    memory_context: str
    recent_topics: str


class ContextCache:
    """user_id → (version, UserContext), LRU with a TTL; thread-safe."""

    def __init__(self, max_users: int = CACHE_MAX_USERS, ttl_secs: float = CACHE_TTL_SECS) -> None:
        self._data: OrderedDict[str, tuple[object, float, UserContext]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_users
        self._ttl = ttl_secs

    def get(self, user_id: str, version: object) -> UserContext | None:
        with self._lock:
            entry = self._data.get(user_id)
            if entry is None:
                return None
            cached_version, stored, value = entry
            if cached_version != version or time.monotonic() - stored > self._ttl:
                del self._data[user_id]
                return None
            self._data.move_to_end(user_id)
            return value

    def put(self, user_id: str, version: object, value: UserContext) -> None:
        with self._lock:
            self._data[user_id] = (version, time.monotonic(), value)
            self._data.move_to_end(user_id)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._data.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


CACHE = ContextCache()


def user_context(session: Session, user: User, *, now: datetime | None = None) -> UserContext:
    # last_interaction joins the key: a finished call changes recent_topics even when it
    # produced no memory.
    version = (user.memory_version, user.last_interaction)
    cached = CACHE.get(user.user_id, version)
    if cached is not None:
        return cached
    digest = memory_digest(session, user.user_id, now=now)
    if not digest and user.summary:
        digest = clip(speakable(user.summary), MAX_CONTEXT_CHARS)
    value = UserContext(memory_context=digest, recent_topics=recent_topics(session, user.user_id))
    CACHE.put(user.user_id, version, value)
    return value
