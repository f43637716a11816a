"""Recurring-issue patterns (issue 7 §4): learned across a tenant's callers with usage count,
last seen and success rate; surfaced to the memory_query tool as procedural memories; a
forgotten caller's words leave the tenant-wide text."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from tests.conftest import Deployment
from tests.insight_helpers import drain, now, post_call, user_of

ALICE = (
    ("agent", "Hello, how can I help?"),
    ("user", "Hi, the mobile app keeps crashing with a sync error when I open my calendar."),
    ("agent", "I've cleared the sync cache on your account, please reopen the app."),
)
BOB = (
    ("agent", "Hello, how can I help?"),
    ("user", "My phone app crashes with a sync error every time I open the calendar."),
    ("agent", "I've cleared the sync cache for your account and reset the calendar token."),
)
CAROL_FAIL = (
    ("agent", "Hello, how can I help?"),
    ("user", "The app crashes with a sync error whenever I open my calendar view."),
    ("agent", "Please try reinstalling the app."),
)
OTHER = (
    ("agent", "Hello?"),
    ("user", "I was charged twice for my subscription this month."),
    ("agent", "I've refunded the duplicate charge."),
)


def test_patterns_learned_across_callers_and_surfaced_to_the_tool(
    client: TestClient, deployment: Deployment
) -> None:
    admin = deployment.auth("admin")
    post_call(client, deployment, "conv_a", "+15553330001", ALICE, start=now() - timedelta(days=3))
    post_call(client, deployment, "conv_b", "+15553330002", BOB, start=now() - timedelta(days=2))
    post_call(
        client,
        deployment,
        "conv_c",
        "+15553330003",
        CAROL_FAIL,
        outcome="failure",
        start=now() - timedelta(days=1),
    )
    post_call(client, deployment, "conv_d", "+15553330004", OTHER)
    drain(deployment)
    found = client.get("/v1/patterns", headers=admin).json()["patterns"]
    assert len(found) == 2, found
    crash = found[0]
    assert crash["usage_count"] == 3 and crash["users"] == 3
    assert crash["success_count"] == 2 and crash["success_rate"] == round(2 / 3, 4)
    assert "sync error" in crash["problem"]
    # The latest fix that worked (Bob's), not Carol's failed attempt.
    assert crash["resolution"].startswith("I've cleared the sync cache for your account")
    assert found[1]["usage_count"] == 1 and "refunded" in found[1]["resolution"]

    # Carol's call failed, but she now has the tenant's working fix as a procedural memory,
    # which the tool finds on her next call.
    carol = user_of(client, deployment, "+15553330003")
    tool = deployment.auth("tool")
    query = {"query": "app crashing sync error calendar", "user_id": carol}
    memories = client.post("/tools/memory-query", json=query, headers=tool).json()["memories"]
    fixes = [
        m for m in memories if "was fixed by: I've cleared the sync cache for your" in m["content"]
    ]
    assert fixes and fixes[0]["sector"] == "procedural"
    assert fixes[0]["content"].startswith("Last time this problem")
    # An agent asking for procedural knowledge gets it first.
    query["sectors"] = ["procedural"]
    first = client.post("/tools/memory-query", json=query, headers=tool).json()["memories"][0]
    assert first["content"] == fixes[0]["content"]
    # Tenant-wide lookup for a caller with no history.
    hits = client.get("/v1/patterns/search", params={"q": "calendar sync crash"}, headers=admin)
    assert hits.json()["results"][0]["pattern_id"] == crash["id"]
    # Replaying an event does not count it twice.
    with deployment.db.write() as session:
        from db.models import WebhookEvent

        event = session.query(WebhookEvent).filter_by(conversation_id="conv_b").one()
        event.status, event.run_after = "pending", now() - timedelta(seconds=1)
    drain(deployment)
    again = client.get("/v1/patterns", headers=admin).json()["patterns"][0]
    assert again["usage_count"] == 3


def test_forget_removes_the_callers_words_from_tenant_patterns(
    client: TestClient, deployment: Deployment
) -> None:
    admin = deployment.auth("admin")
    post_call(client, deployment, "conv_fa", "+15553330011", ALICE, start=now() - timedelta(days=2))
    post_call(client, deployment, "conv_fb", "+15553330012", BOB, start=now() - timedelta(days=1))
    post_call(client, deployment, "conv_fd", "+15553330014", OTHER)
    drain(deployment)
    bob = user_of(client, deployment, "+15553330012")
    other = user_of(client, deployment, "+15553330014")
    export = client.get(f"/v1/users/{bob}/export", headers=admin).json()
    assert export["issue_patterns"][0]["resolved"] is True
    # Alice wrote the problem text, Bob the current resolution.
    alice = user_of(client, deployment, "+15553330011")
    assert client.delete(f"/v1/users/{alice}", headers=admin).status_code == 200
    crash_row = next(
        p
        for p in client.get("/v1/patterns", headers=admin).json()["patterns"]
        if "sync" in p["problem"]
    )
    assert (
        crash_row["problem"]
        == "My phone app crashes with a sync error every time I open the calendar."
    )
    assert crash_row["usage_count"] == 1 and crash_row["users"] == 1
    assert crash_row["resolution"].startswith("I've cleared the sync cache for your account")
    # Bob was the last reporter: the pattern goes with him.
    assert client.delete(f"/v1/users/{bob}", headers=admin).status_code == 200
    remaining = client.get("/v1/patterns", headers=admin).json()["patterns"]
    assert [p["problem"] for p in remaining] == [
        "I was charged twice for my subscription this month."
    ]
    client.delete(f"/v1/users/{other}", headers=admin)
    assert client.get("/v1/patterns", headers=admin).json()["patterns"] == []
