"""Tolerant parsing of post-call payloads (SPEC §3.4–§3.6, §4 items 7, 8, 12)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.conftest import FIXTURES
from worker.payload import (
    PayloadError,
    customer_number,
    parse_envelope,
    parse_initiation_failure,
    parse_transcription,
)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def test_full_fixture() -> None:
    data = load("post_call_transcription.json")["data"]
    call = parse_transcription(data)
    assert call.conversation_id == "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"
    assert call.status == "done"
    assert len(call.transcript) == 8
    assert [t.index for t in call.transcript] == list(range(8))
    tool_turn = call.transcript[2]
    assert tool_turn.message is None
    assert tool_turn.tool_calls[0].tool_name == "memory_query"
    # params_as_json is a JSON string: kept verbatim and decoded.
    assert tool_turn.tool_calls[0].params["query"] == "caller CRM system preferences"
    result = call.transcript[3].tool_results[0]
    assert result.request_id == tool_turn.tool_calls[0].request_id
    assert result.latency_secs == pytest.approx(0.41)
    assert call.analysis is not None and call.analysis.call_successful == "success"
    assert call.end_time is not None and call.start_time is not None
    assert (call.end_time - call.start_time).total_seconds() == 33
    assert call.direction == "inbound"
    assert call.call_sid == "CA5f1e2d3c4b5a69788796a5b4c3d2e1f0"


def test_minimal_failed_fixture() -> None:
    call = parse_transcription(load("post_call_transcription_minimal.json")["data"])
    assert call.status == "failed"
    assert call.user_id is None
    assert call.analysis is not None and call.analysis.call_successful == "unknown"
    assert call.dynamic_variables["system__caller_id"] == "+15557770001"


def test_nulls_missing_and_unknown_keys() -> None:
    data = load("post_call_transcription.json")["data"]
    data = copy.deepcopy(data)
    data.pop("analysis")
    data["metadata"].pop("phone_call")
    data["brand_new_field"] = {"x": 1}
    data["transcript"][0]["tool_calls"] = None
    data["transcript"][0]["tool_results"] = None
    data["transcript"][1]["message"] = None
    data["transcript"][1]["time_in_call_secs"] = "4"
    data["transcript"].insert(2, "not an object")
    call = parse_transcription(data)
    assert call.analysis is None
    assert call.phone_call is None
    assert call.transcript[0].tool_calls == ()
    assert call.transcript[1].message is None
    assert call.transcript[1].time_in_call_secs == 4
    # The non-object entry is skipped but indices still point into the original array.
    assert [t.index for t in call.transcript][:3] == [0, 1, 3]


def test_json_in_string_fields() -> None:
    data = copy.deepcopy(load("post_call_transcription.json")["data"])
    data["analysis"] = json.dumps(data["analysis"])
    data["metadata"] = json.dumps(data["metadata"])
    data["conversation_initiation_client_data"] = json.dumps(
        data["conversation_initiation_client_data"]
    )
    call = parse_transcription(data)
    assert call.analysis is not None and call.analysis.call_successful == "success"
    assert call.phone_call is not None and call.phone_call.external_number == "+15551234567"
    assert call.dynamic_variables["user_id"] == "user_123"
    # The whole transcript may come as a string too.
    data["transcript"] = json.dumps(data["transcript"])
    assert len(parse_transcription(data).transcript) == 8


def test_bad_values_are_tolerated_or_permanent() -> None:
    data = copy.deepcopy(load("post_call_transcription.json")["data"])
    data["analysis"]["call_successful"] = True  # an old boolean form
    data["metadata"]["start_time_unix_secs"] = "not a time"
    call = parse_transcription(data)
    assert call.analysis is not None and call.analysis.call_successful == "success"
    assert call.start_time is None and call.end_time is None
    data["transcript"] = 42
    with pytest.raises(PayloadError, match="transcript"):
        parse_transcription(data)
    with pytest.raises(PayloadError, match="conversation_id"):
        parse_transcription({"transcript": []})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        # Stricter than the standard library, at intake and in the worker alike: a 400 at the
        # door instead of text the worker could not encrypt or a value it could not store.
        (b'{"type": "post_call_transcription", "data": {"x": NaN}}', "not UTF-8 JSON"),
        (b'{"type": "post_call_transcription", "data": {"x": "\\ud800"}}', "not UTF-8 JSON"),
        (b'{"type": "x", "data": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested too deeply"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"data": {}}', "type"),
        (b'{"type": "", "data": {}}', "type"),
        (b'{"type": "post_call_transcription"}', "data"),
        (b'{"type": "post_call_transcription", "data": [1]}', "data"),
    ],
)
def test_envelope_errors(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_envelope(body)


def test_envelope_event_timestamp_int_or_digits() -> None:
    assert (
        parse_envelope(b'{"type": "x", "data": {}, "event_timestamp": "17"}').event_timestamp == 17
    )
    assert parse_envelope(b'{"type": "x", "data": {}, "event_timestamp": 17}').event_timestamp == 17
    assert parse_envelope(b'{"type": "x", "data": {}}').event_timestamp is None


def test_initiation_failures() -> None:
    twilio = parse_initiation_failure(load("call_initiation_failure_twilio.json")["data"])
    assert twilio.failure_reason == "no-answer"
    assert twilio.direction == "outbound"
    assert twilio.customer_number == "+15552220003"  # the callee, not our From number
    assert twilio.call_sid == "CA7e6d5c4b3a29180f7e6d5c4b3a291807"
    sip = parse_initiation_failure(load("call_initiation_failure_sip.json")["data"])
    assert sip.failure_reason == "busy"
    assert sip.provider_status == "486"
    assert sip.customer_number == "+15552220004"
    bare = parse_initiation_failure({"conversation_id": "c1"})
    assert bare.failure_reason == "unknown" and bare.customer_number is None


def test_customer_number_by_direction() -> None:
    data = copy.deepcopy(load("post_call_transcription.json")["data"])
    assert customer_number(data) == "+15551234567"
    # Outbound without external_number: the callee, never our own caller id.
    data["metadata"]["phone_call"]["direction"] = "outbound"
    data["metadata"]["phone_call"]["external_number"] = None
    dyn = data["conversation_initiation_client_data"]["dynamic_variables"]
    dyn["system__caller_id"] = "+15559876543"
    dyn["system__called_number"] = "+15550001111"
    assert customer_number(data) == "+15550001111"
    # No phone metadata at all: our own number as caller id means outbound.
    data["metadata"].pop("phone_call")
    assert customer_number(data, frozenset({"+15559876543"})) == "+15550001111"
    assert customer_number(data) == "+15559876543"
