"""The ElevenLabs-Signature verifier: golden vectors, the rejection matrix, constant-time
comparison, and agreement with the official SDK's construct_event."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.security import signatures
from api.security.signatures import (
    NoSecretConfiguredError,
    SignatureError,
    compute_signature,
    parse_signature_header,
    sign,
    verify_signature,
)
from db.models import DEFAULT_TENANT, WebhookEvent
from db.tenancy import add_webhook_secret, require_tenant
from db.types import utcnow
from tests.conftest import FIXTURES, Deployment

VECTORS: dict[str, Any] = json.loads((FIXTURES / "signature_test_vectors.json").read_text())
SECRET: str = VECTORS["secret"]
TOL = 30 * 60
SKEW = 5 * 60


def _verify(body: bytes, header: str | None, secrets: list[str], now: float) -> int:
    return verify_signature(
        body, header, secrets, now=now, tolerance_secs=TOL, future_skew_secs=SKEW
    ).secret_index


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["body_file"])
def test_golden_vectors_verify_with_pinned_clock(vector: dict[str, Any]) -> None:
    body = (FIXTURES / vector["body_file"]).read_bytes()
    assert len(body) == vector["body_bytes"]
    ts = vector["timestamp"]
    assert _verify(body, vector["header"], [SECRET], now=ts + 60) == 0
    assert sign(SECRET, body, ts) == vector["header"]
    # 31 minutes later the same delivery is stale.
    with pytest.raises(SignatureError, match="too old") as stale:
        _verify(body, vector["header"], [SECRET], now=ts + 31 * 60)
    assert stale.value.valid_hmac
    # A re-serialised body never verifies (SPEC §4.1).
    reserialised = json.dumps(json.loads(body), separators=(",", ":")).encode()
    with pytest.raises(SignatureError, match="does not match"):
        _verify(reserialised, vector["header"], [SECRET], now=ts + 60)
    assert (
        "v0=" + compute_signature(SECRET, ts, reserialised)
        == vector["note_reserialized_body_signature"]
    )


BODY = (FIXTURES / "post_call_transcription.json").read_bytes()
T0 = 1_762_713_911


def _tampered() -> bytes:
    raw = bytearray(BODY)
    raw[200] ^= 0x01
    return bytes(raw)


@pytest.mark.parametrize(
    ("case", "body", "header", "now", "reason"),
    [
        ("wrong secret", BODY, sign("wsec_other", BODY, T0), T0, "does not match"),
        ("tampered byte", _tampered(), sign(SECRET, BODY, T0), T0, "does not match"),
        ("missing header", BODY, None, T0, "missing"),
        ("empty header", BODY, "  ", T0, "missing"),
        ("no t", BODY, "v0=" + "a" * 64, T0, "no t="),
        ("t not a number", BODY, "t=abc,v0=" + "a" * 64, T0, "not a unix timestamp"),
        ("no v0", BODY, f"t={T0}", T0, "no v0="),
        ("v1 only", BODY, f"t={T0},v1={compute_signature(SECRET, T0, BODY)}", T0, "no v0="),
        ("short v0", BODY, f"t={T0},v0=abc", T0, "no v0="),
        ("stale", BODY, sign(SECRET, BODY, T0), T0 + TOL + 1, "too old"),
        ("future", BODY, sign(SECRET, BODY, T0), T0 - SKEW - 1, "in the future"),
        ("garbage", BODY, "garbage", T0, "no t="),
        ("huge", BODY, "t=1," + "x" * 5000, T0, "too long"),
    ],
)
def test_rejection_matrix(
    case: str, body: bytes, header: str | None, now: float, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        _verify(body, header, [SECRET], now=now)


def test_boundaries_inclusive() -> None:
    header = sign(SECRET, BODY, T0)
    assert _verify(BODY, header, [SECRET], now=T0 + TOL) == 0
    assert _verify(BODY, header, [SECRET], now=T0 - SKEW) == 0


def test_header_parsing_is_order_independent_and_tolerant() -> None:
    good = compute_signature(SECRET, T0, BODY)
    header = f" v0={'0' * 64} , v0={good.upper()},t={T0} ,x=1"
    parsed = parse_signature_header(header)
    assert parsed.timestamp == T0
    assert parsed.signatures == ("0" * 64, good)
    assert _verify(BODY, header, [SECRET], now=T0) == 0


def test_rotation_any_active_secret_verifies() -> None:
    old, new = "wsec_old_secret", "wsec_new_secret"
    assert _verify(BODY, sign(old, BODY, T0), [new, old], now=T0) == 1
    assert _verify(BODY, sign(new, BODY, T0), [new, old], now=T0) == 0
    with pytest.raises(SignatureError):
        _verify(BODY, sign(old, BODY, T0), [new], now=T0)


def test_no_secret_fails_closed() -> None:
    with pytest.raises(NoSecretConfiguredError):
        _verify(BODY, sign("", BODY, T0), [], now=T0)
    with pytest.raises(NoSecretConfiguredError):
        _verify(BODY, sign("", BODY, T0), [""], now=T0)


def test_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signatures.hmac, "compare_digest", spy)
    header = f"t={T0},v0={'1' * 64},v0={compute_signature(SECRET, T0, BODY)}"
    assert _verify(BODY, header, ["wsec_a", SECRET], now=T0) == 1
    # Every (secret, v0) pair is compared: no early exit on the first match.
    assert len(calls) == 4
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)


# --- agreement with the official SDK ------------------------------------------------------------
def _sdk_accepts(body: bytes, header: str | None, secret: str) -> bool:
    from elevenlabs.client import ElevenLabs
    from elevenlabs.errors import BadRequestError

    client = ElevenLabs(api_key="unused")
    try:
        event = client.webhooks.construct_event(
            rawBody=body.decode("utf-8"), sig_header=header or "", secret=secret
        )
    except BadRequestError:
        return False
    assert event == json.loads(body)
    return True


def _ours_accepts(body: bytes, header: str | None, secret: str, now: float) -> bool:
    try:
        _verify(body, header, [secret], now=now)
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("valid now", lambda now: (BODY, sign(SECRET, BODY, now), SECRET)),
        ("wrong secret", lambda now: (BODY, sign("wsec_x", BODY, now), SECRET)),
        ("tampered", lambda now: (_tampered(), sign(SECRET, BODY, now), SECRET)),
        ("29 min old", lambda now: (BODY, sign(SECRET, BODY, now - 29 * 60), SECRET)),
        ("31 min old", lambda now: (BODY, sign(SECRET, BODY, now - 31 * 60), SECRET)),
        ("missing header", lambda now: (BODY, None, SECRET)),
        ("2 min future", lambda now: (BODY, sign(SECRET, BODY, now + 120), SECRET)),
    ],
)
def test_sdk_construct_event_agrees_with_our_signer_and_verifier(case: str, make: Any) -> None:
    now = int(time.time())
    body, header, secret = make(now)
    assert _sdk_accepts(body, header, secret) == _ours_accepts(body, header, secret, now), case


def test_sdk_accepts_far_future_we_do_not() -> None:
    """Documented difference: the SDK never bounds the future; we allow 5 minutes of skew."""
    now = int(time.time())
    header = sign(SECRET, BODY, now + 3600)
    assert _sdk_accepts(BODY, header, SECRET)
    assert not _ours_accepts(BODY, header, SECRET, now)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["body_file"])
def test_sdk_accepts_golden_vectors_with_pinned_clock(
    vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import elevenlabs.webhooks_custom as custom

    body = (FIXTURES / vector["body_file"]).read_bytes()
    monkeypatch.setattr(custom.time, "time", lambda: vector["timestamp"] + 60)
    assert _sdk_accepts(body, vector["header"], SECRET)
    monkeypatch.setattr(custom.time, "time", lambda: vector["timestamp"] + 31 * 60)
    assert not _sdk_accepts(body, vector["header"], SECRET)


# --- over HTTP: 401, nothing stored; rotation through the database ----------------------------
def _event_count(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def test_http_rejections_store_nothing(client: TestClient, deployment: Deployment) -> None:
    now = int(time.time())
    secret = deployment.webhook_secret
    cases = [
        {"ElevenLabs-Signature": sign("wsec_wrong", BODY, now)},
        {"ElevenLabs-Signature": sign(secret, BODY, now - 31 * 60)},
        {"ElevenLabs-Signature": sign(secret, BODY, now + 10 * 60)},
        {"ElevenLabs-Signature": "t=,v0="},
        {},
    ]
    for headers in cases:
        r = client.post("/webhook/post-call", content=BODY, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["detail"]
    r = client.post(
        "/webhook/post-call",
        content=_tampered(),
        headers={"ElevenLabs-Signature": sign(secret, BODY, now)},
    )
    assert r.status_code == 401
    assert _event_count(deployment) == 0


def test_http_rotation(deployment: Deployment) -> None:
    from api.app import create_app

    settings = deployment.settings.model_copy(update={"intake_secret_cache_secs": 0.0})
    with TestClient(create_app(settings)) as client:
        old = deployment.webhook_secret
        with deployment.db.write() as session:
            new = add_webhook_secret(session, require_tenant(session, DEFAULT_TENANT))
        now = int(time.time())
        body_old = BODY.replace(b"conv_6801kb3m9q2rv4tx8e0d7c5j1n3p", b"conv_rotation_old")
        body_new = BODY.replace(b"conv_6801kb3m9q2rv4tx8e0d7c5j1n3p", b"conv_rotation_new")
        for body, secret in ((body_old, old), (body_new, new)):
            r = client.post(
                "/webhook/post-call",
                content=body,
                headers={"ElevenLabs-Signature": sign(secret, body, now)},
            )
            assert r.json() == {"status": "accepted"}
        # Revoke the old secret: it stops verifying (cache TTL 0 here).
        from db.models import WebhookSecret

        with deployment.db.write() as session:
            for row in session.scalars(select(WebhookSecret)):
                if row.secret == old:
                    row.revoked_at = utcnow()
        body = BODY.replace(b"conv_6801kb3m9q2rv4tx8e0d7c5j1n3p", b"conv_rotation_late")
        r = client.post(
            "/webhook/post-call",
            content=body,
            headers={"ElevenLabs-Signature": sign(old, body, now)},
        )
        assert r.status_code == 401
    assert _event_count(deployment) == 2


def test_env_secret_verifies_default_tenant(deployment: Deployment) -> None:
    """VOXMEM_WEBHOOK_SECRETS verifies even when it was added after the last migrate."""
    from api.app import create_app

    settings = deployment.settings.model_copy(
        update={"webhook_secrets": "wsec_from_env_only", "intake_secret_cache_secs": 0.0}
    )
    with TestClient(create_app(settings)) as client:
        now = int(time.time())
        r = client.post(
            "/webhook/post-call",
            content=BODY,
            headers={"ElevenLabs-Signature": sign("wsec_from_env_only", BODY, now)},
        )
        assert r.json() == {"status": "accepted"}
