"""LLM extractor against a real OpenAI-compatible HTTP server on 127.0.0.1 (real socket, real
``openai`` client): structured output, token counts, retries, timeouts and local fallback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memory.extractors.llm import LLMExtractor, parse_memories
from memory.types import CallForExtraction, Turn

CALL = CallForExtraction(
    conversation_id="c1",
    start_time=datetime(2025, 11, 9, tzinfo=UTC),
    turns=(
        Turn(0, "user", "We're moving to HubSpot next quarter."),
        Turn(1, "agent", "I'll send you the migration guide by Friday."),
    ),
    caller_name="John",
)

GOOD = {
    "memories": [
        {
            "content": "John's company is moving to HubSpot next quarter.",
            "sector": "semantic",
            "salience": 0.8,
            "turns": [0, 99],
            "kind": "fact",
            "is_update": True,
        },
        {
            "content": "The agent will send John the migration guide by Friday.",
            "sector": "episodic",
            "salience": 1.7,
            "turns": [1],
            "kind": "commitment",
            "is_update": False,
        },
        {"content": "bad sector", "sector": "gossip", "salience": 0.5, "turns": []},
    ]
}


class FakeLLM:
    """Scripted replies: each request pops the next behaviour."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body})
                mode = fake.script.pop(0) if fake.script else "good"
                if mode == "500":
                    self._send(500, {"error": {"message": "boom"}})
                    return
                if mode == "slow":
                    time.sleep(1.5)
                content = {
                    "good": json.dumps(GOOD),
                    "slow": json.dumps(GOOD),
                    "garbage": "I cannot do that",
                    "think": "<think>hmm</think>```json\n" + json.dumps(GOOD) + "\n```",
                }[mode]
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 120,
                            "completion_tokens": 45,
                            "total_tokens": 165,
                        },
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first: that is the point of the slow case

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.close()


def make(llm: FakeLLM, **kw: Any) -> LLMExtractor:
    return LLMExtractor("test-model", api_key="k", base_url=llm.base_url, **kw)


def test_structured_output_parsed_and_tokens_recorded(llm: FakeLLM) -> None:
    result = make(llm).extract(CALL)
    assert result.extractor == "llm"
    assert result.fallback_reason is None
    assert (result.prompt_tokens, result.completion_tokens, result.attempts) == (120, 45, 1)
    got = [
        (m.content, m.sector, m.salience, m.sources, m.role, m.is_update) for m in result.memories
    ]
    assert got == [
        ("John's company is moving to HubSpot next quarter.", "semantic", 0.8, (0,), "user", True),
        (
            "The agent will send John the migration guide by Friday.",
            "episodic",
            1.0,
            (1,),
            "agent",
            False,
        ),
    ]
    (req,) = llm.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["response_format"]["type"] == "json_schema"
    assert req["body"]["response_format"]["json_schema"]["strict"] is True
    assert (
        "[1] agent (agent): I'll send you the migration guide"
        in req["body"]["messages"][1]["content"]
    )


def test_retry_then_success(llm: FakeLLM) -> None:
    llm.script = ["500", "garbage", "good"]
    result = make(llm, max_retries=2).extract(CALL)
    assert result.extractor == "llm"
    assert result.attempts == 3
    assert len(llm.requests) == 3
    assert len(result.memories) == 2


def test_fallback_to_local_after_bounded_retries(llm: FakeLLM) -> None:
    llm.script = ["500", "500", "500", "500"]
    result = make(llm, max_retries=1).extract(CALL)
    assert len(llm.requests) == 2  # 1 + 1 retry, never more
    assert result.extractor == "llm->local"
    assert result.attempts == 2
    assert result.fallback_reason is not None
    assert "InternalServerError" in result.fallback_reason
    assert [m.content for m in result.memories] == [
        "John and others are moving to HubSpot next quarter.",
        "The agent will send John the migration guide by Friday.",
    ]


def test_timeout_falls_back(llm: FakeLLM) -> None:
    llm.script = ["slow"]
    started = time.perf_counter()
    result = make(llm, max_retries=0, timeout_secs=0.3).extract(CALL)
    assert time.perf_counter() - started < 1.4
    assert result.extractor == "llm->local"
    assert result.fallback_reason is not None
    assert "Timeout" in result.fallback_reason


def test_unreachable_server_falls_back() -> None:
    ex = LLMExtractor("m", api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0)
    result = ex.extract(CALL)
    assert result.extractor == "llm->local"
    assert "Connection" in (result.fallback_reason or "")


def test_tolerant_parsing_of_think_and_fences(llm: FakeLLM) -> None:
    llm.script = ["think"]
    assert len(make(llm).extract(CALL).memories) == 2
    assert parse_memories(json.dumps([GOOD["memories"][0]]), CALL)[0].sector == "semantic"
