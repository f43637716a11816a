"""Interaction analytics (issue 7 §3) through the admin API over webhook-fed calls."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from tests.conftest import Deployment
from tests.insight_helpers import drain, now, post_call, user_of

LOGIN = (("user", "I can't log in, my password is rejected."), ("agent", "I've reset it."))
BILLING = (("user", "Why was my invoice charged twice?"), ("agent", "I've refunded it."))


def test_user_agent_and_failing_analytics(client: TestClient, deployment: Deployment) -> None:
    admin = deployment.auth("admin")
    n1, n2 = "+15556660001", "+15556660002"
    calls = [
        ("c1", n1, LOGIN, "success", "agent_a", 100, 1),
        ("c2", n1, LOGIN, "failure", "agent_a", 200, 2),
        ("c3", n1, BILLING, "success", "agent_a", 300, 3),
        ("c4", n2, LOGIN, "failure", "agent_b", 50, 4),
        ("c5", n2, BILLING, "unknown", "agent_b", 70, 5),
        ("c6", n2, LOGIN, "failure", "agent_b", 60, 40),  # outside a 30-day window
    ]
    for cid, number, turns, outcome, agent, secs, days in calls:
        post_call(
            client,
            deployment,
            cid,
            number,
            turns,
            outcome=outcome,
            agent_id=agent,
            duration_secs=secs,
            start=now() - timedelta(days=days, minutes=1),
            evaluation={"resolved": "success" if outcome == "success" else "failure"},
        )
    drain(deployment)
    u1 = user_of(client, deployment, n1)
    r = client.get(f"/v1/users/{u1}/analytics", headers=admin).json()
    assert r["calls"] == 3
    assert r["top_topics"][0] == {"topic": "login", "calls": 2, "success": 1, "failure": 1}
    assert r["outcomes"] == {"success": 2, "failure": 1, "unknown": 0}
    assert r["success_rate"] == round(2 / 3, 4) and r["avg_duration_secs"] == 200.0

    agents = client.get("/v1/analytics/agents", params={"days": 30}, headers=admin).json()
    by_id = {a["agent_id"]: a for a in agents["agents"]}
    a = by_id["agent_a"]
    assert a["calls"] == 3 and a["success_rate"] == round(2 / 3, 4)
    assert a["avg_duration_secs"] == 200.0
    assert {t["topic"]: t["calls"] for t in a["by_topic"]} == {"login": 2, "billing": 1}
    assert a["evaluation_criteria"]["resolved"]["success"] == 2
    assert a["evaluation_criteria"]["resolved"]["failure"] == 1
    b = by_id["agent_b"]
    assert b["calls"] == 2  # the 40-day-old call is outside the window
    assert b["outcomes"] == {"success": 0, "failure": 1, "unknown": 1}
    assert b["success_rate"] == 0.0
    only_b = client.get(
        "/v1/analytics/agents", params={"agent_id": "agent_b", "days": 60}, headers=admin
    ).json()
    assert [x["agent_id"] for x in only_b["agents"]] == ["agent_b"]
    assert only_b["agents"][0]["calls"] == 3

    failing = client.get("/v1/analytics/failing", params={"days": 7}, headers=admin).json()
    assert failing["failing"] == [
        {
            "task_type": "login",
            "calls": 3,
            "failures": 2,
            "failure_rate": round(2 / 3, 4),
            "success_rate": round(1 / 3, 4),
        }
    ]
    stats = client.get("/v1/stats", headers=admin).json()
    assert stats["session_interactions"] == 6 and stats["profiles"] == 2
    assert client.get("/v1/analytics/agents", headers=deployment.auth("tool")).status_code == 401
