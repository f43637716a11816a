"""Query embeddings remembered: an LRU of recent query texts.

The memory_query tool embeds one short query per call (5-7 ms of MiniLM on one core, the
largest part of its latency). Agents ask the same questions ("what do we know about the
caller") on many calls; a repeat costs a dictionary lookup. (Starting the embedding on a
second thread while the user is resolved was measured and dropped: on two cores shared with
the event loop and the log writer it made p50 1.3 ms worse, not better.)

Only single-text ``embed`` calls go through the cache; batches (memory extraction) go straight
to the wrapped embedder. Keyed by the exact text: a normalised key would return a vector for a
different string than the one asked about.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from memory.embedders.base import Embedder, Vectors

DEFAULT_MAX_ITEMS = 1024


class QueryEmbeddingCache:
    """An :class:`Embedder` (same ``name``/``dim``) over another, for queries."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self._max = max(1, max_items)
        # Vectors by exact text. A failed embedding raises and is never stored, so an
        # embedder error is retried on the next call.
        self._items: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> Vectors:
        if len(texts) != 1:
            return self.inner.embed(texts)
        text = texts[0]
        with self._lock:
            cached = self._items.get(text)
            if cached is not None:
                self._items.move_to_end(text)
                return cached
        vectors = self.inner.embed([text])
        # Shared by every caller that asks the same question: nobody may change it in place.
        vectors.setflags(write=False)
        with self._lock:
            self._items[text] = vectors
            self._items.move_to_end(text)
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return vectors

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
