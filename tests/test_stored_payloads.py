"""How the queue keeps a webhook body: deflated, then Fernet-encrypted, and rows written before
compression existed still read back."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, text

from db import crypto
from db import queue as q
from db.models import DEFAULT_TENANT, WebhookEvent
from db.tenancy import require_tenant
from db.types import utcnow
from tests.conftest import Deployment
from tests.intake_helpers import fixture_body, signed


def stored_payload(deployment: Deployment, event_id: str) -> str:
    with deployment.db.read() as session:
        value = session.execute(
            text("SELECT payload FROM webhook_events WHERE event_id = :e"), {"e": event_id}
        ).scalar_one()
    return str(value)


def test_a_body_is_stored_deflated_and_encrypted(
    client: TestClient, deployment: Deployment
) -> None:
    body = fixture_body()
    response = client.post(
        "/webhook/post-call", content=body, headers=signed(deployment.webhook_secret, body)
    )
    assert response.json() == {"status": "accepted"}
    event_id = "post_call_transcription:conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"
    token = stored_payload(deployment, event_id)
    # A Fernet token, a third of the 12.6 KB body (it was 16.9 KB before compression).
    assert token.startswith("gAAAAA")
    assert len(token) < len(body) * 0.4, (len(token), len(body))
    plain = crypto.keyring().decrypt_bytes(token.encode("ascii"))
    assert plain.startswith(b"\x00z") and b"conv_6801" not in plain
    with deployment.db.read() as session:
        event = session.scalars(
            select(WebhookEvent).where(WebhookEvent.event_id == event_id)
        ).one()
    assert event.payload is not None and event.payload.encode() == body


def test_a_body_stored_before_compression_still_reads_and_claims(
    deployment: Deployment,
) -> None:
    body = fixture_body().decode()
    old_token = crypto.keyring().encrypt(body)  # how payloads were written until now
    with deployment.db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        session.execute(
            text(
                "INSERT INTO webhook_events (tenant_id, event_id, event_type, payload, status, "
                "retry_count, max_attempts, run_after, created_at) VALUES (:t, 'old:1', "
                "'post_call_transcription', :p, 'pending', 0, 8, :now, :now)"
            ),
            {"t": tenant.id, "p": old_token, "now": utcnow() - timedelta(seconds=1)},
        )
    with deployment.db.read() as session:
        event = session.scalars(select(WebhookEvent).where(WebhookEvent.event_id == "old:1")).one()
    assert event.payload == body
    with deployment.db.write() as session:
        job = q.claim(session, worker_id="w-test", now=utcnow(), lease_secs=30)
    assert job is not None and job.event_id == "old:1"
    assert job.payload == body
