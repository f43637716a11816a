"""Who is calling: phone normalisation, caller → user mapping, guest creation.

Caller numbers are normalised to E.164 and stored as a keyed hash (lookup) plus Fernet
ciphertext (display). The plaintext number is never written anywhere.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from typing import Any

import phonenumbers
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from db.crypto import keyring
from db.models import CallerNumber, ConversationBinding, User
from db.settings import Settings
from db.types import utcnow

ANONYMOUS = frozenset({"", "anonymous", "unknown", "private", "restricted", "unavailable", "null"})
_DIGITS = re.compile(r"[^\d+]")


def normalize_number(raw: str | None, default_region: str = "US") -> str | None:
    """E.164 for phone numbers; other caller ids (WhatsApp ids, SIP URIs) are kept, trimmed.

    Returns None for withheld/anonymous callers: they must never be merged into one user.
    """
    if raw is None:
        return None
    value = raw.strip()
    if value.lower() in ANONYMOUS:
        return None
    if value.lower().startswith(("sip:", "sips:")):
        user_part = value.split(":", 1)[1].split("@", 1)[0]
        if user_part and (user_part[0] == "+" or user_part.isdigit()):
            value = user_part
        else:
            return value.lower()[:200]
    compact = _DIGITS.sub("", value)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if len(compact.lstrip("+")) < 3:
        return None
    try:
        parsed = phonenumbers.parse(compact, None if compact.startswith("+") else default_region)
    except phonenumbers.NumberParseException:
        return compact[:32] if compact.lstrip("+").isdigit() else value[:200]
    if not phonenumbers.is_possible_number(parsed):
        return compact[:32]
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def own_numbers(settings: Settings) -> frozenset[str]:
    """Our own numbers (``VOXMEM_OWN_NUMBERS``), normalised: on outbound calls ElevenLabs puts
    one of them in ``caller_id``, and it identifies nobody."""
    return _normalised_numbers(tuple(settings.own_number_list))


@functools.lru_cache(maxsize=8)
def _normalised_numbers(raw_numbers: tuple[str, ...]) -> frozenset[str]:
    # Asked on every init, tool call and post-call; phonenumbers parsing costs ~50 us a number.
    return frozenset(n for n in (normalize_number(raw) for raw in raw_numbers) if n is not None)


def number_hash(e164: str) -> str:
    return keyring().lookup_hash("caller:" + e164)


def new_user_id() -> str:
    return "usr_" + secrets.token_hex(8)


@dataclass(frozen=True)
class ResolvedUser:
    user: User
    created: bool


# Hot-path lookups (init, tool) as prebuilt statements returning ids: building a select() and
# loading a whole User (decrypting its summary and profile) per request cost ~1 ms of a
# memory_query's budget; these cost ~0.15 ms each.
_NUMBER_OWNER = select(CallerNumber.user_id).where(
    CallerNumber.tenant_id == bindparam("tenant_id"),
    CallerNumber.number_hash == bindparam("number_hash"),
)


def _latest_binding(column: Any) -> Select[Any]:
    """The user of the newest binding whose ``column`` equals ``:value`` in ``:tenant_id``."""
    return (
        select(ConversationBinding.user_id)
        .where(
            ConversationBinding.tenant_id == bindparam("tenant_id"),
            column == bindparam("value"),
        )
        .order_by(ConversationBinding.id.desc())
        .limit(1)
    )


_BOUND_BY_CONVERSATION = _latest_binding(ConversationBinding.conversation_id)
_BOUND_BY_CALL_SID = _latest_binding(ConversationBinding.call_sid)
_USER_IN_TENANT = select(User.user_id).where(
    User.user_id == bindparam("user_id"), User.tenant_id == bindparam("tenant_id")
)
_USER_BY_EXTERNAL_ID = select(User.user_id).where(
    User.tenant_id == bindparam("tenant_id"), User.external_id == bindparam("external_id")
)


def _one_id(session: Session, statement: Select[Any], **params: object) -> str | None:
    value = session.connection().execute(statement, params).scalar()
    return str(value) if value is not None else None


def user_id_for_number(session: Session, tenant_id: int, e164: str) -> str | None:
    return _one_id(session, _NUMBER_OWNER, tenant_id=tenant_id, number_hash=number_hash(e164))


def bound_user_id(
    session: Session, tenant_id: int, *, conversation_id: str | None, call_sid: str | None = None
) -> str | None:
    """The user a conversation (else its call sid) was bound to at init, inside the tenant."""
    for statement, value in (
        (_BOUND_BY_CONVERSATION, conversation_id),
        (_BOUND_BY_CALL_SID, call_sid),
    ):
        if value:
            found = _one_id(session, statement, tenant_id=tenant_id, value=value)
            if found is not None:
                return found
    return None


def user_id_in_tenant(session: Session, tenant_id: int, user_id: str) -> str | None:
    return _one_id(session, _USER_IN_TENANT, tenant_id=tenant_id, user_id=user_id)


def user_id_for_external_id(session: Session, tenant_id: int, external_id: str) -> str | None:
    return _one_id(session, _USER_BY_EXTERNAL_ID, tenant_id=tenant_id, external_id=external_id)


def user_for_number(session: Session, tenant_id: int, e164: str) -> User | None:
    user_id = user_id_for_number(session, tenant_id, e164)
    return session.get(User, user_id) if user_id is not None else None


def get_user(session: Session, tenant_id: int, user_id: str) -> User | None:
    user = session.get(User, user_id)
    if user is None or user.tenant_id != tenant_id:
        return None
    return user


def user_for_external_id(session: Session, tenant_id: int, external_id: str) -> User | None:
    return session.scalar(
        select(User).where(User.tenant_id == tenant_id, User.external_id == external_id)
    )


def bound_user(
    session: Session, tenant_id: int, *, conversation_id: str | None, call_sid: str | None = None
) -> User | None:
    user_id = bound_user_id(session, tenant_id, conversation_id=conversation_id, call_sid=call_sid)
    return session.get(User, user_id) if user_id is not None else None


def create_guest(session: Session, tenant_id: int, *, external_id: str | None = None) -> User:
    user = User(user_id=new_user_id(), tenant_id=tenant_id, external_id=external_id, is_guest=True)
    session.add(user)
    session.flush()
    return user


def attach_number(session: Session, tenant_id: int, user: User, e164: str) -> None:
    session.add(
        CallerNumber(
            tenant_id=tenant_id,
            user_id=user.user_id,
            number_hash=number_hash(e164),
            number_enc=e164,
        )
    )
    session.flush()


def resolve_or_create_by_number(session: Session, tenant_id: int, e164: str) -> ResolvedUser:
    """Find the user of a caller number, creating a guest on first contact.

    Two first calls from one number racing (init on the API, a post-call job on a worker) are
    settled by the unique (tenant, number_hash) constraint: the loser re-reads the winner.
    """
    existing = user_for_number(session, tenant_id, e164)
    if existing is not None:
        return ResolvedUser(existing, created=False)
    try:
        with session.begin_nested():
            user = create_guest(session, tenant_id)
            attach_number(session, tenant_id, user, e164)
    except IntegrityError:
        winner = user_for_number(session, tenant_id, e164)
        if winner is None:
            raise
        return ResolvedUser(winner, created=False)
    return ResolvedUser(user, created=True)


_BINDING_EXISTS = select(ConversationBinding.id).where(
    ConversationBinding.tenant_id == bindparam("tenant_id"),
    ConversationBinding.conversation_id == bindparam("conversation_id"),
)
_INSERT_BINDING = insert(ConversationBinding)


def bind_conversation(
    session: Session,
    tenant_id: int,
    user: User,
    *,
    conversation_id: str | None,
    call_sid: str | None,
    agent_id: str | None,
) -> None:
    if not conversation_id and not call_sid:
        return
    conn = session.connection()
    if conversation_id:
        existing = conn.execute(
            _BINDING_EXISTS, {"tenant_id": tenant_id, "conversation_id": conversation_id}
        ).first()
        if existing is not None:
            # A conversation never changes users once bound (tool callers rely on it).
            return
    # A Core insert: the binding is never read back through this session, and the ORM's
    # unit of work cost more than the statement on init's hot path.
    conn.execute(
        _INSERT_BINDING,
        {
            "tenant_id": tenant_id,
            "conversation_id": conversation_id or None,
            "call_sid": call_sid or None,
            "user_id": user.user_id,
            "agent_id": agent_id,
            "created_at": utcnow(),
        },
    )
