"""Recurring-issue patterns (seed 002): problems callers report and the fixes that worked.

Learned across all calls of a tenant (seed 002's ``error_patterns`` with ``usage_count``,
``last_seen`` and ``success_rate``), in our tables:

- ``issue_patterns``: one row per known problem of a tenant; ``problem``/``resolution`` are
  encrypted, ``problem_hash`` is a keyed hash of the normalised wording, ``embedding`` the
  problem's vector (same embedder as memories). A new report joins the most similar pattern
  when the cosine is at least ``pattern_match_threshold``, else starts a new one;
- ``issue_occurrences``: which user/conversation reported it and whether that call succeeded
  (``analysis.call_successful``). ``success_rate`` = successful occurrences / occurrences with
  a known outcome. An occurrence is unique per (pattern, conversation), so a replayed event is
  not counted twice.

Extraction is deterministic: the problem is the caller's first sentence that reports one
("I can't log in, it says invalid password"); the resolution is the agent's last action
sentence ("I've resent the password reset link") or a ``resolution`` data-collection item. Emails,
long digit runs and URLs are scrubbed before anything is stored tenant-wide.

Surfacing: when a caller reports a known problem that has a working resolution, the caller gets
a procedural memory "Last time this problem (...) was fixed by: ..." (found by the
``memory_query`` tool like any memory), and :func:`search_patterns` answers tenant-wide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db import crypto
from db.models import ConversationTurn, IssueOccurrence, IssuePattern, User
from memory.context import clip
from memory.embedders import Embedder
from memory.loader import vector_to_bytes

KIND = "issue_pattern"
PROBLEM_CHARS = 160
RESOLUTION_CHARS = 220

_PROBLEM = re.compile(
    r"\b(?:can't|cannot|can not|couldn't|won't|doesn't|does not|didn't|isn't|not working|"
    r"no longer|error|errors|fails?|failed|failing|broken|invalid|locked out|crash\w*|"
    r"wrong|missing|never (?:received|got|arrived)|haven't (?:received|got)|still haven't|"
    r"problem|issue|bug|charged twice|double charged|declined|stuck|keeps)\b",
    re.I,
)
# First-person actions the agent took (the fix) rank above instructions given to the caller.
_DID = re.compile(
    r"\b(?:I've|I have|I'll|I will|we've|we have|I just|I went ahead and|I've just)\s+"
    r"(?:\w+\s+){0,2}?(?:sent|resent|re-sent|reset|updated|refunded|issued|unlocked|cleared|"
    r"fixed|enabled|disabled|re-?enabled|changed|escalated|restarted|removed|added|verified|"
    r"credited|reversed|cancelled|canceled|extended|merged|whitelisted|re-?synced|reconnected|"
    r"switched|corrected|applied|processed|resend|send|update|refund|unlock|reset)\b",
    re.I,
)
_TOLD = re.compile(
    r"\b(?:try|please try|you can|you'll need to|go to|click|open|clear|restart|check)\b", re.I
)
_GREETING = re.compile(r"^(?:hi|hello|hey|good (?:morning|afternoon|evening))\b[,!.]?\s*", re.I)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_URL = re.compile(r"https?://\S+")
_DIGITS = re.compile(r"\d[\d\s-]{2,}\d")
_NORMAL = re.compile(r"[^a-z0-9]+")
_SENT = re.compile(r"(?<=[.!?])\s+")


def scrub(text: str) -> str:
    """Remove what identifies a caller before text is shared tenant-wide."""
    text = _EMAIL.sub("[email]", text)
    text = _URL.sub("[link]", text)
    text = _DIGITS.sub("[number]", text)
    return " ".join(text.split())


def _sentences(lines: Sequence[str]) -> list[str]:
    return [s.strip() for line in lines for s in _SENT.split(line) if s.strip()]


def extract_problem(caller_lines: Sequence[str]) -> str | None:
    """The caller's first sentence reporting a problem; a short one ("I still haven't received
    it.") keeps the sentence before it, which says what "it" is."""
    sentences = [_GREETING.sub("", s).strip() for s in _sentences(caller_lines)]
    sentences = [s for s in sentences if s]
    for i, sentence in enumerate(sentences):
        if len(sentence.split()) >= 3 and _PROBLEM.search(sentence):
            if len(sentence.split()) < 7:
                context = next((p for p in reversed(sentences[:i]) if len(p.split()) >= 5), None)
                sentence = f"{context} {sentence}" if context else sentence
            return clip(scrub(sentence[:1].upper() + sentence[1:]), PROBLEM_CHARS)
    return None


