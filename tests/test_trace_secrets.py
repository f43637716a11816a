"""Exported traces carry no secrets (issue 10): webhook secrets, bearer tokens, caller phone
numbers, transcript text and tool queries never appear in a span, its attributes, events
(recorded exceptions included) or resource.

Twice: in-process with the in-memory exporter of tests/test_tracing.py (API requests and the
worker pipeline, a dead-lettered event included, spans serialised with ``to_json()``), and with
real processes — ``voxmem serve`` and ``voxmem worker`` exporting OTLP/HTTP, the production
path, to a loopback collector whose raw request bodies are grepped (protobuf keeps strings as
UTF-8, so a leaked value is a byte substring).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from db import tracing
from tests.conftest import FIXTURES, Deployment, free_port
from tests.intake_helpers import signed, start_api, start_worker, stop, wait_for
from worker.runner import make_process_next

CALLER = "+14155550177"
OTHER = "+14155550188"
QUERY = "Which invoice did the caller ask about last Tuesday?"
FAKE_LLM_KEY = "sk-trace-test-" + "k" * 24


def _fixture() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "post_call_transcription.json").read_bytes())
    return doc


def call_body(conversation_id: str) -> bytes:
    doc = _fixture()
    doc["data"]["conversation_id"] = conversation_id
    doc["data"]["metadata"]["phone_call"] = {
        "type": "twilio",
        "direction": "inbound",
        "external_number": CALLER,
        "agent_number": OTHER,
    }
    return json.dumps(doc).encode()


def needles(deployment: Deployment) -> dict[str, str]:
    """What must never be exported, by a label that is safe to print."""
    secret = deployment.webhook_secret
    out = {"webhook secret": secret, "webhook secret body": secret.removeprefix("wsec_")}
    for scope, token in deployment.tokens.items():
        out[f"{scope} token"] = token
    for label, number in (("caller", CALLER), ("agent number", OTHER)):
        out[f"{label} number"] = number
        out[f"{label} number digits"] = number.lstrip("+")
        out[f"{label} national number"] = number[2:]
    out["fixture caller number"] = "+15551234567"
    for i, turn in enumerate(_fixture()["data"]["transcript"]):
        if isinstance(turn.get("message"), str) and len(turn["message"]) > 12:
            out[f"transcript turn {i}"] = turn["message"]
    out["transcript summary"] = _fixture()["data"]["analysis"]["transcript_summary"][:60]
    out["tool query"] = QUERY
    out["llm api key"] = FAKE_LLM_KEY
    return out


Send = Callable[..., Any]


def traffic(http: Any, deployment: Deployment) -> None:
    """Every kind of request, good and bad: the error paths say the most."""
    secret = deployment.webhook_secret
    tokens = deployment.tokens
    good = call_body("conv_trace_1")
    assert http.post("/webhook/post-call", content=good, headers=signed(secret, good)).json() == {
        "status": "accepted"
    }
    http.post("/webhook/post-call", content=good, headers=signed(secret, good))  # duplicate
    http.post("/webhook/post-call", content=good, headers=signed(secret + "x", good))  # forged
    stale = signed(secret, good, int(time.time()) - 10_000)
    http.post("/webhook/post-call", content=good, headers=stale)
    http.post("/webhook/post-call", content=good, headers={"ElevenLabs-Signature": secret})
    bad_json = b'{"type": "post_call_transcription", "data": "' + CALLER.encode() + b'"'
    http.post("/webhook/post-call", content=bad_json, headers=signed(secret, bad_json))
    # Accepted by the intake, dead-lettered by the worker (PayloadError recorded on the span).
    poison = _fixture()
    poison["data"].pop("conversation_id")
    poison["data"]["metadata"]["phone_call"] = {"external_number": CALLER}
    poison_body = json.dumps(poison).encode()
    http.post("/webhook/post-call", content=poison_body, headers=signed(secret, poison_body))
    init = {
        "caller_id": CALLER,
        "agent_id": "a",
        "called_number": OTHER,
        "conversation_id": "conv_trace_2",
    }
    query = {"query": QUERY, "caller_id": CALLER, "conversation_id": "conv_trace_2"}
    for token in tokens.values():  # right and wrong scopes
        auth = {"Authorization": f"Bearer {token}"}
        http.post("/webhook/conversation-init", json=init, headers=auth)
        http.post("/tools/memory-query", json=query, headers=auth)
        http.get("/v1/users", headers=auth)
        http.get("/v1/users", params={"token": token})
        http.post("/tools/memory-query", json=query, params={"access_token": token})
        http.get("/v1/users", headers={"Authorization": f"Bearer {token}x"})
    http.post("/webhook/conversation-init", json=init, headers={"Authorization": secret})
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    users = http.get("/v1/users", headers=admin).json()
    for user in users.get("users", [])[:3]:
        for path in ("", "/export", "/memories", "/conversations"):
            http.get(f"/v1/users/{user['user_id']}{path}", headers=admin)
    http.post(
        f"/v1/users/{'usr_' + '0' * 16}/memories",
        json={"content": QUERY},
        headers=admin,
    )


def assert_clean(blob: str | bytes, deployment: Deployment) -> None:
    for label, needle in needles(deployment).items():
        value: str | bytes = needle.encode() if isinstance(blob, bytes) else needle
        assert value not in blob, f"exported traces contain the {label}"


# --------------------------------------------------------------------------------------------
# In-process, in-memory exporter
# --------------------------------------------------------------------------------------------
def test_in_memory_spans_of_api_and_worker_hold_no_secret(
    deployment: Deployment, exporter: InMemorySpanExporter
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(deployment.settings)) as client:
        traffic(client, deployment)
    process = make_process_next(deployment.settings, deployment.db, worker_id="w-trace")
    jobs = 0
    while process():
        jobs += 1
    assert jobs >= 2
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    # The capture covers what it claims: requests, intake, worker stages, an error.
    assert {"POST /webhook/post-call", "intake.verify", "worker.job"} <= names, names
    assert any(n.startswith("stage.") for n in names)
    assert any(n.startswith("POST /tools/memory-query") for n in names)
    assert any(e.name == "exception" for s in spans for e in s.events), "no recorded error"
    blob = "\n".join(s.to_json() for s in spans)
    assert_clean(blob, deployment)
    print(f"\ntrace grep (in-memory): {len(spans)} spans, {len(blob)} characters")


# --------------------------------------------------------------------------------------------
# Real processes, OTLP/HTTP to a loopback collector
# --------------------------------------------------------------------------------------------
class Collector:
    """Accepts OTLP/HTTP export requests on loopback and keeps their (decompressed) bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                collector.bodies.append(raw)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def blob(self) -> bytes:
        return b"\n".join(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.close()


@pytest.mark.slow
def test_otlp_exports_of_real_api_and_worker_processes_hold_no_secret(
    deployment: Deployment, collector: Collector, tmp_path: Path
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # The LLM extractor against a closed loopback port: its failure path runs too, with a
        # key that must not be exported either.
        "VOXMEM_EXTRACTOR": "llm",
        "VOXMEM_OPENAI_API_KEY": FAKE_LLM_KEY,
        "VOXMEM_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "VOXMEM_LLM_MAX_RETRIES": "0",
        "VOXMEM_LLM_TIMEOUT_SECS": "2",
    }
    api, base = start_api(deployment, **env)
    worker = start_worker(deployment, "--processes", "1", log=tmp_path / "worker.log", **env)
    try:
        with httpx.Client(base_url=base, timeout=15) as http:
            traffic(http, deployment)

        def settled() -> bool:
            from tests.test_worker_crash import event_state

            states = {s for s, _ in event_state(deployment).values()}
            return bool(states) and states <= {"completed", "dead_letter"}

        wait_for(settled, timeout=90, what="every event processed")
    finally:
        stop(worker, timeout=30)
        stop(api, timeout=30)
    blob = collector.blob
    # Spans of both processes arrived (names and the resource's service.name are strings).
    for expected in (b"POST /webhook/post-call", b"intake.verify", b"worker.job", b"stage."):
        assert expected in blob, expected
    assert b"voxmem-api" in blob or b"voxmem" in blob
    assert_clean(blob, deployment)
    print(f"\ntrace grep (OTLP): {len(collector.bodies)} export requests, {len(blob)} bytes")
