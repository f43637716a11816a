"""ElevenLabs post-call webhook signatures (`ElevenLabs-Signature: t=<unix>,v0=<hex>`).

Our own verifier rather than the SDK's ``construct_event``: the SDK compares digests with
``!=`` (not constant time), keeps only the last ``v0`` entry, checks one secret, and does not
bound timestamps in the future. Here every ``v0`` entry is tried against every active secret
with ``hmac.compare_digest``, and ``t`` must lie within [now - tolerance, now + future skew].

The signed message is ``f"{t}.".encode() + raw_body``: the body bytes exactly as received,
never a re-serialisation (real bodies use ``", "``/``": "`` separators that a JSON round trip
would change).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

HEADER = "ElevenLabs-Signature"
SCHEME = "v0"
_HEX = frozenset("0123456789abcdef")
# A header is a handful of short fields; anything longer is garbage, not a signature.
MAX_HEADER_CHARS = 4096


class SignatureError(Exception):
    """The request is not provably from ElevenLabs. ``reason`` is safe to return to the caller."""

    def __init__(self, reason: str, *, valid_hmac: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # True when the HMAC matched but the timestamp was out of bounds: logged separately,
        # since it points at clock skew or a late retry rather than at a forgery.
        self.valid_hmac = valid_hmac


class NoSecretConfiguredError(Exception):
    """The tenant has no active secret: fail closed, never skip verification."""


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


@dataclass(frozen=True)
class VerifiedSignature:
    timestamp: int
    # Index into the secrets list that matched; rotation tooling can tell old from new.
    secret_index: int


def parse_signature_header(value: str | None) -> SignatureHeader:
    """Split ``t=…,v0=…`` (order-independent, several ``v0`` allowed, other schemes ignored)."""
    if value is None or not value.strip():
        raise SignatureError(f"missing {HEADER} header")
    if len(value) > MAX_HEADER_CHARS:
        raise SignatureError(f"malformed {HEADER} header: too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            continue
        key = key.strip()
        item = item.strip()
        if key == "t":
            if not item.isascii() or not item.isdigit() or len(item) > 12:
                raise SignatureError(f"malformed {HEADER} header: t is not a unix timestamp")
            timestamp = int(item)
        elif key == SCHEME:
            candidate = item.lower()
            # Only well-formed SHA-256 hex digests can match; skipping the rest keeps
            # compare_digest on equal-length ASCII inputs.
            if len(candidate) == 64 and set(candidate) <= _HEX:
                signatures.append(candidate)
    if timestamp is None:
        raise SignatureError(f"malformed {HEADER} header: no t= timestamp")
    if not signatures:
        raise SignatureError(f"malformed {HEADER} header: no {SCHEME}= signature")
    return SignatureHeader(timestamp=timestamp, signatures=tuple(signatures))


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"{t}." + body`` keyed with the secret's UTF-8 bytes (as-is)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value ElevenLabs would send (used by tests, the bench and `voxmem demo`)."""
    return f"t={timestamp},{SCHEME}={compute_signature(secret, timestamp, body)}"


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance_secs: int,
    future_skew_secs: int,
) -> VerifiedSignature:
    """Return which secret verified the body, or raise ``SignatureError``.

    Every (secret, v0) pair is compared, without stopping at the first match, so the time
    taken does not depend on which secret matched.
    """
    active = [s for s in secrets if s]
    if not active:
        raise NoSecretConfiguredError("no active webhook secret")
    parsed = parse_signature_header(header)
    matched: int | None = None
    for index, secret in enumerate(active):
        expected = compute_signature(secret, parsed.timestamp, body).encode("ascii")
        for candidate in parsed.signatures:
            if hmac.compare_digest(expected, candidate.encode("ascii")) and matched is None:
                matched = index
    if matched is None:
        raise SignatureError("signature does not match")
    if parsed.timestamp < now - tolerance_secs:
        raise SignatureError("signature timestamp too old", valid_hmac=True)
    if parsed.timestamp > now + future_skew_secs:
        raise SignatureError("signature timestamp in the future", valid_hmac=True)
    return VerifiedSignature(timestamp=parsed.timestamp, secret_index=matched)
