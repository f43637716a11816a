"""The worker's processing step, in process: user resolution, what is stored, exactly-once
effects under lease loss and stage failures, and no plaintext in the database files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from db import queue as q
from db.models import (
    DEFAULT_TENANT,
    CallerNumber,
    Conversation,
    ConversationAnalysis,
    ConversationTurn,
    ToolInvocation,
    User,
    WebhookEvent,
)
from db.settings import Settings
from db.tenancy import require_tenant
from db.types import utcnow
from memory.identity import bind_conversation, create_guest, number_hash
from tests.conftest import Deployment
from tests.intake_helpers import edited_body, fixture_body, signed
from worker.pipeline import PrepareContext, Stage, StageContext
from worker.runner import make_process_next
from worker.stages import CORE_STAGES, default_stages

PATH = "/webhook/post-call"


def deliver(client: TestClient, deployment: Deployment, body: bytes) -> None:
    r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.json() == {"status": "accepted"}, r.text


def drain(
    deployment: Deployment, stages: list[Stage] | None = None, settings: Settings | None = None
) -> int:
    # Core stages only unless a test asks for more: this file tests the intake pipeline, not
    # the memory engine appended after it (the plaintext test runs the full default list).
    process = make_process_next(
        settings or deployment.settings,
        deployment.db,
        worker_id="test",
        stages=list(CORE_STAGES) if stages is None else stages,
    )
    n = 0
    while process():
        n += 1
    return n


def conversation(deployment: Deployment, conversation_id: str) -> Conversation:
    with deployment.db.read() as session:
        row = session.scalar(
            select(Conversation).where(Conversation.conversation_id == conversation_id)
        )
        assert row is not None
        return row


def counts(deployment: Deployment) -> dict[str, int]:
    with deployment.db.read() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Conversation, ConversationTurn, ConversationAnalysis, ToolInvocation)
        }


def statuses(deployment: Deployment) -> list[str]:
    with deployment.db.read() as session:
        return list(session.scalars(select(WebhookEvent.status).order_by(WebhookEvent.id)))


def tenant_id(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        return require_tenant(session, DEFAULT_TENANT).id


def test_full_transcript_is_stored(client: TestClient, deployment: Deployment) -> None:
    deliver(client, deployment, fixture_body())
    assert drain(deployment) == 1
    assert statuses(deployment) == ["completed"]
    conv = conversation(deployment, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p")
    assert conv.status == "done" and conv.direction == "inbound"
    assert conv.call_successful == "success"
    assert conv.duration_secs == 33
    assert conv.end_time is not None and (conv.end_time - conv.start_time).total_seconds() == 33
    assert "+15551234567" not in json.dumps(conv.metadata_)
    with deployment.db.read() as session:
        turns = list(
            session.scalars(
                select(ConversationTurn)
                .where(ConversationTurn.conversation_fk == conv.id)
                .order_by(ConversationTurn.turn_order)
            )
        )
        assert [t.turn_order for t in turns] == list(range(8))
        assert turns[2].message is None and turns[3].message is None
        assert turns[5].message is not None and "HubSpot" in turns[5].message
        assert turns[2].tool_calls is not None and "memory_query" in turns[2].tool_calls
        (tool,) = session.scalars(select(ToolInvocation))
        assert tool.origin == "transcript" and tool.tool_name == "memory_query"
        assert json.loads(tool.request_params)["query"] == "caller CRM system preferences"
        assert tool.response_data is not None and "Salesforce" in tool.response_data
        assert tool.latency_ms == 410 and tool.success
        assert tool.user_id == conv.user_id and tool.conversation_id == conv.conversation_id
        analysis = session.scalar(select(ConversationAnalysis))
        assert analysis is not None and analysis.summary_title == "Refund status and CRM change"
        assert analysis.evaluation_json == {
            "issue_resolved": {"criteria_id": "issue_resolved", "result": "success"}
        }
        assert analysis.data_collection is not None and "HubSpot" in analysis.data_collection
        user = session.get(User, conv.user_id)
        assert user is not None and user.is_guest
        assert user.last_interaction == conv.end_time
        # Resolved by the caller number (user_123 is not one of our ids): the number is now
        # mapped to this user, by keyed hash.
        mapped = session.scalar(
            select(CallerNumber).where(CallerNumber.number_hash == number_hash("+15551234567"))
        )
        assert mapped is not None and mapped.user_id == conv.user_id


def test_failed_minimal_call_is_stored(client: TestClient, deployment: Deployment) -> None:
    deliver(client, deployment, fixture_body("post_call_transcription_minimal.json"))
    drain(deployment)
    conv = conversation(deployment, "conv_2301kb3n4x8wq1zt6c9e2m7r5k0s")
    assert conv.status == "failed" and conv.call_successful == "unknown"
    assert counts(deployment)["conversation_turns"] == 2


def test_binding_wins(client: TestClient, deployment: Deployment) -> None:
    tid = tenant_id(deployment)
    with deployment.db.write() as session:
        bound = create_guest(session, tid)
        bind_conversation(
            session,
            tid,
            bound,
            conversation_id="conv_6801kb3m9q2rv4tx8e0d7c5j1n3p",
            call_sid=None,
            agent_id=None,
        )
        bound_id = bound.user_id
    deliver(client, deployment, fixture_body())
    drain(deployment)
    assert conversation(deployment, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p").user_id == bound_id
    with deployment.db.read() as session:
        key = session.scalar(select(WebhookEvent.ordering_key))
    assert key == f"user:{bound_id}"


def test_our_user_id_variable_wins_over_the_number(
    client: TestClient, deployment: Deployment
) -> None:
    with deployment.db.write() as session:
        ours = create_guest(session, tenant_id(deployment)).user_id

    def mutate(doc: dict[str, Any]) -> None:
        doc["data"]["conversation_initiation_client_data"]["dynamic_variables"]["user_id"] = ours

    deliver(client, deployment, edited_body(mutate))
    drain(deployment)
    assert conversation(deployment, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p").user_id == ours


def test_outbound_uses_the_callee_not_our_number(
    client: TestClient, deployment: Deployment
) -> None:
    def outbound(doc: dict[str, Any]) -> None:
        phone = doc["data"]["metadata"]["phone_call"]
        phone["direction"] = "outbound"
        phone["external_number"] = "+15550001111"
        dyn = doc["data"]["conversation_initiation_client_data"]["dynamic_variables"]
        dyn.pop("user_id")
        dyn["system__caller_id"] = "+15559876543"  # ours
        dyn["system__called_number"] = "+15550001111"

    deliver(client, deployment, edited_body(outbound))
    drain(deployment)
    conv = conversation(deployment, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p")
    assert conv.direction == "outbound"
    with deployment.db.read() as session:
        hashes = set(session.scalars(select(CallerNumber.number_hash)))
    assert hashes == {number_hash("+15550001111")}


def test_own_number_without_phone_metadata(deployment: Deployment) -> None:
    from api.app import create_app

    settings = deployment.settings.model_copy(update={"own_numbers": "+1 555 987 6543"})

    def web_outbound(doc: dict[str, Any]) -> None:
        doc["data"]["metadata"].pop("phone_call")
        dyn = doc["data"]["conversation_initiation_client_data"]["dynamic_variables"]
        dyn["system__caller_id"] = "+15559876543"
        dyn["system__called_number"] = "+15550002222"

    with TestClient(create_app(settings)) as client:
        deliver(
            client, deployment, edited_body(web_outbound, "post_call_transcription_minimal.json")
        )
    drain(deployment, settings=settings)
    with deployment.db.read() as session:
        hashes = set(session.scalars(select(CallerNumber.number_hash)))
    assert hashes == {number_hash("+15550002222")}


def test_external_user_id_then_guest(client: TestClient, deployment: Deployment) -> None:
    def no_number(conv_id: str, user_id: str | None) -> bytes:
        def mutate(doc: dict[str, Any]) -> None:
            data = doc["data"]
            data["conversation_id"] = conv_id
            data["metadata"].pop("phone_call")
            data["user_id"] = user_id
            data["conversation_initiation_client_data"] = {"dynamic_variables": {}}

        return edited_body(mutate)

    deliver(client, deployment, no_number("conv_a", "crm-42"))
    deliver(client, deployment, no_number("conv_b", "crm-42"))
    deliver(client, deployment, no_number("conv_c", None))
    deliver(client, deployment, no_number("conv_d", None))
    drain(deployment)
    a, b, c, d = (conversation(deployment, f"conv_{x}") for x in "abcd")
    assert a.user_id == b.user_id
    with deployment.db.read() as session:
        user = session.get(User, a.user_id)
        assert user is not None and user.external_id == "crm-42"
    assert len({a.user_id, c.user_id, d.user_id}) == 3  # unknown callers are never merged


def test_initiation_failure_is_recorded(client: TestClient, deployment: Deployment) -> None:
    deliver(client, deployment, fixture_body("call_initiation_failure_twilio.json"))
    drain(deployment)
    conv = conversation(deployment, "conv_9101kb3p2c6hz8xw4r1t7m0q3v5n")
    assert conv.status == "initiation_failed" and conv.failure_reason == "no-answer"
    assert conv.direction == "outbound" and conv.duration_secs == 0
    with deployment.db.read() as session:
        mapped = session.scalar(select(CallerNumber))
    assert mapped is not None and mapped.number_hash == number_hash("+15552220003")
    assert mapped.user_id == conv.user_id


def test_unparseable_payload_is_dead_lettered_at_once(deployment: Deployment) -> None:
    with deployment.db.write() as session:
        session.add(
            WebhookEvent(
                tenant_id=tenant_id(deployment),
                event_id="post_call_transcription:x",
                event_type="post_call_transcription",
                payload='{"type": "post_call_transcription", "data": {"transcript": 5}}',
                conversation_id="x",
                max_attempts=8,
                run_after=utcnow(),
            )
        )
    drain(deployment)
    with deployment.db.read() as session:
        event = session.scalar(select(WebhookEvent))
    assert event is not None and event.status == "dead_letter" and event.retry_count == 1
    assert event.error_class == "PayloadError"


def test_a_failing_stage_rolls_everything_back(client: TestClient, deployment: Deployment) -> None:
    seen: dict[str, Any] = {}

    def explode(ctx: StageContext) -> None:
        seen.update(user=ctx.require_user().user_id, turns=len(ctx.turns), conv=ctx.conversation)
        raise RuntimeError("extractor exploded")

    stages = [*CORE_STAGES, Stage("explode", apply=explode)]
    deliver(client, deployment, fixture_body())
    drain(deployment, stages=stages)
    assert seen["turns"] == 8 and seen["conv"] is not None
    assert counts(deployment) == dict.fromkeys(counts(deployment), 0)
    with deployment.db.read() as session:
        event = session.scalar(select(WebhookEvent))
        users = session.scalar(select(func.count()).select_from(User))
    assert event is not None and event.status == "pending" and event.retry_count == 1
    assert event.error_message == "extractor exploded" and event.run_after > utcnow()
    assert users == 0  # even the guest created for the caller is rolled back
    # The retry (moved forward in time) succeeds once the stage is fixed: exactly one effect.
    with deployment.db.write() as session:
        session.execute(update(WebhookEvent).values(run_after=utcnow()))
    drain(deployment)
    assert counts(deployment) == {
        "conversations": 1,
        "conversation_turns": 8,
        "conversation_analysis": 1,
        "tool_invocations": 1,
    }


def test_lost_lease_during_prepare_writes_nothing(
    client: TestClient, deployment: Deployment
) -> None:
    def steal(ctx: PrepareContext) -> None:
        # Another worker took the event over while this one was slow.
        with ctx.db.write() as session:
            session.execute(update(WebhookEvent).values(lease_token="someone-else"))

    stages = [*CORE_STAGES, Stage("slow", prepare=steal)]
    deliver(client, deployment, fixture_body())
    drain(deployment, stages=stages)
    assert counts(deployment)["conversations"] == 0
    with deployment.db.read() as session:
        event = session.scalar(select(WebhookEvent))
    assert (
        event is not None and event.status == "processing" and event.lease_token == "someone-else"
    )


def test_replay_of_a_processed_event_does_not_duplicate(
    client: TestClient, deployment: Deployment
) -> None:
    deliver(client, deployment, fixture_body())
    drain(deployment)
    first = counts(deployment)
    owner = conversation(deployment, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p").user_id
    with deployment.db.write() as session:
        session.execute(update(WebhookEvent).values(status="dead_letter"))
        assert q.replay_dead_letters(session) == 1
    drain(deployment)
    assert counts(deployment) == first
    assert conversation(deployment, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p").user_id == owner
    assert statuses(deployment) == ["completed"]


def _database_files(settings: Settings) -> list[Path]:
    path = settings.sqlite_path
    assert path is not None
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


def test_no_plaintext_transcript_in_the_database_files(
    client: TestClient, deployment: Deployment
) -> None:
    deliver(client, deployment, fixture_body())
    deliver(client, deployment, fixture_body("post_call_transcription_minimal.json"))
    drain(deployment, stages=default_stages())  # everything later stages store, too
    assert counts(deployment)["conversation_turns"] == 10
    needles = [
        b"HubSpot",
        b"Salesforce",
        b"invoice 4471",
        b"remind me which CRM",
        b"I wanted to check on my",
        b"5551234567",
        b"5557770001",
        b"caller CRM system preferences",
    ]
    files = _database_files(deployment.settings)
    assert any(p.name.endswith("-wal") for p in files) or files
    for path in files:
        blob = path.read_bytes()
        for needle in needles:
            assert needle not in blob, (path.name, needle)
    # And after a checkpoint moves the WAL into the main file.
    path = deployment.settings.sqlite_path
    assert path is not None
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    for path in _database_files(deployment.settings):
        blob = path.read_bytes()
        assert not any(needle in blob for needle in needles), path.name


@pytest.mark.parametrize("bad", ["message", "tool_calls", "status", "analysis"])
def test_odd_shapes_still_complete(client: TestClient, deployment: Deployment, bad: str) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        data = doc["data"]
        if bad == "message":
            for turn in data["transcript"]:
                turn["message"] = None
        elif bad == "tool_calls":
            for turn in data["transcript"]:
                turn["tool_calls"] = None
                turn["tool_results"] = "[]"
        elif bad == "status":
            data["status"] = None
        else:
            data["analysis"] = None

    deliver(client, deployment, edited_body(mutate))
    drain(deployment)
    assert statuses(deployment) == ["completed"]
