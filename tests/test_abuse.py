"""Abuse (issue 10): replays, floods, slow bodies, oversized headers, URL tokens, leaks.

Against the real server (uvicorn in a subprocess, loopback) where the transport matters —
slow bodies, header limits, floods, what reaches the logs — and in-process elsewhere.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import WebhookEvent
from tests.conftest import REPO, Deployment, free_port, settings_env, voxmem_cmd, wait_ready
from tests.intake_helpers import fixture_body, signed, stop

CALLER = "+14155550123"


def _events(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


@dataclass
class Server:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def server(deployment: Deployment, tmp_path: Path) -> Iterator[Server]:
    """The API with its stdout/stderr captured (INFO, JSON logs) and a 2 s body timeout."""
    port = free_port()
    env = settings_env(deployment.settings)
    env.update(
        VOXMEM_LOG_LEVEL="DEBUG",
        VOXMEM_INTAKE_BODY_TIMEOUT_SECS="2",
        VOXMEM_REQUEST_BODY_TIMEOUT_SECS="2",
        VOXMEM_REQUEST_HEAD_TIMEOUT_SECS="2",
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            voxmem_cmd("serve", "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc=proc)
        yield Server(base=base, port=port, proc=proc, log=log)
    finally:
        stop(proc)


# --------------------------------------------------------------------------------------------
# Replays
# --------------------------------------------------------------------------------------------
def test_replay_inside_window_is_a_duplicate_not_a_second_event(
    deployment: Deployment, client: TestClient
) -> None:
    body = fixture_body(conversation_id="conv_replay_1")
    headers = signed(deployment.webhook_secret, body, int(time.time()) - 60)
    answers = [client.post("/webhook/post-call", content=body, headers=headers) for _ in range(5)]
    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    assert _events(deployment) == 1


def test_replay_outside_window_is_refused_and_stores_nothing(
    deployment: Deployment, client: TestClient
) -> None:
    body = fixture_body(conversation_id="conv_replay_2")
    tolerance = deployment.settings.signature_tolerance_secs
    for ts in (int(time.time()) - tolerance - 5, int(time.time()) + 3600):
        answer = client.post(
            "/webhook/post-call", content=body, headers=signed(deployment.webhook_secret, body, ts)
        )
        assert answer.status_code == 401
        assert "timestamp" in answer.json()["detail"]
    assert _events(deployment) == 0


# --------------------------------------------------------------------------------------------
# Flood of forged signatures
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_invalid_signature_flood_does_not_block_valid_traffic(
    deployment: Deployment, server: Server
) -> None:
    stop_flood = threading.Event()
    forged: list[int] = []

    def flood() -> None:
        body = fixture_body(conversation_id="conv_forged")
        bad = signed("wsec_" + "0" * 64, body)
        with httpx.Client(base_url=server.base, timeout=10) as http:
            while not stop_flood.is_set():
                try:
                    status = http.post("/webhook/post-call", content=body, headers=bad).status_code
                except httpx.HTTPError:
                    status = 0  # a flooder's connection reset under load: not our concern here
                forged.append(status)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        latencies = []
        with httpx.Client(base_url=server.base, timeout=10) as http:
            for i in range(20):
                body = fixture_body(conversation_id=f"conv_valid_{i}")
                started = time.perf_counter()
                answer = http.post(
                    "/webhook/post-call",
                    content=body,
                    headers=signed(deployment.webhook_secret, body),
                )
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    finally:
        stop_flood.set()
        for thread in threads:
            thread.join(15)
    assert len(forged) > 50 and 401 in forged and set(forged) <= {0, 401}
    assert _events(deployment) == 20
    # Loopback, 4 flooders on 2 cores: valid requests are served, not starved.
    assert sorted(latencies)[len(latencies) // 2] < 1.0, latencies


# --------------------------------------------------------------------------------------------
# Slow bodies, oversized headers
# --------------------------------------------------------------------------------------------
def _raw_request(port: int, head: bytes, trickle: bytes, every: float, limit: float) -> bytes:
    """Send `head`, then one byte of `trickle` every `every` seconds; return what the server
    answered (possibly mid-upload) within `limit` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(head)
        deadline = time.monotonic() + limit
        received = b""
        sock.setblocking(False)
        for byte in trickle:
            if time.monotonic() > deadline:
                break
            try:
                sock.send(bytes([byte]))
            except OSError:
                break  # the server closed the connection
            wait_until = time.monotonic() + every
            while time.monotonic() < wait_until:
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    time.sleep(0.05)
                    continue
                except OSError:
                    return received
                if not chunk:
                    return received
                received += chunk
            if b"\r\n\r\n" in received:
                return received
        return received


