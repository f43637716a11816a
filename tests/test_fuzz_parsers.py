"""Parser fuzzing (issue 10): everything that reads attacker- or ElevenLabs-controlled bytes.

Each parser has one contract under fuzzing: it returns a value or raises its own documented
error, never anything else (an unexpected exception in the API is a 500; in the worker, a
retry loop on a payload that can never parse). Budgets are small enough for CI; the long run
is ``pytest -k fuzz --hypothesis-profile=long`` (20,000 examples per test, see docs/security.md).

Regression tests for what fuzzing found are at the bottom.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.intake import ordering_hint
from api.routes.init import REQUIRED_VARIABLES, InitRequest
from api.security.signatures import (
    SignatureError,
    parse_signature_header,
    sign,
    verify_signature,
)
from db.crypto import load_keyring
from memory.identity import ANONYMOUS, normalize_number
from tests.conftest import FIXTURES, Deployment, fuzz_examples
from worker.payload import (
    INITIATION_FAILURE,
    TRANSCRIPTION,
    PayloadError,
    as_int,
    claimed_user_ids,
    customer_number,
    maybe_json,
    parse_envelope,
    parse_initiation_failure,
    parse_transcription,
)

FAST = settings(
    max_examples=fuzz_examples(1500),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
MEDIUM = settings(
    max_examples=fuzz_examples(400),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["", "null", "[]", "{}", "1e999", "-1", "+14155550100", "anonymous"]),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


# --------------------------------------------------------------------------------------------
# Signature header
# --------------------------------------------------------------------------------------------
_header_parts = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.integers(min_value=-(10**15), max_value=10**15).map(lambda n: f"t={n}"),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66).map(
            lambda h: f"v0={h}"
        ),
        st.sampled_from(["t=", "v0=", "=", ",", " t = 1 ", "v1=abc", "t=１２３"]),
    ),
    max_size=6,
).map(",".join)


@FAST
@given(header=st.one_of(st.none(), st.text(), _header_parts, st.text(min_size=4000, max_size=5000)))
def test_fuzz_signature_header_parses_or_refuses(header: str | None) -> None:
    try:
        parsed = parse_signature_header(header)
    except SignatureError as exc:
        reason = exc.reason
        assert reason and len(reason) < 200
        return
    assert parsed.timestamp >= 0
    assert parsed.signatures
    assert all(len(s) == 64 for s in parsed.signatures)


@MEDIUM
@given(
    secret=st.text(min_size=1, max_size=80),
    body=st.binary(max_size=2000),
    flip=st.integers(min_value=0, max_value=10_000),
)
def test_fuzz_signature_round_trip_and_tamper(secret: str, body: bytes, flip: int) -> None:
    now = int(time.time())
    header = sign(secret, body, now)
    kw: dict[str, Any] = {"now": now, "tolerance_secs": 1800, "future_skew_secs": 300}
    assert verify_signature(body, header, [secret], **kw).secret_index == 0
    tampered = bytearray(body or b"x")
    tampered[flip % len(tampered)] ^= 0x01
    with pytest.raises(SignatureError):
        verify_signature(bytes(tampered), header, [secret], **kw)
    # The same header replayed with another body, or checked against another secret, fails.
    with pytest.raises(SignatureError):
        verify_signature(body, header, [secret + "x"], **kw)


# --------------------------------------------------------------------------------------------
# Post-call payloads
# --------------------------------------------------------------------------------------------
FIXTURE_NAMES = [
    "post_call_transcription.json",
    "post_call_transcription_minimal.json",
    "post_call_transcription_otel.json",
    "post_call_audio.json",
    "call_initiation_failure_sip.json",
    "call_initiation_failure_twilio.json",
]
FIXTURE_DOCS = [json.loads((FIXTURES / name).read_text()) for name in FIXTURE_NAMES]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:20]):
            out.extend(_paths(value, (*prefix, i)))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@st.composite
def mutated_fixture(draw: st.DrawFn) -> Any:
    """A real payload with one to three subtrees replaced by arbitrary JSON (nulls, wrong
    types, huge numbers, JSON-in-strings, …): every shape of SPEC §3, bent."""
    doc = draw(st.sampled_from(FIXTURE_DOCS))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(doc)))
        value = draw(json_values | json_values.map(json.dumps))
        doc = _replace(doc, path, value)
    return doc


def _exercise(body: bytes) -> None:
    """What intake and the worker do with a body; only PayloadError may escape."""
    try:
        envelope = parse_envelope(body)
    except PayloadError:
        return
    data = envelope.data
    customer_number(data, frozenset({"+14155550100"}))
    claimed_user_ids(data)
    try:
        if envelope.type == TRANSCRIPTION:
            call = parse_transcription(data)
            _ = (call.end_time, call.call_sid, call.direction)
            assert [t.index for t in call.transcript] == sorted({t.index for t in call.transcript})
        elif envelope.type == INITIATION_FAILURE:
            parse_initiation_failure(data).customer_number  # noqa: B018
    except PayloadError:
        return


@MEDIUM
@given(doc=mutated_fixture())
def test_fuzz_mutated_fixtures_parse_or_refuse(doc: Any) -> None:
    _exercise(json.dumps(doc).encode())


@FAST
@given(body=st.binary(max_size=500))
def test_fuzz_arbitrary_bytes_parse_or_refuse(body: bytes) -> None:
    _exercise(body)


@MEDIUM
@given(doc=mutated_fixture(), cut=st.integers(min_value=0), junk=st.binary(min_size=1, max_size=4))
def test_fuzz_non_utf8_and_truncated_bodies(doc: Any, cut: int, junk: bytes) -> None:
    raw = json.dumps(doc, ensure_ascii=False).encode()
    at = cut % (len(raw) + 1)
    _exercise(raw[:at] + junk + raw[at:])  # invalid UTF-8 / broken JSON spliced in
    _exercise(raw[:at])  # truncated
    _exercise(raw.decode().encode("utf-16"))  # valid JSON text, wrong encoding


@MEDIUM
@given(
    type_=st.sampled_from([TRANSCRIPTION, INITIATION_FAILURE]),
    data=st.dictionaries(
        st.sampled_from(
            [
                "conversation_id",
                "agent_id",
                "status",
                "user_id",
                "transcript",
                "metadata",
                "analysis",
                "conversation_initiation_client_data",
                "failure_reason",
            ]
        ),
        json_values,
    ),
    ts=json_values,
)
def test_fuzz_envelope_fields_of_any_type(type_: str, data: dict[str, Any], ts: Any) -> None:
    _exercise(json.dumps({"type": type_, "event_timestamp": ts, "data": data}).encode())


def test_duplicate_keys_take_the_last_value_and_never_crash() -> None:
    body = (
        b'{"type": "x", "type": "post_call_transcription", "data": {"conversation_id": "a",'
        b' "conversation_id": "conv_2", "transcript": null, "transcript": []}, "data": '
        b'{"conversation_id": "conv_3", "conversation_id": "conv_4"}}'
    )
    envelope = parse_envelope(body)
    assert envelope.type == TRANSCRIPTION
    assert parse_transcription(envelope.data).conversation_id == "conv_4"


def test_huge_arrays_parse_in_bounded_time() -> None:
    turns = [None] * 50_000 + [{"role": "user", "message": "hi"}] * 50_000
    body = json.dumps(
        {"type": TRANSCRIPTION, "data": {"conversation_id": "c", "transcript": turns}}
    ).encode()
    started = time.perf_counter()
    call = parse_transcription(parse_envelope(body).data)
    assert len(call.transcript) == 50_000
    assert call.transcript[0].index == 50_000  # indices stay those of the payload array
    assert time.perf_counter() - started < 5.0


def test_ordering_hint_survives_fuzzed_envelopes(deployment: Deployment) -> None:
    keyring = load_keyring(deployment.settings)

    @MEDIUM
    @given(doc=mutated_fixture())
    def run(doc: Any) -> None:
        try:
            envelope = parse_envelope(json.dumps(doc).encode())
        except PayloadError:
            return
        hint = ordering_hint(envelope, keyring, frozenset({"+14155550100"}))
        for key in (hint.user_key, hint.fallback_key):
            assert key is None or len(key) <= 110

    run()


# --------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------
_numberish = st.one_of(
    st.text(),
    st.text(alphabet="+0123456789 ()-.", max_size=25),
    st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True),
    st.sampled_from(sorted(ANONYMOUS)).map(lambda s: f"  {s.upper()} "),
    st.text(alphabet="sip:+0123456789@abc.", max_size=40).map(lambda s: "sip:" + s),
    st.text(alphabet="٠١٢٣٤٥٦٧٨٩０１２３+", max_size=15),  # non-ASCII digits
)


@FAST
@given(raw=st.none() | _numberish)
def test_fuzz_normalize_number(raw: str | None) -> None:
    result = normalize_number(raw)
    if raw is None or raw.strip().lower() in ANONYMOUS:
        assert result is None
        return
    if result is None:
        return
    assert isinstance(result, str) and result
    assert len(result) <= 200
    if result.startswith("+") and result[1:].isdigit():
        # An E.164 answer is a fixed point: re-normalising a stored number never moves a user.
        assert normalize_number(result) == result


# --------------------------------------------------------------------------------------------
# Conversation-init request
# --------------------------------------------------------------------------------------------
_init_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            k: json_values
            for k in ("caller_id", "called_number", "agent_id", "call_sid", "conversation_id")
        },
    ).map(lambda v: json.dumps(v).encode()),
)


@FAST
@given(raw=_init_bodies)
def test_fuzz_init_request_parse_never_raises(raw: bytes) -> None:
    req = InitRequest.parse(raw)
    for value, limit in (
        (req.caller_id, 200),
        (req.called_number, 200),
        (req.agent_id, 128),
        (req.call_sid, 128),
        (req.conversation_id, 128),
    ):
        assert value is None or (isinstance(value, str) and 0 < len(value) <= limit)


def test_fuzz_init_endpoint_always_answers_with_every_variable(
    deployment: Deployment, client: TestClient
) -> None:
    headers = {**deployment.auth("init"), "Content-Type": "application/json"}

    @settings(
        max_examples=fuzz_examples(150),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=_init_bodies)
    def run(raw: bytes) -> None:
        response = client.post("/webhook/conversation-init", content=raw, headers=headers)
        assert response.status_code == 200, response.text
        variables = response.json()["dynamic_variables"]
        for name in REQUIRED_VARIABLES:
            assert isinstance(variables[name], str)

    run()


# --------------------------------------------------------------------------------------------
# Regressions: what the fuzzers found (each was an uncaught exception → HTTP 500)
# --------------------------------------------------------------------------------------------
DEEP = b"[" * 100_000


def test_regression_deeply_nested_body_is_a_payload_error() -> None:
    # json.loads raised RecursionError (not ValueError): a signed body → 500 instead of 400.
    with pytest.raises(PayloadError, match="nested too deeply"):
        parse_envelope(DEEP)
    with pytest.raises(PayloadError):
        parse_envelope(b'{"type": "x", "data": ' + DEEP + b"}")


def test_regression_deeply_nested_json_string_is_left_a_string() -> None:
    # A JSON-in-a-string field (maybe_json) nested 100k deep raised RecursionError in the worker.
    text = DEEP.decode()
    assert maybe_json(text) == text
    data = {"conversation_id": "c", "transcript": text}
    with pytest.raises(PayloadError):  # a string that is not a list: refused, not crashed
        parse_transcription(data)


def test_regression_infinite_numbers_are_not_ints() -> None:
    # int(float("1e999")) raised OverflowError out of as_int: event_timestamp "1e999" → 500.
    assert as_int("1e999") is None
    assert as_int("-1e999") is None
    assert (
        parse_envelope(b'{"type": "x", "data": {}, "event_timestamp": "1e999"}').event_timestamp
        is None
    )


def test_regression_init_request_deep_nesting() -> None:
    assert InitRequest.parse(DEEP) == InitRequest(None, None, None, None, None)


def test_regression_signed_pathological_bodies_are_400_not_500(
    deployment: Deployment, client: TestClient
) -> None:
    now = int(time.time())
    for body in (
        DEEP,
        b'{"type": "post_call_transcription", "event_timestamp": "1e999",'
        b' "data": {"conversation_id": "c1"}}',
    ):
        response = client.post(
            "/webhook/post-call",
            content=body,
            headers={"ElevenLabs-Signature": sign(deployment.webhook_secret, body, now)},
        )
        assert response.status_code in (200, 400), response.text
