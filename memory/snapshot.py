"""A large user's index on disk, so the first query after a restart does not rebuild it.

Rebuilding a 100k-memory index from the database means reading every row, decrypting every
memory's Fernet token and tokenising every text (several seconds, see bench/notes.md); loading
a snapshot is one Fernet decryption of one blob plus memory maps. The loader then compares the
snapshot with the database (memory id, ``updated_at``, embedding id) and applies only the
difference, so a stale snapshot costs time, never correctness.

Files under ``<dir>/`` for one (database, user), named by a hash of both:

- ``<name>.current``: JSON pointer (plaintext, no memory text): which files are current, the
  user id, model, version, row count and dimension;
- ``<name>.<nonce>.blob``: Fernet token (``db.crypto`` keyring, so rotated keys still open it)
  of everything derived from memory text — the texts themselves, the token ids of every text
  and the vocabulary they index — together with the row metadata (ids, salience, recency,
  states, provenance, fingerprints, links);
- ``<name>.<nonce>.vec``: the embedding matrix as ``.npy`` (memory-mapped; embeddings are
  stored unencrypted in the database too);
- ``<name>.<nonce>.ann``: the usearch graph, when the user has one (memory-mapped).

A new snapshot is written under a new nonce and the pointer replaced atomically, so a reader
never mixes two snapshots; a reader that loses a race with the cleanup of old files falls back
to the database. A snapshot whose blob no configured key can open is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.fernet import InvalidToken

from db.crypto import Keyring
from memory.ann import AnnDtype, AnnIndex
from memory.index import Fingerprint, UserIndex
from memory.lexical import VOCAB

FORMAT = 1
MAGIC = b"VXIDX1\n"
# Files of no current snapshot older than this are leftovers (a writer died or lost a race).
STALE_SECS = 3600.0


@dataclass(frozen=True, slots=True)
class Loaded:
    index: UserIndex
    ann: AnnIndex | None
    user_id: str


def name_for(key: tuple[str, str]) -> str:
    # The database URL may hold credentials: only a hash of it reaches the file name.
    return hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:40]


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    """Durable before the pointer names it: after a power loss the pointer must not name a
    file whose blocks never reached the disk (a zero-filled vector file would load)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_nonce() -> str:
    return secrets.token_hex(8)


