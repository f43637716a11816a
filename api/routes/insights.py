"""Admin API for the sister systems (issue 7): session memory, profiles, analytics, patterns.

``admin`` token, tenant-scoped like every ``/v1`` route (a user of another tenant is a 404).
Domain logic lives in ``memory/`` (session, profile, analytics, patterns); this only maps HTTP.
Also registers the ``enrichment`` check of ``GET /health``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from api.auth import AdminAuth
from api.deps import MAX_SQL_INT, StateDep
from api.routes.health import HEALTH_CHECKS
from api.state import AppState
from db.models import User, UserProfile, WebhookEvent
from db.types import utcnow
from memory import analytics, patterns, profile, reflection
from memory import session as session_mem
from memory.embedders import EmbedderError, get_embedder
from memory.identity import get_user

router = APIRouter(prefix="/v1", tags=["insights"])

UserId = Annotated[str, Path(max_length=200)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such user in this tenant"}}


def _user(session: Any, tenant_id: int, user_id: str) -> User:
    user = get_user(session, tenant_id, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail=f"user {user_id!r} not found in this tenant")
    return user


# --- session memory ---------------------------------------------------------------------------
@router.post(
    "/users/{user_id}/session/clear",
    summary="Clear a user's session memory (recent interactions)",
    responses=NOT_FOUND,
)
def clear_session(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.write() as session:
        _user(session, identity.tenant_id, user_id)
        cleared = session_mem.clear_session(session, user_id)
    return {"user_id": user_id, "cleared": cleared}


class RatingPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"rating": 5}]})
    rating: int = Field(ge=1, le=5)


@router.patch(
    "/users/{user_id}/session/{interaction_id}",
    summary="Rate one interaction of the user's session memory (1–5)",
    responses=NOT_FOUND,
)
def rate_interaction(
    user_id: UserId,
    interaction_id: Annotated[int, Path(ge=1, le=MAX_SQL_INT)],
    body: RatingPatch,
    identity: AdminAuth,
    state: StateDep,
) -> dict[str, Any]:
    with state.db.write() as session:
        _user(session, identity.tenant_id, user_id)
        try:
            row = session_mem.rate_interaction(session, user_id, interaction_id, body.rating)
        except session_mem.InteractionNotFound as exc:
            raise HTTPException(
                status_code=404, detail=f"interaction {interaction_id} not found (or expired)"
            ) from exc
        return session_mem.interaction_out(row)


# --- profile ----------------------------------------------------------------------------------
@router.get("/users/{user_id}/profile", summary="The user's customer profile", responses=NOT_FOUND)
def read_profile(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.read() as session:
        _user(session, identity.tenant_id, user_id)
        return profile.profile_out(session.get(UserProfile, user_id))


class ProfileFeedback(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"tone": "casual", "detail_level": "low"},
                {"text": "Please keep it short, I just need the answer."},
                {"industry": "dental", "company_size": "11-50", "goals": ["annual billing"]},
            ]
        },
    )
    text: str | None = Field(default=None, max_length=2000, description="the caller's words")
    tone: Literal["formal", "casual", "balanced"] | None = None
    detail_level: Literal["low", "medium", "high"] | None = None
    format: (
        Literal["short_answer", "step_by_step", "detailed_explanation", "follow_up_by_email"] | None
    ) = None
    communication_style: Literal["formal", "casual", "balanced"] | None = None
    expertise_level: Literal["beginner", "intermediate", "expert"] | None = None
    industry: str | None = Field(default=None, max_length=80)
    company_name: str | None = Field(default=None, max_length=80)
    company_size: Literal["1-10", "11-50", "51-200", "201-1000", "1000+"] | None = None
    goals: list[str] | None = Field(default=None, max_length=5)
    pain_points: list[str] | None = Field(default=None, max_length=5)


@router.post(
    "/users/{user_id}/profile/feedback",
    summary="Explicit feedback: set profile fields (pinned against later inference)",
    responses={**NOT_FOUND, 422: {"description": "no profile field in the feedback"}},
)
def profile_feedback(
    user_id: UserId, body: ProfileFeedback, identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    with state.db.write() as session:
        user = _user(session, identity.tenant_id, user_id)
        try:
            row = profile.apply_feedback(session, user_id, body.model_dump(exclude_none=True))
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        user.memory_version = (user.memory_version or 0) + 1  # init variables changed
        return profile.profile_out(row)


@router.post(
    "/users/{user_id}/profile/enrich",
    summary="Enrich the profile now (heuristics; the LLM too when configured)",
    responses=NOT_FOUND,
)
def enrich_profile(user_id: UserId, identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    settings = state.settings
    with state.db.read() as session:
        _user(session, identity.tenant_id, user_id)
        lines = profile.caller_history(session, user_id)
    # The LLM call runs outside any transaction (it may take seconds).
    result = profile.llm_enrich(settings, lines) if profile.llm_configured(settings) else None
    with state.db.write() as session:
        row = profile.get_or_create(session, user_id)
        data = profile.load(row)
        profile.enrich_heuristically(data, lines, set(data.get("pinned") or []))
        data.setdefault("enrichment", {})["heuristic_at"] = utcnow().isoformat()
        profile._store(row, data)
        row.enriched_at = utcnow()
        if result is not None:
            row = profile.apply_llm_enrichment(
                session, user_id, result, calls=row.call_count, now=utcnow()
            )
        return profile.profile_out(row)


# --- analytics --------------------------------------------------------------------------------
Days = Annotated[int | None, Query(ge=1, le=3650, description="window in days (default: all)")]


@router.get(
    "/users/{user_id}/analytics",
    summary="A user's most common topics and call outcomes",
    responses=NOT_FOUND,
)
def user_analytics(
    user_id: UserId, identity: AdminAuth, state: StateDep, days: Days = None
) -> dict[str, Any]:
    with state.db.read() as session:
        _user(session, identity.tenant_id, user_id)
        return analytics.user_analytics(session, identity.tenant_id, user_id, days=days)


@router.get(
    "/analytics/agents",
    summary="Per agent: calls, success rate (call_successful and evaluation criteria), "
    "average duration, volume by topic",
)
def agent_analytics(
    identity: AdminAuth,
    state: StateDep,
    agent_id: Annotated[str | None, Query(max_length=128)] = None,
    days: Annotated[int, Query(ge=1, le=3650)] = 30,
) -> dict[str, Any]:
    with state.db.read() as session:
        return analytics.agent_analytics(session, identity.tenant_id, agent_id=agent_id, days=days)


@router.get("/analytics/failing", summary="Call types that failed in the last N days")
def failing_call_types(
    identity: AdminAuth,
    state: StateDep,
    days: Annotated[int, Query(ge=1, le=3650)] = 7,
    agent_id: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    with state.db.read() as session:
        return analytics.failing_call_types(
            session, identity.tenant_id, days=days, agent_id=agent_id
        )


# --- issue patterns ---------------------------------------------------------------------------
@router.get(
    "/patterns",
    summary="Recurring problems of this tenant with the fix that worked, usage and success rate",
)
def list_patterns(
    identity: AdminAuth,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    min_usage: Annotated[int, Query(ge=1, le=MAX_SQL_INT)] = 1,
) -> dict[str, Any]:
    with state.db.read() as session:
        return {
            "patterns": patterns.list_patterns(
                session, identity.tenant_id, limit=limit, min_usage=min_usage
            )
        }


@router.get(
    "/patterns/search",
    summary='Procedural answers for a problem: "last time this error was fixed by …"',
)
def search_patterns(
    identity: AdminAuth,
    state: StateDep,
    q: Annotated[str, Query(min_length=1, max_length=500)],
    limit: Annotated[int, Query(ge=1, le=10)] = 3,
) -> dict[str, Any]:
    try:
        embedder = get_embedder(state.settings)
    except (EmbedderError, OSError, ValueError) as exc:
        raise HTTPException(status_code=503, detail=f"embedder unavailable: {exc}") from exc
    with state.db.read() as session:
        hits = patterns.search_patterns(session, identity.tenant_id, q, embedder, limit=limit)
    return {
        "results": [
            {
                "pattern_id": h.pattern_id,
                "content": h.content,
                "score": h.score,
                "usage_count": h.usage_count,
                "success_rate": h.success_rate,
                "last_seen": h.last_seen.isoformat().replace("+00:00", "Z")
                if h.last_seen
                else None,
            }
            for h in hits
        ]
    }


# --- /health ------------------------------------------------------------------------------------
def enrichment_health(state: AppState) -> dict[str, Any]:
    """Profile enrichment and reflection failures (they degrade, so they must be visible)."""
    settings = state.settings
    with state.db.read() as session:
        errors = int(
            session.scalar(
                select(func.count())
                .select_from(UserProfile)
                .where(UserProfile.enrichment_error.is_not(None))
            )
            or 0
        )
        last = session.execute(
            select(UserProfile.enrichment_error, UserProfile.updated_at)
            .where(UserProfile.enrichment_error.is_not(None))
            .order_by(UserProfile.updated_at.desc())
            .limit(1)
        ).first()
        failed_jobs = int(
            session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(
                    WebhookEvent.event_type == reflection.REFLECTION_EVENT,
                    WebhookEvent.status.in_(("failed", "dead_letter")),
                )
            )
            or 0
        )
    return {
        "status": "warn" if errors or failed_jobs else "ok",
        "mode": "llm" if profile.llm_configured(settings) else "heuristic",
        "profiles_with_errors": errors,
        "last_error": (last[0] or "")[:200] if last else None,
        "last_error_at": last[1].isoformat() if last else None,
        "reflection_jobs_failed": failed_jobs,
        "fallback": "heuristic profile and core memory path keep working",
    }


HEALTH_CHECKS["enrichment"] = enrichment_health