def extract_resolution(
    agent_lines: Sequence[str], data_collection: Mapping[str, Any] | None = None
) -> str | None:
    for key in ("resolution", "fix", "solution"):
        item = (data_collection or {}).get(key)
        value = item.get("value") if isinstance(item, Mapping) else item
        if isinstance(value, str) and value.strip():
            return clip(scrub(value.strip()), RESOLUTION_CHARS)
    sentences = [s for s in _sentences(agent_lines) if len(s.split()) >= 4]
    for pattern in (_DID, _TOLD):
        actions = [s for s in sentences if pattern.search(s)]
        if actions:
            return clip(scrub(actions[-1]), RESOLUTION_CHARS)
    return None


def problem_hash(problem: str) -> str:
    normal = _NORMAL.sub(" ", problem.lower()).strip()
    return crypto.keyring().lookup_hash(f"issue:{normal}")


@dataclass(frozen=True, slots=True)
class Report:
    """What one call says about a problem, computed before the write transaction."""

    problem: str
    resolution: str | None
    vector: bytes | None
    model: str | None


def prepare_report(
    caller_lines: Sequence[str],
    agent_lines: Sequence[str],
    data_collection: Mapping[str, Any] | None,
    embedder: Embedder | None,
) -> Report | None:
    problem = extract_problem(caller_lines)
    if problem is None:
        return None
    vector: bytes | None = None
    model: str | None = None
    if embedder is not None:
        vector = vector_to_bytes(embedder.embed([problem])[0])
        model = embedder.name
    return Report(problem, extract_resolution(agent_lines, data_collection), vector, model)


def _vec(raw: bytes | None) -> np.ndarray[Any, np.dtype[np.float32]] | None:
    if not raw:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def match(
    session: Session, tenant_id: int, report: Report, threshold: float
) -> tuple[IssuePattern | None, float]:
    exact = session.scalar(
        select(IssuePattern).where(
            IssuePattern.tenant_id == tenant_id,
            IssuePattern.problem_hash == problem_hash(report.problem),
        )
    )
    if exact is not None:
        return exact, 1.0
    query = _vec(report.vector)
    if query is None:
        return None, 0.0
    best_id, best = None, -1.0
    for pid, raw in session.execute(
        select(IssuePattern.id, IssuePattern.embedding).where(
            IssuePattern.tenant_id == tenant_id, IssuePattern.embedding.is_not(None)
        )
    ):
        vec = _vec(raw)
        if vec is None or vec.shape != query.shape:
            continue
        score = float(vec @ query)
        if score > best:
            best_id, best = pid, score
    if best_id is not None and best >= threshold:
        return session.get(IssuePattern, best_id), best
    return None, max(best, 0.0)


def record(
    session: Session,
    tenant_id: int,
    user: User,
    report: Report,
    *,
    conversation_fk: int | None,
    outcome: str | None,
    when: datetime,
    threshold: float,
) -> tuple[IssuePattern, bool]:
    """Count this call's report. Returns (pattern, counted): counted is False on a replay."""
    pattern, _score = match(session, tenant_id, report, threshold)
    if pattern is None:
        pattern = IssuePattern(
            tenant_id=tenant_id,
            problem=report.problem,
            problem_hash=problem_hash(report.problem),
            resolution=None,
            usage_count=0,
            success_count=0,
            last_seen=when,
            embedding=report.vector,
        )
        session.add(pattern)
        session.flush()
    elif pattern.embedding is None and report.vector is not None:
        # Re-learned wording after a forget dropped the previous author's text.
        pattern.embedding = report.vector
    if conversation_fk is not None:
        seen = session.scalar(
            select(IssueOccurrence.id).where(
                IssueOccurrence.pattern_id == pattern.id,
                IssueOccurrence.conversation_fk == conversation_fk,
            )
        )
        if seen is not None:
            return pattern, False
    resolved = {"success": True, "failure": False}.get(outcome or "")
    session.add(
        IssueOccurrence(
            pattern_id=pattern.id,
            user_id=user.user_id,
            conversation_fk=conversation_fk,
            resolved=resolved,
            occurred_at=when,
        )
    )
    pattern.usage_count = (pattern.usage_count or 0) + 1
    if resolved:
        pattern.success_count = (pattern.success_count or 0) + 1
        # The latest fix that worked wins (forget relies on this to find its author).
        if report.resolution:
            pattern.resolution = report.resolution
    if pattern.last_seen is None or when > pattern.last_seen:
        pattern.last_seen = when
    session.flush()
    return pattern, True


