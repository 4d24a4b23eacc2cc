"""The operations behind ``rerank serve`` (HTTP) and ``rerank mcp`` (MCP tools), independent of
the transport: validation with limits, one memory, JSON-able results.

:class:`SearchAPI` wraps one :class:`SearchMemory` (``AttentionEnhancedMemory`` whose rerank
scorer can be forced per search) and returns the documents the command line prints with
``--json``. Bad input raises ``ValueError``/``TypeError`` whose message names the field (a
transport answers 422); an unknown document id is ``None``/``False`` from :meth:`SearchAPI.get`
and :meth:`SearchAPI.delete`.
"""
from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from numbers import Real

import numpy as np
from memory_adapter.attention_memory import AttentionEnhancedMemory, MemoryQuery

from . import backend, scoring
from .reranker import Reranker
from .text_settings import DEFAULT, query_token_weights

__all__ = ["Limits", "MECHANISMS", "SearchAPI", "SearchMemory", "search_document"]

#: The rerank scorers a search can force (``rerank.reranker.SCORERS``).
MECHANISMS = ("memory-attention", "cross-attention", "hierarchical-cross-attention")
_UNSET = object()
#: The longest document id.
MAX_ID_CHARS = 1024
#: Characters a document id must not contain (C0 controls and DEL).
ID_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Limits:
    """What one request may ask: results per search (``max_k``), documents per store call,
    characters per document text and per query, candidates per rerank, bytes per HTTP body."""
    max_k: int = 100
    max_documents: int = 1000
    max_text_chars: int = 100_000
    max_candidates: int = 1000
    max_body_bytes: int = 8 * 2**20
    max_query_chars: int = 4096

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{f.name} must be a positive integer; got {value!r}")


# ------------------------------------------------------------------------------ the memory
class SearchMemory(AttentionEnhancedMemory):
    """``AttentionEnhancedMemory`` whose scorer can be forced (``mechanism``, the default for
    every search, or per call: ``retrieve(..., mechanism=...)``) and which records the query's
    embedding time in ``timings_ms["embed"]`` (also :attr:`embed_ms`, per thread).

    ``mechanism``: ``None`` (the memory's choice: late interaction over stored token vectors,
    else memory-attention), ``memory-attention`` (pooled vectors only: the query is embedded
    without tokens), ``cross-attention`` (every candidate must have stored token vectors) or
    ``hierarchical-cross-attention`` (every candidate must have stored chunk vectors:
    ``rerank index --chunks``). Thread-safe: the per-search choice lives in thread-local state."""

    def __init__(self, *args, mechanism: str | None = None, **kwargs):
        self.mechanism = _check_mechanism(mechanism)
        self._calls = threading.local()
        super().__init__(*args, reranker=Reranker(mechanism), **kwargs)

    @property
    def embed_ms(self) -> float:
        """The embedding time of this thread's last query, in ms."""
        return getattr(self._calls, "embed_ms", 0.0)

    def _mechanism(self) -> str | None:
        return getattr(self._calls, "mechanism", self.mechanism)

    def retrieve(self, query, k: int, *, filter=None, task: str | None = None,
                 mechanism=_UNSET):
        """As :meth:`AttentionEnhancedMemory.retrieve`, with ``mechanism`` forced for this call
        (default: the memory's) and ``timings_ms["embed"]`` added (included in ``total``)."""
        calls = self._calls
        calls.mechanism = self.mechanism if mechanism is _UNSET else _check_mechanism(mechanism)
        calls.embed_ms = 0.0
        try:
            ranked = super().retrieve(query, k, filter=filter, task=task)
        finally:
            del calls.mechanism
        ranked.timings_ms = {"embed": calls.embed_ms, **ranked.timings_ms}
        ranked.timings_ms["total"] = ranked.timings_ms.get("total", 0.0) + calls.embed_ms
        return ranked

    def query(self, query, text_settings=None):
        start = time.perf_counter()
        mechanism = self._mechanism()
        if mechanism in ("memory-attention", "hierarchical-cross-attention"):
            q = MemoryQuery(self._embed_query(query))
        else:
            q = super().query(query, text_settings)
        self._calls.embed_ms = (time.perf_counter() - start) * 1e3
        if mechanism == "cross-attention" and q.tokens is None:
            raise ValueError("cross-attention needs the query's token vectors: a text query "
                             "and an embedder with embed_tokens")
        return q

    def candidates(self, query, n, filter=None):
        cands, scores = super().candidates(query, n, filter)
        ids = list(cands.ids)
        mechanism = self._mechanism()
        if mechanism == "cross-attention" and cands.tokens is None:
            lacking = [i for i, t in zip(ids, self.token_vectors(ids)) if t is None]
            raise ValueError(f"cross-attention needs stored token vectors, and {len(lacking)} "
                             f"of the {len(ids)} candidates have none (e.g. {lacking[:3]!r}); "
                             "re-index them with an embedder that stores tokens, or use "
                             "mechanism memory-attention")
        if mechanism == "hierarchical-cross-attention":
            records = self.get(ids)
            lacking = [i for i, r in zip(ids, records) if r is None or r.chunks is None]
            if lacking:
                raise ValueError(
                    f"hierarchical-cross-attention needs stored chunk vectors, and "
                    f"{len(lacking)} of the {len(ids)} candidates have none (e.g. "
                    f"{lacking[:3]!r}); index with `rerank index --chunks` (into a new --db, "
                    "or after removing the old one: stored ids are skipped)")
            parts = [r.chunks for r in records]
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
            cands = replace(cands, chunks=np.concatenate(parts), chunk_offsets=offsets)
        return cands, scores