@pytest.mark.slow
def test_slow_body_is_cut_off_by_the_read_timeout(deployment: Deployment, server: Server) -> None:
    body = fixture_body(conversation_id="conv_slow")
    signature = signed(deployment.webhook_secret, body)["ElevenLabs-Signature"]
    head = (
        "POST /webhook/post-call HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nElevenLabs-Signature: {signature}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = _raw_request(server.port, head, body, every=1.0, limit=12.0)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < 8.0  # timeout 2 s, one byte a second: cut off long before the body ends
    assert _events(deployment) == 0
    # The server is still healthy for everyone else.
    assert httpx.get(server.base + "/health/live", timeout=5).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "scope", "chunked"),
    [
        ("/webhook/conversation-init", "init", False),
        ("/tools/memory-query", "tool", False),
        ("/t/default/tools/memory-query", "tool", True),
        ("/v1/users/usr_0000000000000000/memories", "admin", False),
        ("/v1/users/usr_0000000000000000/memories", "admin", True),
    ],
)
def test_slow_json_bodies_are_cut_off_too(
    deployment: Deployment, server: Server, path: str, scope: str, chunked: bool
) -> None:
    """Found by this test: init, tool and admin bodies were read by Starlette with no deadline
    (uvicorn has none), so one byte a second held a request open for as long as the client
    liked. api/security/deadline.py now answers 408 after request_body_timeout_secs."""
    body = json.dumps({"query": "x" * 40, "content": "y" * 40, "caller_id": CALLER}).encode()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {deployment.tokens[scope]}\r\n{framing}\r\n\r\n"
    ).encode()
    # Chunked: one 1-byte chunk per second (each chunk's framing sent whole).
    trickle = b"".join(b"1\r\n" + bytes([b]) + b"\r\n" for b in body) if chunked else body
    started = time.monotonic()
    answer = _raw_request(server.port, head, trickle, every=1.0 / (6 if chunked else 1), limit=12.0)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in answer.lower()  # the rest of the body is not waited for
    assert elapsed < 8.0
    assert httpx.get(server.base + "/health/live", timeout=5).status_code == 200


def _read_head(sock: socket.socket) -> bytes:
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "trickle"),
    [
        (b"", b""),  # connects and sends nothing
        (b"", b"GET /health/live HTTP/1.1\r\nHost: x\r\n"),  # a slow request line
        (b"POST /tools/memory-query HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 30),
    ],
    ids=["idle", "request-line", "headers"],
)
def test_slow_headers_and_idle_connections_are_cut_off(
    server: Server, first: bytes, trickle: bytes
) -> None:
    """Found by this test: uvicorn arms no timer before a request's head is complete, so an
    idle connection, or a head trickled a byte a second, stayed open indefinitely (checked for
    25 s). api/security/head_deadline.py answers 408 and closes after
    request_head_timeout_secs, for the first request and for the next one on a kept-alive
    connection."""
    started = time.monotonic()
    if trickle:
        answer = _raw_request(server.port, first, trickle, every=1.0, limit=12.0)
    else:
        with socket.create_connection(("127.0.0.1", server.port), timeout=12) as sock:
            answer = _read_head(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 8.0
    # A kept-alive connection: one complete request, then a slow second head.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        first_reply = b""
        while b'"alive"}' not in first_reply:  # the whole first response, body included
            first_reply += sock.recv(65536)
        assert first_reply.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        second = time.monotonic()
        assert _read_head(sock).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - second < 5.0
    assert httpx.get(server.base + "/health/live", timeout=5).status_code == 200


def test_oversized_json_bodies_are_refused_before_the_route(deployment: Deployment) -> None:
    from api.app import create_app

    settings = deployment.settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(settings)) as small:
        big = {"query": "x" * 5000}
        for path, scope in (("/tools/memory-query", "tool"), ("/v1/users", "admin")):
            answer = small.post(path, json=big, headers=deployment.auth(scope))
            assert answer.status_code == 413, (path, answer.text)
            assert answer.json() == {"detail": "request body exceeds 4096 bytes"}
        ok = small.post(
            "/tools/memory-query",
            json={"query": "x", "caller_id": CALLER},
            headers=deployment.auth("tool"),
        )
        assert ok.status_code == 200


