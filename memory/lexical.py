"""BM25 (Okapi) over a user's decrypted memory texts, vectorised with numpy.

Lexical matching is not optional for this workload: on LoCoMo raw turns BM25 alone reaches
recall@10 0.568 against 0.501 for MiniLM vectors (names, places and numbers are where small
embedders are weakest).
"""

from __future__ import annotations

import re
import threading

import numpy as np
import numpy.typing as npt

_TOKEN = re.compile(r"[a-z0-9]+")

STOPWORDS = frozenset(
    "a an the and or but if so of to in on at for with from by about as is are was were be been "
    "being am do does did have has had i me my you your we our us it its this that these those "
    "there here what which who whom how when where why can could would should will shall may "
    "might must just really very too also s t d ll re ve m not no yes oh ok okay um uh her his "
    "he she him they them their then than into out up down over again some any all more most "
    "other such only own same so than".split()
)


def stem(token: str) -> str:
    """Tiny suffix stripper: enough to match "painting"/"paints"/"painted" without a library."""
    for suffix, min_len in (("ies", 5), ("ing", 6), ("ed", 5), ("es", 5), ("s", 4)):
        if token.endswith(suffix) and len(token) >= min_len:
            if suffix == "ies":
                return token[:-3] + "y"
            if suffix == "es" and not token.endswith(("ses", "xes", "ches", "shes")):
                return token[:-1]
            return token[: -len(suffix)]
    return token


def tokenize(text: str) -> list[str]:
    return [stem(t) for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class Vocabulary:
    """Process-wide term -> id map, so cached per-memory token arrays stay valid across
    index rebuilds. Grows monotonically; thread-safe."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._terms: list[str] = []
        self._lock = threading.Lock()

    def ids(self, tokens: list[str], *, add: bool) -> npt.NDArray[np.int64]:
        out: list[int] = []
        get = self._ids.get
        for tok in tokens:
            i = get(tok)
            if i is None:
                if not add:
                    continue
                with self._lock:
                    i = self._ids.get(tok)
                    if i is None:
                        i = self._ids[tok] = len(self._terms)
                        self._terms.append(tok)
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def terms(self, ids: npt.NDArray[np.int64]) -> list[str]:
        """The terms of ``ids`` (the inverse of ``ids(..., add=True)``)."""
        terms = self._terms
        return [terms[i] for i in ids.tolist()]


VOCAB = Vocabulary()


def doc_terms(text: str) -> npt.NDArray[np.int64]:
    return VOCAB.ids(tokenize(text), add=True)


# Raw token -> term id (-1: a stopword), so tokenising many texts stems each distinct word
# once. Bounded: cleared when full (term ids themselves never change).
_TOKEN_IDS: dict[str, int] = {}
_TOKEN_IDS_MAX = 1_000_000


def docs_terms(texts: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``doc_terms`` of many texts as CSR: (flat term ids, offsets with len(texts) + 1)."""
    flat: list[int] = []
    offsets = [0]
    memo = _TOKEN_IDS
    findall = _TOKEN.findall
    for text in texts:
        for token in findall(text.lower()):
            tid = memo.get(token)
            if tid is None:
                if len(memo) >= _TOKEN_IDS_MAX:
                    memo.clear()
                tid = -1 if token in STOPWORDS else int(VOCAB.ids([stem(token)], add=True)[0])
                memo[token] = tid
            if tid >= 0:
                flat.append(tid)
        offsets.append(len(flat))
    return np.asarray(flat, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class BM25:
    """Postings in term-sorted CSR-like arrays; a query touches only its terms' postings."""

    def __init__(self, docs: list[npt.NDArray[np.int64]], k1: float = 1.2, b: float = 0.75):
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        self._build(flat.astype(np.int64), lengths, np.ones(len(docs), dtype=bool), k1, b)

    @classmethod
    def from_csr(
        cls,
        flat: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.int64],
        alive: npt.NDArray[np.bool_],
        k1: float = 1.2,
        b: float = 0.75,
    ) -> BM25:
        """Row ``i``'s terms are ``flat[offsets[i]:offsets[i + 1]]``; rows where ``alive`` is
        false are left out (no postings, not counted in the corpus statistics), so the scores
        equal those of a fresh build over the alive rows alone."""
        self = cls.__new__(cls)
        self._build(flat, np.diff(offsets), alive, k1, b)
        return self

    def _build(
        self,
        flat: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        alive: npt.NDArray[np.bool_],
        k1: float,
        b: float,
    ) -> None:
        self.k1, self.b = k1, b
        rows = len(lengths)
        self.n_docs = int(alive.sum())
        self.doc_len = np.where(alive, lengths, 0).astype(np.float64)
        total = float(self.doc_len.sum())
        self.avgdl = total / self.n_docs if self.n_docs and total else 1.0
        if self.n_docs and total:
            owners = np.repeat(np.arange(rows, dtype=np.int64), lengths)
            keep = alive[owners]
            keys, tf = np.unique(flat[keep] * (rows + 1) + owners[keep], return_counts=True)
            self.terms = keys // (rows + 1)
            self.docs = keys % (rows + 1)
            self.tf = tf.astype(np.float64)
        else:
            self.terms = np.zeros(0, dtype=np.int64)
            self.docs = np.zeros(0, dtype=np.int64)
            self.tf = np.zeros(0, dtype=np.float64)
        self.rows = rows
        # The term-frequency part of each posting depends only on the corpus, not the query:
        # computed once here, a query multiplies it by its terms' idf (a term found in every
        # memory, like "caller", has 100k postings at 100k memories).
        norm = k1 * (1.0 - b + b * self.doc_len[self.docs] / self.avgdl)
        self.weight = self.tf * (k1 + 1.0) / (self.tf + norm)

    def scores(self, query: str) -> npt.NDArray[np.float64]:
        out = np.zeros(self.rows, dtype=np.float64)
        if not self.n_docs:
            return out
        q = np.unique(VOCAB.ids(tokenize(query), add=False))
        if q.size == 0:
            return out
        lo = np.searchsorted(self.terms, q, side="left")
        hi = np.searchsorted(self.terms, q, side="right")
        for start, end in zip(lo.tolist(), hi.tolist(), strict=True):
            if end <= start:
                continue
            df = end - start
            idf = np.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))
            out[self.docs[start:end]] += idf * self.weight[start:end]
        return out


def normalise(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Scale to [0, 1] by the best match of this query, so the weight means the same thing
    whatever the query length (raw BM25 grows with the number of matched terms)."""
    top = float(scores.max()) if scores.size else 0.0
    if top <= 0.0:
        return np.zeros_like(scores)
    out: npt.NDArray[np.float64] = scores / top
    return out
