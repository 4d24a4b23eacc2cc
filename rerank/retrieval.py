"""The HNSW candidate source: approximate nearest neighbours over hnswlib with string ids.

:class:`HNSWIndex` wraps one ``hnswlib.Index`` and fixes what hnswlib leaves to its users
(STYLE.md, "Lessons from the peers' issue trackers"):

- **Threads.** hnswlib is not safe to search while it inserts. Every call takes a
  writer-preferring readers–writer lock: searches run concurrently, writes (add, delete, rebuild)
  run alone, and a stream of searches cannot starve a writer.
- **Ghosts.** ``mark_deleted`` leaves the element, its memory and its graph edges behind (an
  upsert leaves one too: the old label is marked deleted and the new vector gets a new label).
  When the deleted labels exceed ``rebuild_ratio`` × the labels in the graph, the index is rebuilt
  from the live vectors, so ghosts and their memory go away. :attr:`HNSWIndex.rebuilds` counts it.
- **Files.** :meth:`HNSWIndex.save` writes a temporary file beside the target, fsyncs it and
  renames it over the target (a crash leaves the old file or the new one, never a torn one).
  The file carries a checksummed header (model id, dimension, space, id map) and a checksum of
  everything after it, verified *before* hnswlib parses a byte (hnswlib can crash on corrupt
  input). :meth:`HNSWIndex.load` refuses an index built for another model, dimension or space.
- **Exactly n.** :meth:`HNSWIndex.search` returns exactly ``n`` candidates per query or raises.
  When hnswlib's graph search cannot reach ``n`` live items (ghosts can disconnect the graph) or
  an ``allowed`` filter leaves at most :attr:`HNSWIndex.exact_search_limit` items, the result is
  computed by exact search instead, over the same stored vectors.

The index keeps its own float32 copy of the stored vectors (rows by internal label): hnswlib's
``get_items`` converts through Python lists (about 50 µs per 384-d vector), which would dominate
a search's latency, and the reranker needs the candidates' vectors. The copy doubles the memory
the vectors take; it is also what rebuilds and exact searches read, and it is saved in the file.

Scores are similarities, higher is better: ``cosine`` → cosine similarity, ``ip`` → dot product,
``l2`` → minus the squared Euclidean distance. They are recomputed from the stored vectors (in
float64, returned as float32), so they equal the exact scores of the returned ids, and the order
is by those scores. In ``cosine`` space hnswlib stores L2-normalised vectors; the index stores and
returns those normalised vectors too (``get_vectors``, ``SearchResult.vectors``).

Ids are non-empty strings everywhere; integer labels are internal. Wherever a sequence of ids is
taken, a lone ``str`` counts as one id.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import hnswlib
import numpy as np

from . import backend
from .validation import as_float32, positive_int

__all__ = ["HNSWIndex", "IndexCorruptError", "IndexMismatchError", "ReadWriteLock",
           "SearchResult", "SPACES"]

SPACES = ("cosine", "ip", "l2")

#: File layout (all integers little-endian):
#:   MAGIC (8 bytes) | header length H (u64) | crc32 of the header (u32) | header (H bytes, UTF-8
#:   JSON) | vectors section (live rows, float32, in the order of the header's ``labels``) |
#:   hnswlib's ``save_index`` bytes | crc32 of the vectors section and the hnswlib bytes (u32) |
#:   END (4 bytes).
MAGIC = b"RRHNSW\r\n"   # \r\n: a text-mode copy that rewrites line endings fails the magic check
END = b"RRHE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sQI")
_TRAILER = struct.Struct("<I4s")
_CHUNK = 1 << 22            # bytes per read/write/crc step when streaming sections
_ROWS_PER_CHUNK = 65536     # rows per step when streaming or exactly searching vectors


class IndexMismatchError(ValueError):
    """A saved index disagrees with what the caller expects (dim, space, model id)."""


class IndexCorruptError(ValueError):
    """A saved index file is truncated or unreadable."""


@dataclass
class SearchResult:
    """Candidates of ``m`` queries, ``n`` each, best first.

    ``ids``: m lists of n string ids. ``scores``: ``(m, n)`` float32 similarities (higher is
    better; see the module docstring). ``vectors``: ``(m, n, d)`` float32 candidate vectors as
    stored (L2-normalised in ``cosine`` space). A single query ``(d,)`` still gives m = 1."""

    ids: list[list[str]]
    scores: np.ndarray
    vectors: np.ndarray


class ReadWriteLock:
    """A writer-preferring readers–writer lock: many readers or one writer.

    A waiting writer blocks new readers, so continuous searches cannot starve writes. Not
    re-entrant: a thread holding it must not acquire it again (that can deadlock)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def read(self):
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self):
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()


