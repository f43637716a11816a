"""Core stages: who the customer is, and the call itself (conversation, turns, analysis, tool
calls seen in the transcript). Every text a caller said or heard is stored encrypted; nothing
in plaintext columns carries transcript text or phone numbers.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    Conversation,
    ConversationAnalysis,
    ConversationTurn,
    ToolInvocation,
    User,
)
from memory.identity import (
    bound_user,
    create_guest,
    get_user,
    normalize_number,
    own_numbers,
    resolve_or_create_by_number,
    user_for_external_id,
)
from worker.payload import (
    INITIATION_FAILURE,
    TRANSCRIPTION,
    PostCallTranscription,
    ToolResult,
    claimed_user_ids,
    customer_number,
    from_unix,
)
from worker.pipeline import Stage, StageContext

TRANSCRIPT_ORIGIN = "transcript"
# Metadata keys safe to keep in the plaintext JSON column (no numbers, no free speech).
_SAFE_METADATA = (
    "termination_reason",
    "main_language",
    "conversation_initiation_source",
    "cost",
    "text_only",
    "authorization_method",
    "timezone",
)


# --------------------------------------------------------------------------------------------
# resolve_user
# --------------------------------------------------------------------------------------------
def _existing_conversation(
    session: Session, tenant_id: int, conversation_id: str
) -> Conversation | None:
    return session.scalar(
        select(Conversation).where(
            Conversation.tenant_id == tenant_id, Conversation.conversation_id == conversation_id
        )
    )


def _user_by_external_id(session: Session, tenant_id: int, external_id: str) -> tuple[User, bool]:
    user = get_user(session, tenant_id, external_id) or user_for_external_id(
        session, tenant_id, external_id
    )
    if user is not None:
        return user, False
    try:
        with session.begin_nested():
            return create_guest(session, tenant_id, external_id=external_id[:200]), True
    except IntegrityError:
        # Another job created it first (unique tenant + external_id): use theirs.
        winner = user_for_external_id(session, tenant_id, external_id)
        if winner is None:
            raise
        return winner, False


def resolve_customer(
    session: Session,
    tenant_id: int,
    *,
    conversation_id: str,
    call_sid: str | None,
    our_user_id: str | None,
    number: str | None,
    external_user_id: str | None,
) -> tuple[User, bool, str]:
    """(user, created, how). Order: the conversation's existing owner (replays stay put) →
    the conversation-init binding → our ``user_id`` dynamic variable → the customer's number
    → ``data.user_id`` → a new guest."""
    existing = _existing_conversation(session, tenant_id, conversation_id)
    if existing is not None:
        owner = session.get(User, existing.user_id)
        if owner is not None:
            return owner, False, "conversation"
    user = bound_user(session, tenant_id, conversation_id=conversation_id, call_sid=call_sid)
    if user is not None:
        return user, False, "binding"
    if our_user_id:
        user = get_user(session, tenant_id, our_user_id)
        if user is not None:
            return user, False, "dynamic_variable"
    e164 = normalize_number(number) if number else None
    if e164 is not None:
        resolved = resolve_or_create_by_number(session, tenant_id, e164)
        return resolved.user, resolved.created, "number"
    if external_user_id:
        user, created = _user_by_external_id(session, tenant_id, external_user_id)
        return user, created, "user_id"
    return create_guest(session, tenant_id), True, "guest"


def resolve_user(ctx: StageContext) -> None:
    if ctx.call is not None:
        ours, external = claimed_user_ids(ctx.data)
        conversation_id = ctx.call.conversation_id
        call_sid = ctx.call.call_sid
        number = customer_number(ctx.data, own_numbers(ctx.settings))
    elif ctx.failure is not None:
        ours = ctx.failure.dynamic_variables.get("user_id")
        ours = ours if isinstance(ours, str) else None
        external = None
        conversation_id = ctx.failure.conversation_id
        call_sid = ctx.failure.call_sid
        number = ctx.failure.customer_number
    else:
        return
    ctx.user, ctx.user_created, how = resolve_customer(
        ctx.session,
        ctx.tenant_id,
        conversation_id=conversation_id,
        call_sid=call_sid,
        our_user_id=ours,
        number=number,
        external_user_id=external,
    )
    ctx.prepared.setdefault("resolve_user", {})["via"] = how


# --------------------------------------------------------------------------------------------
# store_conversation
# --------------------------------------------------------------------------------------------
def _safe_metadata(call: PostCallTranscription) -> dict[str, Any]:
    meta: dict[str, Any] = {k: call.metadata[k] for k in _SAFE_METADATA if k in call.metadata}
    error = call.metadata.get("error")
    if isinstance(error, dict) and error.get("code") is not None:
        meta["error_code"] = error.get("code")
    if call.phone_call is not None:
        meta["phone_provider"] = call.phone_call.provider
    if call.call_sid:
        meta["call_sid"] = call.call_sid
    for key in ("has_audio", "has_user_audio", "has_response_audio"):
        raw = call.metadata.get(key)
        if isinstance(raw, bool):
            meta[key] = raw
    return meta


def _dump(value: list[Any]) -> str | None:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if value else None


def _touch_user(user: User, when: datetime) -> None:
    if user.last_interaction is None or user.last_interaction < when:
        user.last_interaction = when


def store_conversation(ctx: StageContext) -> None:
    call = ctx.call
    if call is None:
        return
    user = ctx.require_user()
    session = ctx.session
    start = call.start_time or from_unix(ctx.event_timestamp) or ctx.now
    conv = _existing_conversation(session, ctx.tenant_id, call.conversation_id)
    fields: dict[str, Any] = {
        "agent_id": call.agent_id,
        "start_time": start,
        "end_time": call.end_time,
        "duration_secs": call.duration_secs,
        "status": call.status,
        "direction": call.direction,
        "call_successful": call.analysis.call_successful if call.analysis else None,
        "metadata_": _safe_metadata(call),
    }
    if conv is None:
        conv = Conversation(
            tenant_id=ctx.tenant_id,
            conversation_id=call.conversation_id,
            user_id=user.user_id,
            **fields,
        )
        session.add(conv)
        session.flush()
    else:
        # Re-run (operator replay, or a failure record first): replace what this stage owns.
        for key, value in fields.items():
            setattr(conv, key, value)
        session.execute(delete(ConversationTurn).where(ConversationTurn.conversation_fk == conv.id))
        session.execute(
            delete(ConversationAnalysis).where(ConversationAnalysis.conversation_fk == conv.id)
        )
        session.execute(
            delete(ToolInvocation).where(
                ToolInvocation.conversation_fk == conv.id,
                ToolInvocation.origin == TRANSCRIPT_ORIGIN,
            )
        )
        session.flush()
    ctx.conversation = conv

    turns = [
        ConversationTurn(
            conversation_fk=conv.id,
            role=turn.role[:16],
            message=turn.message,
            timestamp=turn.time_in_call_secs,
            turn_order=turn.index,
            tool_calls=_dump(turn.tool_calls_raw),
            tool_results=_dump(turn.tool_results_raw),
        )
        for turn in call.transcript
    ]
    session.add_all(turns)
    ctx.turns = turns

    if call.analysis is not None:
        a = call.analysis
        session.add(
            ConversationAnalysis(
                conversation_fk=conv.id,
                summary=a.transcript_summary,
                summary_title=a.call_summary_title,
                call_successful=a.call_successful,
                # Outcomes only: rationales quote the call, and this column is plaintext JSON.
                # The full analysis stays in the encrypted stored payload.
                evaluation_json={
                    str(key): {
                        k: v
                        for k, v in (item if isinstance(item, dict) else {}).items()
                        if k in ("criteria_id", "result", "score", "max_score")
                    }
                    for key, item in a.evaluation_criteria_results.items()
                }
                or None,
                data_collection=json.dumps(a.data_collection_results, ensure_ascii=False)
                if a.data_collection_results
                else None,
            )
        )

    _store_tool_calls(ctx, conv, user, start)
    _touch_user(user, call.end_time or start)
    session.flush()


def _store_tool_calls(ctx: StageContext, conv: Conversation, user: User, start: datetime) -> None:
    call = ctx.call
    if call is None:
        return
    results: dict[str, tuple[int, ToolResult]] = {}
    for turn in call.transcript:
        for tool_result in turn.tool_results:
            if tool_result.request_id and tool_result.request_id not in results:
                results[tool_result.request_id] = (turn.time_in_call_secs, tool_result)
    matched: set[str] = set()
    rows: list[ToolInvocation] = []
    for turn in call.transcript:
        for tool_call in turn.tool_calls:
            found = results.get(tool_call.request_id) if tool_call.request_id else None
            result = found[1] if found else None
            if tool_call.request_id and found:
                matched.add(tool_call.request_id)
            rows.append(
                ToolInvocation(
                    conversation_fk=conv.id,
                    tenant_id=ctx.tenant_id,
                    user_id=user.user_id,
                    conversation_id=call.conversation_id,
                    origin=TRANSCRIPT_ORIGIN,
                    tool_name=tool_call.tool_name[:128],
                    request_params=tool_call.params_raw,
                    response_data=result.result_raw if result else None,
                    latency_ms=round(result.latency_secs * 1000)
                    if result and result.latency_secs is not None
                    else None,
                    success=not result.is_error if result else True,
                    error_message=(result.error_type or result.error_message)
                    if result and result.is_error
                    else None,
                    timestamp=start + timedelta(seconds=turn.time_in_call_secs),
                )
            )
    # Results whose call is not in the transcript (trimmed transcripts) are still recorded.
    for request_id, (secs, orphan) in results.items():
        if request_id in matched:
            continue
        rows.append(
            ToolInvocation(
                conversation_fk=conv.id,
                tenant_id=ctx.tenant_id,
                user_id=user.user_id,
                conversation_id=call.conversation_id,
                origin=TRANSCRIPT_ORIGIN,
                tool_name=orphan.tool_name[:128],
                request_params="",
                response_data=orphan.result_raw,
                latency_ms=round(orphan.latency_secs * 1000)
                if orphan.latency_secs is not None
                else None,
                success=not orphan.is_error,
                error_message=(orphan.error_type or orphan.error_message)
                if orphan.is_error
                else None,
                timestamp=start + timedelta(seconds=secs),
            )
        )
    ctx.session.add_all(rows)


# --------------------------------------------------------------------------------------------
# record_initiation_failure
# --------------------------------------------------------------------------------------------
def record_initiation_failure(ctx: StageContext) -> None:
    failure = ctx.failure
    if failure is None:
        return
    user = ctx.require_user()
    session = ctx.session
    conv = _existing_conversation(session, ctx.tenant_id, failure.conversation_id)
    meta = {"provider": failure.provider, "provider_status": failure.provider_status}
    if failure.call_sid:
        meta["call_sid"] = failure.call_sid
    when = from_unix(ctx.event_timestamp) or ctx.now
    if conv is None:
        conv = Conversation(
            tenant_id=ctx.tenant_id,
            conversation_id=failure.conversation_id,
            user_id=user.user_id,
            agent_id=failure.agent_id,
            start_time=when,
            end_time=when,
            duration_secs=0,
            status="initiation_failed",
            direction=failure.direction,
            call_successful=None,
            failure_reason=failure.failure_reason,
            metadata_=meta,
        )
        session.add(conv)
    else:
        # A transcript already stored for this id wins; only the reason is added.
        conv.failure_reason = failure.failure_reason
        if conv.status in ("initiated", "initiation_failed"):
            conv.status = "initiation_failed"
    session.flush()
    ctx.conversation = conv


CORE_STAGES: tuple[Stage, ...] = (
    Stage(
        "resolve_user",
        apply=resolve_user,
        event_types=frozenset({TRANSCRIPTION, INITIATION_FAILURE}),
    ),
    Stage("store_conversation", apply=store_conversation),
    Stage(
        "record_initiation_failure",
        apply=record_initiation_failure,
        event_types=frozenset({INITIATION_FAILURE}),
    ),
)
