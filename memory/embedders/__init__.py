"""Embedders: ``local`` (MiniLM on ONNX Runtime, offline, default) and ``openai``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from memory.embedders.base import Embedder, EmbedderError, Vectors, l2_normalise
from memory.embedders.local import LocalEmbedder
from memory.embedders.openai_embedder import OpenAIEmbedder

if TYPE_CHECKING:
    from db.settings import Settings

__all__ = [
    "Embedder",
    "EmbedderError",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "Vectors",
    "build_embedder",
    "get_embedder",
    "l2_normalise",
]


def build_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for. Never falls back to another model silently."""
    if settings.embedder == "local":
        return LocalEmbedder(settings.embedder_threads, cache_dir=settings.model_cache_path)
    if settings.embedder == "openai":
        return OpenAIEmbedder(
            settings.embedding_model,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout_secs=settings.llm_timeout_secs,
            max_retries=settings.llm_max_retries,
        )
    raise ValueError(f"unknown embedder {settings.embedder!r}")


_cache_lock = threading.Lock()
_cache: dict[tuple[str, str], Embedder] = {}


def get_embedder(settings: Settings) -> Embedder:
    """Process-wide embedder for these settings (one ONNX session / HTTP pool per process)."""
    key = (settings.embedder, settings.embedding_model)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build_embedder(settings)
        return _cache[key]