class _State:
    """Everything a rebuild replaces at once: the hnswlib index, the vector rows by label, the
    id ↔ label maps and the next free label."""

    __slots__ = ("index", "vectors", "id_to_label", "label_ids", "next_label")

    def __init__(self, index, vectors, id_to_label, label_ids, next_label):
        self.index = index
        self.vectors = vectors          # (capacity, d) float32; row = label
        self.id_to_label = id_to_label  # live id → label, in order of the last write
        self.label_ids = label_ids      # label → id, None for a deleted label
        self.next_label = next_label


# ----------------------------------------------------------------------------- validation

def _check_space(space) -> str:
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}; got {space!r}")
    return space


def _check_model_id(model_id) -> str:
    if not isinstance(model_id, str):
        raise TypeError(f"model_id must be a str; got {type(model_id).__name__}")
    return model_id


def _id_list(name: str, ids, *, unique: bool) -> list[str]:
    """``ids`` as a list of non-empty str (a lone str is one id)."""
    if isinstance(ids, str):
        ids = [ids]
    elif isinstance(ids, (bytes, bytearray)) or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a sequence of str ids; got {type(ids).__name__}")
    out = list(ids)
    if not all(type(x) is str and x for x in out):  # slow path: find the bad one, or str_
        for i, x in enumerate(out):
            if not isinstance(x, str):
                raise TypeError(f"{name}[{i}] must be a str; got {type(x).__name__} {x!r}")
            if not x:
                raise ValueError(f"{name}[{i}] must be a non-empty string")
        out = [str(x) for x in out]  # str subclasses (numpy str_) → str
    if unique and len(set(out)) != len(out):
        seen = set()
        dup = next(x for x in out if x in seen or seen.add(x))
        raise ValueError(f"{name} must be unique within one call; {dup!r} appears more than once")
    return out


