"""Consolidation, supersession and linking rules with exact expected outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from memory.consolidation import (
    Action,
    Existing,
    Thresholds,
    decide,
    merge_sources,
    merge_within_call,
    replaced_objects,
)
from memory.linking import co_retrieval_updates, plan_links, reinforce_weight
from memory.types import CandidateMemory


def cand(content: str, sector: str = "semantic", **kw: object) -> CandidateMemory:
    return CandidateMemory(content=content, sector=sector, salience=0.5, sources=(1,), **kw)  # type: ignore[arg-type]


def test_near_duplicate_same_sector_reinforces_best() -> None:
    d = decide(
        cand("Melanie likes pottery a lot."),
        [
            Existing(7, "Melanie likes pottery.", "semantic", 0.983),
            Existing(8, "Melanie likes pottery classes.", "semantic", 0.91),
        ],
    )
    assert d.action is Action.REINFORCE
    assert d.target_id == 7


def test_duplicate_in_other_sector_is_not_merged() -> None:
    d = decide(
        cand("Melanie likes pottery."), [Existing(7, "Melanie likes pottery.", "emotional", 0.95)]
    )
    assert d.action is Action.INSERT
    assert d.supersede == ()


def test_below_duplicate_threshold_inserts() -> None:
    d = decide(cand("A"), [Existing(7, "B", "semantic", 0.8999)])
    assert d == decide(cand("A"), [])
    assert d.action is Action.INSERT


def test_negation_is_a_contradiction_not_a_duplicate() -> None:
    d = decide(
        cand("Melanie no longer likes pottery."),
        [Existing(7, "Melanie likes pottery.", "semantic", 0.857)],
    )
    assert d.action is Action.INSERT
    assert d.supersede == (7,)
    assert d.reason == "contradiction"


def test_named_replacement_supersedes_even_when_vectors_disagree() -> None:
    # MiniLM puts these at cosine 0.118: only the explicit "from Salesforce" catches it.
    assert replaced_objects("Update CRM on file from Salesforce to HubSpot next quarter.") == [
        "Salesforce"
    ]
    d = decide(
        cand("Follow-up: update CRM on file from Salesforce to HubSpot.", is_update=True),
        [
            Existing(3, "The caller's company uses Salesforce CRM.", "semantic", 0.118),
            Existing(4, "The caller likes Salesforce's UI.", "emotional", 0.3),
        ],
    )
    assert d.supersede == (3,)


def test_announced_change_supersedes_similar_fact() -> None:
    d = decide(
        cand("John Doe is switching to HubSpot.", is_update=True),
        [
            Existing(1, "John Doe uses Salesforce.", "semantic", 0.522),
            Existing(2, "John Doe likes golf.", "semantic", 0.2),
        ],
    )
    assert d.supersede == (1,)
    # Without the change cue the same similarity is not enough.
    assert (
        decide(cand("John Doe is on HubSpot."), [Existing(1, "x", "semantic", 0.522)]).supersede
        == ()
    )


def test_same_attribute_new_value_supersedes() -> None:
    d = decide(
        cand("Caroline's email is c.l@y.org."),
        [Existing(5, "Caroline's email is caro@x.com.", "semantic", 0.778)],
    )
    assert d.supersede == (5,)


def test_supersede_at_most_two_most_similar() -> None:
    existing = [Existing(i, f"fact {i}", "semantic", s) for i, s in [(1, 0.6), (2, 0.7), (3, 0.55)]]
    d = decide(cand("moving to X", is_update=True), existing)
    assert d.supersede == (2, 1)
    d = decide(
        cand("moving to X", is_update=True), existing, thresholds=Thresholds(max_superseded=3)
    )
    assert d.supersede == (2, 1, 3)


def test_inactive_memories_are_ignored() -> None:
    d = decide(
        cand("Melanie likes pottery."),
        [Existing(7, "Melanie likes pottery.", "semantic", 0.99, state="archived")],
    )
    assert d.action is Action.INSERT


def test_agent_echo_of_recalled_memory_skipped_caller_kept() -> None:
    agent = cand("John Doe is on Salesforce.", role="agent")
    assert decide(agent, [], recalled_similarity=0.80).action is Action.SKIP
    assert decide(agent, [], recalled_similarity=0.79).action is Action.INSERT
    user = cand("John Doe is on Salesforce.", role="user")
    assert decide(user, [], recalled_similarity=0.95).action is Action.INSERT


def test_merge_within_call_prefers_caller_wording_and_unions_sources() -> None:
    a = CandidateMemory(
        "The agent noted John moves to HubSpot.", "semantic", 0.6, (6,), role="agent"
    )
    b = CandidateMemory(
        "John is moving to HubSpot.", "semantic", 0.8, (5,), role="user", is_update=True
    )
    c = CandidateMemory("John likes golf.", "semantic", 0.4, (7,), role="user")
    v = np.array([[1, 0], [0.96, 0.28], [0, 1]], dtype=np.float32)
    out = merge_within_call([a, b, c], v)
    assert [m.candidate.content for m in out] == ["John is moving to HubSpot.", "John likes golf."]
    assert out[0].candidate.sources == (5, 6)
    assert out[0].candidate.salience == 0.8
    assert out[0].candidate.is_update is True
    np.testing.assert_allclose(out[0].vector, [0.96, 0.28])


def test_merge_sources_contract_shape() -> None:
    s = merge_sources(None, "c1", [3, 1])
    assert s == [{"conversation_id": "c1", "turns": [1, 3]}]
    s = merge_sources(s, "c1", [2, 3])
    assert s == [{"conversation_id": "c1", "turns": [1, 2, 3]}]
    s = merge_sources(s, "c2", [0])
    assert s == [
        {"conversation_id": "c1", "turns": [1, 2, 3]},
        {"conversation_id": "c2", "turns": [0]},
    ]


def test_plan_links_topk_threshold_both_directions() -> None:
    neighbours = [
        (1, 0.95),
        (2, 0.79),
        (3, 0.8),
        (4, 0.9),
        (5, 0.85),
        (6, 0.83),
        (7, 0.99),
        (9, 1.0),
    ]
    links = plan_links(9, neighbours, top_k=5, threshold=0.8)
    pairs = [(link.source, link.target, link.weight) for link in links]
    assert pairs[:4] == [(9, 7, 0.99), (7, 9, 0.99), (9, 1, 0.95), (1, 9, 0.95)]
    targets = [link.target for link in links if link.source == 9]
    assert targets == [7, 1, 4, 5, 6]  # 3 (0.80) is sixth; 2 is below threshold; 9 is itself
    assert all(any(b.source == a.target and b.target == a.source for b in links) for a in links)
    assert plan_links(9, neighbours, top_k=0) == []


def test_co_retrieval_reinforces_only_existing_links() -> None:
    assert reinforce_weight(0.8) == pytest.approx(0.81)
    assert reinforce_weight(1.0) == 1.0
    links = {(1, 2): 0.8, (2, 1): 0.8, (2, 3): 0.9}
    out = co_retrieval_updates([1, 2, 3, 1], links)
    assert out == {
        (1, 2): pytest.approx(0.81),
        (2, 1): pytest.approx(0.81),
        (2, 3): pytest.approx(0.905),
    }
