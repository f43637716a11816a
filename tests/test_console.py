"""Operator console (issue 11) without a browser: the static pages are served with their
security headers, and the console's admin endpoints answer from a story pushed through signed
webhooks and the real worker pipeline. The browser test is tests/test_console_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.commands.demo import signed_headers
from db.models import WebhookEvent
from tests.conftest import Deployment
from tests.insight_helpers import drain, post_call
from worker.runner import make_process_next

NUMBER = "+15550100142"
CALL_1 = [
    ("agent", "Thanks for calling Acme support, who am I speaking with?"),
    ("user", "Hi, my name is Maria Lopez. I work at Acme Logistics."),
    ("agent", "Hi Maria, how can I help?"),
    ("user", "Our company uses Salesforce and the sync to your app stopped working yesterday."),
    ("agent", "Sorry about that. I will reset the sync token for you now."),
    ("user", "Please always call me back after 5 pm, never by email."),
    ("user", "My dog is called Biscuit."),
]
CALL_2 = [
    ("agent", "Welcome back Maria, how is the sync?"),
    (
        "user",
        "The company uses Salesforce and the sync to your app stopped working again yesterday.",
    ),
    ("user", "We have 40 people on the sales team, so it matters."),
]
WRONG = "dog is called Biscuit"  # the memory the operator archives


def push_story(client: Any, deployment: Deployment) -> None:
    """Two calls from Maria through signed webhooks; the worker pipeline runs them.
    ``client`` is a TestClient or an httpx.Client on a live server (same ``post`` signature)."""
    post_call(
        client, deployment, "conv_maria_1", NUMBER, CALL_1,
        summary="Salesforce sync stopped working; sync token reset.", title="Salesforce sync",
    )  # fmt: skip
    post_call(client, deployment, "conv_maria_2", NUMBER, CALL_2, title="Sync works again")
    drain(deployment)


def push_poison(client: Any, deployment: Deployment) -> int:
    """A validly signed post_call_transcription whose transcript cannot be parsed: the worker
    dead-letters it at once (PayloadError is permanent). Returns the event's row id."""
    body = json.dumps(
        {
            "type": "post_call_transcription",
            "event_timestamp": 1_760_000_000,
            "data": {"conversation_id": "conv_poison_1", "transcript": "garbled: not a list"},
        }
    ).encode()
    r = client.post(
        "/webhook/post-call", content=body, headers=signed_headers(deployment.webhook_secret, body)
    )
    assert r.status_code == 200, r.text
    process: Callable[[], bool] = make_process_next(
        deployment.settings, deployment.db, worker_id="console-test"
    )
    while process():
        pass
    with deployment.db.read() as session:
        row = session.scalar(
            select(WebhookEvent).where(WebhookEvent.conversation_id == "conv_poison_1")
        )
        assert row is not None and row.status == "dead_letter", row and row.status
        return row.id


def admin_get(client: TestClient, deployment: Deployment, path: str) -> Any:
    r = client.get(path, headers=deployment.auth("admin"))
    assert r.status_code == 200, r.text
    return r.json()


