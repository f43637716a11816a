"""Helpers for the issue-7 tests: signed post-call webhooks through the real app, and draining
the real queue with the real worker pipeline (including the queued reflection events)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.commands.demo import post_call_payload, signed_headers
from db.models import WebhookEvent
from db.types import utcnow
from tests.conftest import Deployment
from worker.runner import make_process_next

AGENT = "agent_support"


def signed_post_call(
    secret: str,
    conversation_id: str,
    number: str,
    turns: Sequence[tuple[str, str]],
    *,
    start: datetime | None = None,
    outcome: str | None = "success",
    duration_secs: int = 120,
    summary: str | None = None,
    title: str | None = None,
    agent_id: str = AGENT,
    evaluation: Mapping[str, str] | None = None,
    data_collection: Mapping[str, Any] | None = None,
    timezone: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A post_call_transcription body and its ElevenLabs-Signature headers."""
    payload = post_call_payload(
        conversation_id=conversation_id,
        agent_id=agent_id,
        number=number,
        turns=turns,
        start=start or datetime.now(UTC),
        duration_secs=duration_secs,
        outcome=outcome,
        summary=summary,
        summary_title=title,
        evaluation=evaluation,
        data_collection=data_collection,
        timezone=timezone,
    )
    body = json.dumps(payload).encode()
    return body, signed_headers(secret, body)


def post_call(
    client: TestClient,
    deployment: Deployment,
    conversation_id: str,
    number: str,
    turns: Sequence[tuple[str, str]],
    **options: Any,
) -> None:
    body, headers = signed_post_call(
        deployment.webhook_secret, conversation_id, number, turns, **options
    )
    r = client.post("/webhook/post-call", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted", r.text


def pending(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.status.in_(("pending", "processing")))
            )
            or 0
        )


def drain(deployment: Deployment, *, reflections: bool = False, timeout: float = 30.0) -> None:
    """Process every due event; with ``reflections``, also wait for the queued reflection
    events (their ``run_after`` is the end of the reflection window)."""
    process = make_process_next(deployment.settings, deployment.db, worker_id="test-worker")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process():
            continue
        if not reflections or pending(deployment) == 0:
            break
        time.sleep(0.1)
    with deployment.db.read() as session:
        bad = session.scalar(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.status.in_(("failed", "dead_letter")))
        )
    assert not bad, "an event failed"
    if reflections:
        assert pending(deployment) == 0, "reflection events still pending"


def init_vars(client: TestClient, deployment: Deployment, number: str) -> dict[str, str]:
    """conversation-init for a known number. Under CPU contention init may answer neutrally at
    its deadline (by design); the test wants the real answer, so it asks again."""
    for _ in range(20):
        r = client.post(
            "/webhook/conversation-init",
            json={"caller_id": number, "agent_id": AGENT, "called_number": "+15559876543"},
            headers=deployment.auth("init"),
        )
        assert r.status_code == 200, r.text
        variables: dict[str, str] = r.json()["dynamic_variables"]
        if variables["user_id"]:
            return variables
        time.sleep(0.2)
    raise AssertionError("conversation-init never answered with the caller")


def user_of(client: TestClient, deployment: Deployment, number: str) -> str:
    return init_vars(client, deployment, number)["user_id"]


def now() -> datetime:
    return utcnow()