def success_rate(session: Session, pattern_id: int) -> float | None:
    known, good = session.execute(
        select(
            func.count(IssueOccurrence.id).filter(IssueOccurrence.resolved.is_not(None)),
            func.count(IssueOccurrence.id).filter(IssueOccurrence.resolved.is_(True)),
        ).where(IssueOccurrence.pattern_id == pattern_id)
    ).one()
    return round(good / known, 4) if known else None


def procedural_text(pattern: IssuePattern) -> str | None:
    if not pattern.resolution:
        return None
    return (
        f'Last time this problem ("{clip(pattern.problem, 100)}") came up, it was fixed by: '
        f"{pattern.resolution}"
    )


def pattern_out(session: Session, pattern: IssuePattern) -> dict[str, Any]:
    rate = success_rate(session, pattern.id)
    return {
        "id": pattern.id,
        "problem": pattern.problem,
        "resolution": pattern.resolution,
        "usage_count": pattern.usage_count,
        "success_count": pattern.success_count,
        "success_rate": rate,
        "last_seen": pattern.last_seen.isoformat().replace("+00:00", "Z")
        if pattern.last_seen
        else None,
        "users": int(
            session.scalar(
                select(func.count(func.distinct(IssueOccurrence.user_id))).where(
                    IssueOccurrence.pattern_id == pattern.id
                )
            )
            or 0
        ),
    }


def list_patterns(
    session: Session, tenant_id: int, *, limit: int = 50, min_usage: int = 1
) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(IssuePattern)
        .where(IssuePattern.tenant_id == tenant_id, IssuePattern.usage_count >= min_usage)
        .order_by(IssuePattern.usage_count.desc(), IssuePattern.last_seen.desc())
        .limit(limit)
    )
    return [pattern_out(session, p) for p in rows]


@dataclass(frozen=True, slots=True)
class PatternHit:
    pattern_id: int
    content: str
    score: float
    usage_count: int
    success_rate: float | None
    last_seen: datetime | None


