"""Document stores and the memory service: documents in SQLite (the source of truth) with an HNSW
candidate index beside them; ``AttentionEnhancedMemory`` adds the attention rerank.

- :class:`Record`, :class:`DocumentStore`, :class:`CandidateSource`: the record and the two
  interfaces (PostgreSQL + pgvector implements both when scaled out).
- :class:`SQLiteStore`: the embedded store (WAL, ``synchronous=FULL``, one transaction per batch).
- :class:`UnifiedMemoryService`: store / get / update / delete / search; ``open(db, ...)``.
- :func:`resolve_db`: ``--db`` → ``$RERANK_DB`` → the per-user data directory.
"""
from __future__ import annotations

from .interfaces import CandidateSource, DocumentStore, Record
from .location import index_path_for, resolve_db
from .sqlite_store import SQLiteStore
from .unified import UnifiedMemoryService

__all__ = ["AttentionEnhancedMemory", "CandidateSource", "DocumentStore", "Record", "SQLiteStore",
           "UnifiedMemoryService", "index_path_for", "resolve_db"]


def __getattr__(name: str):
    # imported on first use: it pulls in the reranker and its kernels
    if name == "AttentionEnhancedMemory":
        from .attention_memory import AttentionEnhancedMemory
        return AttentionEnhancedMemory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