def _check_mechanism(mechanism):
    if mechanism is not None and mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)} (or null for the "
                         f"memory's choice); got {mechanism!r}")
    return mechanism


def search_document(query, ranked) -> dict:
    """``rerank search --json``'s document for ``ranked`` (from :meth:`SearchMemory.retrieve`):
    ``{"query", "mechanism", "backend", "timings_ms", "results"}`` (+ ``"fallback"``)."""
    timings = ranked.timings_ms
    known = [key for key in ("embed", "retrieve", "rerank", "documents") if key in timings]
    keys = known + [key for key in timings if key not in known and key != "total"] + ["total"]
    document = {"query": query, "mechanism": ranked.mechanism, "backend": ranked.backend,
                "timings_ms": {key: round(timings.get(key, 0.0), 3) for key in keys},
                "results": [{key: item[key] for key in ("corpus_id", "score", "text", "metadata")
                             if key in item} for item in ranked.results]}
    if ranked.fallback:
        document["fallback"] = ranked.fallback
    return document


def _no_results(query) -> dict:
    """The search document when nothing matches: no mechanism or backend ran."""
    return {"query": query, "mechanism": "none", "backend": "none",
            "timings_ms": {"total": 0.0}, "results": []}


# ------------------------------------------------------------------------------ validation
def _int(name: str, value, low: int, high: int, why: str = "the server's limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be ≥ {low}; got {value}")
    if value > high:
        raise ValueError(f"{name} must be ≤ {high} ({why}); got {value}")
    return value


def _text(name: str, value, limit: int, *, blank: bool = True) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string; got {type(value).__name__}")
    if not value or (not blank and not value.strip()):
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} must have ≤ {limit} characters (the server's limit); got "
                         f"{len(value)}")
    return value


def _id(name: str, value) -> str:
    """A document id: a non-blank string of ≤ 1024 characters without control characters
    (the SQL store matches ids through JSON, where U+0000 ends a string)."""
    value = _text(name, value, MAX_ID_CHARS, blank=False)
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(f"{name} must not contain control characters; got {bad.group()!r} at "
                         f"{bad.start()}")
    return value