def search_patterns(
    session: Session,
    tenant_id: int,
    query: str,
    embedder: Embedder,
    *,
    limit: int = 2,
    threshold: float = 0.5,
) -> list[PatternHit]:
    """Tenant-wide procedural answers for a query ("last time this error was fixed by …"):
    patterns with a known resolution whose problem is similar to the query."""
    rows = list(
        session.execute(
            select(IssuePattern).where(
                IssuePattern.tenant_id == tenant_id,
                IssuePattern.resolution.is_not(None),
                IssuePattern.embedding.is_not(None),
            )
        ).scalars()
    )
    if not rows or not query.strip():
        return []
    q = embedder.embed([query])[0]
    scored: list[tuple[float, IssuePattern]] = []
    for p in rows:
        vec = _vec(p.embedding)
        if vec is not None and vec.shape == q.shape:
            score = float(vec @ q)
            if score >= threshold:
                scored.append((score, p))
    scored.sort(key=lambda sp: (-sp[0], sp[1].id))
    out = []
    for score, p in scored[:limit]:
        text = procedural_text(p)
        if text:
            out.append(
                PatternHit(
                    p.id,
                    text,
                    round(score, 4),
                    p.usage_count,
                    success_rate(session, p.id),
                    p.last_seen,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------
def _reauthor_problem(session: Session, conversation_fk: int | None) -> str | None:
    if conversation_fk is None:
        return None
    lines = [
        m
        for (m,) in session.execute(
            select(ConversationTurn.message)
            .where(
                ConversationTurn.conversation_fk == conversation_fk, ConversationTurn.role == "user"
            )
            .order_by(ConversationTurn.turn_order)
        )
        if m
    ]
    return extract_problem(lines)


def _reauthor_resolution(session: Session, conversation_fk: int | None) -> str | None:
    if conversation_fk is None:
        return None
    lines = [
        m
        for (m,) in session.execute(
            select(ConversationTurn.message)
            .where(
                ConversationTurn.conversation_fk == conversation_fk,
                ConversationTurn.role == "agent",
            )
            .order_by(ConversationTurn.turn_order)
        )
        if m
    ]
    return extract_resolution(lines)


def forget_contributions(session: Session, tenant_id: int, user_id: str) -> dict[str, int]:
    """Remove a forgotten user's share of tenant knowledge, before their rows are deleted.

    Per pattern they reported: with no other reporter the pattern goes; otherwise the counts
    are recomputed without them, and text they authored is replaced by the wording of the
    earliest remaining report (problem) or the latest remaining successful call (resolution).
    The problem's embedding is dropped with its author's text (a vector of someone's words is
    derived data too) and relearned from the next report. Authorship follows from how
    :func:`record` writes: the first report names the problem, the latest success the fix.
    """
    counts = {"issue_patterns_deleted": 0, "issue_patterns_rewritten": 0}
    pattern_ids = set(
        session.scalars(
            select(IssueOccurrence.pattern_id)
            .join(IssuePattern, IssuePattern.id == IssueOccurrence.pattern_id)
            .where(IssueOccurrence.user_id == user_id, IssuePattern.tenant_id == tenant_id)
        )
    )
    for pid in sorted(pattern_ids):
        pattern = session.get(IssuePattern, pid)
        if pattern is None:
            continue
        occurrences = list(
            session.scalars(
                select(IssueOccurrence)
                .where(IssueOccurrence.pattern_id == pid)
                .order_by(IssueOccurrence.occurred_at, IssueOccurrence.id)
            )
        )
        others = [o for o in occurrences if o.user_id != user_id]
        if not others:
            session.execute(delete(IssueOccurrence).where(IssueOccurrence.pattern_id == pid))
            session.delete(pattern)
            counts["issue_patterns_deleted"] += 1
            continue
        rewritten = False
        if occurrences[0].user_id == user_id:
            replacement = _reauthor_problem(session, others[0].conversation_fk)
            pattern.problem = replacement or "A recurring problem reported by several callers"
            digest = problem_hash(pattern.problem)
            taken = session.scalar(
                select(IssuePattern.id).where(
                    IssuePattern.tenant_id == tenant_id,
                    IssuePattern.problem_hash == digest,
                    IssuePattern.id != pid,
                )
            )
            # The unique (tenant, problem_hash) must hold; the old hash derives from their words.
            pattern.problem_hash = (
                digest if taken is None else crypto.keyring().lookup_hash(f"issue-id:{pid}")
            )
            pattern.embedding = None
            rewritten = True
        successes = [o for o in occurrences if o.resolved]
        if successes and successes[-1].user_id == user_id:
            remaining = [o for o in successes if o.user_id != user_id]
            pattern.resolution = (
                _reauthor_resolution(session, remaining[-1].conversation_fk) if remaining else None
            )
            rewritten = True
        pattern.usage_count = len(others)
        pattern.success_count = sum(1 for o in others if o.resolved)
        pattern.last_seen = max(o.occurred_at for o in others)
        counts["issue_patterns_rewritten"] += int(rewritten)
    session.flush()
    return counts


def user_occurrences(session: Session, user_id: str) -> list[dict[str, Any]]:
    """The user's reports of tenant-wide patterns, for export (the pattern text included)."""
    rows = session.execute(
        select(IssueOccurrence, IssuePattern)
        .join(IssuePattern, IssuePattern.id == IssueOccurrence.pattern_id)
        .where(IssueOccurrence.user_id == user_id)
        .order_by(IssueOccurrence.occurred_at, IssueOccurrence.id)
    )
    return [
        {
            "pattern_id": p.id,
            "problem": p.problem,
            "resolution": p.resolution,
            "resolved": o.resolved,
            "occurred_at": o.occurred_at.isoformat().replace("+00:00", "Z"),
        }
        for o, p in rows
    ]
