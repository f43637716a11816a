"""Bearer-token authentication for the agent endpoints and the admin API.

Rules (CONTRACT §4, issue 5):
- Only ``Authorization: Bearer <token>``. A token in the query string is refused outright:
  query strings end up in proxy logs and browser history.
- The token is looked up by its keyed hash (``db.tenancy.resolve_token``): an index probe, then
  a ``compare_digest`` of the stored hash, so nothing secret is compared byte by byte.
- The tenant comes from the path (``/t/{tenant}/…``; bare paths serve ``default``) and must be
  the token's own tenant; the scope must be the endpoint's scope. Either mismatch is a 401, as
  is a missing, unknown or revoked token. The body says which, never anything about the token.
- ``last_used_at`` is recorded by the background writer, coalesced per token, never inline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from api.background import get_writer
from api.deps import StateDep
from db.models import DEFAULT_TENANT
from db.tenancy import TokenIdentity, resolve_token

log = structlog.get_logger("voxmem.auth")

# Parameter names clients use to smuggle credentials into URLs.
QUERY_TOKEN_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "api_token",
        "key",
        "auth",
        "bearer",
        "authorization",
    }
)


class AuthError(HTTPException):
    def __init__(self, reason: str) -> None:
        super().__init__(
            status_code=401,
            detail=reason,
            headers={"WWW-Authenticate": 'Bearer realm="voxmem"'},
        )


def path_tenant(request: Request) -> str:
    tenant = request.path_params.get("tenant")
    return str(tenant) if tenant else DEFAULT_TENANT


def bearer_token(request: Request) -> str:
    for name in request.query_params:
        if name.lower() in QUERY_TOKEN_PARAMS:
            raise AuthError(
                "tokens in the query string are refused; send 'Authorization: Bearer <token>'"
            )
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("missing 'Authorization: Bearer <token>' header")
    scheme, _, value = header.strip().partition(" ")
    token = value.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("Authorization header must be 'Bearer <token>'")
    if len(token) > 512:
        raise AuthError("unknown or revoked token")
    return token


def authenticate(request: Request, state: StateDep, scope: str) -> TokenIdentity:
    token = bearer_token(request)
    tenant = path_tenant(request)
    with state.db.lookup() as conn:
        identity = resolve_token(conn, token)
    if identity is None:
        raise AuthError("unknown or revoked token")
    if identity.tenant_slug != tenant:
        log.warning("auth.wrong_tenant", token_id=identity.token_id, path_tenant=tenant[:64])
        raise AuthError(f"token is not valid for tenant {tenant[:64]!r}")
    if identity.scope != scope:
        log.warning("auth.wrong_scope", token_id=identity.token_id, scope=identity.scope)
        raise AuthError(
            f"token scope {identity.scope!r} cannot call this endpoint; needs {scope!r}"
        )
    writer = get_writer(state.extras)
    if writer is not None:
        writer.touch_token(identity.token_id)
    return identity


def require_scope(scope: str) -> Callable[[Request, StateDep], Awaitable[TokenIdentity]]:
    async def dependency(request: Request, state: StateDep) -> TokenIdentity:
        if state.db.dialect == "sqlite":
            # On the event loop: the lookup is one index probe of a local file (~0.1 ms), less
            # than what a sync dependency's thread hop costs under load (two wake-ups and a
            # GIL hand-off, 0.3-3 ms at the memory_query p95). On PostgreSQL it is a network
            # round trip, which must not hold up the loop.
            return authenticate(request, state, scope)
        return await run_in_threadpool(authenticate, request, state, scope)

    dependency.__name__ = f"require_{scope}_token"
    return dependency


InitAuth = Annotated[TokenIdentity, Depends(require_scope("init"))]
ToolAuth = Annotated[TokenIdentity, Depends(require_scope("tool"))]
AdminAuth = Annotated[TokenIdentity, Depends(require_scope("admin"))]
