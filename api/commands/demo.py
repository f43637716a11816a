"""`voxmem demo [--url URL]`: seed 004's three-call support story against a running service.

Everything goes through the public surface, as ElevenLabs would drive it: the
conversation-init webhook (init token), the ``memory_query`` tool (tool token) during the call,
then a signed ``post_call_transcription`` webhook (the tenant's HMAC secret). Between calls it
waits until the worker has processed the call (with an admin token: the call is listed under
the user; without: ``last_interaction`` moves at init). It prints what the agent receives at
each call, so continuity (call 2 knows about call 1) and learned preferences (style, topics)
are visible. Credentials come from options or ``data/credentials.txt`` (``voxmem migrate``).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from api.security.signatures import HEADER, sign
from db.settings import get_settings

AGENT_ID = "agent_voxmem_demo_support"


@dataclass(frozen=True)
class DemoCall:
    title: str
    days_ago: float
    turns: tuple[tuple[str, str], ...]  # (role, message)
    tool_query: str
    outcome: str
    summary_title: str
    summary: str
    duration_secs: int
    evaluation: Mapping[str, str] = field(default_factory=dict)


# Seed 004's story: login problem (day 1) → follow-up (day 2) → billing question (day 3).
STORY: tuple[DemoCall, ...] = (
    DemoCall(
        title="Call 1 (day 1): login problem",
        days_ago=2.0,
        turns=(
            ("agent", "Hello, thanks for calling Brightside support. How can I help?"),
            (
                "user",
                "Hi, I can't login to my account. It says invalid password. "
                "Could you please help me?",
            ),
            (
                "agent",
                "I'm sorry to hear you're having trouble logging in. "
                "Let me help you reset your password.",
            ),
            (
                "user",
                "I tried resetting my password but didn't receive the email. "
                "I would appreciate it if you could check.",
            ),
            ("agent", "I'll check our email logs and resend the password reset link."),
            (
                "user",
                "Thank you. My name is Alice Martin, I work at Brightside Dental, "
                "and my email is alice@example.com.",
            ),
            (
                "agent",
                "Thank you, Alice. I've verified your email and sent a new password "
                "reset link to alice@example.com.",
            ),
        ),
        tool_query="previous calls and known problems of this caller",
        outcome="success",
        summary_title="Login problem: password reset",
        summary="Alice could not log in (invalid password) and had not received the reset "
        "email. The agent verified her email and sent a new password reset link.",
        duration_secs=184,
        evaluation={"issue_resolved": "success", "polite_greeting": "success"},
    ),
    DemoCall(
        title="Call 2 (day 2): follow-up",
        days_ago=1.0,
        turns=(
            ("agent", "Hello, thanks for calling Brightside support. How can I help?"),
            (
                "user",
                "Hello, this is Alice again. Did you send the password reset email? "
                "Please let me know.",
            ),
            (
                "agent",
                "Yes, I sent the reset link to your email yesterday after you reported "
                "the login issue.",
            ),
            ("user", "I still haven't received it. Could you please resend it? Thank you."),
            (
                "agent",
                "I've resent the password reset link. Please check your spam folder as well.",
            ),
            ("user", "Thank you, I appreciate your help."),
        ),
        tool_query="password reset email not received login problem",
        outcome="success",
        summary_title="Follow-up: password reset email not received",
        summary="Alice had still not received the password reset email; the agent resent "
        "the link and suggested checking the spam folder.",
        duration_secs=95,
        evaluation={"issue_resolved": "success", "polite_greeting": "success"},
    ),
    DemoCall(
        title="Call 3 (day 3): billing question",
        days_ago=0.0,
        turns=(
            ("agent", "Hello, thanks for calling Brightside support. How can I help?"),
            (
                "user",
                "Thank you, I received the email and reset my password. Now I have "
                "another question: how do I update my billing information, please?",
            ),
            (
                "agent",
                "I'd be happy to assist with your billing information. You can update "
                "it in Account Settings, then Billing.",
            ),
            (
                "user",
                "We use QuickBooks for our invoices and our practice has about 12 "
                "employees. I would like to switch to annual billing.",
            ),
            ("agent", "I've noted that. You can choose annual billing on the same page."),
            ("user", "Thank you kindly."),
        ),
        tool_query="billing information and how this caller likes to be helped",
        outcome="success",
        summary_title="Billing information update",
        summary="Alice asked how to update her billing information and wants annual billing; "
        "the agent pointed her to Account Settings, Billing.",
        duration_secs=140,
        evaluation={"issue_resolved": "success", "polite_greeting": "success"},
    ),
)


def post_call_payload(
    *,
    conversation_id: str,
    agent_id: str,
    number: str,
    turns: Sequence[tuple[str, str]],
    start: datetime,
    duration_secs: int,
    outcome: str | None,
    summary: str | None = None,
    summary_title: str | None = None,
    evaluation: Mapping[str, str] | None = None,
    data_collection: Mapping[str, Any] | None = None,
    call_sid: str | None = None,
    user_id: str | None = None,
    timezone: str | None = None,
) -> dict[str, Any]:
    """A ``post_call_transcription`` webhook body in ElevenLabs' shape (SPEC §3)."""
    transcript = [
        {
            "role": role,
            "message": message,
            "tool_calls": [],
            "tool_results": [],
            "time_in_call_secs": i * 5,
        }
        for i, (role, message) in enumerate(turns)
    ]
    dynamic: dict[str, Any] = {
        "system__caller_id": number,
        "system__conversation_id": conversation_id,
        "system__agent_id": agent_id,
    }
    if user_id:
        dynamic["user_id"] = user_id
    metadata: dict[str, Any] = {
        "start_time_unix_secs": int(start.timestamp()),
        "call_duration_secs": duration_secs,
        "phone_call": {
            "type": "twilio",
            "direction": "inbound",
            "agent_number": "+15559876543",
            "external_number": number,
            "call_sid": call_sid or f"CA{secrets.token_hex(16)}",
        },
        "termination_reason": "Call ended by remote party",
    }
    if timezone:
        metadata["timezone"] = timezone
    return {
        "type": "post_call_transcription",
        "event_timestamp": int(start.timestamp()) + duration_secs,
        "data": {
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "status": "done",
            "user_id": None,
            "transcript": transcript,
            "metadata": metadata,
            "analysis": {
                "evaluation_criteria_results": {
                    key: {"criteria_id": key, "result": result, "rationale": ""}
                    for key, result in (evaluation or {}).items()
                },
                "data_collection_results": dict(data_collection or {}),
                "call_successful": outcome,
                "transcript_summary": summary,
                "call_summary_title": summary_title,
            },
            "conversation_initiation_client_data": {"dynamic_variables": dynamic},
        },
    }


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    return {
        HEADER: sign(secret, body, timestamp or int(time.time())),
        "Content-Type": "application/json",
    }


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------
@dataclass
class Credentials:
    secret: str | None = None
    init_token: str | None = None
    tool_token: str | None = None
    admin_token: str | None = None