def test_oversized_headers_are_refused_and_the_server_survives(server: Server) -> None:
    # Found by this test: httptools accepted a 1 MiB header; api/middleware.py now answers 431.
    many = {f"X-H{i}": "v" * 20 for i in range(2000)}
    for headers in ({"X-Big": "a" * 64 * 1024}, {"X-Big": "a" * 1024 * 1024}, many):
        try:
            answer = httpx.post(
                server.base + "/webhook/post-call", headers=headers, content=b"{}", timeout=10
            )
            assert answer.status_code in (400, 413, 431), answer.status_code
        except httpx.HTTPError:
            pass  # closed without an answer by the HTTP parser: refused as well
    ok = httpx.get(server.base + "/health/live", headers={"X-Normal": "a" * 4096}, timeout=5)
    assert ok.status_code == 200
    assert httpx.get(server.base + "/health/live", timeout=5).status_code == 200


# --------------------------------------------------------------------------------------------
# Tokens in URLs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param", ["token", "access_token", "api_key", "Authorization"])
def test_tokens_in_query_strings_are_refused(
    deployment: Deployment, client: TestClient, param: str
) -> None:
    admin = deployment.tokens["admin"]
    # Refused even alongside a valid header: the token has already leaked into URLs and logs.
    for headers in ({}, deployment.auth("admin")):
        answer = client.get("/v1/users", params={param: admin}, headers=headers)
        assert answer.status_code == 401
        assert "query string" in answer.json()["detail"]
        assert admin not in answer.text
    tool = client.post(
        "/tools/memory-query",
        params={param: deployment.tokens["tool"]},
        json={"query": "x"},
    )
    assert tool.status_code == 401


# --------------------------------------------------------------------------------------------
# Nothing secret in logs or error bodies
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_secrets_tokens_and_numbers_never_reach_logs_or_error_bodies(
    deployment: Deployment, server: Server
) -> None:
    secret = deployment.webhook_secret
    tokens = list(deployment.tokens.values())
    bodies: list[str] = []
    with httpx.Client(base_url=server.base, timeout=10) as http:

        def call(method: str, url: str, **kw: object) -> None:
            answer = http.request(method, url, **kw)  # type: ignore[arg-type]
            bodies.append(answer.text)
            bodies.append(json.dumps(dict(answer.headers)))

        def caller_body(cid: str) -> bytes:
            doc = json.loads(fixture_body(conversation_id=cid))
            doc["data"]["metadata"]["phone_call"] = {
                "type": "twilio",
                "direction": "inbound",
                "external_number": CALLER,
                "agent_number": "+14155550100",
            }
            return json.dumps(doc).encode()

        good = caller_body("conv_leak_1")
        call("POST", "/webhook/post-call", content=good, headers=signed(secret, good))
        call("POST", "/webhook/post-call", content=good, headers=signed(secret, good))
        # Forged, stale, malformed: the error paths log the most.
        call("POST", "/webhook/post-call", content=good, headers=signed(secret + "x", good))
        call(
            "POST",
            "/webhook/post-call",
            content=good,
            headers=signed(secret, good, int(time.time()) - 10_000),
        )
        call("POST", "/webhook/post-call", content=good, headers={"ElevenLabs-Signature": secret})
        bad_json = b'{"type": "post_call_transcription", "data": "' + CALLER.encode() + b'"'
        call("POST", "/webhook/post-call", content=bad_json, headers=signed(secret, bad_json))
        init = {"caller_id": CALLER, "agent_id": "a", "called_number": "+14155550100"}
        for token in tokens:  # right and wrong scopes
            call(
                "POST",
                "/webhook/conversation-init",
                json=init,
                headers={"Authorization": f"Bearer {token}"},
            )
            call(
                "POST",
                "/tools/memory-query",
                json={"query": "hello", "caller_id": CALLER},
                headers={"Authorization": f"Bearer {token}"},
            )
            call("GET", "/v1/users", headers={"Authorization": f"Bearer {token}"})
            call("GET", "/v1/users", params={"token": token})
            call("GET", "/v1/users", headers={"Authorization": f"Bearer {token}x"})
        call("POST", "/webhook/conversation-init", json=init, headers={"Authorization": secret})
        call("GET", "/metrics")
    stop(server.proc)
    log = server.log.read_text(errors="replace")
    assert "webhook" in log  # the capture works: intake logged something
    blob = "\n".join(bodies)
    for needle in [secret, secret.removeprefix("wsec_"), *tokens]:
        assert needle not in log, f"a secret/token reached the log: {needle[:8]}…"
        assert needle not in blob, f"a secret/token reached a response: {needle[:8]}…"
    for number in (CALLER, CALLER.lstrip("+")):
        assert number not in log, "the caller's number reached the log"
