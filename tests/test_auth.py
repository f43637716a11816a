"""The auth matrix: every agent/admin endpoint refuses a token outside its tenant or scope."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.models import ApiToken
from db.tenancy import revoke_token
from tests.agent_helpers import token
from tests.conftest import Deployment

# (method, path, scope that may call it, body)
ENDPOINTS = [
    ("POST", "/webhook/conversation-init", "init", {"caller_id": "+15551234567"}),
    ("POST", "/tools/memory-query", "tool", {"query": "anything"}),
    ("GET", "/v1/stats", "admin", None),
    ("GET", "/v1/users", "admin", None),
]


def call(client: TestClient, method: str, path: str, body: object, headers: dict[str, str]) -> int:
    return client.request(method, path, json=body, headers=headers).status_code


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
def test_right_token_passes(
    client: TestClient, deployment: Deployment, method: str, path: str, scope: str, body: object
) -> None:
    assert call(client, method, path, body, deployment.auth(scope)) == 200


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
def test_missing_and_malformed_headers(
    client: TestClient, deployment: Deployment, method: str, path: str, scope: str, body: object
) -> None:
    raw = deployment.tokens[scope]
    for headers in (
        {},
        {"Authorization": raw},  # no scheme
        {"Authorization": f"Basic {raw}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {raw}x"},
        {"X-Gateway-Token": raw},
    ):
        resp = client.request(method, path, json=body, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.json()["detail"]  # a reason, never the token
        assert raw not in resp.text


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
def test_wrong_scope(
    client: TestClient, deployment: Deployment, method: str, path: str, scope: str, body: object
) -> None:
    for other in ("tool", "init", "admin"):
        if other == scope:
            continue
        resp = client.request(method, path, json=body, headers=deployment.auth(other))
        assert resp.status_code == 401
        assert "scope" in resp.json()["detail"]


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
def test_revoked_token(
    client: TestClient, deployment: Deployment, method: str, path: str, scope: str, body: object
) -> None:
    with deployment.db.write() as session:
        token_id = session.scalars(select(ApiToken.id).where(ApiToken.scope == scope)).first()
        assert token_id is not None
        assert revoke_token(session, token_id)
    resp = client.request(method, path, json=body, headers=deployment.auth(scope))
    assert resp.status_code == 401
    assert "revoked" in resp.json()["detail"]


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
def test_other_tenant(
    client: TestClient, deployment: Deployment, method: str, path: str, scope: str, body: object
) -> None:
    acme = token(deployment.db, "acme", scope)
    acme_headers = {"Authorization": f"Bearer {acme}"}
    # acme's token on the default paths, and default's token on acme's paths: both refused.
    assert call(client, method, path, body, acme_headers) == 401
    assert call(client, method, f"/t/acme{path}", body, deployment.auth(scope)) == 401
    # A tenant that does not exist is just another tenant the token is not for.
    assert call(client, method, f"/t/nobody{path}", body, acme_headers) == 401
    # And acme's token on acme's paths works.
    assert call(client, method, f"/t/acme{path}", body, acme_headers) == 200


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS)
@pytest.mark.parametrize("param", ["token", "access_token", "api_key"])
def test_token_in_query_string_refused(
    client: TestClient,
    deployment: Deployment,
    method: str,
    path: str,
    scope: str,
    body: object,
    param: str,
) -> None:
    raw = deployment.tokens[scope]
    # Even alongside a valid header: a URL carrying a token is refused, not ignored.
    for headers in ({}, deployment.auth(scope)):
        resp = client.request(method, path, params={param: raw}, json=body, headers=headers)
        assert resp.status_code == 401
        assert "query string" in resp.json()["detail"]


def test_last_used_at_recorded_off_the_request(client: TestClient, deployment: Deployment) -> None:
    with deployment.db.read() as session:
        assert all(t.last_used_at is None for t in session.scalars(select(ApiToken)))
    assert client.get("/v1/stats", headers=deployment.auth("admin")).status_code == 200
    writer = client.app.state.voxmem.extras["background_writer"]  # type: ignore[attr-defined]
    assert writer.flush()
    with deployment.db.read() as session:
        used = {t.scope: t.last_used_at for t in session.scalars(select(ApiToken))}
    assert used["admin"] is not None
    assert used["tool"] is None and used["init"] is None