_CRED_LINE = re.compile(r"^\s*([a-z_]+)(?:\s*\([^)]*\))?\s*=\s*(\S+)\s*$")


def read_credentials(path: Path) -> Credentials:
    """``voxmem migrate``'s first-run file; later lines win (the file is appended to)."""
    found = Credentials()
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _CRED_LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "webhook_secret":
            found.secret = value
        elif key in ("init_token", "tool_token", "admin_token"):
            setattr(found, key, value)
    return found


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
class DemoError(RuntimeError):
    """A demo step failed; the message says which and what was expected."""


@dataclass
class Demo:
    client: httpx.Client
    prefix: str
    creds: Credentials
    timeout: float
    echo: Any

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def init(
        self, number: str, conversation_id: str | None, call_sid: str | None
    ) -> dict[str, Any]:
        body = {
            "caller_id": number,
            "agent_id": AGENT_ID,
            "called_number": "+15559876543",
            "call_sid": call_sid,
            "conversation_id": conversation_id,
        }
        r = self.client.post(
            f"{self.prefix}/webhook/conversation-init",
            json=body,
            headers=self._auth(self.creds.init_token),
        )
        if r.status_code != 200:
            raise DemoError(f"conversation-init answered {r.status_code}: {r.text[:200]}")
        data: dict[str, Any] = r.json()
        return data

    def tool(self, query: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        r = self.client.post(
            f"{self.prefix}/tools/memory-query",
            json={
                "query": query,
                "conversation_id": conversation_id,
                "user_id": user_id,
                "limit": 4,
            },
            headers=self._auth(self.creds.tool_token),
        )
        if r.status_code != 200:
            raise DemoError(f"memory-query answered {r.status_code}: {r.text[:200]}")
        data: dict[str, Any] = r.json()
        return data

    def post_call(self, payload: dict[str, Any]) -> str:
        if not self.creds.secret:
            raise DemoError("no webhook secret")
        body = json.dumps(payload).encode()
        r = self.client.post(
            f"{self.prefix}/webhook/post-call",
            content=body,
            headers=signed_headers(self.creds.secret, body),
        )
        if r.status_code != 200:
            raise DemoError(f"post-call webhook answered {r.status_code}: {r.text[:200]}")
        return str(r.json().get("status"))

    def admin(self, path: str) -> dict[str, Any] | None:
        if not self.creds.admin_token:
            return None
        r = self.client.get(f"{self.prefix}{path}", headers=self._auth(self.creds.admin_token))
        if r.status_code != 200:
            return None
        data: dict[str, Any] = r.json()
        return data

    def wait_processed(self, user_id: str, conversation_id: str, number: str, before: str) -> None:
        """Until the worker has stored the call (and so run every post-call stage)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.creds.admin_token:
                calls = self.admin(f"/v1/users/{user_id}/conversations?limit=20") or {}
                ids = {c.get("conversation_id") for c in calls.get("conversations", [])}
                if conversation_id in ids:
                    return
            else:
                variables = self.init(number, None, None).get("dynamic_variables", {})
                if variables.get("last_interaction") and variables["last_interaction"] != before:
                    return
            time.sleep(0.3)
        raise DemoError(
            f"the call {conversation_id} was not processed within {self.timeout:.0f}s; "
            "is a worker running (voxmem worker)?"
        )


SHOWN_VARIABLES = (
    "caller_status",
    "user_name",
    "last_interaction",
    "recent_topics",
    "communication_style",
    "preferred_tone",
    "detail_level",
    "common_topics",
    "customer_profile",
    "profile_completeness",
    "memory_context",
)


def run_demo(
    url: str,
    creds: Credentials,
    *,
    tenant: str = "default",
    number: str | None = None,
    timeout: float = 60.0,
    echo: Any = print,
) -> dict[str, Any]:
    """Play the story; returns what the agent received at each call (also echoed)."""
    missing = [
        name
        for name, value in (
            ("webhook secret", creds.secret),
            ("init token", creds.init_token),
            ("tool token", creds.tool_token),
        )
        if not value
    ]
    if missing:
        raise DemoError(
            "missing "
            + ", ".join(missing)
            + " (pass --secret/--init-token/--tool-token or run voxmem migrate first)"
        )
    number = number or f"+1555{secrets.randbelow(10**7):07d}"
    prefix = url.rstrip("/") + ("" if tenant == "default" else f"/t/{tenant}")
    run = secrets.token_hex(4)
    result: dict[str, Any] = {"number": number, "calls": []}
    now = datetime.now(UTC)
    with httpx.Client(timeout=15.0) as client:
        demo = Demo(client, prefix, creds, timeout, echo)
        user_id = ""
        for index, call in enumerate(STORY, start=1):
            conversation_id = f"conv_demo_{run}_{index}"
            call_sid = f"CAdemo{run}{index}"
            echo("=" * 78)
            echo(call.title)
            echo("=" * 78)
            answer = demo.init(number, conversation_id, call_sid)
            variables = answer.get("dynamic_variables", {})
            user_id = str(answer.get("user_id") or variables.get("user_id") or user_id)
            echo("conversation-init → dynamic variables the agent receives:")
            for key in SHOWN_VARIABLES:
                if key in variables:
                    echo(f"  {key:<21} {variables[key]!s}")
            tool = demo.tool(call.tool_query, conversation_id, user_id)
            echo(f'memory_query("{call.tool_query}") →')
            echo(f"  summary: {tool.get('summary')}")
            for memory in tool.get("memories", []):
                echo(f"  - [{memory.get('sector')}] {memory.get('content')}")
            for role, message in call.turns:
                echo(f"  {'caller' if role == 'user' else 'agent '}: {message}")
            payload = post_call_payload(
                conversation_id=conversation_id,
                agent_id=AGENT_ID,
                number=number,
                turns=call.turns,
                start=now - timedelta(days=call.days_ago, minutes=5),
                duration_secs=call.duration_secs,
                outcome=call.outcome,
                summary=call.summary,
                summary_title=call.summary_title,
                evaluation=call.evaluation,
                call_sid=call_sid,
                user_id=user_id or None,
            )
            status = demo.post_call(payload)
            echo(f"post-call webhook (signed) → {status}; waiting for the worker…")
            demo.wait_processed(
                user_id, conversation_id, number, str(variables.get("last_interaction") or "")
            )
            result["calls"].append(
                {
                    "title": call.title,
                    "conversation_id": conversation_id,
                    "dynamic_variables": variables,
                    "tool": tool,
                    "webhook": status,
                }
            )
        result["user_id"] = user_id
        final = demo.init(number, None, None).get("dynamic_variables", {})
        result["after"] = final
        echo("=" * 78)
        echo("After the three calls, the next call would start with:")
        for key in SHOWN_VARIABLES:
            if key in final:
                echo(f"  {key:<21} {final[key]!s}")
        user = demo.admin(f"/v1/users/{user_id}")
        if user is not None:
            result["profile"] = user.get("profile")
            echo("Learned profile (admin API):")
            echo("  " + json.dumps(user.get("profile"), ensure_ascii=False))
        graph = demo.admin(f"/v1/users/{user_id}/graph")
        if graph is not None:
            result["graph"] = graph
            names = ", ".join(f"{e['name']} ({e['kind']})" for e in graph.get("entities", []))
            echo(f"Entity graph: {names}")
    return result


def demo(
    url: Annotated[str, typer.Option(help="base URL of the running voxmem API")] = (
        "http://127.0.0.1:8000"
    ),
    secret: Annotated[str | None, typer.Option(help="post-call webhook HMAC secret")] = None,
    init_token: Annotated[str | None, typer.Option(help="bearer token, scope init")] = None,
    tool_token: Annotated[str | None, typer.Option(help="bearer token, scope tool")] = None,
    admin_token: Annotated[
        str | None, typer.Option(help="bearer token, scope admin (optional: shows the profile)")
    ] = None,
    tenant: Annotated[str, typer.Option(help="tenant slug")] = "default",
    number: Annotated[str | None, typer.Option(help="caller number (default: random)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each call")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Play a three-call support story against a running service and print what the agent
    receives at each call."""
    settings = get_settings()
    creds = read_credentials(settings.data_dir / "credentials.txt")
    creds.secret = secret or creds.secret
    creds.init_token = init_token or creds.init_token
    creds.tool_token = tool_token or creds.tool_token
    creds.admin_token = admin_token or creds.admin_token

    def quiet(_line: str) -> None:
        return None

    try:
        result = run_demo(
            url,
            creds,
            tenant=tenant,
            number=number,
            timeout=timeout,
            echo=quiet if as_json else typer.echo,
        )
    except (DemoError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
