"""Forget tombstones: recognise work that belongs to data a forget erased (issue 5).

A forget (``memory.privacy.forget_user``) deletes everything of the user in one transaction,
including queued payloads. What it cannot delete is work that is not in the database yet or
that it cannot tell is theirs: a job a worker claimed before the forget and completes after it,
a post-call webhook that ElevenLabs delivers (or redelivers) after the forget, an event whose
payload names the caller in another number format. Without a trace of the forget, such work
would resolve nobody, create a fresh guest from the caller number and write the forgotten call
back.

So the forget leaves a tombstone: per identifier of the user, one ``forget_tombstones`` row with
the keyed lookup hash (HMAC-SHA256 under the lookup key, the same key that hashes caller numbers
and tokens) of ``forgotten:<kind>:<value>``, the time of the forget and an expiry. Kinds:

- ``conversation``, ``call_sid``: the user's calls (stored, bound at init, or queued). An event
  of one of these calls is the forgotten data itself, whenever it arrives.
- ``user`` (our id), ``external`` (an id given by the operator's system), ``number`` (E.164):
  who the user was. An event naming one of these is forgotten data only when its call started
  before the forget; a call that starts after it is new service and creates a fresh guest (the
  right to be forgotten does not block future calls). A call with no known start time is
  treated as older (the privacy-safe reading).

The hash input carries the kind (domain separation), so a tombstone hash cannot be joined with
``caller_numbers.number_hash`` of a later guest with the same number without the lookup key;
nothing in a row is plaintext, and nothing links it to a live row. Rows live
``VOXMEM_FORGET_TOMBSTONE_DAYS`` (default 30, validated to outlast the queue's lease and retry
window); matching ignores expired rows, and :func:`prune` deletes them.

Serialisation with the forget: on SQLite every write transaction is ``BEGIN IMMEDIATE``, so a
worker's completing transaction (where the check runs) is entirely before or entirely after a
forget. PostgreSQL runs them concurrently under READ COMMITTED, so both take a per-tenant
transaction-level advisory lock first (:func:`serialise_with_forget`): the forget exclusively,
workers shared (workers never wait for each other).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.crypto import keyring
from db.expiry import delete_expired
from db.models import ForgetTombstone
from db.types import utcnow

KINDS = ("conversation", "call_sid", "user", "external", "number")
# Identify one call: matched whenever the event arrives.
CALL_KINDS = frozenset({"conversation", "call_sid"})
DEFAULT_DAYS = 30.0
# Two-key advisory lock space (never overlaps the single-bigint keys the queue uses).
FORGET_LOCK_CLASS = 0x766F7801
_CHUNK = 500


def key_hash(kind: str, value: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown tombstone kind {kind!r}")
    return keyring().lookup_hash(f"forgotten:{kind}:{value}")


@dataclass(frozen=True)
class Identifiers:
    """Identifiers of a forgotten user (at forget) or of one queued event (at the check)."""

    conversation_ids: frozenset[str] = field(default_factory=frozenset)
    call_sids: frozenset[str] = field(default_factory=frozenset)
    user_ids: frozenset[str] = field(default_factory=frozenset)
    external_ids: frozenset[str] = field(default_factory=frozenset)
    numbers: frozenset[str] = field(default_factory=frozenset)  # E.164

    @classmethod
    def of(
        cls,
        *,
        conversation_ids: Iterable[str | None] = (),
        call_sids: Iterable[str | None] = (),
        user_ids: Iterable[str | None] = (),
        external_ids: Iterable[str | None] = (),
        numbers: Iterable[str | None] = (),
    ) -> Identifiers:
        def clean(values: Iterable[str | None]) -> frozenset[str]:
            return frozenset(v for v in values if v)

        return cls(
            conversation_ids=clean(conversation_ids),
            call_sids=clean(call_sids),
            user_ids=clean(user_ids),
            external_ids=clean(external_ids),
            numbers=clean(numbers),
        )

    def _pairs(self) -> Iterator[tuple[str, str]]:
        yield from (("conversation", v) for v in self.conversation_ids)
        yield from (("call_sid", v) for v in self.call_sids)
        yield from (("user", v) for v in self.user_ids)
        yield from (("external", v) for v in self.external_ids)
        yield from (("number", v) for v in self.numbers)

    def hashed(self) -> dict[str, str]:
        """key_hash → kind."""
        return {key_hash(kind, value): kind for kind, value in self._pairs()}

    def __bool__(self) -> bool:
        return any(
            (self.conversation_ids, self.call_sids, self.user_ids, self.external_ids, self.numbers)
        )


@dataclass(frozen=True)
class Match:
    """Why an event belongs to forgotten data: the kind that matched and when it was forgotten."""

    kind: str
    forgotten_at: datetime


def serialise_with_forget(session: Session, tenant_id: int, *, exclusive: bool) -> None:
    """PostgreSQL: order this transaction against forgets of the tenant (see module doc).

    Must be the transaction's first lock: the completing transaction takes it before its lease
    row lock, so a forget (exclusive) and a worker (shared) can never wait on each other in a
    cycle. SQLite: nothing to do, ``BEGIN IMMEDIATE`` already serialises writers.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    fn = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    session.execute(select(fn(FORGET_LOCK_CLASS, tenant_id)))


