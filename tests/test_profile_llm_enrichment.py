"""Profile enrichment through an LLM (issue 7 §2) on the success path: a real OpenAI-compatible
HTTP server on 127.0.0.1, the real ``openai`` client, the real queue and reflection job."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.commands.demo import STORY
from db.settings import Settings
from tests.conftest import Deployment, make_settings
from tests.insight_helpers import drain, now, post_call, user_of

PROFILE = {
    "industry": "healthcare",
    "company_name": "Brightside Dental Group",
    "company_size": "11-50",
    "communication_style": "formal",
    "goals": ["move the practice to annual billing"],
    "pain_points": ["locked out of the portal twice"],
    "preferences": {"tone": "formal", "detail_level": "concise", "format": "email"},
    "unexpected": {"ignored": True},
}


class ProfileLLM:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                reply = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "m"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": json.dumps(PROFILE)},
                        }
                    ],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def llm() -> Iterator[ProfileLLM]:
    fake = ProfileLLM()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def settings(tmp_path: Path, llm: ProfileLLM) -> Settings:
    return make_settings(
        tmp_path / "data",
        reflection_interval_secs=1.0,
        profile_enrichment="llm",
        openai_base_url=llm.base_url,
        openai_api_key="sk-test",
        llm_timeout_secs=5.0,
        llm_max_retries=0,
    )


def test_profile_is_enriched_by_the_llm_after_the_third_call(
    client: TestClient, deployment: Deployment, llm: ProfileLLM
) -> None:
    number = "+15552229999"
    for i, call in enumerate(STORY[:3]):
        post_call(
            client,
            deployment,
            f"conv_llm_{i}",
            number,
            call.turns,
            start=now() - timedelta(days=call.days_ago),
            outcome=call.outcome,
            summary=call.summary,
            title=call.summary_title,
        )
        drain(deployment)
    drain(deployment, reflections=True)
    assert len(llm.requests) == 1  # once, after the third call, not per call
    prompt = json.dumps(llm.requests[0]["messages"])
    assert "Brightside" in prompt  # the caller's own words went to the model
    user_id = user_of(client, deployment, number)
    p = client.get(f"/v1/users/{user_id}/profile", headers=deployment.auth("admin")).json()
    assert p["enrichment_error"] is None
    assert p["enriched_at"] is not None
    assert p["industry"] == "healthcare"
    assert p["company_name"] == "Brightside Dental Group"
    assert p["communication_style"] == "formal"
    assert "move the practice to annual billing" in p["goals"]
    assert "unexpected" not in p  # the model's JSON is validated, not trusted
    health = client.get("/health").json()["checks"]["enrichment"]
    assert health["profiles_with_errors"] == 0
