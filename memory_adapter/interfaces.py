"""The two small interfaces behind the memory service, and the record they exchange.

A :class:`DocumentStore` is the source of truth: it holds every document (id, text, metadata,
pooled vector, optional token and chunk vectors) and commits each batch in one transaction. A
:class:`CandidateSource` is a derived, rebuildable index that finds the nearest stored vectors
quickly (HNSW on one machine; pgvector when scaled out). Whenever the two disagree, the store wins
and the candidate source is repaired from it.

Both are :class:`typing.Protocol` classes: any object with these members qualifies
(``isinstance(obj, DocumentStore)`` checks the member names only, not their signatures).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Record", "DocumentStore", "CandidateSource"]


@dataclass
class Record:
    """One stored document.

    - ``id``: a non-empty string, unique in the store (ids are strings everywhere).
    - ``vector``: the pooled embedding, shape ``(d,)`` float32 (required by a store; ``None`` only
      before the memory service embeds ``text``).
    - ``text``: the document text, if any.
    - ``metadata``: a JSON-serialisable dict with string keys; filters match on its fields.
    - ``tokens``: optional token vectors ``(T, d)`` for late-interaction rerank.
    - ``token_ids``: optional word-piece ids ``(T,)`` of those tokens (for the corpus's IDF).
    - ``chunks``: optional chunk (passage/sentence) vectors ``(C, d)`` for hierarchical rerank.
    """

    id: str
    vector: np.ndarray | None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = None
    chunks: np.ndarray | None = None
    token_ids: np.ndarray | None = None

    def __eq__(self, other) -> bool:  # arrays make the generated __eq__ ambiguous
        if not isinstance(other, Record):
            return NotImplemented

        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return np.asarray(a).shape == np.asarray(b).shape and np.array_equal(a, b)

        return (self.id == other.id and self.text == other.text
                and self.metadata == other.metadata and same(self.vector, other.vector)
                and same(self.tokens, other.tokens) and same(self.chunks, other.chunks)
                and same(self.token_ids, other.token_ids))


@runtime_checkable
class DocumentStore(Protocol):
    """Durable storage of :class:`Record` objects: the source of truth of the memory service.

    Every store is bound to one embedding model: ``model_id`` and ``dim`` are written when the store
    is created, and opening it for another model or dimension is refused (vectors of two models
    side by side give meaningless scores).
    """

    #: The version of the on-disk schema (an int; a store refuses a newer one than it knows).
    schema_version: int
    #: The embedding model every stored vector comes from.
    model_id: str
    #: The dimension of every stored vector.
    dim: int

    def put(self, records: Iterable[Record]) -> int:
        """Insert or replace (upsert by id) ``records`` in ONE transaction: every record is
        validated first, and an invalid record or any error while writing leaves the store
        exactly as it was (nothing half-written). A committed batch survives a crash.
        Returns the batch's write sequence number (see :meth:`changes_since`)."""

    def get(self, ids: Sequence[str]) -> list[Record | None]:
        """The records of ``ids``, in order; ``None`` where an id is not stored."""

    def documents(self, ids: Sequence[str]) -> list[tuple[str | None, dict] | None]:
        """``(text, metadata)`` of ``ids``, in order (no vectors: what results show); ``None``
        where an id is not stored."""

    def delete(self, ids: Sequence[str]) -> int:
        """Delete ``ids`` (in one transaction) and return how many were stored; unknown ids are
        ignored."""

    def count(self) -> int:
        """The number of stored documents."""

    def ids(self) -> list[str]:
        """Every stored id."""

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The pooled vectors of ``ids`` as one ``(n, d)`` float32 array, in order; ``KeyError``
        naming the ids that are not stored."""

    def token_vectors(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        """The token vectors ``(T_i, d)`` float32 of ``ids``, in order; ``None`` for a document
        stored without tokens; ``KeyError`` naming the ids that are not stored."""

    def resolve_filter(self, filter: dict | None) -> set[str] | None:
        """The ids whose metadata match ``filter`` (``{"field": value}`` or
        ``{"field": {"$in": [...]}}``, several fields = AND); ``None`` for no filter.
        A malformed filter or an unknown operator raises ``ValueError`` naming the problem."""

    def changes_since(self, seq: int) -> tuple[list[str], int]:
        """The ids put after write ``seq`` and the current write sequence number, read in one
        snapshot (deletions are not listed). The memory service uses it to re-check only the
        documents written since its index was last saved."""

    def get_meta(self, key: str) -> str | None:
        """A bookkeeping value kept with the documents (``None`` when unset)."""

    def set_meta(self, key: str, value: str) -> None:
        """Record a bookkeeping value (the service records which write its saved index reflects)."""

    def close(self) -> None:
        """Release the store; further calls raise."""


@runtime_checkable
class CandidateSource(Protocol):
    """A rebuildable nearest-neighbour index over the store's pooled vectors.

    ``rerank.retrieval.HNSWIndex`` is the embedded implementation. Its ``rebuild`` takes
    ``(ids, vectors)`` rather than a store; :class:`memory_adapter.unified.UnifiedMemoryService`
    adapts (it reads the ids and vectors from the store and passes them)."""

    model_id: str
    dim: int

    @property
    def count(self) -> int:
        """The number of indexed items."""

    def ids(self) -> list[str]:
        """Every indexed id."""

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace (upsert) ``vectors`` ``(n, d)`` under ``ids``."""

    def search(self, vectors: np.ndarray, n: int, allowed: set[str] | None = None):
        """The exactly ``n`` nearest items of each query row (``ValueError`` if fewer are
        available), restricted to ``allowed`` when given: a ``SearchResult`` with ``ids``
        (m lists of n), ``scores`` ``(m, n)`` (higher is better, best first) and ``vectors``."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove ``ids``; returns how many were indexed."""

    def rebuild(self, store: DocumentStore) -> None:
        """Rebuild the whole index from ``store`` (the source of truth)."""

    def save(self, path: str) -> None:
        """Write the index to ``path`` atomically (the old file or the new one, never torn)."""
