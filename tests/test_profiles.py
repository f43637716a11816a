"""Customer profile (issue 7 §2): learned from the caller's words, enriched after the third
call, explicit feedback pinned, exposed to init; an LLM failure degrades and shows in /health."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.commands.demo import STORY
from db.settings import Settings
from memory import profile
from tests.conftest import Deployment, make_settings
from tests.insight_helpers import drain, init_vars, now, post_call, user_of


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    # An OpenAI-compatible endpoint that refuses connections: enrichment must fail and degrade.
    return make_settings(
        tmp_path / "data",
        reflection_interval_secs=1.0,
        profile_enrichment="llm",
        openai_base_url="http://127.0.0.1:9/v1",
        openai_api_key="sk-test",
        llm_timeout_secs=1.0,
        llm_max_retries=0,
    )


def play(client: TestClient, deployment: Deployment, number: str, calls: int) -> None:
    for i, call in enumerate(STORY[:calls]):
        post_call(
            client,
            deployment,
            f"conv_p{number[-4:]}{i}",
            number,
            call.turns,
            start=now() - timedelta(days=call.days_ago),
            outcome=call.outcome,
            summary=call.summary,
            title=call.summary_title,
        )
        drain(deployment)


def test_preferences_learned_then_enriched_after_third_call(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15552220001"
    admin = deployment.auth("admin")
    play(client, deployment, number, 2)
    user_id = user_of(client, deployment, number)
    p = client.get(f"/v1/users/{user_id}/profile", headers=admin).json()
    assert p["call_count"] == 2
    assert p["communication_style"] == "formal"  # "please", "appreciate", "thank you"
    assert p["common_topics"] == ["login"]
    assert p["enriched_at"] is None and p["industry"] is None  # enrichment waits for call 3
    play_third = STORY[2]
    post_call(client, deployment, "conv_p3", number, play_third.turns, title="Billing")
    drain(deployment)
    p = client.get(f"/v1/users/{user_id}/profile", headers=admin).json()
    assert p["call_count"] == 3 and p["enriched_at"] is not None
    assert p["company_name"] == "Brightside Dental"
    assert p["industry"] == "dental"
    assert p["company_size"] == "11-50"  # "about 12 employees"
    assert any("annual billing" in g for g in p["goals"])
    assert p["pain_points"]
    assert set(p["common_topics"]) == {"login", "billing"}
    # Seed 000's weights: industry 15 + company 10 + size 10 + goals 20 + pain 15 + style 10
    # + preferences 20.
    assert p["completeness"] == 1.0
    assert (
        client.get(f"/v1/users/{user_id}", headers=admin).json()["profile"]["completeness"] == 1.0
    )
    variables = init_vars(client, deployment, number)
    assert variables["communication_style"] == "formal"
    assert variables["preferred_tone"] == "formal"
    assert variables["common_topics"] == "login, billing"
    assert "Brightside Dental" in variables["customer_profile"]
    assert variables["profile_completeness"] == "100"


def test_llm_failure_degrades_to_heuristics_and_is_reported(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15552220002"
    play(client, deployment, number, 3)
    drain(deployment, reflections=True)  # the reflection job asks the (unreachable) LLM
    user_id = user_of(client, deployment, number)
    p = client.get(f"/v1/users/{user_id}/profile", headers=deployment.auth("admin")).json()
    assert p["enrichment_error"] and "Connection" in p["enrichment_error"]
    assert p["company_name"] == "Brightside Dental"  # the heuristic profile stayed
    health = client.get("/health").json()["checks"]["enrichment"]
    assert health["status"] == "warn" and health["mode"] == "llm"
    assert health["profiles_with_errors"] == 1


def test_explicit_feedback_is_pinned_against_inference(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15552220003"
    admin = deployment.auth("admin")
    play(client, deployment, number, 1)
    user_id = user_of(client, deployment, number)
    r = client.post(
        f"/v1/users/{user_id}/profile/feedback",
        json={"text": "Hey, no need to be so formal. Keep it short."},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["preferences"]["tone"] == "casual"
    assert r.json()["preferences"]["detail_level"] == "low"
    assert r.json()["communication_style"] == "casual"
    assert (
        client.post(f"/v1/users/{user_id}/profile/feedback", json={}, headers=admin).status_code
        == 422
    )
    # A formal call later does not override what the caller asked for.
    post_call(client, deployment, "conv_pf2", number, STORY[1].turns)
    drain(deployment)
    p = client.get(f"/v1/users/{user_id}/profile", headers=admin).json()
    assert p["communication_style"] == "casual" and p["preferences"]["tone"] == "casual"
    assert init_vars(client, deployment, number)["detail_level"] == "low"


def test_completeness_weights() -> None:
    assert profile.completeness({}, None) == 0.0
    assert profile.completeness({"industry": "dental", "goals": ["x"]}, "formal") == 0.45
    assert profile.completeness({"preferences": {"tone": "casual"}}, None) == 0.2
