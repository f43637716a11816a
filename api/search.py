"""The narrow interface the memory_query tool needs from the memory engine.

The tool endpoint depends on this protocol, not on the engine's internals, so that the engine
can change (or be replaced in a test) without touching the HTTP layer. The adapter to the real
engine (``memory.retrieval``) is built lazily and kept in ``AppState.extras``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from api.state import AppState
from db.engine import Database

EXTRA_KEY = "memory_search"


class SearchUnavailable(RuntimeError):
    """The engine cannot answer now (not installed, model not loaded); the tool says so."""


@dataclass(frozen=True, slots=True)
class SearchHit:
    memory_id: int
    content: str
    sector: str
    salience: float
    score: float
    timestamp: datetime
    sources: list[dict[str, Any]] = field(default_factory=list)


class MemorySearch(Protocol):
    def search(
        self,
        session: Session,
        user_id: str,
        query: str,
        *,
        limit: int,
        sectors: Sequence[str] | None,
        include_sources: bool,
    ) -> list[SearchHit]:
        """Ranked active memories of ``user_id`` only (never another user's); the caller has
        already checked that the user belongs to the token's tenant."""
        ...

    def prefetch(self, query: str) -> None:
        """Optional head start on ``query`` (the embedding) before ``search`` is called."""
        ...

    def prewarm(self, db: Database, user_id: str) -> None:
        """Optional: load ``user_id``'s memories in the background (their call started)."""
        ...


class UnavailableSearch:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def search(
        self,
        session: Session,
        user_id: str,
        query: str,
        *,
        limit: int,
        sectors: Sequence[str] | None,
        include_sources: bool,
    ) -> list[SearchHit]:
        raise SearchUnavailable(self.reason)

    def prefetch(self, query: str) -> None:
        return None

    def prewarm(self, db: Database, user_id: str) -> None:
        return None


def get_search(state: AppState) -> MemorySearch:
    search = state.extras.get(EXTRA_KEY)
    if search is None:
        search = build_engine_search(state)
        state.extras[EXTRA_KEY] = search
    return search


def build_engine_search(state: AppState) -> MemorySearch:
    try:
        from api.engine_search import EngineSearch
    except ImportError as exc:  # the engine is optional at import time, never at answer time
        return UnavailableSearch(f"memory engine not available: {exc}")
    return EngineSearch(state.settings)


WARM_KEY = "engine_warm"


def warm_up(state: AppState) -> None:
    """Build the engine adapter and load its model off the request path (daemon thread at
    start-up): the first tool call of a fresh process must not pay the model load. Readiness
    (``/health/ready``) waits for this to end, successfully or not."""
    import structlog

    try:
        search = get_search(state)
        warm = getattr(search, "warm_up", None)
        if callable(warm):
            warm()
    except Exception as exc:  # noqa: BLE001 - the tool reports unavailability itself
        structlog.get_logger("voxmem.search").warning("search.warm_up_failed", error=str(exc)[:200])
    finally:
        done = state.extras.get(WARM_KEY)
        if isinstance(done, threading.Event):
            done.set()
