"""Seed 001's load test against a running voxmem: memory queries (weight 3) and signed
post-call webhooks (weight 1). Target: memory-query p95 < 500 ms.

    VOXMEM_TOOL_TOKEN=... VOXMEM_WEBHOOK_SECRET=... \\
        locust -f ops/locust/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 5 -t 2m

VOXMEM_LOAD_USERS (default 100) is the number of distinct synthetic callers.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task
from voxload import memory_query_body, post_call_body, signature_header

TOOL_TOKEN = os.environ.get("VOXMEM_TOOL_TOKEN", "")
WEBHOOK_SECRET = os.environ.get("VOXMEM_WEBHOOK_SECRET", "")
CALLERS = int(os.environ.get("VOXMEM_LOAD_USERS", "100"))


class VoiceAgent(HttpUser):
    wait_time = between(1, 3)

    def on_start(self) -> None:
        if not TOOL_TOKEN or not WEBHOOK_SECRET:
            raise RuntimeError("set VOXMEM_TOOL_TOKEN and VOXMEM_WEBHOOK_SECRET")
        self.caller = random.randrange(CALLERS)

    @task(3)
    def query_memory(self) -> None:
        self.client.post(
            "/tools/memory-query",
            json=memory_query_body(self.caller),
            headers={"Authorization": f"Bearer {TOOL_TOKEN}"},
            name="/tools/memory-query",
        )

    @task(1)
    def webhook_post_call(self) -> None:
        body = post_call_body(self.caller)
        with self.client.post(
            "/webhook/post-call",
            data=body,
            headers={
                "Content-Type": "application/json",
                "ElevenLabs-Signature": signature_header(WEBHOOK_SECRET, body),
            },
            name="/webhook/post-call",
            catch_response=True,
        ) as response:
            if response.status_code != 200 or response.json().get("status") != "accepted":
                response.failure(f"{response.status_code} {response.text[:100]}")