def save_ann(root: Path, key: tuple[str, str], nonce: str, ann: AnnIndex) -> None:
    """Write the graph of the snapshot ``nonce`` is about to become (``save(..., nonce=,
    ann_dtype=)``); separate so the caller can hold the graph still just for this."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _file(root, name_for(key), nonce, "ann")
    ann.save(path)
    os.chmod(path, 0o600)
    _fsync(path)


def save(
    root: Path,
    key: tuple[str, str],
    index: UserIndex,
    keyring: Keyring,
    ann: AnnIndex | None = None,
    *,
    nonce: str | None = None,
    ann_dtype: AnnDtype | None = None,
) -> Path:
    """Write ``index`` (and ``ann``, whose members must match it) as the user's snapshot.
    ``nonce``/``ann_dtype``: the graph was already written with :func:`save_ann`."""
    if index.fingerprints is None:
        raise ValueError("only a loader-built index (with fingerprints) can be saved")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    name, nonce = name_for(key), nonce or new_nonce()
    previous = pointer(root, key)
    live = np.flatnonzero(index.alive)
    ids = index.ids[live]
    lengths = np.diff(index.term_off)[live]
    owners = np.repeat(np.arange(index.rows), np.diff(index.term_off))
    flat = index.term_flat[index.alive[owners]]
    vocab, local = np.unique(flat, return_inverse=True)
    offsets = np.zeros(len(live) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    fps = index.fingerprints
    src, dst, weights = index._links
    rows = live.tolist()
    contents, contents_off = _pack([index.contents[r] for r in rows])
    sources, sources_off = _pack(
        [x if isinstance(x, str) else json.dumps(list(x)) for x in (index.sources[r] for r in rows)]
    )
    updated, updated_off = _pack([fps[int(i)][0] for i in ids.tolist()])
    arrays: dict[str, npt.NDArray[Any]] = {
        "contents": contents,
        "contents_off": contents_off,
        "sources": sources,
        "sources_off": sources_off,
        "updated": updated,
        "updated_off": updated_off,
        "sector_of": index.sector_of[live],
        "state_code": index.state_code[live],
        "ids": ids,
        "salience": index.salience[live],
        "last_seen": index.last_seen[live],
        "created": index.created[live],
        "valid_to": index.valid_to[live],
        "emb_ids": np.array([fps[int(i)][1] for i in ids.tolist()], dtype=np.int64),
        "term_flat": local.astype(np.int32),
        "term_off": offsets,
        "link_src": src,
        "link_dst": dst,
        "link_w": weights,
    }
    header: dict[str, Any] = {
        "sector_vocab": index.sector_vocab,
        "state_names": index.state_names,
        # Terms are [a-z0-9]+ (memory.lexical): newline-separated.
        "vocab": "\n".join(VOCAB.terms(vocab)),
        "arrays": [],
    }
    chunks: list[bytes] = []
    offset = 0
    for arr_name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header["arrays"].append([arr_name, arr.dtype.str, list(arr.shape), offset, len(raw)])
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    plain = MAGIC + struct.pack("<Q", len(head)) + head + b"".join(chunks)
    _write(_file(root, name, nonce, "blob"), keyring.encrypt_bytes(plain))
    fd = os.open(_file(root, name, nonce, "vec"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, np.ascontiguousarray(index.vectors[live], dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    if ann is not None:
        save_ann(root, key, nonce, ann)
        ann_dtype = ann.dtype
    meta = {
        "format": FORMAT,
        "nonce": nonce,
        "user_id": key[1],
        "model": index.model,
        "version": index.version,
        "rows": len(live),
        "dim": int(index.vectors.shape[1]) if index.vectors.ndim == 2 else 0,
        "ann": ann_dtype,
    }
    tmp = root / f"{name}.current.{nonce}.tmp"
    _write(tmp, json.dumps(meta).encode())
    os.replace(tmp, root / f"{name}.current")
    _fsync(root)
    # The snapshot just replaced, and leftovers of writers that died or lost a race.
    if previous is not None and previous.get("nonce") != nonce:
        _remove_nonce(root, name, str(previous.get("nonce")))
    _cleanup(root, name, keep=nonce, older_than=time.time() - STALE_SECS)
    return root / f"{name}.current"


def _pack(items: list[str]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Strings as one UTF-8 buffer and character offsets (one decode and slices on load,
    instead of a JSON list of 100k strings)."""
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in items], out=offsets[1:])
    return np.frombuffer("".join(items).encode("utf-8"), dtype=np.uint8), offsets