def record(
    session: Session,
    tenant_id: int,
    ids: Identifiers,
    *,
    now: datetime | None = None,
    days: float = DEFAULT_DAYS,
) -> tuple[int, datetime]:
    """Write (or refresh) the tombstone rows; returns (rows, expires_at)."""
    now = now or utcnow()
    expires = now + timedelta(days=days)
    hashed = ids.hashed()
    keys = sorted(hashed)
    existing: dict[str, ForgetTombstone] = {}
    for i in range(0, len(keys), _CHUNK):
        for found in session.scalars(
            select(ForgetTombstone).where(
                ForgetTombstone.tenant_id == tenant_id,
                ForgetTombstone.key_hash.in_(keys[i : i + _CHUNK]),
            )
        ):
            existing[found.key_hash] = found
    for digest in keys:
        row = existing.get(digest)
        if row is None:
            session.add(
                ForgetTombstone(
                    tenant_id=tenant_id,
                    kind=hashed[digest],
                    key_hash=digest,
                    forgotten_at=now,
                    expires_at=expires,
                )
            )
        else:
            # Forgotten again (a guest created later from the same number): the later forget
            # defines "before", and the tombstone lives on from it.
            row.forgotten_at = max(row.forgotten_at, now)
            row.expires_at = max(row.expires_at, expires)
    session.flush()
    return len(keys), expires


def find(
    session: Session,
    tenant_id: int,
    ids: Identifiers,
    *,
    started_at: datetime | None,
    now: datetime | None = None,
) -> Match | None:
    """The live tombstone the event falls under (call kinds first), or None."""
    hashed = ids.hashed()
    if not hashed:
        return None
    now = now or utcnow()
    rows = session.execute(
        select(ForgetTombstone.kind, ForgetTombstone.forgotten_at).where(
            ForgetTombstone.tenant_id == tenant_id,
            ForgetTombstone.key_hash.in_(sorted(hashed)),
            ForgetTombstone.expires_at > now,
        )
    ).all()
    # Call kinds first, in KINDS order, so the reported kind does not depend on row order.
    for kind, forgotten_at in sorted(rows, key=lambda r: (KINDS.index(r[0]), r[1])):
        if kind in CALL_KINDS or started_at is None or started_at < forgotten_at:
            return Match(kind=kind, forgotten_at=forgotten_at)
    return None


def prune(session: Session, *, now: datetime | None = None, batch: int = 1000) -> int:
    """Delete up to ``batch`` expired tombstone rows (index on ``expires_at``)."""
    return delete_expired(session, ForgetTombstone, now=now, batch=batch)
