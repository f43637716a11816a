"""POST /webhook/post-call over HTTP (CONTRACT §4): responses, dedup, tenancy, body caps,
encryption at rest, and concurrent redeliveries against the real server."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import WebhookEvent
from db.tenancy import create_tenant
from tests.conftest import Deployment
from tests.intake_helpers import (
    edited_body,
    fixture_body,
    post,
    signed,
    start_api,
    stop,
)

PATH = "/webhook/post-call"


def events(deployment: Deployment) -> list[WebhookEvent]:
    with deployment.db.read() as session:
        return list(session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))


def count(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def test_accepted_then_duplicate(client: TestClient, deployment: Deployment) -> None:
    body = fixture_body()
    headers = signed(deployment.webhook_secret, body)
    first = client.post(PATH, content=body, headers=headers)
    assert first.status_code == 200 and first.json() == {"status": "accepted"}
    # A redelivery, even re-signed later, is the same event.
    again = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    (event,) = events(deployment)
    assert event.event_id == "post_call_transcription:conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"
    assert event.status == "pending" and event.retry_count == 0
    assert event.conversation_id == "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"
    # The exact bytes received, decrypted by the column type.
    assert event.payload is not None and event.payload.encode() == body
    assert event.payload_bytes == len(body)
    assert event.ordering_key == "user:user_123"
    assert event.max_attempts == deployment.settings.queue_max_attempts


def test_payload_is_encrypted_at_rest(client: TestClient, deployment: Deployment) -> None:
    body = fixture_body()
    assert client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body)).json()
    path = deployment.settings.sqlite_path
    assert path is not None
    with sqlite3.connect(path) as conn:
        (raw,) = conn.execute("SELECT payload FROM webhook_events").fetchone()
    assert raw.startswith("gAAAA")  # Fernet token
    assert "HubSpot" not in raw and "Salesforce" not in raw


def test_ordering_key_falls_back_to_hashed_number_then_conversation(
    client: TestClient, deployment: Deployment
) -> None:
    minimal = fixture_body("post_call_transcription_minimal.json")
    client.post(PATH, content=minimal, headers=signed(deployment.webhook_secret, minimal))

    def strip(doc: dict[str, Any]) -> None:
        doc["data"]["conversation_id"] = "conv_no_number"
        doc["data"]["metadata"].pop("phone_call")
        doc["data"]["conversation_initiation_client_data"]["dynamic_variables"] = {}

    bare = edited_body(strip, "post_call_transcription_minimal.json")
    client.post(PATH, content=bare, headers=signed(deployment.webhook_secret, bare))
    first, second = events(deployment)
    assert first.ordering_key is not None and first.ordering_key.startswith("num:")
    assert "5557770001" not in first.ordering_key
    assert second.ordering_key == "conv:conv_no_number"


@pytest.mark.parametrize(
    "body",
    [
        fixture_body("post_call_transcription_otel.json"),
        b'{"type": "voice_removal_notice", "data": {"voice_id": "v1"}}',
        b'{"type": "unredacted_transcript", "data": {"conversation_id": "c9"}}',
    ],
    ids=["otel", "voice_removal_notice", "unredacted"],
)
def test_unknown_types_are_ignored_not_stored(
    client: TestClient, deployment: Deployment, body: bytes
) -> None:
    r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.status_code == 200 and r.json() == {"status": "ignored"}
    assert count(deployment) == 0


def test_audio_not_kept_by_default(client: TestClient, deployment: Deployment) -> None:
    body = fixture_body("post_call_audio.json")
    r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.status_code == 200 and r.json() == {"status": "ignored"}
    assert count(deployment) == 0


def test_audio_kept_when_configured(deployment: Deployment) -> None:
    from api.app import create_app

    settings = deployment.settings.model_copy(update={"keep_audio": True})
    body = fixture_body("post_call_audio.json")
    with TestClient(create_app(settings)) as client:
        r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.json() == {"status": "accepted"}
    (event,) = events(deployment)
    assert event.event_type == "post_call_audio"


def test_call_initiation_failure_is_queued(client: TestClient, deployment: Deployment) -> None:
    for name in ("call_initiation_failure_twilio.json", "call_initiation_failure_sip.json"):
        body = fixture_body(name)
        r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
        assert r.json() == {"status": "accepted"}
    twilio, sip = events(deployment)
    assert twilio.event_type == "call_initiation_failure"
    # Keyed on the callee (the customer of an outbound call), hashed.
    assert twilio.ordering_key is not None and twilio.ordering_key.startswith("num:")
    assert sip.ordering_key != twilio.ordering_key


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"this is not json", "not UTF-8 JSON"),
        (b"\xff\xfe\x00{", "not UTF-8 JSON"),
        (b'["a", "list"]', "not a JSON object"),
        (b'{"data": {"conversation_id": "c1"}}', "type"),
        (b'{"type": "post_call_transcription"}', "data"),
        (b'{"type": "post_call_transcription", "data": "nope"}', "data"),
    ],
)
def test_signed_but_malformed_is_400(
    client: TestClient, deployment: Deployment, body: bytes, reason: str
) -> None:
    r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.status_code == 400
    assert reason in r.json()["detail"]
    assert count(deployment) == 0


def test_unknown_tenant_is_404_with_reason(client: TestClient, deployment: Deployment) -> None:
    body = fixture_body()
    for slug in ("nobody", "Bad_Slug!"):
        r = client.post(f"/t/{slug}{PATH}", content=body, headers=signed("x", body))
        assert r.status_code == 404
        assert "unknown tenant" in r.json()["detail"]
    assert count(deployment) == 0


def test_tenants_are_isolated(client: TestClient, deployment: Deployment) -> None:
    with deployment.db.write() as session:
        tenant, acme_secret = create_tenant(session, "acme")
        acme_id = tenant.id
    body = fixture_body()
    # Each tenant verifies only with its own secrets.
    assert (
        client.post(
            f"/t/acme{PATH}", content=body, headers=signed(deployment.webhook_secret, body)
        ).status_code
        == 401
    )
    assert client.post(PATH, content=body, headers=signed(acme_secret, body)).status_code == 401
    r = client.post(f"/t/acme{PATH}", content=body, headers=signed(acme_secret, body))
    assert r.json() == {"status": "accepted"}
    # The same conversation id in another tenant is a different event, not a duplicate.
    r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.json() == {"status": "accepted"}
    assert sorted(e.tenant_id for e in events(deployment))[-1] == acme_id
    assert count(deployment) == 2


def test_default_tenant_alias(client: TestClient, deployment: Deployment) -> None:
    body = fixture_body()
    r = client.post(
        f"/t/default{PATH}", content=body, headers=signed(deployment.webhook_secret, body)
    )
    assert r.json() == {"status": "accepted"}


def test_dispatch_ahead_of_the_router_keeps_routes_labels_and_methods(
    client: TestClient, deployment: Deployment
) -> None:
    """The post-call paths are served ahead of FastAPI's router (api/routes/webhooks.py
    PostCallDispatch): they must still be labelled by route template, carry a request id and
    Server-Timing, leave other methods and near-miss paths to the router, and stay in the
    OpenAPI schema."""
    with deployment.db.write() as session:
        _, acme_secret = create_tenant(session, "acme")
    body = fixture_body()
    r = client.post(f"/t/acme{PATH}", content=body, headers=signed(acme_secret, body))
    assert r.json() == {"status": "accepted"}
    assert r.headers["x-request-id"] and r.headers["server-timing"].startswith("app;dur=")
    assert client.get(PATH).status_code == 405
    assert client.get(f"/t/acme{PATH}").status_code == 405
    for near_miss in (f"/t/acme/x{PATH}", f"{PATH}/extra", f"/t/{PATH}"):
        assert client.post(near_miss, content=body).status_code in (404, 405, 307)
    metrics_text = client.get("/metrics").text
    for route in (PATH, f"/t/{{tenant}}{PATH}"):
        assert f'route="{route}"' in metrics_text, route
    schema = client.get("/openapi.json").json()
    assert PATH in schema["paths"] and f"/t/{{tenant}}{PATH}" in schema["paths"]
    assert count(deployment) == 1


def test_no_secret_fails_closed(client: TestClient, deployment: Deployment) -> None:
    from db.models import WebhookSecret
    from db.types import utcnow

    with deployment.db.write() as session:
        create_tenant(session, "bare")
        for row in session.scalars(select(WebhookSecret)):
            row.revoked_at = utcnow()
    body = fixture_body()
    r = client.post(f"/t/bare{PATH}", content=body, headers=signed("anything", body))
    assert r.status_code == 503
    assert count(deployment) == 0


def test_declared_oversize_is_413_in_process(deployment: Deployment) -> None:
    from api.app import create_app

    settings = deployment.settings.model_copy(update={"max_body_bytes": 1024})
    body = fixture_body()  # 12.6 KB
    with TestClient(create_app(settings)) as client:
        r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.status_code == 413
    assert count(deployment) == 0


# --- the real server ---------------------------------------------------------------------------
CAP = 64 * 1024


@pytest.fixture
def capped_server(deployment: Deployment) -> Iterator[str]:
    proc, base = start_api(deployment, VOXMEM_MAX_BODY_BYTES=str(CAP))
    try:
        yield base
    finally:
        stop(proc)


def _raw_request(base: str, head: str, chunks: list[bytes], *, finish: bool) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server may close as soon as it has answered
        if finish:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(10)
        response = b""
        while b"\r\n\r\n" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
        return response


@pytest.mark.slow
def test_oversize_refused_with_and_without_content_length(
    capped_server: str, deployment: Deployment
) -> None:
    # Declared too large: refused from the headers alone, no body ever sent.
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"ElevenLabs-Signature: t=1,v0={'0' * 64}\r\nContent-Length: {CAP + 1}\r\n\r\n"
    )
    assert _raw_request(capped_server, head, [], finish=False).startswith(b"HTTP/1.1 413")
    # Chunked, no Content-Length: 413 once the running count passes the cap, while the
    # client has not even finished sending (the terminating chunk is never sent).
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"ElevenLabs-Signature: t=1,v0={'0' * 64}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    response = _raw_request(capped_server, head, [chunk] * 6, finish=False)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert count(deployment) == 0


@pytest.mark.slow
def test_body_at_the_cap_is_accepted_even_chunked(
    capped_server: str, deployment: Deployment
) -> None:
    base = fixture_body()
    body = base.rstrip(b"\n") + b" " * (CAP - len(base)) + b"\n"  # JSON allows trailing blanks
    assert len(body) == CAP

    def stream() -> Iterator[bytes]:
        for i in range(0, len(body), 5000):
            yield body[i : i + 5000]

    r = httpx.post(
        capped_server + PATH,
        content=stream(),
        headers=signed(deployment.webhook_secret, body),
        timeout=30,
    )
    assert r.status_code == 200 and r.json() == {"status": "accepted"}
    (event,) = events(deployment)
    assert event.payload is not None and len(event.payload.encode()) == CAP


@pytest.mark.slow
def test_concurrent_identical_posts_store_one_row(deployment: Deployment) -> None:
    proc, base = start_api(deployment)
    try:
        body = fixture_body()
        n = 16
        barrier = threading.Barrier(n)
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def send() -> None:
            with httpx.Client(timeout=30) as http:
                request = http.build_request(
                    "POST",
                    base + PATH,
                    content=body,
                    headers=signed(deployment.webhook_secret, body),
                )
                barrier.wait()
                r = http.send(request)
            with lock:
                results.append((r.status_code, r.json()["status"]))

        threads = [threading.Thread(target=send) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop(proc)
    assert all(code == 200 for code, _ in results)
    assert Counter(status for _, status in results) == {"accepted": 1, "duplicate": n - 1}
    assert count(deployment) == 1


@pytest.mark.slow
def test_acknowledged_events_survive_a_kill_of_the_api(deployment: Deployment) -> None:
    """200 is sent only after the commit: SIGKILL right after the acks loses nothing."""
    proc, base = start_api(deployment)
    acked = []
    try:
        for i in range(20):
            body = fixture_body(conversation_id=f"conv_kill_{i:03d}")
            if post(base, deployment.webhook_secret, body).json() == {"status": "accepted"}:
                acked.append(f"conv_kill_{i:03d}")
    finally:
        proc.kill()
        proc.wait()
    assert len(acked) == 20
    stored = {e.conversation_id for e in events(deployment)}
    assert stored == set(acked)
    # The stored payload is intact and parseable after the kill.
    assert all(
        json.loads(e.payload or "")["type"] == "post_call_transcription" for e in events(deployment)
    )


@pytest.mark.postgres
def test_intake_on_postgresql(pg_settings: Any) -> None:
    """The same INSERT … ON CONFLICT DO NOTHING RETURNING path on PostgreSQL."""
    from api.app import create_app
    from db import crypto
    from db.bootstrap import bootstrap
    from db.engine import open_database
    from db.models import DEFAULT_TENANT
    from db.tenancy import active_webhook_secrets, require_tenant
    from memory.identity import bind_conversation, create_guest

    bootstrap(pg_settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(pg_settings))
    db = open_database(pg_settings)
    try:
        with db.write() as session:
            tenant = require_tenant(session, DEFAULT_TENANT)
            secret = active_webhook_secrets(session, tenant.id)[0]
            user = create_guest(session, tenant.id)
            bind_conversation(
                session,
                tenant.id,
                user,
                conversation_id="conv_6801kb3m9q2rv4tx8e0d7c5j1n3p",
                call_sid=None,
                agent_id=None,
            )
            user_id = user.user_id
        body = fixture_body()
        with TestClient(create_app(pg_settings)) as client:
            statuses = [
                client.post(PATH, content=body, headers=signed(secret, body)).json()["status"]
                for _ in range(2)
            ]
        assert statuses == ["accepted", "duplicate"]
        with db.read() as session:
            (event,) = session.scalars(select(WebhookEvent))
        assert event.ordering_key == f"user:{user_id}"
        assert event.payload is not None and event.payload.encode() == body
    finally:
        db.dispose()
