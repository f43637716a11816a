"""The vendored ElevenLabs fixtures are the shared ones, byte for byte."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES, SHARED

UPSTREAM = SHARED / "elevenlabs" / "fixtures"


def test_vendored_fixtures_are_present() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert {"post_call_transcription.json", "signature_test_vectors.json"} <= names
    assert len(names) >= 16


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="../shared is not beside this clone")
def test_vendored_fixtures_match_the_shared_ones() -> None:
    upstream = {p.name: p.read_bytes() for p in UPSTREAM.iterdir() if p.is_file()}
    vendored = {p.name: p.read_bytes() for p in FIXTURES.iterdir() if p.is_file()}
    assert vendored == upstream, (
        "refresh: cp ../shared/elevenlabs/fixtures/* tests/fixtures/elevenlabs/"
    )
