"""Wire the engine from settings: one embedder, writer and retriever per process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory import loader
from memory.consolidation import Thresholds
from memory.embedders import Embedder, get_embedder
from memory.extractors import Extractor, build_extractor
from memory.loader import CACHE
from memory.retrieval import MemoryRetriever
from memory.scoring import Weights
from memory.store import MemoryWriter

if TYPE_CHECKING:
    from db.settings import Settings

__all__ = ["build_extractor", "build_retriever", "build_writer", "embedder_for", "weights_from"]


def weights_from(settings: Settings) -> Weights:
    return Weights(
        similarity=settings.w_similarity,
        salience=settings.w_salience,
        recency=settings.w_recency,
        link=settings.w_link,
        lexical=settings.w_lexical,
        expansion=settings.memory_expansion_factor,
    )


def thresholds_from(settings: Settings) -> Thresholds:
    return Thresholds(
        duplicate=settings.memory_duplicate_threshold,
        within_call=settings.memory_within_call_threshold,
        echo=settings.memory_echo_threshold,
        update=settings.memory_update_threshold,
    )


def embedder_for(settings: Settings) -> Embedder:
    embedder = get_embedder(settings)
    CACHE.resize(settings.memory_index_cache_users)
    configure_index(settings)
    return embedder


def configure_index(settings: Settings) -> None:
    """ANN and snapshot settings of the process-wide index cache (memory/loader.py)."""
    persist = settings.memory_index_persist_min > 0
    loader.configure(
        ann_threshold=settings.memory_ann_threshold,
        ann_dtype=settings.memory_ann_dtype,
        ann_min_pool=settings.memory_ann_min_pool,
        ann_per_result=settings.memory_ann_per_result,
        persist=persist,
        persist_dir=settings.memory_index_dir or settings.data_dir / "index",
        persist_min_memories=settings.memory_index_persist_min if persist else None,
    )


def build_writer(settings: Settings, embedder: Embedder | None = None) -> MemoryWriter:
    return MemoryWriter(
        embedder or embedder_for(settings),
        thresholds=thresholds_from(settings),
        link_top_k=settings.link_top_k,
        link_threshold=settings.link_threshold,
    )


def build_retriever(settings: Settings, embedder: Embedder | None = None) -> MemoryRetriever:
    return MemoryRetriever(
        embedder or embedder_for(settings),
        weights=weights_from(settings),
        expand=settings.memory_expand,
        expand_per_hit=settings.memory_expand_per_hit,
        entity_expand=settings.memory_entity_expand,
        db_search_threshold=settings.memory_db_search_threshold,
    )


def extractor_for(settings: Settings) -> Extractor:
    return build_extractor(settings)
