"""Deterministic text helpers for the local extractor: sentences, perspective, dates.

Rule-based on purpose: the local extractor must run at well over 20 calls/s with no model, and
give the same output for the same call every time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9\[])")
_WS = re.compile(r"\s+")
SPEAKER_PREFIX = re.compile(r"^\s*([A-Z][\w.'-]{0,40}(?: [A-Z][\w.'-]{0,40})?):\s+(.*)$", re.S)
_SHARES = re.compile(r"\s*\[shares ([^\]]+)\]\s*")

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def normalise_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def split_speaker(text: str) -> tuple[str | None, str]:
    """ "Caroline: hi" -> ("Caroline", "hi"). Transcripts relayed by some integrations (and the
    LoCoMo protocol) prefix each message with the speaker's name."""
    m = SPEAKER_PREFIX.match(text)
    if m:
        return m.group(1), m.group(2)
    return None, text


def split_shares(text: str) -> tuple[str, list[str]]:
    """Pull out "[shares a photo of X]" annotations (image captions) as separate facts."""
    shares = [normalise_ws(m) for m in _SHARES.findall(text)]
    return normalise_ws(_SHARES.sub(" ", text)), shares


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(normalise_ws(text)) if s.strip()]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


# --- perspective: first/second person -> named third person ---------------------------------

# Present-tense verbs that take an -s after a third-person subject. A short list covers the
# verbs people use about themselves on calls; anything else is left as spoken.
_THIRD_PERSON = {
    "am": "is",
    "have": "has",
    "do": "does",
    "go": "goes",
    "was": "was",
    "were": "was",
    "don't": "doesn't",
    "haven't": "hasn't",
    "aren't": "isn't",
    "are": "is",
}
_ADD_S = frozenset(
    "like love want need prefer think hope plan use work live own run play enjoy hate feel "
    "know believe miss wish try get make take keep teach study paint write read cook "
    "volunteer collect remember agree mean intend expect guess".split()
)


def _third_person_verb(verb: str) -> str:
    low = verb.lower()
    if low in _THIRD_PERSON:
        return _THIRD_PERSON[low]
    if low in _ADD_S:
        if low.endswith(("sh", "ch", "ss", "x", "o")):
            return verb + "es"
        if low.endswith("y") and low[-2:-1] not in "aeiou":
            return verb[:-1] + "ies"
        return verb + "s"
    return verb


_FIRST_SUBJ = re.compile(r"\bI\b(?:'m|'ve|'ll|'d)?(?:\s+(\w+(?:'t)?))?")


def to_third_person(text: str, speaker: str, listener: str) -> str:
    """Rewrite so the sentence stands alone: "I'm moving" -> "Ann is moving",
    "your order" -> "Bob's order"."""

    def first(m: re.Match[str]) -> str:
        token = m.group(0)
        nxt = m.group(1)
        if token.startswith("I'm"):
            return f"{speaker} is" + (f" {nxt}" if nxt else "")
        if token.startswith("I've"):
            return f"{speaker} has" + (f" {nxt}" if nxt else "")
        if token.startswith("I'll"):
            return f"{speaker} will" + (f" {nxt}" if nxt else "")
        if token.startswith("I'd"):
            return f"{speaker} would" + (f" {nxt}" if nxt else "")
        if nxt:
            return f"{speaker} {_third_person_verb(nxt)}"
        return speaker

    out = _FIRST_SUBJ.sub(first, text)
    out = re.sub(r"\b[Mm]y\b", f"{speaker}'s", out)
    out = re.sub(r"\b[Mm]ine\b", f"{speaker}'s", out)
    out = re.sub(r"\b[Mm]yself\b", speaker, out)
    out = re.sub(r"\bme\b", speaker, out)
    out = re.sub(r"\b[Ww]e're\b", f"{speaker} and others are", out)
    out = re.sub(r"\b[Ww]e've\b", f"{speaker} and others have", out)
    out = re.sub(r"\b[Ww]e'll\b", f"{speaker} and others will", out)
    out = re.sub(r"\b[Ww]e\b", f"{speaker} and others", out)
    out = re.sub(r"\b[Oo]ur\b", f"{speaker}'s", out)
    out = re.sub(r"\bus\b", f"{speaker} and others", out)
    out = re.sub(r"\b[Yy]ou're\b", f"{listener} is", out)
    out = re.sub(r"\b[Yy]ou've\b", f"{listener} has", out)
    out = re.sub(r"\b[Yy]ou'll\b", f"{listener} will", out)
    out = re.sub(r"\b[Yy]ou'd\b", f"{listener} would", out)
    out = re.sub(r"\b[Yy]ou are\b", f"{listener} is", out)
    out = re.sub(r"\b[Yy]our\b", f"{listener}'s", out)
    out = re.sub(r"\b[Yy]ou\b", listener, out)
    return out[:1].upper() + out[1:]


# --- relative dates -> absolute ---------------------------------------------------------------


def format_date(d: datetime) -> str:
    return f"{d.day} {d.strftime('%B %Y')}"


def _month_shift(d: datetime, months: int) -> datetime:
    month = d.month - 1 + months
    return d.replace(year=d.year + month // 12, month=month % 12 + 1, day=1)


def resolve_relative_dates(text: str, when: datetime) -> str:
    """Anchor relative time words to the call date, so "yesterday" still means something when
    the memory is read months later."""
    day = timedelta(days=1)
    rules: list[tuple[str, str]] = [
        (r"\bthe day before yesterday\b", f"on {format_date(when - 2 * day)}"),
        (r"\byesterday\b", f"on {format_date(when - day)}"),
        (r"\btomorrow\b", f"on {format_date(when + day)}"),
        (r"\btoday\b", f"on {format_date(when)}"),
        (r"\btonight\b", f"on the night of {format_date(when)}"),
        (r"\blast night\b", f"on the night of {format_date(when - day)}"),
        (r"\blast week\b", f"the week before {format_date(when)}"),
        (r"\bnext week\b", f"the week after {format_date(when)}"),
        (r"\blast month\b", f"in {_month_shift(when, -1).strftime('%B %Y')}"),
        (r"\bnext month\b", f"in {_month_shift(when, 1).strftime('%B %Y')}"),
        (r"\blast year\b", f"in {when.year - 1}"),
        (r"\bnext year\b", f"in {when.year + 1}"),
        (r"\bthis year\b", f"in {when.year}"),
    ]
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text, flags=re.I)
    return text
