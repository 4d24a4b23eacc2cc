"""Document stores and the memory service: documents in SQLite (the source of truth) with an HNSW
candidate index beside them, or in PostgreSQL with pgvector's HNSW index in the same table;
``AttentionEnhancedMemory`` adds the attention rerank.

- :class:`Record`, :class:`DocumentStore`, :class:`CandidateSource`: the record and the two
  interfaces (PostgreSQL + pgvector implements both when scaled out).
- :class:`SQLiteStore`: the embedded store (WAL, ``synchronous=FULL``, one transaction per batch).
- :class:`PostgresStore` + :class:`PgVectorSource`: the scale-out store and its candidate source
  (a ``postgresql://`` URL as ``--db``; needs the ``postgres`` extra, imported on first use).
- :class:`UnifiedMemoryService`: store / get / update / delete / search; ``open(db, ...)``.
- :func:`resolve_db`: ``--db`` → ``$RERANK_DB`` → the per-user data directory; :func:`describe`
  and :func:`open_store` for either backend.
"""
from __future__ import annotations

from .interfaces import CandidateSource, DocumentStore, Record
from .location import describe, index_path_for, open_store, resolve_db
from .sqlite_store import SQLiteStore
from .unified import UnifiedMemoryService

__all__ = ["AttentionEnhancedMemory", "CandidateSource", "DocumentStore", "PgVectorSource",
           "PostgresStore", "Record", "SQLiteStore", "UnifiedMemoryService", "describe",
           "index_path_for", "open_store", "resolve_db"]


def __getattr__(name: str):
    # imported on first use: the reranker and its kernels; the PostgreSQL backend's drivers
    if name == "AttentionEnhancedMemory":
        from .attention_memory import AttentionEnhancedMemory
        return AttentionEnhancedMemory
    if name == "PostgresStore":      # psycopg and pgvector: the postgres extra
        from .postgres_store import PostgresStore
        return PostgresStore
    if name == "PgVectorSource":
        from .pgvector_source import PgVectorSource
        return PgVectorSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