def _vector(name: str, value, dim: int | None) -> np.ndarray:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of numbers; got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, Real):
            raise TypeError(f"{name}[{i}] must be a number; got {type(x).__name__}")
        if not math.isfinite(x):
            raise ValueError(f"{name}[{i}] must be finite; got {x!r}")
        if abs(x) > _F32_MAX:
            raise ValueError(f"{name}[{i}] is beyond float32's range; got {x!r}")
    if dim is not None and len(value) != dim:
        raise ValueError(f"{name} must have {dim} numbers (the embedding dimension); got "
                         f"{len(value)}")
    vector = np.asarray(value, dtype=np.float32)
    if not vector.any():
        raise ValueError(f"{name} is all zeros: cosine similarity is undefined for it")
    return vector


def _json_value(name: str, value, depth: int = 0):
    """``value`` if it is plain JSON (finite numbers, string keys, ≤ 32 levels); else raise."""
    if depth > 32:
        raise ValueError(f"{name} is nested deeper than 32 levels")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(f"{name}[{i}]", v, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{name} keys must be strings; got {key!r}")
        return {k: _json_value(f"{name}.{k}", v, depth + 1) for k, v in value.items()}
    raise TypeError(f"{name} must be JSON (null, boolean, number, string, list or object); got "
                    f"{type(value).__name__}")


_DOCUMENT_KEYS = ("id", "text", "metadata")


# ------------------------------------------------------------------------------ the API
class SearchAPI:
    """Search, store, rerank over one memory; thread-safe (searches concurrent, writes
    serialised by the memory's lock; a store call returns once its transaction committed)."""

    def __init__(self, memory, *, embedder=None, limits: Limits = Limits()):
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a rerank.serving.Limits; got {type(limits).__name__}")
        if not isinstance(memory, SearchMemory):
            raise TypeError(f"memory must be a rerank.serving.SearchMemory; got "
                            f"{type(memory).__name__}")
        self.memory = memory
        self.embedder = memory.embedder if embedder is None else embedder
        if self.embedder is None:
            raise ValueError("the memory needs an embedder: the API embeds text")
        self.limits = limits
        self._owned = []          # what close() closes besides the memory

    @classmethod
    def open(cls, db: str | None = None, *, embedder=None, limits: Limits | None = None,
             batching: bool = True) -> "SearchAPI":
        """The API over the memory at ``db`` (a path or URL: ``--db``, else ``$RERANK_DB``, else
        the per-user default; created when missing). ``embedder`` ``None``: the packaged model,
        behind a :class:`~embeddings_adapter.batching.BatchingEmbedder` when ``batching``
        (concurrent searches share one forward pass)."""
        from memory_adapter.location import resolve_db

        owned = []
        if embedder is None:
            from embeddings_adapter import EmbeddingService

            embedder = EmbeddingService()
            if batching:
                from embeddings_adapter.batching import BatchingEmbedder

                embedder = BatchingEmbedder(embedder)
                owned.append(embedder)
        try:
            memory = SearchMemory.open(resolve_db(db), embedder=embedder)
        except BaseException:
            for thing in owned:
                thing.close()
            raise
        api = cls(memory, embedder=embedder, limits=Limits() if limits is None else limits)
        api._owned = owned
        return api

    # -------------------------------------------------------------- search
    def _query(self, query):
        if isinstance(query, str):
            return _text("query", query, self.limits.max_query_chars, blank=False)
        if isinstance(query, (list, tuple)):
            return _vector("query", query, self.memory.dim)
        raise TypeError(f"query must be a string or a list of numbers; got "
                        f"{type(query).__name__}")

    def search(self, query: str | list[float], k: int = 10, mechanism: str | None = None,
               filter: dict | None = None) -> dict:
        """The top ``k`` documents for ``query`` (text, or a vector of the store's dimension)
        after the attention rerank, as ``rerank search --json`` prints them. ``k`` larger than
        the documents available (matching ``filter``) returns them all."""
        q = self._query(query)
        k = _int("k", k, 1, self.limits.max_k)
        _check_mechanism(mechanism)
        if filter is not None and not isinstance(filter, dict):
            raise TypeError(f'filter must be an object {{"field": value}} or {{"field": '
                            f'{{"$in": [...]}}}}; got {type(filter).__name__}')
        if filter:
            _json_value("filter", filter)
        with self.memory.filter_snapshot():     # the filter is resolved once per search
            available = self.memory.available(filter or None)
            if available == 0:
                return _no_results(query)
            ranked = self.memory.retrieve(q, min(k, available), filter=filter or None,
                                          mechanism=mechanism)
        return search_document(query, ranked)

    # -------------------------------------------------------------- documents
    def _document(self, i: int, doc) -> dict:
        where = f"documents[{i}]"
        if not isinstance(doc, dict):
            raise TypeError(f"{where} must be an object {{\"id\", \"text\", \"metadata\"?}}; got "
                            f"{type(doc).__name__}")
        unknown = sorted(set(doc) - set(_DOCUMENT_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}; a document has id, text "
                             "and metadata")
        for key in ("id", "text"):
            if key not in doc:
                raise ValueError(f"{where}.{key} is required")
        doc_id = _id(f"{where}.id", doc["id"])
        text = _text(f"{where}.text", doc["text"], self.limits.max_text_chars)
        metadata = doc.get("metadata")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise TypeError(f"{where}.metadata must be an object; got {type(metadata).__name__}")
        return {"id": doc_id, "text": text,
                "metadata": _json_value(f"{where}.metadata", metadata)}

    def store(self, documents: list[dict]) -> dict:
        """Upsert ``documents`` (``{"id", "text", "metadata"?}``) by id in one transaction;
        returns ``{"stored": [{"id", "text", "metadata"}], "count": n}`` once it committed."""
        if not isinstance(documents, (list, tuple)):
            raise TypeError(f"documents must be a list; got {type(documents).__name__}")
        if not documents:
            raise ValueError("documents must not be empty")
        if len(documents) > self.limits.max_documents:
            raise ValueError(f"documents must hold ≤ {self.limits.max_documents} documents per "
                             f"request (the server's limit); got {len(documents)}")
        docs = [self._document(i, d) for i, d in enumerate(documents)]
        first: dict[str, int] = {}
        for i, d in enumerate(docs):
            if d["id"] in first:
                raise ValueError(f"documents[{i}].id {d['id']!r} repeats documents"
                                 f"[{first[d['id']]}].id: one request stores an id once")
            first[d["id"]] = i
        self.memory.store(docs)
        return {"stored": docs, "count": len(docs)}

    def get(self, id: str) -> dict | None:
        """``{"id", "text", "metadata"}`` of the stored document ``id``, or ``None``."""
        record = self.memory.get(_id("id", id))
        if record is None:
            return None
        return {"id": record.id, "text": record.text, "metadata": record.metadata}

    def delete(self, id: str) -> bool:
        """Delete the document ``id``; whether it was stored."""
        return self.memory.delete([_id("id", id)]) > 0

    # -------------------------------------------------------------- rerank
    def rerank(self, query: str | list[float], candidates: list[str] | list[list[float]],
               top_k: int | None = None) -> list[dict]:
        """A stateless ranking of ``candidates`` for ``query``, best first, shaped like
        sentence-transformers' ``CrossEncoder.rank``: ``[{"corpus_id": index, "score",
        "text"?}]``. A text query over text candidates ranks by late interaction over their
        token vectors (the default text settings without IDF: there are no corpus statistics),
        z-mixed with the cosine; anything with a vector ranks by memory-attention. ``top_k``
        (``None``: all) larger than the candidates returns them all."""
        if not isinstance(candidates, (list, tuple)):
            raise TypeError(f"candidates must be a list of strings or a list of vectors; got "
                            f"{type(candidates).__name__}")
        if not candidates:
            raise ValueError("candidates must not be empty")
        if len(candidates) > self.limits.max_candidates:
            raise ValueError(f"candidates must hold ≤ {self.limits.max_candidates} entries (the "
                             f"server's limit); got {len(candidates)}")
        if top_k is not None:
            top_k = _int("top_k", top_k, 1, self.limits.max_candidates)
        texts = isinstance(candidates[0], str)
        if texts:
            for i, c in enumerate(candidates):
                if not isinstance(c, str):
                    raise TypeError(f"candidates[{i}] must be a string like candidates[0]; got "
                                    f"{type(c).__name__}")
                _text(f"candidates[{i}]", c, self.limits.max_text_chars)
        elif isinstance(candidates[0], (list, tuple)):
            dim = len(candidates[0]) if not isinstance(query, str) else self.embedder.dim
            vectors = np.stack([_vector(f"candidates[{i}]", c, dim)
                                for i, c in enumerate(candidates)])
        else:
            raise TypeError(f"candidates[0] must be a string or a list of numbers; got "
                            f"{type(candidates[0]).__name__}")
        if isinstance(query, str):
            query = _text("query", query, self.limits.max_query_chars, blank=False)
        elif isinstance(query, (list, tuple)):
            dim = self.embedder.dim if texts else vectors.shape[1]
            query = _vector("query", query, dim)
        else:
            raise TypeError(f"query must be a string or a list of numbers; got "
                            f"{type(query).__name__}")
        if texts and isinstance(query, str):
            scores = self._late_interaction(query, list(candidates))
            order = np.argsort(-scores, kind="stable")[:top_k]
            return [{"corpus_id": int(i), "score": float(scores[i]), "text": candidates[i]}
                    for i in order]
        if texts:
            vectors = np.asarray(self.embedder.embed(list(candidates)), dtype=np.float32)
        if isinstance(query, str):
            query = np.asarray(self.embedder.embed([query]), dtype=np.float32)[0]
        ranked = Reranker("memory-attention").rank(query, vectors, top_k=top_k)
        out = [{"corpus_id": int(r["corpus_id"]), "score": r["score"]} for r in ranked]
        if texts:
            for r in out:
                r["text"] = candidates[r["corpus_id"]]
        return out

    def _late_interaction(self, query: str, texts: list[str]) -> np.ndarray:
        embedder = self.embedder
        q_vector = np.asarray(embedder.embed([query]), dtype=np.float32)[0]
        vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
        q_tokens, _ = embedder.embed_tokens([query])
        tokens, offsets = embedder.embed_tokens(texts)
        is_word = None
        if callable(getattr(embedder, "token_ids", None)) and callable(
                getattr(embedder, "is_word", None)):
            is_word = embedder.is_word(embedder.token_ids([query])[0])
        settings = replace(DEFAULT, idf=False)
        weights = query_token_weights(settings, None, 0, is_word)
        dense = vectors @ q_vector
        return scoring.late_interaction(np.asarray(q_tokens, np.float32),
                                        np.asarray(tokens, np.float32),
                                        np.asarray(offsets, np.int64), tau=settings.tau,
                                        idf=weights, dense=dense, lam=settings.lam)

    # -------------------------------------------------------------- about
    def mechanisms(self) -> list[dict]:
        """Every registered mechanism, as ``rerank list --json`` prints them."""
        from .mechanisms import registry

        return [{"name": s.name, "category": s.category, "complexity": s.complexity,
                 "use_case": s.use_case, "compiled": s.compiled} for s in registry.list()]

    def status(self) -> dict:
        """``rerank status --json``'s document (backend, threads, BLAS) with ``"store"`` (the
        memory's status), ``"embedder"`` and ``"limits"``."""
        info = backend.status()
        info["store"] = self.memory.status()
        info["embedder"] = {"model_id": self.embedder.model_id, "dim": self.embedder.dim,
                            "type": type(self.embedder).__name__}
        stats = getattr(self.embedder, "stats", None)
        if callable(stats):
            info["embedder"]["batching"] = stats()
        info["limits"] = asdict(self.limits)
        return info

    def close(self) -> None:
        """Close the memory (saving its index) and any embedder :meth:`open` created."""
        try:
            self.memory.close()
        finally:
            for thing in self._owned:
                thing.close()
            self._owned = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
