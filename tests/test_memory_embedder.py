"""Local embedder: real weights from the installed package, no network, stable vectors."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory.embedders import Embedder, EmbedderError, LocalEmbedder, OpenAIEmbedder
from memory.embedders import local as local_mod


@pytest.fixture(scope="module")
def emb() -> LocalEmbedder:
    return LocalEmbedder()


def test_protocol_shape_and_norm(emb: LocalEmbedder) -> None:
    assert isinstance(emb, Embedder)
    v = emb.embed(["The caller prefers email for updates.", "", "x " * 2000])
    assert v.shape == (3, 384)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, 384)


def test_golden_vector(emb: LocalEmbedder) -> None:
    # First components of the derived int8-MatMul model for a fixed sentence; drifts if
    # pooling, normalisation, truncation, the weights or the derivation change.
    v = emb.embed(["The caller prefers email for updates."])[0]
    np.testing.assert_allclose(
        v[:6], [-0.05135, -0.01719, 0.07075, -0.00406, 0.03459, -0.09191], atol=2e-4
    )


def shipped_model_vectors(texts: list[str]) -> np.ndarray[Any, Any]:
    """The shipped model (weight-only int8, fp32 MatMuls) run directly, as the reference."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(local_mod.find_model_file()), providers=["CPUExecutionProvider"]
    )
    tokenizer = local_mod._get_loaded(1, None).tokenizer
    out = []
    for text in texts:
        enc = tokenizer.encode_batch([text])[0]
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        names = {i.name for i in session.get_inputs()}
        (hidden,) = session.run(
            ["last_hidden_state"], {k: v for k, v in feeds.items() if k in names}
        )
        mean = hidden[0].mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
    return np.array(out)


def test_derived_model_stays_close_to_the_shipped_one(emb: LocalEmbedder) -> None:
    # Requantizing the MatMuls (memory/embedders/quantized.py) measured cosine 0.994 mean,
    # 0.991 minimum; attention quantized as well fell to 0.78, which this would catch.
    texts = [
        "How do I change the shipping address on an order I placed online yesterday?",
        "The caller is allergic to peanuts and prefers email contact.",
        "what did we promise to send",
        "Maria from Acme Corp uses Salesforce but is moving to HubSpot next quarter.",
    ]
    cosines = np.sum(emb.embed(texts) * shipped_model_vectors(texts), axis=1)
    assert float(cosines.min()) > 0.985, cosines


def test_derived_model_is_made_once_and_repaired_when_altered(tmp_path: Path) -> None:
    from memory.embedders import quantized

    source = local_mod.find_model_file()
    target = quantized.derived_model(source, tmp_path)
    made = target.stat().st_mtime_ns
    assert quantized.derived_model(source, tmp_path) == target
    assert target.stat().st_mtime_ns == made  # verified and reused, not derived again
    target.write_bytes(b"not a model")
    quantized.derived_model(source, tmp_path)
    assert quantized.sha256_of(target) == quantized.DERIVED_SHA256
    assert [p.name for p in tmp_path.iterdir()] == [quantized.DERIVED_FILE]  # no leftovers


def test_batch_equals_single_despite_padding(emb: LocalEmbedder) -> None:
    # Mean pooling must ignore [PAD]: a short text batched with a long one keeps its vector.
    short, long = (
        "I like pizza.",
        "We are moving our whole sales team from Salesforce to HubSpot",
    )
    batched = emb.embed([long, short, long])
    alone = emb.embed([short])
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)


def test_semantics(emb: LocalEmbedder) -> None:
    v = emb.embed(
        [
            "The caller is allergic to peanuts.",
            "Does the user have any food allergies?",
            "The caller's company uses Salesforce CRM.",
        ]
    )
    assert float(v[0] @ v[1]) > float(v[2] @ v[1]) + 0.2


def test_no_network_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any connection attempt during load+embed fails the test: weights never come from a hub.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(local_mod, "_loaded", None)
    assert LocalEmbedder().embed(["offline"]).shape == (1, 384)


def test_thread_safe_singleton_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "_loaded", None)
    builds: list[int] = []
    real = local_mod._Loaded

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any) -> None:
            builds.append(1)
            super().__init__(*a)

    monkeypatch.setattr(local_mod, "_Loaded", Counting)
    results: list[np.ndarray[Any, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(LocalEmbedder().embed(["same text"])))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    for r in results:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_tampered_weights_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "_loaded", None)
    monkeypatch.setattr(local_mod, "MODEL_SHA256", "0" * 64)
    with pytest.raises(EmbedderError, match="sha256"):
        LocalEmbedder().embed(["x"])


def test_openai_embedder_batches_and_normalises() -> None:
    calls: list[list[str]] = []

    class Item:
        def __init__(self, index: int, embedding: list[float]) -> None:
            self.index, self.embedding = index, embedding

    class Resp:
        def __init__(self, data: list[Item]) -> None:
            self.data = data

    class FakeEmbeddings:
        def create(self, model: str, input: list[str]) -> Resp:
            calls.append(input)
            # Returned out of order on purpose: the embedder must sort by index.
            return Resp(
                [
                    Item(i, [3.0, 4.0] if t.strip() else [1.0, 0.0])
                    for i, t in reversed(list(enumerate(input)))
                ]
            )

    class FakeClient:
        embeddings = FakeEmbeddings()

    e = OpenAIEmbedder("custom-model", client=FakeClient())  # type: ignore[arg-type]
    out = e.embed(["a"] * 300 + [""])
    assert [len(c) for c in calls] == [256, 45]
    assert calls[1][-1] == " "
    assert e.dim == 2
    assert e.name == "openai:custom-model"
    np.testing.assert_allclose(out[0], [0.6, 0.8], atol=1e-6)
    np.testing.assert_allclose(out[-1], [1.0, 0.0], atol=1e-6)