def _unpack(buffer: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> list[str]:
    text = buffer.tobytes().decode("utf-8")
    bounds = offsets.tolist()
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _file(root: Path, name: str, nonce: str, kind: str) -> Path:
    return root / f"{name}.{nonce}.{kind}"


def _remove_nonce(root: Path, name: str, nonce: str) -> None:
    for kind in ("blob", "vec", "ann"):
        with contextlib.suppress(FileNotFoundError):
            _file(root, name, nonce, kind).unlink()


def _cleanup(root: Path, name: str, keep: str | None, older_than: float | None = None) -> None:
    for path in root.glob(f"{name}.*"):
        parts = path.name.split(".")
        if parts[1] == "current" and len(parts) == 2:
            continue
        if keep is not None and keep in parts[1:3]:
            continue
        try:
            if older_than is not None and path.stat().st_mtime > older_than:
                continue
            path.unlink()
        except FileNotFoundError:
            continue


def delete(root: Path, key: tuple[str, str]) -> None:
    name = name_for(key)
    with contextlib.suppress(FileNotFoundError):
        (root / f"{name}.current").unlink()
    _cleanup(root, name, keep=None)


def pointer(root: Path, key: tuple[str, str]) -> dict[str, Any] | None:
    try:
        data = json.loads((root / f"{name_for(key)}.current").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def load(root: Path, key: tuple[str, str], model: str, keyring: Keyring) -> Loaded | None:
    """The user's snapshot as an index (at the snapshot's version), or None."""
    meta = pointer(root, key)
    if meta is None or meta.get("model") != model or meta.get("user_id") != key[1]:
        return None
    name, nonce = name_for(key), str(meta["nonce"])
    try:
        token = _file(root, name, nonce, "blob").read_bytes()
        vectors = np.load(_file(root, name, nonce, "vec"), mmap_mode="r")
    except (FileNotFoundError, ValueError):
        return None  # replaced under us: the database path answers
    try:
        plain = keyring.decrypt_bytes(token)
    except InvalidToken:
        delete(root, key)  # no configured key opens it any more
        return None
    if not plain.startswith(MAGIC):
        return None
    (size,) = struct.unpack_from("<Q", plain, len(MAGIC))
    start = len(MAGIC) + 8
    header = json.loads(plain[start : start + size])
    body = memoryview(plain)[start + size :]
    arrays: dict[str, npt.NDArray[Any]] = {}
    for arr_name, dtype, shape, offset, nbytes in header["arrays"]:
        arrays[arr_name] = np.frombuffer(
            body[offset : offset + nbytes], dtype=np.dtype(dtype)
        ).reshape(shape)
    n = len(arrays["ids"])
    if vectors.shape[0] != n:
        return None
    terms = header["vocab"].split("\n") if header["vocab"] else []
    mapping = VOCAB.ids(terms, add=True)
    flat = mapping[arrays["term_flat"]] if len(mapping) else np.zeros(0, dtype=np.int64)
    ids = arrays["ids"].astype(np.int64)
    fingerprints: dict[int, Fingerprint] = dict(
        zip(
            ids.tolist(),
            zip(
                _unpack(arrays["updated"], arrays["updated_off"]),
                arrays["emb_ids"].tolist(),
                strict=True,
            ),
            strict=True,
        )
    )
    index = UserIndex.from_columns(
        int(meta["version"]),
        model,
        ids=ids,
        vectors=vectors,
        salience=arrays["salience"].copy(),
        last_seen=arrays["last_seen"].copy(),
        created=arrays["created"].copy(),
        valid_to=arrays["valid_to"].copy(),
        sector_vocab=list(header["sector_vocab"]),
        sector_of=arrays["sector_of"].astype(np.int16),
        state_names=list(header["state_names"]),
        state_code=arrays["state_code"].astype(np.int16),
        contents=_unpack(arrays["contents"], arrays["contents_off"]),
        sources=list[tuple[Any, ...] | str](_unpack(arrays["sources"], arrays["sources_off"])),
        term_flat=flat.astype(np.int64),
        term_off=arrays["term_off"].astype(np.int64),
        links=(
            arrays["link_src"].astype(np.int64),
            arrays["link_dst"].astype(np.int64),
            arrays["link_w"].astype(np.float64),
        ),
        fingerprints=fingerprints,
        writable_vectors=False,
    )
    ann = None
    ann_dtype: AnnDtype | None = meta.get("ann")
    if ann_dtype is not None and index.vectors.ndim == 2:
        dim = int(index.vectors.shape[1])
        ann = AnnIndex.restore(_file(root, name, nonce, "ann"), dim, ann_dtype)
    return Loaded(index=index, ann=ann, user_id=str(meta["user_id"]))


def users(root: Path) -> dict[str, tuple[str, str]]:
    """{snapshot name: (user id, file)} of every snapshot under ``root`` (for the orphan
    sweep: snapshots of users that no longer exist are deleted)."""
    out: dict[str, tuple[str, str]] = {}
    if not root.is_dir():
        return out
    for path in root.glob("*.current"):
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("user_id"), str):
            out[path.name.split(".")[0]] = (data["user_id"], path.name)
    return out


def delete_name(root: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / f"{name}.current").unlink()
    _cleanup(root, name, keep=None)
