"""The operator console (issue 11): its static pages at ``/console`` and the few admin
endpoints it needs beyond ``/v1`` (``admin`` token; CONTRACT §4 "Operators").

The pages are hand-written HTML, CSS and ES modules shipped in ``api/console/static`` — no
build step, no CDN (see docs/console.md). They carry no data and need no token; every figure
they show comes from the admin API with the token the operator typed into the login form
(kept in ``sessionStorage``, sent as ``Authorization: Bearer``, never in a URL).

Served per tenant too (``/t/{tenant}/console``): the pages call the API under the same prefix.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from api.auth import AdminAuth
from api.deps import MAX_SQL_INT, StateDep
from db import queue, queue_overview
from memory import console

router = APIRouter(tags=["console"])

STATIC = files("api.console").joinpath("static")
ASSET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}\.(js|css|html|svg)$")
MEDIA_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "svg": "image/svg+xml",
}
# Only our own files run: no inline script, nothing from another origin, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    if not ASSET_NAME.match(name):
        raise HTTPException(status_code=404, detail="no such console asset")
    resource = STATIC.joinpath(name)
    if not resource.is_file():
        raise HTTPException(status_code=404, detail="no such console asset")
    ext = name.rsplit(".", 1)[1]
    return Response(resource.read_bytes(), media_type=MEDIA_TYPES[ext], headers=SECURITY_HEADERS)


@router.get("/console", include_in_schema=False)
def console_index() -> Response:
    return _asset("index.html")


@router.get("/console/{name}", include_in_schema=False)
def console_asset(name: Annotated[str, Path(max_length=64)]) -> Response:
    return _asset(name)


# --- admin endpoints the console needs ------------------------------------------------------
@router.get("/v1/console/callers", summary="Find callers by name, number or user id")
def find_callers(
    identity: AdminAuth,
    state: StateDep,
    q: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """With no ``q``, the most recently active callers. Numbers are matched exactly after
    normalisation (by their keyed hash) and shown masked; names match case-insensitively."""
    with state.db.read() as session:
        return {"callers": console.search_callers(session, identity.tenant_id, q, limit=limit)}


@router.get(
    "/v1/console/conversations/{conversation_id}",
    summary="A call's transcript (decrypted) with the memories extracted from each turn",
    responses={404: {"description": "no such call in this tenant"}},
)
def conversation_transcript(
    conversation_id: Annotated[str, Path(max_length=128)], identity: AdminAuth, state: StateDep
) -> dict[str, Any]:
    with state.db.read() as session:
        detail = console.conversation_detail(session, identity.tenant_id, conversation_id)
    if detail is None:
        raise HTTPException(status_code=404, detail="call not found in this tenant")
    return detail


@router.get(
    "/v1/console/users/{user_id}/memories/{memory_id}/sources",
    summary="The transcript turns a memory came from (decrypted on demand)",
    responses={404: {"description": "no such user or memory in this tenant"}},
)
def memory_sources(
    user_id: Annotated[str, Path(max_length=200)],
    memory_id: Annotated[int, Path(ge=1, le=MAX_SQL_INT)],
    identity: AdminAuth,
    state: StateDep,
) -> dict[str, Any]:
    with state.db.read() as session:
        sources = console.memory_sources(session, identity.tenant_id, user_id, memory_id)
    if sources is None:
        raise HTTPException(status_code=404, detail="memory not found in this tenant")
    return {"memory_id": memory_id, "sources": sources}


@router.get(
    "/v1/console/queue",
    summary="This tenant's queue: depth, oldest pending, throughput, dead letters with errors",
)
def queue_status(identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.read() as session:
        return queue_overview.overview(session, identity.tenant_id)


@router.post(
    "/v1/console/queue/dead-letters/replay",
    summary="Requeue every dead letter of this tenant (fresh attempts; errors kept)",
)
def replay_all_dead_letters(identity: AdminAuth, state: StateDep) -> dict[str, Any]:
    with state.db.write() as session:
        n = queue.replay_dead_letters(session, tenant_id=identity.tenant_id)
    return {"replayed": n}
