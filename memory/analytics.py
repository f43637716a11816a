"""Interaction analytics (seed 000 story 5.1.3), straight from the tables the pipeline fills.

Everything is a SQL aggregate over ``conversations`` (task type in its plaintext metadata, set
by the session-memory stage), ``conversation_analysis`` (``call_successful`` and the outcome of
each evaluation criterion, plaintext JSON) and ``session_interactions`` (ratings). No row is
decrypted, so a 10k-call tenant answers in milliseconds on the existing indexes
(``idx_conversation_agent``, ``idx_conversation_user``); see docs/benchmarks.md.

Success rate = success / (success + failure); ``unknown`` outcomes are reported but do not count
either way (ElevenLabs could not tell).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.models import (
    Conversation,
    Entity,
    EntityRelation,
    IssueOccurrence,
    IssuePattern,
    SessionInteraction,
    User,
    UserProfile,
)
from db.types import UTCDateTime, utcnow
from memory.session import GENERAL

FAILED_STATUSES = ("initiation_failed",)


def task_type_col() -> ColumnElement[str]:
    # JSON path on both dialects (json_extract on SQLite, ->> on PostgreSQL).
    return func.coalesce(Conversation.metadata_["task_type"].as_string(), GENERAL)


def _rate(success: int, failure: int) -> float | None:
    return round(success / (success + failure), 4) if success + failure else None


def _since(days: int | None, now: datetime | None) -> datetime | None:
    if days is None:
        return None
    return (now or utcnow()) - timedelta(days=days)


def _window(tenant_id: int, since: datetime | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [Conversation.tenant_id == tenant_id]
    if since is not None:
        where.append(Conversation.start_time >= since)
    return where


def _outcome_counts() -> tuple[Any, ...]:
    success = func.sum(case((Conversation.call_successful == "success", 1), else_=0))
    failure = func.sum(case((Conversation.call_successful == "failure", 1), else_=0))
    unknown = func.sum(
        case(
            (Conversation.call_successful.is_(None), 1),
            (Conversation.call_successful == "unknown", 1),
            else_=0,
        )
    )
    return success, failure, unknown


def user_analytics(
    session: Session,
    tenant_id: int,
    user_id: str,
    *,
    days: int | None = None,
    now: datetime | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The user's most common topics and their call outcomes."""
    since = _since(days, now)
    where = [*_window(tenant_id, since), Conversation.user_id == user_id]
    topic = task_type_col()
    success, failure, unknown = _outcome_counts()
    topics = [
        {"topic": t, "calls": int(n), "success": int(s or 0), "failure": int(f or 0)}
        for t, n, s, f in session.execute(
            select(topic, func.count(), success, failure)
            .where(*where)
            .group_by(topic)
            .order_by(func.count().desc(), topic)
            .limit(top)
        )
    ]
    total, s, f, u, avg, first, last = session.execute(
        select(
            func.count(),
            success,
            failure,
            unknown,
            func.avg(Conversation.duration_secs),
            func.min(Conversation.start_time),
            func.max(Conversation.start_time),
        ).where(*where)
    ).one()
    rating = session.scalar(
        select(func.avg(SessionInteraction.rating)).where(
            SessionInteraction.user_id == user_id, SessionInteraction.rating.is_not(None)
        )
    )
    return {
        "user_id": user_id,
        "days": days,
        "calls": int(total or 0),
        "top_topics": topics,
        "outcomes": {"success": int(s or 0), "failure": int(f or 0), "unknown": int(u or 0)},
        "success_rate": _rate(int(s or 0), int(f or 0)),
        "avg_duration_secs": round(float(avg), 1) if avg is not None else None,
        "avg_rating": round(float(rating), 2) if rating is not None else None,
        "first_call": _iso(first),
        "last_call": _iso(last),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def agent_analytics(
    session: Session,
    tenant_id: int,
    *,
    agent_id: str | None = None,
    days: int | None = 30,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Per agent: volume, success rate, average duration, volume by topic, evaluation criteria."""
    since = _since(days, now)
    where = _window(tenant_id, since)
    if agent_id is not None:
        where.append(Conversation.agent_id == agent_id)
    success, failure, unknown = _outcome_counts()
    agents: dict[str, dict[str, Any]] = {}
    for aid, n, s, f, u, avg in session.execute(
        select(
            Conversation.agent_id,
            func.count(),
            success,
            failure,
            unknown,
            func.avg(Conversation.duration_secs),
        )
        .where(*where)
        .group_by(Conversation.agent_id)
        .order_by(func.count().desc())
    ):
        agents[aid] = {
            "agent_id": aid,
            "calls": int(n),
            "outcomes": {"success": int(s or 0), "failure": int(f or 0), "unknown": int(u or 0)},
            "success_rate": _rate(int(s or 0), int(f or 0)),
            "avg_duration_secs": round(float(avg), 1) if avg is not None else None,
            "by_topic": [],
            "evaluation_criteria": {},
        }
    topic = task_type_col()
    for aid, t, n, s, f in session.execute(
        select(Conversation.agent_id, topic, func.count(), success, failure)
        .where(*where)
        .group_by(Conversation.agent_id, topic)
        .order_by(Conversation.agent_id, func.count().desc())
    ):
        if aid in agents:
            agents[aid]["by_topic"].append(
                {
                    "topic": t,
                    "calls": int(n),
                    "success_rate": _rate(int(s or 0), int(f or 0)),
                }
            )
    for aid, criterion, result, n in _criteria_rows(session, tenant_id, agent_id, since):
        if aid not in agents:
            continue
        entry = agents[aid]["evaluation_criteria"].setdefault(
            criterion, {"success": 0, "failure": 0, "unknown": 0}
        )
        key = result if result in ("success", "failure") else "unknown"
        entry[key] += int(n)
    for entry in agents.values():
        for counts in entry["evaluation_criteria"].values():
            counts["success_rate"] = _rate(counts["success"], counts["failure"])
    return {"days": days, "agents": list(agents.values())}


def _criteria_rows(
    session: Session, tenant_id: int, agent_id: str | None, since: datetime | None
) -> list[tuple[str, str, str | None, int]]:
    """(agent, criterion, result, count): one JSON table-valued function per dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        each = "jsonb_each(ca.evaluation_json) AS je(key, value)"
        result = "je.value->>'result'"
    else:
        each = "json_each(ca.evaluation_json) AS je"
        result = "json_extract(je.value, '$.result')"
    filters = ["c.tenant_id = :tenant", "ca.evaluation_json IS NOT NULL"]
    params: dict[str, Any] = {"tenant": tenant_id}
    binds = []
    if agent_id is not None:
        filters.append("c.agent_id = :agent")
        params["agent"] = agent_id
    if since is not None:
        filters.append("c.start_time >= :since")
        params["since"] = since
        binds.append(bindparam("since", type_=UTCDateTime()))
    sql = text(
        f"SELECT c.agent_id, je.key, {result}, COUNT(*) "  # noqa: S608 - no user input in SQL
        f"FROM conversation_analysis ca JOIN conversations c ON c.id = ca.conversation_fk, "
        f"{each} WHERE {' AND '.join(filters)} GROUP BY c.agent_id, je.key, {result}"
    )
    if binds:
        sql = sql.bindparams(*binds)
    return [(str(a), str(k), r, int(n)) for a, k, r, n in session.execute(sql, params)]


def failing_call_types(
    session: Session,
    tenant_id: int,
    *,
    days: int = 7,
    agent_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Task types with failed calls in the last ``days`` days, most failures first."""
    where = _window(tenant_id, _since(days, now))
    if agent_id is not None:
        where.append(Conversation.agent_id == agent_id)
    topic = task_type_col()
    success, failure, _unknown = _outcome_counts()
    rows = session.execute(
        select(topic, func.count(), success, failure)
        .where(*where)
        .group_by(topic)
        .having(failure > 0)
        .order_by(failure.desc(), func.count().desc())
    )
    return {
        "days": days,
        "agent_id": agent_id,
        "failing": [
            {
                "task_type": t,
                "calls": int(n),
                "failures": int(f or 0),
                "failure_rate": round(int(f or 0) / int(n), 4) if n else None,
                "success_rate": _rate(int(s or 0), int(f or 0)),
            }
            for t, n, s, f in rows
        ],
    }


def tenant_counts(session: Session, tenant_id: int) -> dict[str, Any]:
    """Per-tenant counts of the sister systems, for ``GET /v1/stats``."""
    in_tenant = and_(User.tenant_id == tenant_id)

    def count_join(model: Any, user_col: Any, *extra: Any) -> int:
        return int(
            session.scalar(
                select(func.count())
                .select_from(model)
                .join(User, User.user_id == user_col)
                .where(in_tenant, *extra)
            )
            or 0
        )

    return {
        "session_interactions": count_join(
            SessionInteraction, SessionInteraction.user_id, SessionInteraction.expires_at > utcnow()
        ),
        "profiles": count_join(UserProfile, UserProfile.user_id),
        "profiles_enriched": count_join(
            UserProfile, UserProfile.user_id, UserProfile.enriched_at.is_not(None)
        ),
        "profile_enrichment_errors": count_join(
            UserProfile, UserProfile.user_id, UserProfile.enrichment_error.is_not(None)
        ),
        "entities": count_join(Entity, Entity.user_id),
        "entity_relations": count_join(EntityRelation, EntityRelation.user_id),
        "issue_patterns": int(
            session.scalar(
                select(func.count())
                .select_from(IssuePattern)
                .where(IssuePattern.tenant_id == tenant_id)
            )
            or 0
        ),
        "issue_occurrences": count_join(IssueOccurrence, IssueOccurrence.user_id),
    }
