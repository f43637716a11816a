"""Local extractor: both roles, chit-chat dropped, names and dates resolved, provenance kept."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from memory.call_input import call_from_elevenlabs
from memory.extractors.local import LocalExtractor, classify, is_chitchat
from memory.extractors.text import resolve_relative_dates, to_third_person
from memory.types import CallForExtraction, Turn
from tests.conftest import FIXTURES

START = datetime(2025, 11, 9, 18, 44, 33, tzinfo=UTC)


def call(*turns: tuple[str, str], **kw: object) -> CallForExtraction:
    return CallForExtraction(
        conversation_id="c1",
        start_time=START,
        turns=tuple(Turn(i, role, text) for i, (role, text) in enumerate(turns)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_both_roles_commitment_and_fact() -> None:
    r = LocalExtractor().extract(
        call(
            ("agent", "Hi John, welcome back!"),
            ("user", "Hi. I'm the head of procurement at Acme and I prefer email for updates."),
            ("agent", "I'll send you the pricing PDF by Friday."),
            ("user", "Thanks, bye!"),
            caller_name="John",
        )
    )
    got = [(m.content, m.sector, m.kind, m.sources, m.role) for m in r.memories]
    assert got == [
        (
            "John is the head of procurement at Acme and John prefers email for updates.",
            "procedural",
            "preference",
            (1,),
            "user",
        ),
        (
            "The agent will send John the pricing PDF by Friday.",
            "episodic",
            "commitment",
            (2,),
            "agent",
        ),
    ]
    assert r.extractor == "local"
    commitment = r.memories[1]
    # episodic base 0.45 + commitment 0.3 + proper noun (Friday) 0.05 + 4 content words 0.04
    assert commitment.salience == pytest.approx(0.84)


def test_chitchat_dropped() -> None:
    for s in [
        "Hi John, welcome back!",
        "Thanks so much!",
        "Okay.",
        "Sounds good, bye!",
        "Wow, cool!",
    ]:
        assert is_chitchat(s), s
    assert not is_chitchat("My order number is 4471.")
    r = LocalExtractor().extract(call(("user", "Hello! How are you?"), ("agent", "Great, thanks!")))
    assert r.memories == []


def test_sector_rules() -> None:
    assert classify("Please always call me in the morning.", "user")[0] == "procedural"
    assert classify("I was so frustrated and upset about it.", "user")[0] == "emotional"
    assert classify("I usually call during lunch.", "user")[0] == "reflective"
    assert classify("I went to the support group yesterday.", "user")[0] == "episodic"
    assert classify("My dog's name is Rex.", "user")[0] == "semantic"
    assert classify("We're moving to HubSpot next quarter.", "user") == ("semantic", "fact")


def test_third_person_and_dates() -> None:
    assert (
        to_third_person("I've told you my address; you're great.", "Ann", "Bob")
        == "Ann has told Bob Ann's address; Bob is great."
    )
    assert (
        resolve_relative_dates("I went there yesterday and go again next month.", START)
        == "I went there on 8 November 2025 and go again in December 2025."
    )


def test_speaker_prefix_and_shares_locomo_style() -> None:
    r = LocalExtractor().extract(
        call(
            ("user", "Caroline: I went to a LGBTQ support group yesterday and it was so powerful."),
            ("agent", "Melanie: I painted that lake sunrise last year! [shares a photo of a lake]"),
        )
    )
    contents = [(m.content, m.sources) for m in r.memories]
    assert contents == [
        ("Caroline went to a LGBTQ support group on 8 November 2025 and it was so powerful.", (0,)),
        ("Melanie painted that lake sunrise in 2024! Melanie shared a photo of a lake.", (1,)),
    ]


def test_elevenlabs_fixture_end_to_end() -> None:
    data = json.loads((FIXTURES / "post_call_transcription.json").read_text())["data"]
    c = call_from_elevenlabs(data)
    assert c.caller_name == "John Doe"
    assert c.recalled[0] == "Caller's company uses Salesforce CRM."
    assert len(c.turns) == 8
    assert c.turns[2].text == ""
    r = LocalExtractor().extract(c)
    by_content = {m.content: m for m in r.memories}
    # The agent reading back the recalled memory ("You're on Salesforce.") is not stored.
    assert not any("on Salesforce" in m for m in by_content)
    hubspot = by_content["John Doe and others are moving to HubSpot next quarter."]
    assert (hubspot.sector, hubspot.sources, hubspot.is_update) == ("semantic", (5,), True)
    summary = next(m for m in r.memories if m.kind == "summary")
    assert summary.content.startswith("Call on 9 November 2025: Returning caller John")
    assert summary.sources == (0, 1, 4, 5, 6, 7)
    sentiment = next(m for m in r.memories if m.sector == "emotional")
    assert (
        sentiment.content
        == "John Doe's customer sentiment on the call of 9 November 2025 was positive."
    )
    follow = next(m for m in r.memories if m.content.startswith("Follow-up"))
    assert follow.is_update
    assert follow.sources == (5, 6)


def test_minimal_fixture_tolerated() -> None:
    data = json.loads((FIXTURES / "post_call_transcription_minimal.json").read_text())["data"]
    r = LocalExtractor().extract(call_from_elevenlabs(data))
    assert isinstance(r.memories, list)


def test_deterministic_and_fast() -> None:
    six = call(
        ("agent", "Thanks for calling Acme support, how can I help?"),
        ("user", "My name is Dana and my router keeps dropping the connection every evening."),
        ("agent", "I'm sorry about that. I'll escalate this to our network team today."),
        ("user", "Please text me instead of calling, I'm usually in meetings."),
        ("agent", "Noted, we'll text you. Anything else?"),
        ("user", "No, that's it. Thanks!"),
    )
    ex = LocalExtractor()
    first = ex.extract(six).memories
    assert [m.content for m in ex.extract(six).memories] == [m.content for m in first]
    start = time.perf_counter()
    for _ in range(100):
        ex.extract(six)
    per_sec = 100 / (time.perf_counter() - start)
    assert per_sec >= 20, per_sec


def test_self_introduced_caller_is_named_and_greetings_are_dropped() -> None:
    from datetime import UTC, datetime

    from memory.extractors.local import LocalExtractor
    from memory.types import CallForExtraction, Turn

    call = CallForExtraction(
        conversation_id="c1",
        start_time=datetime(2026, 11, 20, tzinfo=UTC),
        turns=(
            Turn(index=0, role="agent", text="Who am I speaking with?", time_in_call_secs=0),
            Turn(
                index=1,
                role="user",
                text="Hi, this is Maria Lopez. I work at Acme Logistics.",
                time_in_call_secs=2,
            ),
            Turn(
                index=2,
                role="user",
                text="Please always call me back after 5 pm.",
                time_in_call_secs=5,
            ),
        ),
    )
    contents = [m.content for m in LocalExtractor().extract(call).memories]
    joined = " | ".join(contents)
    assert "The caller's name is Maria Lopez. Maria Lopez works at Acme Logistics." in joined
    assert "call Maria Lopez back after 5 pm" in joined
    assert not any(c.startswith("Hi") for c in contents)
    assert "The caller" not in joined.replace("The caller's name is", "")


def test_role_nouns_are_lowercase_mid_sentence() -> None:
    from memory.extractors.local import lower_mid_sentence_roles

    assert (
        lower_mid_sentence_roles(
            "Please call The caller back. The agent will reset it for The caller."
        )
        == "Please call the caller back. The agent will reset it for the caller."
    )
