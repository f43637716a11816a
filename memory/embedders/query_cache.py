"""Query embeddings computed ahead of need and remembered.

The memory_query tool embeds one short query per call (~5-6 ms of MiniLM on one core, the
largest part of its latency). Two things make most of that invisible:

- ``prefetch``: the route starts the embedding on a pool thread as soon as the caller is
  authenticated, while the request thread resolves the user and validates the cached index
  (ONNX Runtime releases the GIL, so on two cores they overlap);
- an LRU of recent query texts: agents ask the same questions ("what do we know about the
  caller") on many calls; a repeat costs a dictionary lookup.

Only single-text ``embed`` calls go through the cache; batches (memory extraction) go straight
to the wrapped embedder. Keyed by the exact text: a normalised key would return a vector for a
different string than the one asked about.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from memory.embedders.base import Embedder, Vectors

DEFAULT_MAX_ITEMS = 1024


class QueryEmbeddingCache:
    """An :class:`Embedder` (same ``name``/``dim``) over another, for queries."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
        threads: int = 2,
    ) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self._max = max(1, max_items)
        # Finished vectors and embeddings still running, by exact text. A failed future is
        # dropped on first use, so an embedder error is retried, never cached.
        self._items: OrderedDict[str, Future[Vectors]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="voxmem-embed")

    def prefetch(self, text: str) -> None:
        """Start embedding ``text`` on a pool thread unless it is cached or already running;
        never blocks."""
        with self._lock:
            if text in self._items:
                self._items.move_to_end(text)
                return
            self._remember(text, self._pool.submit(self._embed_one, text))

    def embed(self, texts: list[str]) -> Vectors:
        if len(texts) != 1:
            return self.inner.embed(texts)
        text = texts[0]
        with self._lock:
            future = self._items.get(text)
            if future is not None:
                self._items.move_to_end(text)
        if future is None:
            # Not prefetched: compute here (a pool hop would only add latency) and remember.
            vectors = self._embed_one(text)
            done: Future[Vectors] = Future()
            done.set_result(vectors)
            with self._lock:
                self._remember(text, done)
            return vectors
        try:
            return future.result()
        except BaseException:
            with self._lock:
                if self._items.get(text) is future:
                    del self._items[text]
            raise

    def _embed_one(self, text: str) -> Vectors:
        vectors = self.inner.embed([text])
        # Shared by every caller that asks the same question: nobody may change it in place.
        vectors.setflags(write=False)
        return vectors

    def _remember(self, text: str, future: Future[Vectors]) -> None:
        self._items[text] = future
        self._items.move_to_end(text)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
