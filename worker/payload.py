"""Tolerant parsing of ElevenLabs post-call payloads (SPEC §3.3–§3.6, §4 items 6–8, 12–13).

Rules: every field optional unless the event is meaningless without it; unknown keys ignored;
``null`` and ``[]`` are the same empty list; objects that arrive as JSON strings are decoded;
``message`` is ``None`` on tool turns; numbers may be strings of digits. What cannot be
interpreted at all raises ``PayloadError``, a permanent error (the queue dead-letters it at once
instead of retrying something that will never parse).

Pure functions, no database: the API uses the envelope helpers at intake, the worker the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from memory.identity import normalize_number

TRANSCRIPTION = "post_call_transcription"
AUDIO = "post_call_audio"
INITIATION_FAILURE = "call_initiation_failure"
# Types the gateway stores and processes; everything else is acknowledged and ignored.
KNOWN_TYPES = frozenset({TRANSCRIPTION, AUDIO, INITIATION_FAILURE})


class PayloadError(ValueError):
    """The payload cannot be interpreted; retrying will not help."""


# --------------------------------------------------------------------------------------------
# Lenient coercions
# --------------------------------------------------------------------------------------------
def maybe_json(value: Any) -> Any:
    """Decode a JSON string if it holds an object or array; otherwise return it unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                return json.loads(text)
            except (ValueError, RecursionError):  # nesting deeper than the interpreter's stack
                return value
    return value