def test_pages_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert 'src="console/app.js"' in page.text and "http" not in page.text.split("<body>")[1]
    for name, kind in (("app.js", "javascript"), ("api.js", "javascript"),
                       ("graph.js", "javascript"), ("style.css", "css")):  # fmt: skip
        r = client.get(f"/console/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        text = r.text.replace('"http://www.w3.org/2000/svg"', "")  # SVG's namespace, not a fetch
        assert "https://" not in text and "http://" not in text, f"{name} loads from outside"
    assert client.get("/t/default/console").status_code == 200
    for bad in ("missing.js", "..%2Fapp.py", "app.py", "__init__.py"):
        assert client.get(f"/console/{bad}").status_code == 404, bad


def test_token_is_never_put_in_a_url() -> None:
    from importlib.resources import files

    static = files("api.console").joinpath("static")
    api_js = static.joinpath("api.js").read_text()
    assert "sessionStorage" in api_js and "localStorage.set" not in api_js
    assert "Authorization" in api_js
    for name in ("app.js", "api.js", "graph.js"):
        text = static.joinpath(name).read_text()
        assert "?token" not in text and "access_token" not in text, name


def test_console_endpoints_need_an_admin_token(client: TestClient, deployment: Deployment) -> None:
    for path in ("/v1/console/callers", "/v1/console/queue", "/v1/console/conversations/x"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=deployment.auth("tool")).status_code == 401
    assert client.post("/v1/console/queue/dead-letters/replay").status_code == 401


@pytest.mark.slow
def test_console_endpoints_over_a_story(client: TestClient, deployment: Deployment) -> None:
    push_story(client, deployment)
    # Search by the name said on the call, by the number in another format, by user id.
    by_name = admin_get(client, deployment, "/v1/console/callers?q=maria")["callers"]
    assert len(by_name) == 1 and by_name[0]["spoken_name"] == "Maria Lopez"
    caller = by_name[0]
    assert caller["calls"] == 2 and caller["memories"] >= 3
    memories = admin_get(client, deployment, f"/v1/users/{caller['user_id']}/memories")
    assert any(m["links"] for m in memories["memories"]), "the story links related memories"
    assert caller["numbers"] == ["+1••••••0142"], "numbers are shown masked"
    q_number = "/v1/console/callers?q=%2B1 (555) 010.0142"
    by_number = admin_get(client, deployment, q_number)["callers"]
    assert [c["user_id"] for c in by_number] == [caller["user_id"]]
    uid = caller["user_id"]
    by_id = admin_get(client, deployment, f"/v1/console/callers?q={uid}")["callers"]
    assert by_id[0]["user_id"] == uid
    assert admin_get(client, deployment, "/v1/console/callers?q=nobody")["callers"] == []

    # A call's transcript, with the memories extracted from each turn.
    call = admin_get(client, deployment, "/v1/console/conversations/conv_maria_1")
    assert [t["message"] for t in call["turns"]] == [m for _, m in CALL_1]
    dog_turn = call["turns"][6]
    assert any(WRONG in m["content"] for m in dog_turn["memories"])
    assert call["user_id"] == uid and call["title"] == "Salesforce sync"

    # A memory's sources: the turns it came from, decrypted.
    memories = admin_get(client, deployment, f"/v1/users/{uid}/memories")["memories"]
    wrong = next(m for m in memories if WRONG in m["content"])
    sources = admin_get(
        client, deployment, f"/v1/console/users/{uid}/memories/{wrong['id']}/sources"
    )["sources"]
    assert sources[0]["conversation_id"] == "conv_maria_1"
    assert [t["message"] for t in sources[0]["turns"]] == ["My dog is called Biscuit."]
    r = client.get(
        f"/v1/console/users/usr_nope/memories/{wrong['id']}/sources",
        headers=deployment.auth("admin"),
    )
    assert r.status_code == 404
    assert (
        client.get("/v1/console/conversations/conv_nope", headers=deployment.auth("admin"))
    ).status_code == 404

    # Queue: throughput counts the story; a poison event dead-letters; replay requeues it.
    q = admin_get(client, deployment, "/v1/console/queue")
    assert q["throughput"][0]["completed"] >= 2 and q["dead_letters"] == []
    event_id = push_poison(client, deployment)
    q = admin_get(client, deployment, "/v1/console/queue")
    assert [d["id"] for d in q["dead_letters"]] == [event_id]
    assert q["dead_letters"][0]["error_class"] and q["dead_letters"][0]["error_message"]
    r = client.post("/v1/console/queue/dead-letters/replay", headers=deployment.auth("admin"))
    assert r.status_code == 200 and r.json() == {"replayed": 1}
    q = admin_get(client, deployment, "/v1/console/queue")
    assert q["dead_letters"] == [] and q["counts"]["pending"] >= 1
    assert q["oldest_pending_age_secs"] is not None
