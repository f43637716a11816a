"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.state import AppState


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a sync dependency in the threadpool, a hop per request for nothing.
    state: AppState = request.app.state.voxmem
    return state


StateDep = Annotated[AppState, Depends(get_state)]

# The largest integer SQLite (and a PostgreSQL BIGINT) can bind: ids and counts in paths and
# query strings are bounded by it, so an oversized one is a 422 instead of an OverflowError (500).
MAX_SQL_INT = 2**63 - 1
