"""The memory engine behind :class:`api.search.MemorySearch`: ``memory.retrieval``.

Kept apart from ``api.search`` so that the protocol has no import-time dependency on the
engine (ONNX runtime, numpy); tests that exercise the HTTP layer alone can inject their own.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session

from api.search import SearchHit, SearchUnavailable
from db.engine import Database
from db.settings import Settings
from memory import loader
from memory.embedders import EmbedderError
from memory.embedders.query_cache import QueryEmbeddingCache
from memory.engine import build_retriever, embedder_for
from memory.retrieval import MemoryRetriever

log = structlog.get_logger("voxmem.search")
PREWARM_MAX_PENDING = 8


class EngineSearch:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._retriever: MemoryRetriever | None = None
        self._queries: QueryEmbeddingCache | None = None
        self._prewarm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxmem-prewarm")
        self._prewarm_lock = threading.Lock()
        self._prewarming: set[str] = set()

    def retriever(self) -> MemoryRetriever:
        if self._retriever is None:
            try:
                embedder = embedder_for(self.settings)
            except (EmbedderError, OSError, ValueError) as exc:
                raise SearchUnavailable(f"embedder unavailable: {exc}") from exc
            # Queries only: the tool embeds one short text per call (memory/embedders/
            # query_cache.py); prefetch() starts it while the user is being resolved.
            self._queries = QueryEmbeddingCache(embedder)
            # One factory for worker and API: every retrieval setting (weights, expansion,
            # entity hop, database-search threshold) reaches the tool.
            self._retriever = build_retriever(self.settings, self._queries)
        return self._retriever

    def prewarm(self, db: Database, user_id: str) -> None:
        """Load ``user_id``'s index in the background (their call just started): the first
        memory_query of the call then finds it cached instead of paying the cold load
        (~0.4 s at 10k memories, ~0.5 s from a 100k user's snapshot). One thread, at most
        a few users waiting, each at most once: a burst of call starts cannot pile up work."""
        with self._prewarm_lock:
            if user_id in self._prewarming or len(self._prewarming) >= PREWARM_MAX_PENDING:
                return
            self._prewarming.add(user_id)
        self._prewarm_pool.submit(self._prewarm, db, user_id)

    def _prewarm(self, db: Database, user_id: str) -> None:
        try:
            model = self.retriever().embedder.name
            with db.read() as session:
                loader.prewarm(session, user_id, model)
        except Exception as exc:  # noqa: BLE001 - a warm-up; the query path reports errors
            log.warning("search.prewarm_failed", error=str(exc)[:200])
        finally:
            with self._prewarm_lock:
                self._prewarming.discard(user_id)

    def prefetch(self, query: str) -> None:
        """Begin embedding ``query`` in the background. Never raises: it runs before the
        route's error handling, and any failure here surfaces again, handled, in ``search``
        (a caller must get "memory unavailable", never a 500)."""
        try:
            self.retriever()
            if self._queries is not None:
                self._queries.prefetch(query)
        except Exception as exc:  # noqa: BLE001 - see above
            log.debug("search.prefetch_skipped", error_class=type(exc).__name__)

    def warm_up(self) -> None:
        """Load the model and run one embedding so the first caller does not pay for it."""
        embedder = self.retriever().embedder
        if isinstance(embedder, QueryEmbeddingCache):
            embedder.inner.embed(["warm up"])  # not cached: nobody asks that
        else:
            embedder.embed(["warm up"])

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
        try:
            found = self.retriever().search(session, user_id, query, limit=limit, sectors=sectors)
        except SearchUnavailable:
            raise
        except EmbedderError as exc:
            raise SearchUnavailable(f"embedding failed: {exc}") from exc
        except Exception as exc:  # e.g. onnxruntime's own errors: a caller on
            # the phone gets "memory unavailable", never a failed tool call (issue 10)
            raise SearchUnavailable(f"search failed: {type(exc).__name__}") from exc
        epoch = datetime.fromtimestamp(0, tz=UTC)
        return [
            SearchHit(
                memory_id=m.id,
                content=m.content,
                sector=m.sector,
                salience=m.salience,
                score=m.score,
                timestamp=m.created_at or epoch,
                sources=m.sources if include_sources else [],
            )
            for m in found
        ]
