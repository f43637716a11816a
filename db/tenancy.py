"""Tenants, webhook secrets and API tokens (repository functions; callers own the transaction)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from db.crypto import keyring
from db.models import DEFAULT_TENANT, TOKEN_SCOPES, ApiToken, Tenant, WebhookSecret
from db.types import utcnow

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TOKEN_PREFIX = "vxm_"  # noqa: S105 - a public prefix, not a secret


class TenancyError(ValueError):
    """A tenant, secret or token request that cannot be honoured (message says why)."""


@dataclass(frozen=True)
class IssuedToken:
    id: int
    tenant: str
    scope: str
    token: str


@dataclass(frozen=True)
class TokenIdentity:
    token_id: int
    tenant_id: int
    tenant_slug: str
    scope: str


def validate_slug(slug: str) -> str:
    if not SLUG_RE.match(slug):
        raise TenancyError(f"invalid tenant slug {slug!r}: use a-z, 0-9 and '-', at most 63")
    return slug


def get_tenant(session: Session, slug: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.slug == slug))


def require_tenant(session: Session, slug: str) -> Tenant:
    tenant = get_tenant(session, slug)
    if tenant is None:
        raise TenancyError(f"no tenant {slug!r}")
    return tenant


def generate_webhook_secret() -> str:
    return "wsec_" + secrets.token_hex(24)


def create_tenant(session: Session, slug: str, *, secret: str | None = None) -> tuple[Tenant, str]:
    """Create a tenant with one webhook secret; returns the tenant and the secret (shown once)."""
    validate_slug(slug)
    if get_tenant(session, slug) is not None:
        raise TenancyError(f"tenant {slug!r} already exists")
    tenant = Tenant(slug=slug, name=slug)
    session.add(tenant)
    session.flush()
    secret = secret or generate_webhook_secret()
    session.add(WebhookSecret(tenant_id=tenant.id, secret=secret))
    session.flush()
    return tenant, secret


def ensure_default_tenant(
    session: Session, configured: list[str] | None = None
) -> tuple[Tenant, str | None]:
    """The default tenant exists after migrate; returns a secret only when one was generated.

    With configured secrets (VOXMEM_WEBHOOK_SECRETS) the tenant is created with the first of
    them: generating one as well would leave an active secret nobody was ever shown, which
    every webhook would also be verified against.
    """
    tenant = get_tenant(session, DEFAULT_TENANT)
    if tenant is not None:
        return tenant, None
    if configured:
        tenant, _ = create_tenant(session, DEFAULT_TENANT, secret=configured[0])
        return tenant, None
    return create_tenant(session, DEFAULT_TENANT)


def add_webhook_secret(session: Session, tenant: Tenant, secret: str | None = None) -> str:
    secret = secret or generate_webhook_secret()
    session.add(WebhookSecret(tenant_id=tenant.id, secret=secret))
    session.flush()
    return secret


def active_webhook_secrets(session: Session, tenant_id: int) -> list[str]:
    rows = session.scalars(
        select(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.revoked_at.is_(None))
        .order_by(WebhookSecret.id.desc())
    )
    return [row.secret for row in rows]


def hash_token(token: str) -> str:
    return keyring().lookup_hash("token:" + token)


def create_token(
    session: Session, tenant_slug: str, scope: str, name: str | None = None
) -> IssuedToken:
    if scope not in TOKEN_SCOPES:
        raise TenancyError(f"invalid scope {scope!r}; one of {', '.join(TOKEN_SCOPES)}")
    tenant = require_tenant(session, tenant_slug)
    # 256 bits of entropy; the prefix names the scope so a leaked token is easy to triage.
    token = f"{TOKEN_PREFIX}{scope}_{secrets.token_urlsafe(32)}"
    row = ApiToken(
        tenant_id=tenant.id,
        name=name,
        scope=scope,
        token_hash=hash_token(token),
        prefix=token[: len(TOKEN_PREFIX) + len(scope) + 5],
    )
    session.add(row)
    session.flush()
    return IssuedToken(id=row.id, tenant=tenant.slug, scope=scope, token=token)


def list_tokens(session: Session, tenant_slug: str | None = None) -> list[tuple[ApiToken, str]]:
    stmt = select(ApiToken, Tenant.slug).join(Tenant, Tenant.id == ApiToken.tenant_id)
    if tenant_slug is not None:
        stmt = stmt.where(Tenant.slug == tenant_slug)
    return [(tok, slug) for tok, slug in session.execute(stmt.order_by(ApiToken.id))]


def revoke_token(session: Session, token_id: int) -> bool:
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


# Built once: constructing a select() and its cache key per request cost ~0.4 ms of the
# ~0.6 ms a token lookup took; the prebuilt statement with a bound parameter costs ~0.15 ms.
_TOKEN_LOOKUP = (
    select(ApiToken.id, ApiToken.tenant_id, ApiToken.scope, ApiToken.token_hash, Tenant.slug)
    .join(Tenant, Tenant.id == ApiToken.tenant_id)
    .where(ApiToken.token_hash == bindparam("digest"), ApiToken.revoked_at.is_(None))
)


def resolve_token(conn: Connection, token: str) -> TokenIdentity | None:
    """Look a presented bearer token up by its keyed hash.

    The hash lookup is an index probe, so there is no byte-by-byte comparison of secrets to
    time; the stored hash is compared once more with ``compare_digest`` out of caution.
    """
    import hmac

    digest = hash_token(token)
    row = conn.execute(_TOKEN_LOOKUP, {"digest": digest}).first()
    if row is None:
        return None
    token_id, tenant_id, scope, stored, slug = row
    if not hmac.compare_digest(stored, digest):
        return None
    return TokenIdentity(token_id=token_id, tenant_id=tenant_id, tenant_slug=slug, scope=scope)


def touch_token(session: Session, token_id: int) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow()))
