"""Request builders for the load test, importable without locust (tests use them too).

Webhooks are signed exactly like ElevenLabs does: ``ElevenLabs-Signature: t=<unix>,v0=<hex>``
with HMAC-SHA256 over ``"{t}.{raw body}"``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import uuid
from typing import Any

TOPICS = (
    ("I need a refund for order {n}, it arrived broken.", "Sorry about that, I can help with it."),
    ("My company switched to Salesforce last month.", "Noted, that helps with the integration."),
    ("Please call me back in the mornings, I work nights.", "Sure, mornings it is."),
    ("The invoice for March shows the wrong address.", "Let me correct the billing address."),
)
QUERIES = (
    "what did the caller ask about last time",
    "refund status",
    "which CRM does the company use",
    "preferred time to call back",
    "billing address problem",
)


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v0={digest}"


def caller_number(user: int) -> str:
    return f"+1555{user:07d}"[:12]


def post_call_body(user: int, *, conversation_id: str | None = None) -> bytes:
    """A post_call_transcription event for synthetic caller ``user`` (a fresh conversation)."""
    now = int(time.time())
    conversation_id = conversation_id or f"conv_load_{uuid.uuid4().hex[:20]}"
    said, answered = random.choice(TOPICS)
    transcript: list[dict[str, Any]] = [
        {"role": "agent", "message": "Hi, how can I help you today?", "time_in_call_secs": 0},
        {
            "role": "user",
            "message": said.format(n=random.randint(1000, 9999)),
            "time_in_call_secs": 3,
        },
        {"role": "agent", "message": answered, "time_in_call_secs": 8},
    ]
    event = {
        "type": "post_call_transcription",
        "event_timestamp": now,
        "data": {
            "agent_id": "agent_load_test",
            "conversation_id": conversation_id,
            "status": "done",
            "transcript": transcript,
            "metadata": {
                "start_time_unix_secs": now - 30,
                "call_duration_secs": 30,
                "phone_call": {
                    "type": "twilio",
                    "direction": "inbound",
                    "agent_number": "+15559876543",
                    "external_number": caller_number(user),
                    "call_sid": f"CA{uuid.uuid4().hex}",
                },
            },
            "analysis": {"call_successful": "success", "transcript_summary": said[:80]},
            "conversation_initiation_client_data": {
                "dynamic_variables": {"system__caller_id": caller_number(user)}
            },
        },
    }
    return json.dumps(event).encode()


def memory_query_body(user: int) -> dict[str, Any]:
    return {"query": random.choice(QUERIES), "caller_id": caller_number(user), "limit": 3}
