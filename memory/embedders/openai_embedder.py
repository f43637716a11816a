"""OpenAI (or any OpenAI-compatible server) embeddings through the official client."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from db import metrics
from memory.embedders.base import EmbedderError, Vectors, empty, l2_normalise

if TYPE_CHECKING:
    from openai import OpenAI

# Known output sizes; anything else is learned from the first response.
KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# The API accepts up to 2048 inputs per request; 256 keeps each request small and retryable.
BATCH_SIZE = 256


class OpenAIEmbedder:
    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_secs: float = 20.0,
        max_retries: int = 2,
        client: OpenAI | None = None,
    ) -> None:
        if client is None:
            from openai import OpenAI

            client = OpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout_secs,
                max_retries=max_retries,
            )
        self._client = client
        self.model = model
        self.name = f"openai:{model}"
        self.dim = KNOWN_DIMS.get(model, 0)

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return empty(self.dim)
        rows: list[list[float]] = []
        for start in range(0, len(texts), BATCH_SIZE):
            # The API rejects empty strings; a single space embeds to a harmless vector.
            batch = [t if t.strip() else " " for t in texts[start : start + BATCH_SIZE]]
            started = time.perf_counter()
            try:
                with metrics.time_embedding("openai"):
                    response = self._client.embeddings.create(model=self.model, input=batch)
            # The client raises many types; every one means "no vectors".
            except Exception as exc:
                metrics.observe_llm_call(
                    "embeddings", self.model, "error", time.perf_counter() - started
                )
                raise EmbedderError(f"embedding request failed: {exc}") from exc
            usage = getattr(response, "usage", None)
            metrics.observe_llm_call(
                "embeddings",
                self.model,
                "ok",
                time.perf_counter() - started,
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            )
            ordered = sorted(response.data, key=lambda d: d.index)
            rows.extend(list(d.embedding) for d in ordered)
        matrix = np.asarray(rows, dtype=np.float32)
        if self.dim == 0:
            self.dim = int(matrix.shape[1])
        elif matrix.shape[1] != self.dim:
            raise EmbedderError(f"{self.model} returned dim {matrix.shape[1]}, expected {self.dim}")
        return l2_normalise(matrix)