def as_mapping(value: Any) -> dict[str, Any]:
    value = maybe_json(value)
    return dict(value) if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    value = maybe_json(value)
    return list(value) if isinstance(value, list) else []


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) < 1e15 else None  # NaN/inf
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(float(text)) if text else None
        except (ValueError, OverflowError):  # "1e999" parses to inf
            return None
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def from_unix(secs: int | None) -> datetime | None:
    if secs is None or secs <= 0:
        return None
    try:
        return datetime.fromtimestamp(secs, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    type: str
    data: dict[str, Any]
    event_timestamp: int | None

    @property
    def conversation_id(self) -> str | None:
        return as_str(self.data.get("conversation_id"))


def parse_envelope(body: bytes | str) -> Envelope:
    """``{"type": str, "data": object, "event_timestamp"?: int|str}`` or ``PayloadError``.

    orjson, not the standard library: it parses a 12.6 KB transcript in ~20 µs instead of
    ~55 µs, on the intake's event loop. It is also stricter, and both the intake and the
    worker parse with this function, so they agree: NaN, Infinity, lone surrogate escapes and
    nesting deeper than 1,024 levels are a 400 at intake rather than a poison event later.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        nested = str(exc).startswith("depth limit")  # e.g. 100k nested arrays: a 400, not a 500
        raise PayloadError(
            "body is nested too deeply" if nested else "body is not UTF-8 JSON"
        ) from exc
    if not isinstance(doc, dict):
        raise PayloadError("body is not a JSON object")
    event_type = doc.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        raise PayloadError("missing or empty 'type'")
    data = maybe_json(doc.get("data"))
    if not isinstance(data, dict):
        raise PayloadError("missing 'data' object")
    return Envelope(
        type=event_type.strip(), data=data, event_timestamp=as_int(doc.get("event_timestamp"))
    )


# --------------------------------------------------------------------------------------------
# post_call_transcription
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    request_id: str | None
    tool_name: str
    tool_type: str | None
    # params_as_json as received (a JSON string); ``params`` is its decoded form when it parses.
    params_raw: str
    params: Any


@dataclass(frozen=True)
class ToolResult:
    request_id: str | None
    tool_name: str
    result_raw: str | None
    is_error: bool
    latency_secs: float | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True)
class TranscriptTurn:
    # 0-based index into the payload's transcript array (memories cite these indices).
    index: int
    role: str
    message: str | None
    time_in_call_secs: int
    tool_calls: tuple[ToolCall, ...]
    tool_results: tuple[ToolResult, ...]
    tool_calls_raw: list[Any]
    tool_results_raw: list[Any]


@dataclass(frozen=True)
class PhoneCall:
    provider: str | None
    direction: str | None
    agent_number: str | None
    external_number: str | None
    call_sid: str | None


@dataclass(frozen=True)
class Analysis:
    call_successful: str | None
    transcript_summary: str | None
    call_summary_title: str | None
    evaluation_criteria_results: dict[str, Any]
    data_collection_results: dict[str, Any]


@dataclass(frozen=True)
class PostCallTranscription:
    conversation_id: str
    agent_id: str
    status: str
    user_id: str | None
    transcript: tuple[TranscriptTurn, ...]
    start_time: datetime | None
    duration_secs: int | None
    phone_call: PhoneCall | None
    analysis: Analysis | None
    dynamic_variables: dict[str, Any]
    initiation_user_id: str | None
    metadata: dict[str, Any] = field(repr=False)

    @property
    def end_time(self) -> datetime | None:
        # ElevenLabs sends no end time: start plus duration (SPEC §3.4).
        if self.start_time is None or self.duration_secs is None:
            return None
        from datetime import timedelta

        return self.start_time + timedelta(seconds=self.duration_secs)

    @property
    def call_sid(self) -> str | None:
        if self.phone_call is not None and self.phone_call.call_sid:
            return self.phone_call.call_sid
        return as_str(self.dynamic_variables.get("system__call_sid"))

    @property
    def direction(self) -> str | None:
        return self.phone_call.direction if self.phone_call is not None else None


CALL_OUTCOMES = frozenset({"success", "failure", "unknown"})


def _tool_call(raw: Any) -> ToolCall | None:
    item = as_mapping(raw)
    if not item:
        return None
    params_value = item.get("params_as_json")
    if params_value is None:
        params_value = as_mapping(item.get("tool_details")).get("body")
    if isinstance(params_value, str):
        params_raw = params_value
    elif params_value is None:
        params_raw = "{}"
    else:
        params_raw = json.dumps(params_value, ensure_ascii=False)
    return ToolCall(
        request_id=as_str(item.get("request_id")),
        tool_name=as_str(item.get("tool_name")) or "unknown",
        tool_type=as_str(item.get("type")),
        params_raw=params_raw,
        params=maybe_json(params_raw),
    )


def _tool_result(raw: Any) -> ToolResult | None:
    item = as_mapping(raw)
    if not item:
        return None
    value = item.get("result_value")
    if value is not None and not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    error_message = as_str(item.get("raw_error_message"))
    return ToolResult(
        request_id=as_str(item.get("request_id")),
        tool_name=as_str(item.get("tool_name")) or "unknown",
        result_raw=value,
        is_error=bool(as_bool(item.get("is_error"))),
        latency_secs=as_float(item.get("tool_latency_secs")),
        error_type=as_str(item.get("error_type")),
        error_message=error_message,
    )


def _turn(index: int, raw: Any) -> TranscriptTurn | None:
    item = as_mapping(raw)
    if not item:
        return None
    message = item.get("message")
    calls_raw = as_list(item.get("tool_calls"))
    results_raw = as_list(item.get("tool_results"))
    role = as_str(item.get("role")) or "unknown"
    return TranscriptTurn(
        index=index,
        role=role.lower(),
        message=message if isinstance(message, str) else None,
        time_in_call_secs=max(0, as_int(item.get("time_in_call_secs")) or 0),
        tool_calls=tuple(c for c in map(_tool_call, calls_raw) if c is not None),
        tool_results=tuple(r for r in map(_tool_result, results_raw) if r is not None),
        tool_calls_raw=calls_raw,
        tool_results_raw=results_raw,
    )


def _phone_call(metadata: Mapping[str, Any]) -> PhoneCall | None:
    phone = as_mapping(metadata.get("phone_call"))
    if not phone:
        return None
    direction = as_str(phone.get("direction"))
    return PhoneCall(
        provider=as_str(phone.get("type")),
        direction=direction.lower() if direction else None,
        agent_number=as_str(phone.get("agent_number")),
        external_number=as_str(phone.get("external_number")),
        call_sid=as_str(phone.get("call_sid")) or as_str(phone.get("call_id")),
    )


def _analysis(value: Any) -> Analysis | None:
    raw = as_mapping(value)
    if not raw:
        return None
    outcome = as_str(raw.get("call_successful"))
    if isinstance(raw.get("call_successful"), bool):  # very old payloads sent a boolean
        outcome = "success" if raw["call_successful"] else "failure"
    outcome = outcome.lower() if outcome else None
    return Analysis(
        call_successful=outcome if outcome in CALL_OUTCOMES else None,
        transcript_summary=as_str(raw.get("transcript_summary")),
        call_summary_title=as_str(raw.get("call_summary_title")),
        evaluation_criteria_results=as_mapping(raw.get("evaluation_criteria_results")),
        data_collection_results=as_mapping(raw.get("data_collection_results")),
    )


def initiation_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return as_mapping(data.get("conversation_initiation_client_data"))


def dynamic_variables(data: Mapping[str, Any]) -> dict[str, Any]:
    return as_mapping(initiation_data(data).get("dynamic_variables"))


def parse_transcription(data: Mapping[str, Any]) -> PostCallTranscription:
    conversation_id = as_str(data.get("conversation_id"))
    if conversation_id is None:
        raise PayloadError("post_call_transcription without data.conversation_id")
    raw_transcript = maybe_json(data.get("transcript"))
    if raw_transcript is not None and not isinstance(raw_transcript, list):
        raise PayloadError("data.transcript is neither a list nor null")
    turns = tuple(
        turn
        for turn in (_turn(i, item) for i, item in enumerate(raw_transcript or []))
        if turn is not None
    )
    metadata = as_mapping(data.get("metadata"))
    status = as_str(data.get("status")) or "unknown"
    initiation = initiation_data(data)
    return PostCallTranscription(
        conversation_id=conversation_id[:128],
        agent_id=(as_str(data.get("agent_id")) or "")[:128],
        status=status.lower()[:32],
        user_id=as_str(data.get("user_id")),
        transcript=turns,
        start_time=from_unix(as_int(metadata.get("start_time_unix_secs"))),
        duration_secs=as_int(metadata.get("call_duration_secs")),
        phone_call=_phone_call(metadata),
        analysis=_analysis(data.get("analysis")),
        dynamic_variables=as_mapping(initiation.get("dynamic_variables")),
        initiation_user_id=as_str(initiation.get("user_id")),
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# call_initiation_failure
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitiationFailure:
    conversation_id: str
    agent_id: str
    failure_reason: str
    provider: str | None
    direction: str
    from_number: str | None
    to_number: str | None
    call_sid: str | None
    provider_status: str | None
    dynamic_variables: dict[str, Any]

    @property
    def customer_number(self) -> str | None:
        # These events are mostly outbound: the customer is the callee (SPEC §3.6, §4.7).
        return self.to_number if self.direction == "outbound" else self.from_number


def parse_initiation_failure(data: Mapping[str, Any]) -> InitiationFailure:
    conversation_id = as_str(data.get("conversation_id"))
    if conversation_id is None:
        raise PayloadError("call_initiation_failure without data.conversation_id")
    metadata = as_mapping(data.get("metadata"))
    provider = as_str(metadata.get("type"))
    body = as_mapping(metadata.get("body"))
    if provider == "twilio":
        raw_direction = (as_str(body.get("Direction")) or "outbound").lower()
        from_number = as_str(body.get("From")) or as_str(body.get("Caller"))
        to_number = as_str(body.get("To")) or as_str(body.get("Called"))
        call_sid = as_str(body.get("CallSid"))
        status = as_str(body.get("CallStatus")) or as_str(body.get("SipResponseCode"))
    else:
        raw_direction = (as_str(body.get("direction")) or "outbound").lower()
        from_number = as_str(body.get("from_number"))
        to_number = as_str(body.get("to_number"))
        call_sid = as_str(body.get("call_sid"))
        code = as_int(body.get("sip_status_code"))
        status = str(code) if code is not None else as_str(body.get("sip_status"))
    return InitiationFailure(
        conversation_id=conversation_id[:128],
        agent_id=(as_str(data.get("agent_id")) or "")[:128],
        failure_reason=(as_str(data.get("failure_reason")) or "unknown")[:200],
        provider=provider,
        direction="inbound" if raw_direction.startswith("inbound") else "outbound",
        from_number=from_number,
        to_number=to_number,
        call_sid=call_sid,
        provider_status=status[:64] if status else None,
        dynamic_variables=dynamic_variables(data),
    )


# --------------------------------------------------------------------------------------------
# Who the customer is (direction-aware)
# --------------------------------------------------------------------------------------------
def customer_number(
    data: Mapping[str, Any], own_numbers: frozenset[str] = frozenset()
) -> str | None:
    """The customer's number of a transcription payload, raw (not normalised).

    Inbound: the caller (``external_number``, else ``system__caller_id``). Outbound: the callee
    (``external_number``, else ``system__called_number``), since the caller id is our own number.
    Without phone metadata, a ``system__caller_id`` that is one of our numbers means outbound.
    ``own_numbers`` holds our numbers normalised to E.164.
    """
    metadata = as_mapping(data.get("metadata"))
    phone = _phone_call(metadata)
    variables = dynamic_variables(data)
    caller = as_str(variables.get("system__caller_id"))
    called = as_str(variables.get("system__called_number"))
    if phone is not None:
        if phone.external_number:
            return phone.external_number
        if phone.direction == "outbound":
            return called
        return caller
    if caller and (caller in own_numbers or normalize_number(caller) in own_numbers):
        return called
    return caller


def claimed_user_ids(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(our ``user_id`` dynamic variable, ``data.user_id``/initiation ``user_id``)."""
    variables = dynamic_variables(data)
    ours = as_str(variables.get("user_id"))
    external = as_str(data.get("user_id")) or as_str(initiation_data(data).get("user_id"))
    return ours, external
