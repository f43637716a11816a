"""POST /webhook/conversation-init through the real app, with the ElevenLabs fixtures."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.models import DEFAULT_TENANT, CallerNumber, ConversationBinding, Memory, User
from db.tenancy import require_tenant
from memory import context
from memory.identity import normalize_number, number_hash, resolve_or_create_by_number
from tests.conftest import FIXTURES, Deployment, make_settings

URL = "/webhook/conversation-init"
REQUIRED = (
    "user_id",
    "user_name",
    "memory_context",
    "recent_topics",
    "last_interaction",
    "caller_status",
)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def assert_valid_body(body: dict[str, Any]) -> dict[str, str]:
    assert body["type"] == "conversation_initiation_client_data"
    variables = body["dynamic_variables"]
    for key in REQUIRED:
        assert key in variables, key
    assert all(isinstance(v, str) for v in variables.values()), variables
    assert not any(k.startswith("system__") for k in variables)
    assert variables["caller_status"] in ("new", "returning")
    assert len(variables["memory_context"]) <= 600
    return dict(variables)


def seed_returning_user(deployment: Deployment, number: str, name: str = "John Doe") -> str:
    with deployment.db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        user = resolve_or_create_by_number(session, tenant.id, normalize_number(number) or "").user
        user.name = name
        user.is_guest = False
        user.last_interaction = datetime(2025, 11, 1, 14, 30, tzinfo=UTC)
        now = datetime.now(UTC)
        for i, (text, sector, salience, age) in enumerate(
            [
                ("John's company uses Salesforce CRM", "semantic", 0.9, 1),
                (
                    "A refund for invoice 4471 was promised within 5 business days.",
                    "episodic",
                    0.8,
                    2,
                ),
                ("Felt frustrated about the billing error.", "emotional", 0.3, 200),
            ]
        ):
            session.add(
                Memory(
                    user_id=user.user_id,
                    content=text,
                    sector_type=sector,
                    salience=salience,
                    recency=now - timedelta(days=age),
                    sources=[{"conversation_id": f"conv_old{i}", "turns": [i]}],
                )
            )
        user.memory_version += 1
        return user.user_id


@pytest.mark.parametrize(
    "name",
    [
        "initiation_request_twilio.json",
        "initiation_request_twilio_legacy.json",
        "initiation_request_sip.json",
    ],
)
def test_fixture_requests_first_contact_creates_guest_and_binds(
    client: TestClient, deployment: Deployment, name: str
) -> None:
    request = fixture(name)
    resp = client.post(URL, json=request, headers=deployment.auth("init"))
    assert resp.status_code == 200
    body = resp.json()
    variables = assert_valid_body(body)
    assert variables["caller_status"] == "new"
    assert variables["is_returning_caller"] == "false"
    assert variables["user_id"].startswith("usr_")
    assert body["user_id"] == variables["user_id"]
    assert "conversation_config_override" not in body  # disabled by default
    with deployment.db.read() as session:
        binding = session.scalars(select(ConversationBinding)).one()
        assert binding.user_id == variables["user_id"]
        assert binding.call_sid == request["call_sid"]
        assert binding.conversation_id == request.get("conversation_id")
        number = session.scalars(select(CallerNumber)).one()
        # Keyed hash + ciphertext; the plaintext number is nowhere in the row.
        assert number.number_hash == number_hash("+15551234567")
    with deployment.db.read_engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT number_hash, number_enc FROM caller_numbers").one()
    assert "5551234567" not in "".join(raw)


def test_returning_caller_gets_digest_and_same_user(
    client: TestClient, deployment: Deployment
) -> None:
    user_id = seed_returning_user(deployment, "+15551234567")
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    )
    variables = assert_valid_body(resp.json())
    assert variables["user_id"] == user_id
    assert variables["user_name"] == "John Doe"
    assert variables["caller_status"] == "returning"
    assert variables["last_interaction"] == "2025-11-01T14:30:00Z"
    # Ranked by salience × recency: the fresh high-salience facts first, speakable sentences.
    assert variables["memory_context"].startswith("John's company uses Salesforce CRM.")
    assert "invoice 4471" in variables["memory_context"]
    assert variables["memory_context"].index("Salesforce") < variables["memory_context"].index(
        "frustrated"
    )


def test_redelivered_init_keeps_binding(client: TestClient, deployment: Deployment) -> None:
    request = fixture("initiation_request_twilio.json")
    first = client.post(URL, json=request, headers=deployment.auth("init")).json()
    second = client.post(URL, json=request, headers=deployment.auth("init")).json()
    assert first["user_id"] == second["user_id"]
    # A redelivery of the same call is not a "returning" caller.
    assert second["dynamic_variables"]["caller_status"] == "new"
    with deployment.db.read() as session:
        assert len(session.scalars(select(ConversationBinding)).all()) == 1
        assert len(session.scalars(select(User)).all()) == 1


def test_digest_is_capped_at_600_chars(client: TestClient, deployment: Deployment) -> None:
    user_id = seed_returning_user(deployment, "+15551234567")
    with deployment.db.write() as session:
        for i in range(40):
            session.add(
                Memory(
                    user_id=user_id,
                    content=f"Fact number {i} " + "word " * 20,
                    sector_type="semantic",
                    salience=0.95,
                )
            )
        session.get(User, user_id).memory_version += 1  # type: ignore[union-attr]
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    )
    ctx = resp.json()["dynamic_variables"]["memory_context"]
    assert 100 < len(ctx) <= 600
    assert ctx.endswith(".")


def test_outbound_call_maps_to_dialled_person(tmp_path: Path) -> None:
    """caller_id is our own number on outbound calls; the customer is called_number."""
    from api.app import create_app
    from db import crypto
    from db.bootstrap import bootstrap
    from db.engine import open_database
    from db.tenancy import create_token

    settings = make_settings(tmp_path / "data", own_numbers="+1 (555) 987-6543")
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    with db.write() as session:
        token = create_token(session, DEFAULT_TENANT, "init").token
    request = {
        "caller_id": "+15559876543",
        "called_number": "+15551112222",
        "agent_id": "a",
        "call_sid": "CA1",
        "conversation_id": "conv_out",
    }
    with TestClient(create_app(settings)) as client:
        resp = client.post(URL, json=request, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    with db.read() as session:
        number = session.scalars(select(CallerNumber)).one()
        assert number.number_enc == "+15551112222"
    db.dispose()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"caller_id": 12, "call_sid": null, "extra": {"x": 1}}',
        b'{"caller_id": "anonymous"}',
    ],
)
def test_tolerates_malformed_and_unknown_bodies(
    client: TestClient, deployment: Deployment, raw: bytes
) -> None:
    resp = client.post(
        URL, content=raw, headers={**deployment.auth("init"), "Content-Type": "application/json"}
    )
    assert resp.status_code == 200
    assert_valid_body(resp.json())


def test_withheld_number_with_conversation_gets_a_call_guest(
    client: TestClient, deployment: Deployment
) -> None:
    body = {"caller_id": "anonymous", "conversation_id": "conv_anon", "agent_id": "a"}
    first = client.post(URL, json=body, headers=deployment.auth("init")).json()
    other = client.post(
        URL, json={**body, "conversation_id": "conv_anon2"}, headers=deployment.auth("init")
    ).json()
    # Anonymous callers are never merged into one user.
    assert first["user_id"] != other["user_id"]
    assert first["dynamic_variables"]["caller_status"] == "new"


def test_fallback_under_store_failure(
    client: TestClient, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    import api.routes.init as init_route

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT …", {}, Exception("disk I/O error"))

    monkeypatch.setattr(init_route, "bound_user", broken)
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    )
    assert resp.status_code == 200
    expected = fixture("initiation_response_unknown_caller.json")
    body = resp.json()
    assert body["type"] == expected["type"]
    assert "user_id" not in body and "conversation_config_override" not in body
    variables = assert_valid_body(body)
    # Same keys and neutral values as the fixture (booleans are strings here).
    assert set(expected["dynamic_variables"]) <= set(variables)
    for key, value in expected["dynamic_variables"].items():
        assert variables[key] == (str(value).lower() if isinstance(value, bool) else value)
    assert variables["caller_status"] == "new"


def test_bad_auth_is_401_not_fallback(client: TestClient, deployment: Deployment) -> None:
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("tool")
    )
    assert resp.status_code == 401


def test_deadline_answers_neutral_and_binding_still_lands(
    client: TestClient, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.routes.init as init_route

    state = client.app.state.voxmem  # type: ignore[attr-defined]
    monkeypatch.setattr(state.settings, "init_deadline_ms", 50)
    real = init_route.resolve_or_create_by_number

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # a write lock held by someone else
        return real(*args, **kwargs)

    monkeypatch.setattr(init_route, "resolve_or_create_by_number", slow)
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    )
    assert resp.status_code == 200
    assert resp.json()["dynamic_variables"]["user_id"] == ""
    # The abandoned work finishes on its own: the call is still bound for the tool.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with deployment.db.read() as session:
            if session.scalars(select(ConversationBinding)).first() is not None:
                break
        time.sleep(0.05)
    else:
        pytest.fail("binding never written after the deadline")


def test_returning_caller_answer_survives_slow_binding_write(
    client: TestClient, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.routes.init as init_route

    user_id = seed_returning_user(deployment, "+15551234567")
    state = client.app.state.voxmem  # type: ignore[attr-defined]
    # The read phase gets a generous deadline (a loaded CI box), the binding write a far
    # slower one: the answer must come from the read phase, not wait for the write.
    monkeypatch.setattr(state.settings, "init_deadline_ms", 800)
    real = init_route.bind_conversation

    def slow(*args: Any, **kwargs: Any) -> None:
        time.sleep(4.0)
        real(*args, **kwargs)

    monkeypatch.setattr(init_route, "bind_conversation", slow)
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    )
    assert resp.json()["dynamic_variables"]["user_id"] == user_id


def test_first_message_only_when_enabled(
    client: TestClient, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_returning_user(deployment, "+15551234567")
    state = client.app.state.voxmem  # type: ignore[attr-defined]
    monkeypatch.setattr(state.settings, "first_message_enabled", True)
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    ).json()
    assert resp["conversation_config_override"] == {
        "agent": {"first_message": "Hi John Doe, welcome back! How can I help you today?"}
    }
    # New caller with an empty "new" template: no override at all (never null or "").
    new = client.post(
        URL,
        json={"caller_id": "+15550001111", "conversation_id": "c2"},
        headers=deployment.auth("init"),
    ).json()
    assert "conversation_config_override" not in new


def test_digest_cache_follows_memory_version(deployment: Deployment) -> None:
    user_id = seed_returning_user(deployment, "+15551234567")
    with deployment.db.read() as session:
        user = session.get(User, user_id)
        assert user is not None
        before = context.user_context(session, user).memory_context
    with deployment.db.write() as session:
        user = session.get(User, user_id)
        assert user is not None
        session.add(
            Memory(
                user_id=user_id,
                content="Moved to Denver last week.",
                sector_type="episodic",
                salience=1.0,
            )
        )
        user.memory_version += 1
    with deployment.db.read() as session:
        user = session.get(User, user_id)
        assert user is not None
        after = context.user_context(session, user).memory_context
    assert "Denver" not in before
    assert after.startswith("Moved to Denver last week.")


@pytest.mark.slow
def test_the_binding_survives_a_killed_api_process(live_server: Any) -> None:
    """The binding is a relaxed write (no fsync of its own, db/engine.py): it must still be in
    the database file once init answered, even if the process dies at once (kill -9)."""
    import signal

    import httpx

    deployment = live_server.deployment
    resp = httpx.post(
        f"{live_server.base_url}/webhook/conversation-init",
        json={"caller_id": "+14155550199", "conversation_id": "conv_killed", "call_sid": "CAk"},
        headers=deployment.auth("init"),
        timeout=10,
    )
    assert resp.status_code == 200
    user_id = resp.json()["dynamic_variables"]["user_id"]
    assert user_id.startswith("usr_")
    live_server.proc.send_signal(signal.SIGKILL)
    live_server.proc.wait(timeout=10)
    with deployment.db.read() as session:
        binding = session.scalar(
            select(ConversationBinding).where(ConversationBinding.conversation_id == "conv_killed")
        )
        assert binding is not None and binding.user_id == user_id
        assert session.get(User, user_id) is not None
        assert (
            session.scalar(
                select(CallerNumber.user_id).where(
                    CallerNumber.number_hash == number_hash("+14155550199")
                )
            )
            == user_id
        )


def test_a_returning_callers_memories_are_loaded_when_the_call_starts(
    client: TestClient, deployment: Deployment
) -> None:
    """The first memory_query of a call must not pay the user's cold index load: init starts
    it in the background for a returning caller (api/engine_search.py)."""
    from memory import loader
    from memory.embedders import LocalEmbedder

    user_id = seed_returning_user(deployment, "+15551234567")
    loader.CACHE.clear()
    with deployment.db.read() as session:
        assert not loader.is_cached(session, user_id, LocalEmbedder.name)
    resp = client.post(
        URL, json=fixture("initiation_request_twilio.json"), headers=deployment.auth("init")
    )
    assert resp.json()["dynamic_variables"]["caller_status"] == "returning"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with deployment.db.read() as session:
            if loader.is_cached(session, user_id, LocalEmbedder.name):
                return
        time.sleep(0.05)
    pytest.fail("the returning caller's index was not loaded after init")
