"""Fault injection (issue 10): a locked or full database on intake, a failing embedder, an LLM
that rate-limits. ElevenLabs retries a webhook only on 5xx (SPEC §3), so a storage failure must
be a 503 that leaves nothing behind, and the retry must then land exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from db import metrics
from db.models import WebhookEvent
from memory.embedders import EmbedderError
from memory.extractors.llm import LLMExtractor
from tests.conftest import Deployment
from tests.intake_helpers import fixture_body, signed
from tests.test_memory_llm_extractor import CALL

pytestmark = [pytest.mark.chaos]


def _events(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def _db_path(deployment: Deployment) -> str:
    return deployment.settings.database_url.removeprefix("sqlite:///")


def _on_write_checkout(client: TestClient, pragma: str) -> Any:
    """Run `pragma` on every write connection the app checks out (per-connection settings)."""
    engine = client.app.state.voxmem.db.write_engine  # type: ignore[attr-defined]

    def apply(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.execute(pragma)

    event.listen(engine, "checkout", apply)
    return engine, apply


def test_locked_database_is_a_clean_503_then_the_retry_lands_once(
    deployment: Deployment, client: TestClient
) -> None:
    # Busy timeout 200 ms instead of 10 s; a real BEGIN EXCLUSIVE from another connection.
    engine, apply = _on_write_checkout(client, "PRAGMA busy_timeout=200")
    body = fixture_body(conversation_id="conv_locked")
    holder = sqlite3.connect(_db_path(deployment), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        answer = client.post(
            "/webhook/post-call", content=body, headers=signed(deployment.webhook_secret, body)
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert answer.status_code == 503, answer.text
    assert "retry" in answer.json()["detail"]
    assert _events(deployment) == 0
    event.remove(engine, "checkout", apply)
    retry = client.post(
        "/webhook/post-call", content=body, headers=signed(deployment.webhook_secret, body)
    )
    assert retry.json() == {"status": "accepted"}
    assert _events(deployment) == 1


def test_disk_full_is_a_clean_503_with_nothing_written(
    deployment: Deployment, client: TestClient
) -> None:
    with sqlite3.connect(_db_path(deployment)) as probe:
        pages = probe.execute("PRAGMA page_count").fetchone()[0]
    # The file may not grow by one page: the insert fails with SQLITE_FULL.
    engine, apply = _on_write_checkout(client, f"PRAGMA max_page_count={pages}")
    big = json.loads(fixture_body(conversation_id="conv_full"))
    big["data"]["analysis"]["transcript_summary"] = "x" * 200_000  # needs new pages
    body = json.dumps(big).encode()
    answer = client.post(
        "/webhook/post-call", content=body, headers=signed(deployment.webhook_secret, body)
    )
    event.remove(engine, "checkout", apply)
    assert answer.status_code == 503, answer.text
    assert _events(deployment) == 0
    with sqlite3.connect(_db_path(deployment)) as probe:
        assert probe.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The cap is per connection: reset it on the pooled ones, then the retry lands once.
    _, reset = _on_write_checkout(client, "PRAGMA max_page_count=1073741823")
    retry = client.post(
        "/webhook/post-call", content=body, headers=signed(deployment.webhook_secret, body)
    )
    event.remove(engine, "checkout", reset)
    assert retry.json() == {"status": "accepted"}
    assert _events(deployment) == 1


@pytest.mark.parametrize("error", [EmbedderError("model crashed"), RuntimeError("onnx Fail")])
def test_embedder_failure_still_answers_the_tool(
    deployment: Deployment, client: TestClient, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    caller = "+14155550177"
    init = client.post(
        "/webhook/conversation-init",
        json={"caller_id": caller, "agent_id": "a", "called_number": "+14155550100"},
        headers=deployment.auth("init"),
    )
    user_id = init.json()["dynamic_variables"]["user_id"]
    added = client.post(
        f"/v1/users/{user_id}/memories",
        json={"content": "Prefers email over phone calls.", "sector": "semantic"},
        headers=deployment.auth("admin"),
    )
    assert added.status_code == 201, added.text
    from api.engine_search import EngineSearch

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(EngineSearch, "retriever", broken)
    answer = client.post(
        "/tools/memory-query",
        json={"query": "how to contact?", "caller_id": caller},
        headers=deployment.auth("tool"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["memories"] == []
    assert answer.json()["summary"]


class RateLimitingLLM:
    """A loopback OpenAI-compatible server that answers every call with 429."""

    def __init__(self) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls += 1
                raw = json.dumps({"error": {"message": "rate limited", "type": "rate"}}).encode()
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def limited_llm() -> Iterator[RateLimitingLLM]:
    fake = RateLimitingLLM()
    yield fake
    fake.close()


def _fallbacks() -> float:
    total = 0.0
    for family in metrics.metrics().llm_fallbacks.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return total


def test_llm_429_falls_back_and_is_counted(limited_llm: RateLimitingLLM) -> None:
    before = _fallbacks()
    extractor = LLMExtractor(
        "test-model", api_key="k", base_url=limited_llm.base_url, max_retries=1, timeout_secs=2
    )
    started = time.perf_counter()
    result = extractor.extract(CALL)
    assert time.perf_counter() - started < 10
    assert result.extractor == "llm->local"
    assert result.fallback_reason is not None and "RateLimit" in result.fallback_reason
    assert result.memories  # the local extractor's memories, not nothing
    assert limited_llm.calls == 2  # bounded: one try + one retry
    assert _fallbacks() == before + 1