class HNSWIndex:
    """Candidate source over hnswlib with string ids, a readers–writer lock, atomic persistence.

    ``dim``: vector dimension. ``space``: ``cosine`` | ``ip`` | ``l2``. ``model_id``: the
    embedding model the vectors come from, saved with the index and checked on load. ``M``,
    ``ef_construction``: hnswlib graph parameters. ``ef``: search breadth (a search uses
    max(ef, n)). ``capacity``: initial number of slots (doubled as needed). ``rebuild_ratio``:
    rebuild automatically when deleted labels exceed this fraction of the labels in the graph
    (1.0 never rebuilds). ``num_threads``: hnswlib threads for inserts and batched searches
    (``None`` follows :func:`rerank.get_num_threads` at each call)."""

    #: An ``allowed`` filter leaving at most this many items is searched exactly (cheaper than a
    #: filtered graph walk, which visits much of the graph when few items pass).
    exact_search_limit = 2048

    def __init__(self, dim: int, *, space: str = "cosine", model_id: str = "", M: int = 16,
                 ef_construction: int = 200, ef: int = 64, capacity: int = 1024,
                 rebuild_ratio: float = 0.25, num_threads: int | None = None):
        self.dim = positive_int("dim", dim)
        self.space = _check_space(space)
        self.model_id = _check_model_id(model_id)
        self.M = positive_int("M", M)
        self.ef_construction = positive_int("ef_construction", ef_construction)
        self._ef = positive_int("ef", ef)
        self.capacity = positive_int("capacity", capacity)
        if isinstance(rebuild_ratio, bool) or not isinstance(rebuild_ratio, (int, float)) \
                or not 0 < rebuild_ratio <= 1:
            raise ValueError(f"rebuild_ratio must be a number in (0, 1]; got {rebuild_ratio!r}")
        self.rebuild_ratio = float(rebuild_ratio)
        self._num_threads = None if num_threads is None else positive_int("num_threads",
                                                                          num_threads)
        #: How many times the index was rebuilt (automatically or by :meth:`rebuild`).
        self.rebuilds = 0
        self._lock = ReadWriteLock()
        self._state = self._empty_state(self.capacity)

    # ------------------------------------------------------------------ properties

    @property
    def num_threads(self) -> int:
        return self._num_threads if self._num_threads is not None else backend.get_num_threads()

    @property
    def ef(self) -> int:
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        value = positive_int("ef", value)
        with self._lock.write():
            self._ef = value
            self._state.index.set_ef(value)

    @property
    def count(self) -> int:
        """The number of live (searchable) items."""
        return len(self._state.id_to_label)

    @property
    def deleted_count(self) -> int:
        """Deleted labels still in the graph (ghosts), until the next rebuild."""
        st = self._state
        return st.index.element_count - len(st.id_to_label)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, id) -> bool:
        return isinstance(id, str) and id in self._state.id_to_label

    def ids(self) -> list[str]:
        """Every live id, in the order they were last written."""
        with self._lock.read():
            return list(self._state.id_to_label)

    def __repr__(self) -> str:
        return (f"HNSWIndex(dim={self.dim}, space={self.space!r}, model_id={self.model_id!r}, "
                f"count={self.count}, deleted={self.deleted_count})")

    # ------------------------------------------------------------------ building blocks

    def _new_hnsw(self, capacity: int):
        index = hnswlib.Index(space=self.space, dim=self.dim)
        index.init_index(max_elements=capacity, M=self.M, ef_construction=self.ef_construction)
        index.set_ef(self._ef)
        return index

    def _empty_state(self, capacity: int) -> _State:
        return _State(self._new_hnsw(capacity), np.empty((capacity, self.dim), np.float32),
                      {}, [], 0)

    def _vectors_arg(self, vectors, rows: int | None, normalise: bool = True) -> np.ndarray:
        """``vectors`` as (rows, dim) float32, finite, normalised in cosine space (queries need
        not be: hnswlib normalises them itself)."""
        x = as_float32("vectors", vectors, (1, 2))
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {x.shape[1]} but the index has dimension "
                             f"{self.dim}")
        if rows is not None and x.shape[0] != rows:
            raise ValueError(f"vectors has {x.shape[0]} rows but {rows} ids were given")
        if not np.isfinite(x).all():
            raise ValueError("vectors contains NaN or Inf values")
        if self.space == "cosine" and normalise:
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            zero = np.flatnonzero(norms == 0)
            if zero.size:
                raise ValueError(f"vectors row {int(zero[0])} is all zeros: cosine similarity "
                                 "is undefined for it")
            x = (x / norms[:, None]).astype(np.float32)
        return x

    def _reserve(self, st: _State, extra: int) -> None:
        """Grow ``st`` (doubling) so ``extra`` more labels fit."""
        need = st.next_label + extra
        capacity = st.index.max_elements
        if need <= capacity:
            return
        while capacity < need:
            capacity *= 2
        st.index.resize_index(capacity)
        vectors = np.empty((capacity, self.dim), np.float32)
        vectors[:st.next_label] = st.vectors[:st.next_label]
        st.vectors = vectors  # a new array: a saver holding the old one still sees its rows

    def _insert(self, st: _State, ids: list[str], x: np.ndarray, num_threads: int) -> None:
        """Upsert ``ids`` with rows ``x`` (already validated) into ``st``; caller holds the
        write lock or owns ``st``."""
        self._reserve(st, len(ids))
        start = st.next_label
        labels = np.arange(start, start + len(ids), dtype=np.uint64)
        st.vectors[start:start + len(ids)] = x
        try:
            st.index.add_items(x, labels, num_threads=num_threads)
        except BaseException:
            # labels hnswlib may have inserted before failing must never be returned
            for label in labels.tolist():
                with contextlib.suppress(RuntimeError):
                    st.index.mark_deleted(label)
            st.next_label += len(ids)
            st.label_ids.extend([None] * len(ids))
            raise
        st.next_label += len(ids)
        for label, id_ in enumerate(ids, start):
            old = st.id_to_label.pop(id_, None)
            if old is not None:
                st.index.mark_deleted(old)
                st.label_ids[old] = None
            st.id_to_label[id_] = label
            st.label_ids.append(id_)

    def _build(self, ids: list[str], x: np.ndarray) -> _State:
        """A fresh state holding rows ``x`` under ``ids`` (validated, unique)."""
        st = self._empty_state(max(self.capacity, len(ids) + len(ids) // 4))
        threads = self.num_threads
        for start in range(0, len(ids), _ROWS_PER_CHUNK):
            self._insert(st, ids[start:start + _ROWS_PER_CHUNK],
                         x[start:start + _ROWS_PER_CHUNK], threads)
        return st

    def _rebuild_from_live(self) -> None:
        """Rebuild from the live rows; caller holds the write lock."""
        st = self._state
        ids = list(st.id_to_label)
        labels = np.fromiter(st.id_to_label.values(), dtype=np.int64, count=len(ids))
        self._state = self._build(ids, st.vectors[labels])
        self.rebuilds += 1

    def _maybe_rebuild(self) -> None:
        st = self._state
        allocated = st.index.element_count
        if allocated and allocated - len(st.id_to_label) > self.rebuild_ratio * allocated:
            self._rebuild_from_live()

    # ------------------------------------------------------------------ writes

    def add(self, ids: Sequence[str], vectors) -> None:
        """Insert or replace (upsert) ``vectors`` ``(n, d)`` (or ``(d,)`` for one id) under
        ``ids``: non-empty strings, unique within the call. A replaced id's old vector is
        marked deleted (a ghost until the next rebuild). Capacity grows by doubling."""
        ids = _id_list("ids", ids, unique=True)
        if not ids:
            raise ValueError("ids must not be empty")
        x = self._vectors_arg(vectors, len(ids))
        with self._lock.write():
            self._insert(self._state, ids, x, self.num_threads)
            self._maybe_rebuild()

    def delete(self, ids) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed. Rebuilds
        from the live vectors when ghosts exceed ``rebuild_ratio`` of the graph."""
        ids = _id_list("ids", ids, unique=False)
        removed = 0
        with self._lock.write():
            st = self._state
            for id_ in ids:
                label = st.id_to_label.pop(id_, None)
                if label is not None:
                    st.index.mark_deleted(label)
                    st.label_ids[label] = None
                    removed += 1
            if removed:
                self._maybe_rebuild()
        return removed

    def rebuild(self, ids=None, vectors=None) -> None:
        """Replace the graph with a fresh one: from ``ids``/``vectors`` when given (e.g. from
        the document store, the source of truth; the index then holds exactly those), else from
        the live items. Ghosts and their memory go away."""
        if ids is None and vectors is None:
            with self._lock.write():
                self._rebuild_from_live()
            return
        if ids is None or vectors is None:
            raise ValueError("rebuild takes both ids and vectors, or neither")
        ids = _id_list("ids", ids, unique=True)
        if ids:
            st = self._build(ids, self._vectors_arg(vectors, len(ids)))
        else:
            if np.size(vectors):
                raise ValueError(f"vectors has rows but no ids were given; got shape "
                                 f"{np.shape(vectors)}")
            st = self._empty_state(self.capacity)
        with self._lock.write():  # built outside the lock: searches go on meanwhile
            self._state = st
            self.rebuilds += 1

    # ------------------------------------------------------------------ reads

    def get_vectors(self, ids) -> np.ndarray:
        """The stored vectors ``(len(ids), d)`` float32 (normalised in cosine space);
        ``KeyError`` naming an unknown id."""
        ids = _id_list("ids", ids, unique=False)
        with self._lock.read():
            st = self._state
            try:
                labels = [st.id_to_label[i] for i in ids]
            except KeyError as exc:
                raise KeyError(f"id {exc.args[0]!r} is not in the index") from None
            return st.vectors[np.asarray(labels, dtype=np.int64)]

    def search(self, vectors, n: int, allowed: set[str] | None = None) -> SearchResult:
        """The exactly ``n`` best items for each query, best first.

        ``vectors``: ``(m, d)`` queries, or ``(d,)`` for one (the result still has m = 1).
        ``allowed``: when given, only these ids can be returned (ids not in the index are
        ignored). ``ValueError`` when ``n < 1`` or fewer than ``n`` (allowed) items exist."""
        n = positive_int("n", n)
        q = self._vectors_arg(vectors, None, normalise=False)
        if self.space == "cosine":
            norms = np.sqrt(np.einsum("ij,ij->i", q, q))
            if not norms.all():
                raise ValueError("vectors has a row of all zeros: cosine similarity is undefined")
        m = q.shape[0]
        allowed_ids = None if allowed is None else _id_list("allowed", allowed, unique=False)
        with self._lock.read():
            st = self._state
            if allowed_ids is None:
                available = len(st.id_to_label)
                pool = None
            else:
                lookup = st.id_to_label
                pool = {lookup.get(i) for i in allowed_ids}
                pool.discard(None)  # ids not in the index
                available = len(pool)
            if n > available:
                what = "allowed items" if allowed is not None else "items"
                raise ValueError(f"n = {n} candidates requested but only {available} {what} "
                                 "are in the index")
            labels = distances = None
            if pool is None or available > self.exact_search_limit:
                threads = 1 if (m == 1 or pool is not None) else self.num_threads
                try:
                    labels, distances = st.index.knn_query(
                        q, k=n, num_threads=threads,
                        filter=None if pool is None else pool.__contains__)
                except RuntimeError:  # the graph walk reached fewer than n live items
                    labels = None
            if labels is None:
                if self.space == "cosine":
                    q = (q / norms[:, None]).astype(np.float32)
                rows = (np.fromiter(st.id_to_label.values(), np.int64, available)
                        if pool is None else np.fromiter(pool, np.int64, available))
                labels = self._exact(st.vectors, rows, q, n)
            labels = labels.astype(np.int64, copy=False)
            cand = st.vectors[labels]                       # (m, n, d), a copy
            label_ids = st.label_ids
            ids = [[label_ids[l] for l in row] for row in labels.tolist()]
        if distances is not None:   # hnswlib's distances, best first: 1 − cos, 1 − dot, ‖·‖²
            scores = -distances if self.space == "l2" else 1.0 - distances
            return SearchResult(ids=ids, scores=scores.astype(np.float32, copy=False), vectors=cand)
        scores = self._scores(q, cand)
        order = np.argsort(-scores, axis=1, kind="stable")
        if (order != np.arange(n)).any():
            scores = np.take_along_axis(scores, order, axis=1)
            cand = np.take_along_axis(cand, order[:, :, None], axis=1)
            ids = [[row[j] for j in o] for row, o in zip(ids, order.tolist())]
        return SearchResult(ids=ids, scores=scores.astype(np.float32), vectors=cand)

    def _scores(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Exact similarities (m, n) in float64 of queries (m, d) to candidates (m, n, d)."""
        q64 = q.astype(np.float64)
        c64 = cand.astype(np.float64)
        if self.space == "l2":
            diff = c64 - q64[:, None, :]
            return -np.einsum("mnd,mnd->mn", diff, diff)
        return np.einsum("mnd,md->mn", c64, q64)

    def _exact(self, table: np.ndarray, rows: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
        """Labels (m, n) of the n best rows among ``rows`` of ``table`` for each query (exact
        search, chunked so the memory stays bounded)."""
        m = q.shape[0]
        best_s = np.full((m, 0), -np.inf, np.float32)
        best_l = np.empty((m, 0), np.int64)
        qq = np.einsum("ij,ij->i", q, q)[:, None] if self.space == "l2" else None
        # products small enough that OpenBLAS stays on this thread (measured: its threads made
        # a 1 × 384 × 2000 product several times slower on 2 cores)
        step = min(_ROWS_PER_CHUNK, max(256, backend.BLAS_THREADING_MNK // (m * self.dim)))
        for start in range(0, rows.size, step):
            chunk = rows[start:start + step]
            v = table[chunk]
            s = q @ v.T
            if qq is not None:
                s = 2 * s - qq - np.einsum("ij,ij->i", v, v)[None, :]
            s = np.concatenate([best_s, s], axis=1)
            lab = np.concatenate([best_l, np.broadcast_to(chunk, (m, chunk.size))], axis=1)
            if s.shape[1] > n:
                keep = np.argpartition(-s, n - 1, axis=1)[:, :n]
                s = np.take_along_axis(s, keep, axis=1)
                lab = np.take_along_axis(lab, keep, axis=1)
            best_s, best_l = s, lab
        return best_l

    # ------------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Write the index to ``path`` atomically: a temporary file in the same directory is
        written, fsynced and renamed over ``path`` (the old file or the new one, never torn).
        Writers wait while hnswlib writes its part; searches go on."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        base = os.path.basename(path)
        graph_fd, graph_path = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".hnsw")
        os.close(graph_fd)
        tmp_path = None
        try:
            with self._lock.read():
                st = self._state
                st.index.save_index(graph_path)
                live_ids = list(st.id_to_label)
                live_labels = list(st.id_to_label.values())
                table, next_label = st.vectors, st.next_label
                allocated, capacity = st.index.element_count, st.index.max_elements
            # rows below next_label are never rewritten, so ``table`` is a stable snapshot
            payload_len = os.path.getsize(graph_path)
            header = {
                "format": "rerank-hnsw", "format_version": FORMAT_VERSION,
                "dim": self.dim, "space": self.space, "model_id": self.model_id,
                "count": len(live_ids), "M": self.M, "ef_construction": self.ef_construction,
                "ef": self._ef, "capacity": self.capacity, "rebuild_ratio": self.rebuild_ratio,
                "max_elements": capacity, "element_count": allocated, "next_label": next_label,
                "vectors_bytes": len(live_ids) * self.dim * 4, "payload_bytes": payload_len,
                "hnswlib_version": getattr(hnswlib, "__version__", None),
                "ids": live_ids, "labels": live_labels,
            }
            blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
            fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.write(_PREFIX.pack(MAGIC, len(blob), zlib.crc32(blob)))
                out.write(blob)
                crc = 0
                labels = np.asarray(live_labels, dtype=np.int64)
                for start in range(0, labels.size, _ROWS_PER_CHUNK):
                    part = np.ascontiguousarray(
                        table[labels[start:start + _ROWS_PER_CHUNK]], dtype="<f4").tobytes()
                    crc = zlib.crc32(part, crc)
                    out.write(part)
                with open(graph_path, "rb") as graph:
                    while chunk := graph.read(_CHUNK):
                        crc = zlib.crc32(chunk, crc)
                        out.write(chunk)
                out.write(_TRAILER.pack(crc, END))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_path, path)
            tmp_path = None
            _fsync_dir(directory)
        finally:
            for leftover in (graph_path, tmp_path):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)

    @classmethod
    def load(cls, path, *, dim=None, space=None, model_id=None,
             num_threads=None) -> HNSWIndex:
        """Read an index written by :meth:`save`. ``dim``/``space``/``model_id``, when given,
        must match the file (``IndexMismatchError`` naming both values). A truncated, altered
        or foreign file raises ``IndexCorruptError`` before hnswlib reads it; a missing one
        ``FileNotFoundError``."""
        if dim is not None:
            dim = positive_int("dim", dim)
        if space is not None:
            space = _check_space(space)
        if model_id is not None:
            model_id = _check_model_id(model_id)
        path = os.fspath(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = _read_header(f, size, path)
            for name, want in (("dim", dim), ("space", space), ("model_id", model_id)):
                if want is not None and header[name] != want:
                    raise IndexMismatchError(
                        f"index file {path} has {name} {header[name]!r} but {want!r} was "
                        f"expected (rebuild the index for {want!r})")
            try:
                out = cls(header["dim"], space=header["space"], model_id=header["model_id"],
                          M=header["M"], ef_construction=header["ef_construction"],
                          ef=header["ef"], capacity=header["capacity"],
                          rebuild_ratio=header["rebuild_ratio"], num_threads=num_threads)
            except (TypeError, ValueError) as exc:
                raise IndexCorruptError(f"index file {path} has bad parameters: {exc}") from None
            count, d = header["count"], header["dim"]
            vec_bytes = f.read(header["vectors_bytes"])
            crc = zlib.crc32(vec_bytes)
            try:  # beside the file (same disk as the index), else the temporary directory
                fd, graph_path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                                  prefix=".load.", suffix=".hnsw")
            except OSError:
                fd, graph_path = tempfile.mkstemp(suffix=".hnsw")
            try:
                with os.fdopen(fd, "wb") as graph:
                    left = header["payload_bytes"]
                    while left:
                        chunk = f.read(min(_CHUNK, left))
                        if not chunk:
                            raise IndexCorruptError(f"index file {path} is truncated")
                        crc = zlib.crc32(chunk, crc)
                        graph.write(chunk)
                        left -= len(chunk)
                trailer = f.read(_TRAILER.size)
                if len(trailer) != _TRAILER.size:
                    raise IndexCorruptError(f"index file {path} is truncated")
                stored_crc, end = _TRAILER.unpack(trailer)
                if end != END or stored_crc != crc \
                        or len(vec_bytes) != header["vectors_bytes"]:
                    raise IndexCorruptError(f"index file {path} fails its checksum (corrupted)")
                live = np.frombuffer(vec_bytes, dtype="<f4").reshape(count, d)
                index = hnswlib.Index(space=header["space"], dim=d)
                try:
                    index.load_index(graph_path, max_elements=header["max_elements"])
                except (RuntimeError, ValueError, MemoryError) as exc:
                    raise IndexCorruptError(f"hnswlib could not read index file {path}: "
                                            f"{exc}") from None
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(graph_path)
        if index.dim != d or index.element_count != header["element_count"] \
                or index.max_elements != header["max_elements"]:
            raise IndexCorruptError(f"index file {path}: the graph disagrees with its header")
        index.set_ef(header["ef"])
        next_label = header["next_label"]
        vectors = np.empty((max(index.max_elements, next_label), d), np.float32)
        labels = np.asarray(header["labels"], dtype=np.int64)
        vectors[labels] = live
        label_ids = [None] * next_label
        for id_, label in zip(header["ids"], header["labels"]):
            label_ids[label] = id_
        if count:  # the graph's copy of a vector must match the saved one
            probe = int(labels[0])
            try:
                same = np.allclose(index.get_items([probe])[0], vectors[probe], atol=1e-6)
            except RuntimeError:
                same = False
            if not same:
                raise IndexCorruptError(f"index file {path}: the graph disagrees with its "
                                        "vectors")
        out._state = _State(index, vectors, dict(zip(header["ids"], header["labels"])),
                            label_ids, next_label)
        return out


def _fsync_dir(directory: str) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_HEADER_TYPES = {
    "format_version": int, "dim": int, "space": str, "model_id": str, "count": int, "M": int,
    "ef_construction": int, "ef": int, "capacity": int, "rebuild_ratio": (int, float),
    "max_elements": int, "element_count": int, "next_label": int, "vectors_bytes": int,
    "payload_bytes": int, "ids": list, "labels": list,
}


def _read_header(f, size: int, path: str) -> dict:
    """Read and check the prefix and header; leaves ``f`` at the vectors section."""
    corrupt = IndexCorruptError
    if size < _PREFIX.size:
        raise corrupt(f"index file {path} is truncated ({size} bytes)")
    magic, header_len, header_crc = _PREFIX.unpack(f.read(_PREFIX.size))
    if magic != MAGIC:
        raise corrupt(f"{path} is not a rerank HNSW index file (bad magic bytes)")
    if header_len > size - _PREFIX.size:
        raise corrupt(f"index file {path} is truncated (header)")
    blob = f.read(header_len)
    if zlib.crc32(blob) != header_crc:
        raise corrupt(f"index file {path} has a corrupted header (checksum mismatch)")
    try:
        header = json.loads(blob)
    except ValueError:
        raise corrupt(f"index file {path} has an unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != "rerank-hnsw":
        raise corrupt(f"{path} is not a rerank HNSW index file")
    for key, kind in _HEADER_TYPES.items():
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise corrupt(f"index file {path}: header field {key!r} is missing or malformed")
    if header["format_version"] != FORMAT_VERSION:
        raise corrupt(f"index file {path} has format version {header['format_version']}; this "
                      f"version of rerank reads version {FORMAT_VERSION}")
    d, count, next_label = header["dim"], header["count"], header["next_label"]
    labels = header["labels"]
    if header["space"] not in SPACES or d < 1 or len(header["ids"]) != count \
            or not header["element_count"] <= next_label <= header["max_elements"] \
            or len(labels) != count or header["vectors_bytes"] != count * d * 4 \
            or not all(isinstance(x, str) for x in header["ids"]) \
            or not all(isinstance(x, int) and 0 <= x < next_label for x in labels) \
            or len(set(labels)) != count or len(set(header["ids"])) != count:
        raise corrupt(f"index file {path} has an inconsistent header")
    expected = (_PREFIX.size + header_len + header["vectors_bytes"] + header["payload_bytes"]
                + _TRAILER.size)
    if size < expected:
        raise corrupt(f"index file {path} is truncated ({size} of {expected} bytes)")
    if size > expected:
        raise corrupt(f"index file {path} has {size - expected} unexpected trailing bytes")
    return header
