"""The ``local`` extractor: rules only, no model, deterministic, thousands of turns per second.

Per turn (both roles): split into sentences, drop chit-chat and bare questions, rewrite into a
self-contained third-person statement with names and absolute dates, classify the sector by cue
words, score salience, and group the turn's sentences by sector into at most a few memories.
ElevenLabs' own analysis (transcript summary, data collection results) adds call-level
memories when present. Quality is bounded by the rules; ``llm`` is the precise option.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from memory.extractors.text import (
    format_date,
    normalise_ws,
    resolve_relative_dates,
    sentences,
    split_shares,
    split_speaker,
    to_third_person,
    words,
)
from memory.types import (
    CallForExtraction,
    CandidateMemory,
    ExtractionResult,
    Sector,
    Turn,
)

NAME = "local"
# One memory's text; longer turns are cut at a sentence boundary.
MAX_CONTENT_CHARS = 360

STOPWORDS = frozenset(
    "a an the and or but if so of to in on at for with from by about as is are was were be "
    "been being am do does did have has had i me my you your we our us it its this that these "
    "those there here what which who whom how when where why can could would should will shall "
    "may might must just really very too also yeah yes no not oh ok okay um uh hmm well like "
    "get got go going gonna thing things stuff lot lots much many some any all more most "
    "she he her him his they them their hey hi hello thanks thank great good nice cool wow "
    "awesome glad sure right that's it's i'm you're we're they're there's what's i've "
    "you've i'll you'll i'd you'd".split()
)

_CHITCHAT = re.compile(
    r"^(?:(?:hi|hey|hello|good (?:morning|afternoon|evening)|bye|goodbye|see you|take care|"
    r"thanks?(?: you)?(?: so much| very much)?|thank you|you're welcome|no problem|ok(?:ay)?|"
    r"sure|great|perfect|awesome|cool|wow|yes|yeah|no|nope|alright|all right|sounds good|"
    r"that's (?:all|it|great|cool|awesome|amazing)|anything else[^.?!]*|"
    r"how (?:are|have) you(?: been)?|nice to (?:meet|see|hear from) you|"
    r"is there anything else[^.?!]*|have a (?:good|great|nice) (?:day|one|weekend))"
    r"[\s,.!?]*)+$",
    re.I,
)

_COMMITMENT = re.compile(
    r"\b(?:I'll|I will|we'll|we will|I'm going to|we're going to|let me|I can|I've|I have)\b"
    r"[^.?!]*\b(?:send|email|call|text|follow up|schedule|book|arrange|ship|refund|process|"
    r"update|cancel|set up|reach out|get back|check|escalate|forward|confirm|issue|credit|"
    r"remind|sent|scheduled|booked|issued|updated|cancelled|canceled|noted|logged)\b",
    re.I,
)
_PROCEDURAL = re.compile(
    r"\b(?:prefer(?:s|red)? (?:to be |being )?(?:contacted|called|emailed|texted|reached)|"
    r"(?:call|email|text|contact|reach) me|best (?:time|way) to|don't (?:call|email|text)|"
    r"please (?:always|never|don't|do not|make sure|use|send)|from now on|in the future|"
    r"next time|make sure|how to|the steps?|instructions?|in the (?:morning|evening)s?|"
    r"by (?:email|phone|text|sms)|via (?:email|phone|text|sms)|"
    r"prefer(?:s)? (?:email|phone|text|sms|calls?|mornings?|afternoons?|evenings?)|"
    r"only (?:call|email|text)|routine|always (?:use|send|call|check))\b",
    re.I,
)
_EMOTIONAL = re.compile(
    r"\b(?:feel|feels|felt|feeling|happy|happier|sad|upset|angry|frustrat\w*|annoy\w*|"
    r"disappoint\w*|excit\w*|thrill\w*|stress\w*|worr\w*|anxious|nervous|scared|afraid|"
    r"proud|grateful|thankful|lonely|overwhelm\w*|relie(?:f|ved)|inspir\w*|hate|furious|"
    r"delighted|satisf\w*|unhappy|emotional|heartbroken|love (?:it|that|this)|"
    r"means (?:a lot|so much)|amazing|awful|terrible)\b",
    re.I,
)
_REFLECTIVE = re.compile(
    r"\b(?:always|usually|every (?:time|week|month|day|year|summer|morning|night)|"
    r"tend(?:s)? to|often|typically|habit|pattern|again and again|keeps? (?:calling|having)|"
    r"each time|whenever|most (?:days|weekends)|regularly|realized|learned that|"
    r"taught (?:me|us)|lesson)\b",
    re.I,
)
_EPISODIC = re.compile(
    r"\b(?:yesterday|today|tonight|tomorrow|last (?:week|month|year|night|weekend|time)|"
    r"next (?:week|month|year|quarter|weekend)|ago|went|visited|bought|ordered|called|"
    r"happened|attended|joined|started|finished|moved|got|took|made|met|saw|did|had|"
    r"signed|paid|received|returned|booked|traveled|travelled|ran|won|lost|broke|"
    r"on (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)|"
    r"(?:january|february|march|april|may|june|july|august|september|october|november|"
    r"december) \d|\d{1,2}(?:st|nd|rd|th)? of|will|going to|planning|plan to)\b",
    re.I,
)
_UPDATE = re.compile(
    r"\b(?:moving (?:to|over to)|moved (?:to|over to)|switch(?:ed|ing)? (?:to|over)|"
    r"chang(?:ed|ing) (?:to|our|my)|no longer|not [^.?!]{0,30}any ?more|instead of|"
    r"replac(?:ed|ing)|now (?:use|uses|using|prefer|prefers|live|lives|work|works)|"
    r"new (?:address|number|phone|email|provider|plan|job|home)|updated? (?:my|our)|"
    r"from \w+(?: \w+)? to)\b",
    re.I,
)
_NUMBERISH = re.compile(r"\d|\$|€|£|%")
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}")

BASE_SALIENCE = {
    Sector.SEMANTIC: 0.55,
    Sector.EPISODIC: 0.45,
    Sector.PROCEDURAL: 0.7,
    Sector.EMOTIONAL: 0.4,
    Sector.REFLECTIVE: 0.55,
}


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 1]


_GREETING_NAME = re.compile(
    r"^(?:hi|hey|hello|welcome back|good (?:morning|afternoon|evening))"
    r"(?:,?\s+[A-Z][a-z]+)?[\s,.!]*(?:welcome back|good to (?:see|hear) you|"
    r"nice to (?:see|hear from) you|how are you(?: doing)?)?[\s,.!?]*$",
    re.I,
)
# Spoken discourse openers that add nothing to a stored statement.
_OPENER = re.compile(
    r"^(?:(?:hi|hey|hello|good (?:morning|afternoon|evening)|"
    r"and|so|well|also|actually|anyway|oh|um|uh|yeah|yes|okay|ok|right|great|partly|"
    r"sure|alright|please note that|just so you know,?|noted|got it|by the way,?)[\s,:;.!-]+)+",
    re.I,
)


def strip_opener(sentence: str) -> str:
    out = _OPENER.sub("", sentence).strip()
    return out[:1].upper() + out[1:] if out else out


def is_chitchat(sentence: str) -> bool:
    s = sentence.strip()
    if _GREETING_NAME.match(s):
        return True
    if _CHITCHAT.match(s):
        return True
    # Two content words ("Sounds fun!") carry nothing a later call needs.
    return len(content_words(s)) < 2 and not _NUMBERISH.search(s)


def classify(sentence: str, role: str) -> tuple[Sector, str]:
    """(sector, kind) by cue words; the first matching rule wins, most specific first."""
    if role == "agent" and _COMMITMENT.search(sentence):
        return Sector.EPISODIC, "commitment"
    if _PROCEDURAL.search(sentence):
        return Sector.PROCEDURAL, "preference"
    if _REFLECTIVE.search(sentence):
        return Sector.REFLECTIVE, "pattern"
    # A changed fact ("we're moving to HubSpot") is a fact about the present, not an event.
    if _UPDATE.search(sentence):
        return Sector.SEMANTIC, "fact"
    emotional = len(_EMOTIONAL.findall(sentence))
    if emotional and emotional * 6 >= len(content_words(sentence)):
        return Sector.EMOTIONAL, "emotion"
    if _EPISODIC.search(sentence):
        return Sector.EPISODIC, "event"
    if emotional:
        return Sector.EMOTIONAL, "emotion"
    return Sector.SEMANTIC, "fact"


def salience(sentence: str, sector: Sector, kind: str, role: str) -> float:
    s = BASE_SALIENCE[sector]
    if kind == "commitment":
        s += 0.3
    if _NUMBERISH.search(sentence):
        s += 0.1
    if _PROPER.search(sentence):
        s += 0.05
    if role == "user":
        s += 0.05
    if _UPDATE.search(sentence):
        s += 0.1
    n = len(content_words(sentence))
    s += min(n, 12) * 0.01
    return round(min(1.0, max(0.05, s)), 4)


# "this is Maria Lopez", "my name is Maria": a caller who introduces themselves is named in
# every memory of the call instead of "The caller" (names resolved, self-contained memories).
_SELF_INTRO = re.compile(
    r"\b(?:my name is|my name's|this is|call me)\s+([A-Z][a-z]+(?:[ -][A-Z][a-z]+)?)\b"
)
_INTRO_SENTENCE = re.compile(
    r"^(?i:my name is|my name's|this is|call me)\s+([A-Z][a-z]+(?:[ -][A-Z][a-z]+)?)[.!]?$"
)
_NOT_NAMES = frozenset({"The", "This", "That", "It", "Support", "Sales", "Billing", "Acme"})
# Role nouns inserted mid-sentence by the third-person rewrite read "call The caller back".
_MID_ROLE = re.compile(r"(?<=[^.!?] )The (caller|agent)\b")


def introduced_name(turns: Iterable[Turn]) -> str | None:
    for turn in turns:
        if turn.role != "user":
            continue
        match = _SELF_INTRO.search(turn.text)
        if match and match.group(1).split()[0] not in _NOT_NAMES:
            return match.group(1)
    return None


def lower_mid_sentence_roles(text: str) -> str:
    return _MID_ROLE.sub(lambda m: f"the {m.group(1)}", text)


class _Names:
    def __init__(self, call: CallForExtraction) -> None:
        self.caller = call.caller_name or introduced_name(call.turns) or "The caller"
        self.agent = call.agent_name or "The agent"

    def speaker(self, turn: Turn, prefixed: str | None) -> str:
        if prefixed:
            return prefixed
        return self.caller if turn.role == "user" else self.agent

    def listener(self, turn: Turn, speakers: dict[str, str]) -> str:
        other = "agent" if turn.role == "user" else "user"
        if other in speakers:
            return speakers[other]
        return self.agent if turn.role == "user" else self.caller


def _echoes_recall(sentence: str, recalled_words: list[set[str]]) -> bool:
    """An agent sentence that mostly repeats a memory the tool returned in this call."""
    ws = set(content_words(sentence))
    if len(ws) < 1:
        return False
    return any(len(ws & r) / len(ws) >= 0.5 for r in recalled_words if r)


def _cap(text: str) -> str:
    if len(text) <= MAX_CONTENT_CHARS:
        return text
    cut = text[:MAX_CONTENT_CHARS]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > 80 else cut.rstrip() + "…"


def _turn_memories(
    turn: Turn,
    call: CallForExtraction,
    names: _Names,
    speakers: dict[str, str],
    recalled_words: list[set[str]],
) -> Iterable[CandidateMemory]:
    prefixed, body = split_speaker(turn.text)
    if prefixed:
        speakers[turn.role] = prefixed
    speaker = names.speaker(turn, prefixed)
    listener = names.listener(turn, speakers)
    body, shares = split_shares(body)
    groups: dict[tuple[Sector, str], list[str]] = {}
    order: list[tuple[Sector, str]] = []
    best: dict[tuple[Sector, str], float] = {}
    updates: set[tuple[Sector, str]] = set()
    for sentence in sentences(body):
        if sentence.endswith("?") or is_chitchat(sentence):
            continue
        sentence = strip_opener(sentence)
        if not sentence or is_chitchat(sentence):
            continue
        if turn.role == "agent" and recalled_words and _echoes_recall(sentence, recalled_words):
            continue
        sector, kind = classify(sentence, turn.role)
        intro = _INTRO_SENTENCE.match(sentence) if turn.role == "user" else None
        if intro and intro.group(1).split()[0] not in _NOT_NAMES:
            who = prefixed or "The caller"
            key = (Sector.SEMANTIC, "fact")
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(f"{who}'s name is {intro.group(1)}.")
            best[key] = max(best.get(key, 0.0), 0.7)
            continue
        text = lower_mid_sentence_roles(
            resolve_relative_dates(to_third_person(sentence, speaker, listener), call.start_time)
        )
        key = (sector, kind)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(text)
        best[key] = max(best.get(key, 0.0), salience(sentence, sector, kind, turn.role))
        if _UPDATE.search(sentence):
            updates.add(key)
    for share in shares:
        key = (Sector.EPISODIC, "event")
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(f"{speaker} shared {share}.")
        best[key] = max(best.get(key, 0.0), 0.4)
    for key in order:
        sector, kind = key
        yield CandidateMemory(
            content=_cap(" ".join(groups[key])),
            sector=sector.value,
            salience=best[key],
            sources=(turn.index,),
            valid_from=call.start_time,
            kind=kind,
            role=turn.role,
            is_update=key in updates,
        )


_SENTIMENT_KEYS = re.compile(r"sentiment|mood|emotion|satisf|feeling|frustrat", re.I)
_ACTION_KEYS = re.compile(r"action|follow|todo|to_do|next_step|commit|promise|task", re.I)
_PREF_KEYS = re.compile(r"prefer|contact|channel|language|time_to_call|best_time", re.I)


def _best_turns(text: str, turns: tuple[Turn, ...], limit: int = 2) -> tuple[int, ...]:
    """Turns that share the most content words with a call-level statement (its provenance)."""
    target = set(content_words(text))
    scored = []
    for t in turns:
        overlap = len(target & set(content_words(t.text)))
        if overlap:
            scored.append((-overlap, t.index))
    scored.sort()
    return tuple(sorted(i for _, i in scored[:limit]))


def _analysis_memories(call: CallForExtraction, names: _Names) -> Iterable[CandidateMemory]:
    spoken = tuple(t for t in call.turns if t.text.strip())
    date = format_date(call.start_time)
    if call.transcript_summary and call.transcript_summary.strip():
        summary = normalise_ws(call.transcript_summary)
        yield CandidateMemory(
            content=_cap(f"Call on {date}: {summary}"),
            sector=Sector.EPISODIC.value,
            salience=0.5,
            # A summary is derived from the whole call.
            sources=tuple(t.index for t in spoken),
            valid_from=call.start_time,
            kind="summary",
        )
    for key, value in call.data_collection.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        label = key.replace("_", " ").strip()
        rendered = value if isinstance(value, str) else _render(value)
        if _SENTIMENT_KEYS.search(key):
            sector, kind = Sector.EMOTIONAL, "emotion"
            content = f"{names.caller}'s {label} on the call of {date} was {rendered}."
        elif _ACTION_KEYS.search(key):
            sector, kind = Sector.EPISODIC, "commitment"
            content = f"Follow-up from the call of {date}: {rendered}."
        elif _PREF_KEYS.search(key):
            sector, kind = Sector.PROCEDURAL, "preference"
            content = f"{names.caller}'s {label}: {rendered}."
        else:
            sector, kind = Sector.SEMANTIC, "fact"
            content = f"{names.caller}'s {label}: {rendered}."
        yield CandidateMemory(
            content=_cap(content.replace("..", ".")),
            sector=sector.value,
            salience=0.75 if kind == "commitment" else 0.6,
            sources=_best_turns(f"{label} {rendered}", spoken),
            valid_from=call.start_time,
            kind="data_collection",
            is_update=bool(_UPDATE.search(rendered)),
        )


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


class LocalExtractor:
    name = NAME

    def extract(self, call: CallForExtraction) -> ExtractionResult:
        started = time.perf_counter()
        names = _Names(call)
        recalled_words = [set(content_words(r)) for r in call.recalled]
        speakers: dict[str, str] = {}
        out: list[CandidateMemory] = []
        for turn in call.turns:
            if turn.text.strip():
                out.extend(_turn_memories(turn, call, names, speakers, recalled_words))
        out.extend(_analysis_memories(call, names))
        return ExtractionResult(
            memories=out,
            extractor=NAME,
            duration_ms=(time.perf_counter() - started) * 1000.0,
        )
