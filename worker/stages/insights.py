"""Pipeline stages for the sister systems (issue 7): session memory, issue patterns, entity
graph, profile, and the reflection job. Domain logic lives in ``memory/``; this is the glue.

Each step runs in a SAVEPOINT and a failure is logged and skipped: these features enrich the
core memory path and must never make a post-call event fail or retry (the conversation and its
memories still commit). The reflection event is the exception: it is its own queued job, so
its failure is retried by the queue like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import select

from db.models import Conversation, SessionInteraction, User, UserProfile
from memory import derived, entities, patterns, profile, reflection
from memory import session as session_mem
from memory.embedders import Embedder, get_embedder
from worker.payload import PostCallTranscription
from worker.pipeline import PrepareContext, Stage, StageContext

log = structlog.get_logger("voxmem.insights")

REPLAY_KEY = "insights.replay"


def _guarded(name: str, ctx: StageContext, step: Callable[[StageContext], None]) -> None:
    try:
        with ctx.session.begin_nested():
            step(ctx)
    except Exception as exc:  # noqa: BLE001 - enrichment degrades, the core path commits
        log.error("insights.step_failed", step=name, event_id=ctx.job.id, error=str(exc)[:300])


def _parts(ctx: StageContext) -> tuple[PostCallTranscription, User, Conversation]:
    if ctx.call is None:
        raise RuntimeError("insight stages run on post_call_transcription events only")
    return ctx.call, ctx.require_user(), ctx.require_conversation()


def _ready(ctx: StageContext) -> bool:
    return (
        ctx.call is not None
        and ctx.user is not None
        and ctx.conversation is not None
        and ctx.conversation.status != "initiation_failed"
    )


def _embedder(ctx: PrepareContext | StageContext) -> Embedder | None:
    try:
        return get_embedder(ctx.settings)
    except Exception as exc:  # noqa: BLE001 - patterns then match by exact wording only
        log.warning("insights.embedder_unavailable", error=str(exc)[:200])
        return None


# --- session memory ---------------------------------------------------------------------------
def _session_step(ctx: StageContext) -> None:
    call, user, conversation = _parts(ctx)
    ctx.prepared[REPLAY_KEY] = (
        ctx.session.scalar(
            select(SessionInteraction.id).where(
                SessionInteraction.conversation_fk == conversation.id
            )
        )
        is not None
    )
    session_mem.record_interaction(ctx.session, ctx.settings, user, conversation, call, now=ctx.now)


def apply_session(ctx: StageContext) -> None:
    if _ready(ctx):
        _guarded("session_memory", ctx, _session_step)


# --- issue patterns ---------------------------------------------------------------------------
def prepare_patterns(ctx: PrepareContext) -> patterns.Report | None:
    if ctx.call is None:
        return None
    try:
        return patterns.prepare_report(
            session_mem.caller_lines(ctx.call),
            session_mem.agent_lines(ctx.call),
            ctx.call.analysis.data_collection_results if ctx.call.analysis else None,
            _embedder(ctx),
        )
    except Exception as exc:  # noqa: BLE001 - an embedding failure skips this call's pattern
        log.warning("insights.pattern_prepare_failed", error=str(exc)[:200])
        return None


def _patterns_step(ctx: StageContext) -> None:
    report = ctx.prepared.get("issue_patterns")
    if not isinstance(report, patterns.Report):
        return
    call, user, conversation = _parts(ctx)
    pattern, _counted = patterns.record(
        ctx.session,
        ctx.tenant_id,
        user,
        report,
        conversation_fk=conversation.id,
        outcome=call.analysis.call_successful if call.analysis else None,
        when=conversation.start_time,
        threshold=ctx.settings.pattern_match_threshold,
    )
    text = patterns.procedural_text(pattern)
    embedder = _embedder(ctx)
    if text and embedder is not None:
        derived.upsert(
            ctx.session,
            user,
            kind=patterns.KIND,
            key=f"pattern:{pattern.id}",
            content=text,
            sector="procedural",
            salience=0.75,
            embedder=embedder,
            now=ctx.now,
            conversation_ids=[conversation.conversation_id],
        )


def apply_patterns(ctx: StageContext) -> None:
    if _ready(ctx):
        _guarded("issue_patterns", ctx, _patterns_step)


# --- entity graph -----------------------------------------------------------------------------
def _entities_step(ctx: StageContext) -> None:
    call, user, conversation = _parts(ctx)
    entities.record_call(
        ctx.session,
        user,
        session_mem.caller_lines(call),
        conversation_fk=conversation.id,
        now=conversation.start_time,
        already_counted=bool(ctx.prepared.get(REPLAY_KEY)),
    )


def apply_entities(ctx: StageContext) -> None:
    if _ready(ctx):
        _guarded("entity_graph", ctx, _entities_step)


# --- profile and reflection scheduling --------------------------------------------------------
def _profile_step(ctx: StageContext) -> None:
    call, user, _conversation = _parts(ctx)
    profile.update_after_call(
        ctx.session,
        ctx.settings,
        user,
        data_collection=call.analysis.data_collection_results if call.analysis else None,
        now=ctx.now,
    )
    reflection.schedule(ctx.session, ctx.settings, ctx.tenant_id, user.user_id, ctx.now)


def apply_profile(ctx: StageContext) -> None:
    if _ready(ctx):
        _guarded("profile", ctx, _profile_step)


# --- the reflection event ---------------------------------------------------------------------
def _reflection_user_id(data: dict[str, Any]) -> str | None:
    user_id = data.get("user_id")
    return user_id if isinstance(user_id, str) and user_id else None


def prepare_reflection(ctx: PrepareContext) -> profile.LlmEnrichment | None:
    """The slow part (an LLM call) runs here, outside any write transaction."""
    user_id = _reflection_user_id(ctx.data)
    if user_id is None:
        return None
    with ctx.db.read() as session:
        row = session.get(UserProfile, user_id)
        if not profile.needs_llm_enrichment(ctx.settings, row):
            return None
        lines = profile.caller_history(session, user_id)
    return profile.llm_enrich(ctx.settings, lines)


def apply_reflection(ctx: StageContext) -> None:
    user_id = _reflection_user_id(ctx.data)
    if user_id is None:
        return
    session_mem.sweep_expired(ctx.session, now=ctx.now)
    user = ctx.session.get(User, user_id)
    if user is None or user.tenant_id != ctx.tenant_id:
        return  # forgotten since it was queued: nothing to reflect on
    enrichment = ctx.prepared.get("reflection")
    if isinstance(enrichment, profile.LlmEnrichment):
        row = ctx.session.get(UserProfile, user_id)
        profile.apply_llm_enrichment(
            ctx.session, user_id, enrichment, calls=row.call_count if row else 0, now=ctx.now
        )
    entities.relink_user(ctx.session, user_id)
    embedder = _embedder(ctx)
    if embedder is not None:
        reflection.reflect(ctx.session, ctx.settings, user, embedder, ctx.now)


INSIGHT_STAGES: tuple[Stage, ...] = (
    Stage("session_memory", apply=apply_session),
    Stage("issue_patterns", apply=apply_patterns, prepare=prepare_patterns),
    Stage("entity_graph", apply=apply_entities),
    Stage("profile", apply=apply_profile),
    Stage(
        "reflection",
        apply=apply_reflection,
        prepare=prepare_reflection,
        event_types=frozenset({reflection.REFLECTION_EVENT}),
    ),
)
