"""The PostgreSQL + pgvector document store: the memory service's source of truth when scaled out.

Layout (tables prefixed ``rerank_`` so they can share a database with an application's own):

- ``rerank_schema_version (version, applied)``: one row per migration applied; a store refuses a
  database whose version is newer than it knows. Migrations run in one transaction under an
  advisory lock, so several processes opening a new database at once create it once.
- ``rerank_meta (key, value)``: ``model_id``, ``dim``, ``space``, ``token_dtype``, ``created``,
  ``write_seq``, ``documents`` (the document count, kept in the write transactions) and
  ``token_id_documents``. Opening a store for another model, dimension or space is refused.
- ``rerank_documents``: ``id`` text PRIMARY KEY, ``pos`` (insertion order), ``seq`` (the write
  that last changed the row), ``text``, ``metadata`` jsonb (GIN-indexed), ``embedding``
  ``vector(d)`` (HNSW-indexed with the space's operator class), ``tokens`` bytea + ``token_count``
  (int8 codes with a float32 scale per token by default, exactly as the SQLite store encodes them,
  see :mod:`rerank.quantization`), ``token_ids`` bytea (int32 word-piece ids), ``chunks`` bytea +
  ``chunk_count`` (float32), ``updated`` (unix time).
- ``rerank_token_df (piece, df)``: per word piece, how many documents contain it (query-token IDF),
  updated in the same transaction as the documents.

Every write (:meth:`PostgresStore.put`, :meth:`PostgresStore.delete`) validates its whole batch,
then runs in ONE transaction that first locks the ``write_seq`` row (so batches apply one after
another, and the counters and token statistics stay exact): a batch is stored completely or not
at all, and a killed client leaves nothing of an uncommitted batch (the server rolls it back).

Connections come from a ``psycopg_pool`` pool; vectors travel in pgvector's binary format
(``pgvector.psycopg.register_vector``; read back as raw big-endian floats and decoded by numpy in
one step). An optional read replica (``replica_url``) serves the read-only queries of a search:
the vector search, result texts and metadata, token vectors and word-piece statistics.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from typing import Iterable, Sequence

import numpy as np

from rerank import quantization
from rerank.validation import positive_int

from .filters import parse_filter
from .interfaces import Record
from .location import redact_url
from .sqlite_store import TOKEN_DTYPES, SQLiteStore, _as_ids

__all__ = ["PostgresStore", "StoreUnavailableError", "SCHEMA_VERSION", "SPACE_OPERATORS",
           "describe", "filter_sql"]

log = logging.getLogger(__name__)

#: The database schema this code writes and reads.
SCHEMA_VERSION = 1

#: space → (distance operator, HNSW operator class). Scores: cosine 1 − d, ip −d (pgvector's
#: ``<#>`` is the negative inner product), l2 −d².
SPACE_OPERATORS = {"cosine": ("<=>", "vector_cosine_ops"), "ip": ("<#>", "vector_ip_ops"),
                   "l2": ("<->", "vector_l2_ops")}
#: pgvector's HNSW index takes vectors of at most this many dimensions.
HNSW_MAX_DIM = 2000
HNSW_INDEX = "rerank_documents_embedding_hnsw"

_RESERVED_META = frozenset({"schema_version", "model_id", "dim", "space", "created", "write_seq",
                            "token_dtype", "token_id_documents", "documents"})
_LOCK_KEY = 0x7265_7261_6e6b   # pg_advisory_xact_lock key of schema changes ("rerank")

_MIGRATIONS = {
    1: ["""CREATE TABLE rerank_meta (key text PRIMARY KEY, value text NOT NULL)""",
        """CREATE TABLE rerank_documents (
               id text PRIMARY KEY,
               pos bigint GENERATED ALWAYS AS IDENTITY,
               seq bigint NOT NULL,
               text text,
               metadata jsonb NOT NULL,
               embedding vector({dim}) NOT NULL,
               tokens bytea,
               token_count integer,
               token_ids bytea,
               chunks bytea,
               chunk_count integer,
               updated double precision NOT NULL)""",
        # token codes and float chunks do not compress: store them out of line as they are
        """ALTER TABLE rerank_documents ALTER COLUMN tokens SET STORAGE EXTERNAL,
               ALTER COLUMN chunks SET STORAGE EXTERNAL""",
        """CREATE INDEX rerank_documents_seq ON rerank_documents (seq)""",
        """CREATE INDEX rerank_documents_metadata ON rerank_documents
               USING gin (metadata jsonb_path_ops)""",
        """CREATE TABLE rerank_token_df (piece integer PRIMARY KEY, df bigint NOT NULL)"""],
}

_COLUMNS = ("id", "seq", "text", "metadata", "embedding", "tokens", "token_count", "token_ids",
            "chunks", "chunk_count", "updated")
_UPSERT = (f"INSERT INTO rerank_documents ({', '.join(_COLUMNS)}) VALUES "
           "(%s, %s, %s, %s::jsonb, %b, %b, %s, %b, %b, %s, %s) ON CONFLICT (id) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]))
_SELECT = ("SELECT id, text, metadata::text, embedding, tokens, token_count, token_ids, chunks, "
           "chunk_count FROM rerank_documents")


class StoreUnavailableError(ConnectionError):
    """The PostgreSQL server cannot be reached (down, refusing, or too slow to answer); the
    message names the URL with its password redacted."""


# ----------------------------------------------------------------------------- filters
def filter_sql(parsed: list[tuple[str, list]]) -> tuple[str, list[str]]:
    """A SQL condition on ``metadata`` and its parameters for a :func:`parse_filter` result.

    A field matches a value when ``metadata @> {field: value}`` (equal JSON values: same type,
    1 = 1.0) or ``metadata @> {field: [value]}`` (a list holding it) — what the SQLite store's
    ``json_each`` test matches — so the GIN index on ``metadata`` answers it. A field with no
    values matches nothing."""
    clauses, params = [], []
    for field, values in parsed:
        if not values:
            return "false", []
        ors = []
        for v in values:
            ors += ["metadata @> %s::jsonb", "metadata @> %s::jsonb"]
            params += [json.dumps({field: v}), json.dumps({field: [v]})]
        clauses.append("(" + " OR ".join(ors) + ")")
    return " AND ".join(clauses), params


# ----------------------------------------------------------------------------- connections
def _psycopg():
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
        from pgvector.psycopg import register_vector  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the PostgreSQL backend needs psycopg, psycopg_pool and pgvector: "
                          f"{exc} (pip install 'rerank[postgres]')") from None
    return psycopg


def _raw_vector_loader(psycopg):
    """A binary loader of pgvector's ``vector`` that returns the payload bytes (big-endian
    float32, the 4-byte header dropped): 30 vectors decode in one numpy call."""
    from psycopg.adapt import Loader

    class RawVectorLoader(Loader):
        format = psycopg.pq.Format.BINARY

        def load(self, data):
            return bytes(data[4:])

    return RawVectorLoader


def _decode_vectors(payloads: Sequence[bytes], dim: int) -> np.ndarray:
    """(n, dim) float32 from binary ``vector`` payloads."""
    if not payloads:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(payloads), ">f4").astype(np.float32).reshape(len(payloads), dim)


def _check_conninfo(psycopg, url: str, what: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ValueError(f"{what} {redact_url(url)} is not a valid PostgreSQL URL: "
                         f"{_reason(exc)}") from None
    for port in str(params.get("port") or "").split(","):   # libpq takes one port per host
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{what} {redact_url(url)} is not a valid PostgreSQL URL: port "
                             f"{port!r} is not a number from 1 to 65535")


def _reason(exc: BaseException) -> str:
    """The first line of a psycopg error (libpq repeats the connection string in some)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _unavailable(url: str, exc: BaseException, *, lost: bool = False) -> StoreUnavailableError:
    what = "lost the connection to" if lost else "cannot connect to"
    return StoreUnavailableError(f"{what} PostgreSQL at {redact_url(url)}: {_reason(exc)} (is "
                                 "the server running, and the URL right?)")


def _connect(psycopg, url: str, timeout: float, **kwargs):
    """One connection, or StoreUnavailableError within about ``timeout`` seconds."""
    try:
        return psycopg.connect(url, connect_timeout=max(2, math.ceil(timeout)),
                               application_name="rerank", **kwargs)
    except psycopg.OperationalError as exc:
        raise _unavailable(url, exc) from None


class PostgresStore:
    """A :class:`~memory_adapter.interfaces.DocumentStore` in a PostgreSQL database with pgvector.

    ``PostgresStore(url, model_id=..., dim=...)`` creates the tables (and the ``vector``
    extension, when the user may) in a new database, or opens an existing store and checks it was
    created for the same ``model_id``, ``dim`` and ``space`` (``None``: the store's; cosine for a
    new one). ``token_dtype`` is fixed at creation, as in :class:`SQLiteStore`. ``M`` and
    ``ef_construction`` configure the HNSW index a new store creates. ``pool_min_size`` /
    ``pool_max_size``: connections kept / allowed per URL. ``replica_url``: a read replica for
    searches. ``connect_timeout``: seconds before an unreachable server raises
    :class:`StoreUnavailableError` (libpq counts whole seconds, at least 2).

    Thread-safe (each call borrows a pooled connection); several processes may share a store.
    """

    schema_version: int = SCHEMA_VERSION
    backend = "postgresql"

    # the same validation and encoding of records as the SQLite store
    _encode = SQLiteStore._encode
    _encode_matrix = SQLiteStore._encode_matrix
    _encode_token_ids = staticmethod(SQLiteStore._encode_token_ids)

    def __init__(self, url: str, *, model_id: str, dim: int, token_dtype: str = "int8",
                 space: str | None = None, M: int = 16, ef_construction: int = 64,
                 pool_min_size: int = 1, pool_max_size: int = 8, replica_url: str | None = None,
                 connect_timeout: float = 5.0):
        psycopg = _psycopg()
        if not isinstance(url, str):
            raise TypeError(f"url must be a postgresql:// URL string; got {type(url).__name__}")
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model_id must be a non-empty string naming the embedding model; "
                             f"got {model_id!r}")
        self.dim = positive_int("dim", dim)
        self.model_id = model_id
        if token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {list(TOKEN_DTYPES)}; "
                             f"got {token_dtype!r}")
        if space is not None and space not in SPACE_OPERATORS:
            raise ValueError(f"space must be one of {', '.join(SPACE_OPERATORS)}; got {space!r}")
        self.M = positive_int("M", M)
        self.ef_construction = positive_int("ef_construction", ef_construction)
        self.pool_max_size = positive_int("pool_max_size", pool_max_size)
        if (isinstance(pool_min_size, bool) or not isinstance(pool_min_size, int)
                or not 0 <= pool_min_size <= self.pool_max_size):
            raise ValueError(f"pool_min_size must be an integer from 0 to pool_max_size "
                             f"({self.pool_max_size}); got {pool_min_size!r}")
        if (isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float))
                or not 0 < connect_timeout < math.inf):
            raise ValueError(f"connect_timeout must be a positive number of seconds; got "
                             f"{connect_timeout!r}")
        self.connect_timeout = float(connect_timeout)
        self._url = url.strip()
        #: The URL with its password redacted (what messages and ``info()`` show).
        self.url = self.path = redact_url(self._url)
        _check_conninfo(psycopg, self._url, "url")
        self._replica_url = None if replica_url is None else str(replica_url).strip()
        self.replica = None if self._replica_url is None else redact_url(self._replica_url)
        if self._replica_url is not None:
            _check_conninfo(psycopg, self._replica_url, "replica_url")
        self._psycopg = psycopg
        self._closed = False
        self._close_lock = threading.Lock()
        with _connect(psycopg, self._url, self.connect_timeout, autocommit=True) as conn:
            self._init_schema(conn, token_dtype, space)
        self._raw_loader = _raw_vector_loader(psycopg)
        self._pool = self._read_pool = None
        try:
            self._pool = self._make_pool(self._url, pool_min_size)
            if self._replica_url is not None:
                self._read_pool = self._make_pool(self._replica_url, pool_min_size)
        except BaseException:
            self.close()
            raise
        if self._read_pool is None:
            self._read_pool = self._pool

    # ------------------------------------------------------------------ setup
    def _init_schema(self, conn, token_dtype: str, space: str | None) -> None:
        """Create or migrate the tables (only when needed: a current store is opened read-only,
        so a hot standby works as ``url``), then check the store's model, dim and space."""
        version = self._schema_version(conn)
        if version > SCHEMA_VERSION:
            raise ValueError(f"the store at {self.url} has schema version {version}, newer than "
                             f"this rerank understands ({SCHEMA_VERSION}); upgrade rerank")
        if version < SCHEMA_VERSION or not self._meta_rows(conn):
            self._migrate(conn, token_dtype, space)
        meta = self._meta_rows(conn)
        stored_model, stored_dim = meta.get("model_id"), int(meta.get("dim", "0"))
        if stored_model != self.model_id or stored_dim != self.dim:
            raise ValueError(
                f"the store at {self.url} holds vectors of model {stored_model!r} (dim "
                f"{stored_dim}); it cannot be opened for model {self.model_id!r} (dim "
                f"{self.dim}): vectors of different models are not comparable. Use the store's "
                "model, or another --db")
        self.space = meta.get("space", "cosine")
        if space is not None and space != self.space:
            raise ValueError(f"the store at {self.url} was created for space {self.space!r}; it "
                             f"cannot be searched in space {space!r} (its HNSW index is built "
                             "for one space)")
        self.token_dtype = meta.get("token_dtype", "int8")
        self.created = float(meta["created"])

    @staticmethod
    def _schema_version(conn) -> int:
        if conn.execute("SELECT to_regclass('rerank_schema_version')").fetchone()[0] is None:
            return 0
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM rerank_schema_version")
                   .fetchone()[0])

    @staticmethod
    def _meta_rows(conn) -> dict:
        if conn.execute("SELECT to_regclass('rerank_meta')").fetchone()[0] is None:
            return {}
        return dict(conn.execute("SELECT key, value FROM rerank_meta").fetchall())

    def _ensure_extension(self, conn) -> None:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            return
        try:
            with conn.transaction():   # a savepoint inside the caller's transaction
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except self._psycopg.Error as exc:
            raise ValueError(f"the database at {self.url} lacks the pgvector extension and this "
                             f"user cannot create it ({_reason(exc)}): run CREATE EXTENSION "
                             "vector in that database as its owner or a superuser") from None

    def _migrate(self, conn, token_dtype: str, space: str | None) -> None:
        """Apply the missing migrations and, for a new store, write its meta rows and create its
        HNSW index — one transaction, serialised with other processes by an advisory lock."""
        psycopg = self._psycopg
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                self._ensure_extension(conn)
                conn.execute("CREATE TABLE IF NOT EXISTS rerank_schema_version ("
                             "version integer PRIMARY KEY, applied timestamptz NOT NULL "
                             "DEFAULT now())")
                version = self._schema_version(conn)   # again, under the lock
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[v]:
                        conn.execute(statement.format(dim=self.dim))
                    conn.execute("INSERT INTO rerank_schema_version (version) VALUES (%s)", (v,))
                if not self._meta_rows(conn):
                    space = space or "cosine"
                    self._check_indexable()
                    meta = {"model_id": self.model_id, "dim": str(self.dim), "space": space,
                            "token_dtype": token_dtype, "created": repr(time.time()),
                            "write_seq": "0", "documents": "0", "token_id_documents": "0"}
                    conn.cursor().executemany(
                        "INSERT INTO rerank_meta (key, value) VALUES (%s, %s)", list(meta.items()))
                    self._create_index(conn, space)
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise ValueError(f"the database at {self.url} is read-only and holds no current "
                             f"rerank store ({_reason(exc)}): create the store through the "
                             "primary") from None

    def _check_indexable(self) -> None:
        if self.dim > HNSW_MAX_DIM:
            raise ValueError(f"dim = {self.dim}: pgvector's HNSW index takes at most "
                             f"{HNSW_MAX_DIM} dimensions")

    def _create_index(self, conn, space: str) -> None:
        opclass = SPACE_OPERATORS[space][1]
        conn.execute(f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON rerank_documents USING hnsw "
                     f"(embedding {opclass}) WITH (m = {self.M}, "
                     f"ef_construction = {self.ef_construction})")

    def _make_pool(self, url: str, min_size: int):
        from pgvector.psycopg import register_vector
        from psycopg_pool import ConnectionPool

        raw = self._raw_loader

        def configure(conn):
            register_vector(conn)
            conn.adapters.register_loader("vector", raw)

        pool = ConnectionPool(url, min_size=min_size, max_size=self.pool_max_size, open=False,
                              configure=configure, timeout=self.connect_timeout,
                              name=f"rerank {redact_url(url)}",
                              kwargs={"connect_timeout": max(2, math.ceil(self.connect_timeout)),
                                      "application_name": "rerank", "autocommit": True})
        try:
            pool.open(wait=min_size > 0, timeout=self.connect_timeout + 5)
        except Exception as exc:  # noqa: BLE001 - PoolTimeout or a connection error
            pool.close()
            raise _unavailable(url, exc) from None
        return pool

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def connection(self, *, read: bool = False):
        """A pooled autocommit connection (the replica's for ``read=True`` when there is one),
        returned to the pool afterwards; ``conn.transaction()`` makes a transaction. A lost
        server raises :class:`StoreUnavailableError`."""
        if self._closed:
            raise ValueError(f"the store at {self.url} is closed")
        from psycopg_pool import PoolTimeout

        pool = self._read_pool if read else self._pool
        url = self._replica_url if (read and self._replica_url) else self._url
        try:
            with pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise _unavailable(url, exc) from None
        except self._psycopg.OperationalError as exc:
            if conn_broken(exc):
                raise _unavailable(url, exc, lost=True) from None
            raise

    @contextlib.contextmanager
    def _write(self):
        """A connection in one transaction that holds the ``write_seq`` row lock: batches apply
        one at a time; rolled back on any error (also KeyboardInterrupt)."""
        with self.connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    def _next_seq(conn) -> int:
        return int(conn.execute("UPDATE rerank_meta SET value = (value::bigint + 1)::text "
                                "WHERE key = 'write_seq' RETURNING value").fetchone()[0])

    @staticmethod
    def _add_meta(conn, key: str, delta: int) -> None:
        if delta:
            conn.execute("UPDATE rerank_meta SET value = (value::bigint + %s)::text "
                         "WHERE key = %s", (delta, key))

    def _write_rows(self, conn, rows: Iterable[tuple]) -> None:
        """Write the encoded rows inside the caller's transaction (pipelined)."""
        conn.cursor().executemany(_UPSERT, rows)

    # ------------------------------------------------------------------ encode / decode
    @staticmethod
    def _check_text(rows) -> None:
        """PostgreSQL text and jsonb cannot hold NUL characters: refuse them before writing."""
        for i, row in enumerate(rows):
            for where, value in (("id", row[0]), ("text", row[1]),
                                 ("metadata", json.loads(row[2]) if "\\u0000" in row[2] else "")):
                if _has_nul(value):
                    raise ValueError(f"records[{i}] (id {row[0]!r}).{where} contains a NUL "
                                     "character (\\x00), which PostgreSQL cannot store")

    def _decode(self, row) -> Record:
        rid, text, meta, vec, tok, n_tok, tok_ids, chunks, n_chunk = row
        tokens = None if tok is None else quantization.decode(tok, n_tok, self.dim,
                                                             self.token_dtype)
        if chunks is not None:
            chunks = np.frombuffer(chunks, dtype=np.float32).reshape(n_chunk, self.dim).copy()
        token_ids = None if tok_ids is None else np.frombuffer(tok_ids, np.int32).copy()
        return Record(id=rid, vector=_decode_vectors([vec], self.dim)[0], text=text,
                      metadata=json.loads(meta), tokens=tokens, chunks=chunks,
                      token_ids=token_ids)

    # ------------------------------------------------------------------ token statistics
    @staticmethod
    def _count_pieces(blobs) -> tuple[np.ndarray, np.ndarray, int]:
        """``(pieces, counts, documents)``: the word pieces of token-id blobs with how many of
        the documents contain each (a piece once per document), and how many documents have ids."""
        arrays = [np.frombuffer(b, np.int32) for b in blobs if b is not None]
        if not arrays:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        doc = np.repeat(np.arange(len(arrays), dtype=np.int64), [len(a) for a in arrays])
        pairs = np.unique((doc << 32) | np.concatenate(arrays).astype(np.int64))
        pieces, counts = np.unique(pairs & 0xFFFF_FFFF, return_counts=True)
        return pieces, counts, len(arrays)

    @staticmethod
    def _add_pieces(conn, pieces: np.ndarray, counts: np.ndarray, docs: int, sign: int) -> None:
        """token_df += sign·counts and token_id_documents += sign·docs (caller's transaction)."""
        if len(pieces):
            # array literals: psycopg dumps a long Python list element by element
            literal = "{" + ",".join(map(str, pieces.tolist())) + "}"
            conn.execute("INSERT INTO rerank_token_df (piece, df) SELECT * FROM "
                         "unnest(%s::integer[], %s::bigint[]) ON CONFLICT (piece) DO UPDATE "
                         "SET df = rerank_token_df.df + excluded.df",
                         (literal, "{" + ",".join(map(str, (sign * counts).tolist())) + "}"))
            if sign < 0:
                conn.execute("DELETE FROM rerank_token_df WHERE piece = ANY(%s::integer[]) "
                             "AND df <= 0", (literal,))
        PostgresStore._add_meta(conn, "token_id_documents", sign * docs)

    def document_frequencies(self, pieces) -> tuple[np.ndarray, int]:
        """``(df, n)``: how many stored documents contain each word piece in ``pieces`` and how
        many documents have word-piece ids at all, from one snapshot (one query)."""
        pieces = np.asarray(pieces)
        if pieces.dtype.kind not in "iu" or pieces.ndim != 1:
            raise TypeError(f"pieces must be a 1-D integer array; got {pieces.dtype} "
                            f"{pieces.shape}")
        wanted = pieces.tolist()
        with self.connection(read=True) as conn:
            rows = conn.execute(
                "SELECT -1, value::bigint FROM rerank_meta WHERE key = 'token_id_documents' "
                "UNION ALL SELECT piece, df FROM rerank_token_df WHERE piece = ANY(%s)",
                ([p for p in wanted if 0 <= p <= 2**31 - 1],)).fetchall()
        n = next((int(v) for p, v in rows if p == -1), 0)
        found = {p: int(v) for p, v in rows if p != -1}
        return np.array([found.get(p, 0) for p in wanted], np.int64), n

    # ------------------------------------------------------------------ API
    def put(self, records: Iterable[Record]) -> int:
        """Upsert ``records`` in one transaction (all validated first: nothing is written if any
        is invalid) and return the batch's write sequence number (0 for an empty batch)."""
        rows = self._encode(records)
        if not rows:
            return 0
        self._check_text(rows)
        now = time.time()
        added = self._count_pieces(row[6] for row in rows)
        ids = [row[0] for row in rows]
        with self._write() as conn:
            seq = self._next_seq(conn)
            old = conn.execute("SELECT token_ids FROM rerank_documents WHERE id = ANY(%s) "
                               "FOR UPDATE", (ids,)).fetchall()
            self._add_pieces(conn, *self._count_pieces(r[0] for r in old), -1)
            self._write_rows(conn, (
                (rid, seq, text, meta, np.frombuffer(vec, np.float32), tok, n_tok, tok_ids,
                 chunks, n_chunk, now)
                for rid, text, meta, vec, tok, n_tok, tok_ids, chunks, n_chunk in rows))
            self._add_pieces(conn, *added, +1)
            self._add_meta(conn, "documents", len(rows) - len(old))
        return seq

    def get(self, ids: Sequence[str]) -> list[Record | None]:
        ids = _as_ids("ids", ids)
        if not ids:
            return []
        with self.connection() as conn:
            rows = conn.execute(f"{_SELECT} WHERE id = ANY(%s)", (ids,), binary=True).fetchall()
        found = {row[0]: row for row in rows}
        return [self._decode(found[i]) if i in found else None for i in ids]

    def documents(self, ids: Sequence[str]) -> list[tuple[str | None, dict] | None]:
        """``(text, metadata)`` of ``ids`` in order, ``None`` where not stored (no vectors read;
        from the read replica when there is one)."""
        ids = _as_ids("ids", ids)
        if not ids:
            return []
        with self.connection(read=True) as conn:
            rows = conn.execute("SELECT id, text, metadata::text FROM rerank_documents "
                                "WHERE id = ANY(%s)", (ids,)).fetchall()
        found = {row[0]: (row[1], json.loads(row[2])) for row in rows}
        return [found.get(i) for i in ids]

    def delete(self, ids: Sequence[str]) -> int:
        ids = _as_ids("ids", ids)
        if not ids:
            return 0
        with self._write() as conn:
            conn.execute("SELECT value FROM rerank_meta WHERE key = 'write_seq' FOR UPDATE")
            gone = conn.execute("DELETE FROM rerank_documents WHERE id = ANY(%s) "
                                "RETURNING token_ids", (ids,)).fetchall()
            if gone:
                self._add_pieces(conn, *self._count_pieces(r[0] for r in gone), -1)
                self._add_meta(conn, "documents", -len(gone))
                self._next_seq(conn)
        return len(gone)

    def count(self) -> int:
        """The number of stored documents (a counter kept by the write transactions: no scan)."""
        with self.connection(read=True) as conn:
            return int(conn.execute("SELECT value FROM rerank_meta WHERE key = 'documents'")
                       .fetchone()[0])

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id) -> bool:
        if not isinstance(id, str):
            return False
        with self.connection() as conn:
            return conn.execute("SELECT 1 FROM rerank_documents WHERE id = %s",
                                (id,)).fetchone() is not None

    def ids(self) -> list[str]:
        """Every stored id, in the order they were first stored."""
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM rerank_documents ORDER BY pos")]

    def _column(self, ids, column: str, *, read: bool = False) -> list:
        ids = _as_ids("ids", ids)
        if not ids:
            return []
        with self.connection(read=read) as conn:
            rows = conn.execute(f"SELECT id, {column}, token_count FROM rerank_documents "
                                "WHERE id = ANY(%s)", (ids,), binary=True).fetchall()
        found = {r[0]: r[1:] for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not stored: {missing[:5]!r}")
        return [found[i] for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        return _decode_vectors([v for v, _ in self._column(ids, "embedding")], self.dim)

    def token_vectors(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        return [None if b is None else quantization.decode(b, n, self.dim, self.token_dtype)
                for b, n in self._column(ids, "tokens", read=True)]

    def token_codes(self, ids: Sequence[str]) -> list[quantization.Int8Rows | None]:
        """The int8 token codes and scales of ``ids`` without dequantising (an int8 store only;
        what the int8 late-interaction kernel reads)."""
        if self.token_dtype != "int8":
            raise ValueError(f"the store keeps token vectors as {self.token_dtype}, not int8")
        return [None if b is None else quantization.decode_int8(b, n, self.dim)
                for b, n in self._column(ids, "tokens", read=True)]

    def token_ids(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        """The word-piece ids of the stored tokens of ``ids`` (``None`` where not stored)."""
        return [None if b is None else np.frombuffer(b, np.int32)
                for b, _ in self._column(ids, "token_ids", read=True)]

    @property
    def write_seq(self) -> int:
        """The sequence number of the last committed write (put or delete), from any process."""
        return int(self.get_meta_value("write_seq"))

    def get_meta_value(self, key: str) -> str | None:
        with self.connection() as conn:
            row = conn.execute("SELECT value FROM rerank_meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else row[0]

    def changes_since(self, seq: int) -> tuple[list[str], int]:
        """The ids written (put) after write ``seq``, and the current write sequence number — one
        consistent snapshot. Deleted ids are not listed (compare id sets for those)."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            ids = [r[0] for r in conn.execute("SELECT id FROM rerank_documents WHERE seq > %s "
                                              "ORDER BY pos", (int(seq),))]
            now = int(conn.execute("SELECT value FROM rerank_meta WHERE key = 'write_seq'")
                      .fetchone()[0])
        return ids, now

    def get_meta(self, key: str) -> str | None:
        """A value from the ``rerank_meta`` table (``None`` when unset)."""
        return self.get_meta_value(key)

    def set_meta(self, key: str, value: str) -> None:
        """Record ``key = value`` in the ``rerank_meta`` table (the store's own keys are
        refused)."""
        if not isinstance(key, str) or not key or key in _RESERVED_META:
            raise ValueError(f"key must be a non-empty string other than {sorted(_RESERVED_META)}; "
                             f"got {key!r}")
        with self._write() as conn:
            conn.execute("INSERT INTO rerank_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (key, str(value)))

    def resolve_filter(self, filter: dict | None) -> set[str] | None:
        """The ids whose metadata match ``filter``; ``None`` (no restriction) for ``None`` or
        ``{}``. Same language and matching as :meth:`SQLiteStore.resolve_filter` (a list field
        matches when it holds the value; 1 and 1.0 are equal), evaluated in SQL with jsonb
        containment (GIN-indexed)."""
        parsed = parse_filter(filter)
        if parsed is None:
            return None
        where, params = filter_sql(parsed)
        with self.connection(read=True) as conn:
            return {r[0] for r in conn.execute(f"SELECT id FROM rerank_documents WHERE {where}",
                                               params)}

    def count_matching(self, filter: dict | None, at_most: int | None = None) -> int:
        """How many documents match ``filter`` (counting stops at ``at_most`` when given)."""
        parsed = parse_filter(filter)
        if parsed is None:
            n = self.count()
            return n if at_most is None else min(n, at_most)
        where, params = filter_sql(parsed)
        limit = "" if at_most is None else f" LIMIT {positive_int('at_most', at_most)}"
        with self.connection(read=True) as conn:
            return int(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM rerank_documents "
                                    f"WHERE {where}{limit}) AS m", params).fetchone()[0])

    # ------------------------------------------------------------------ the HNSW index
    def has_index(self) -> bool:
        """Whether the HNSW index exists (a bulk load drops it until the load ends)."""
        with self.connection() as conn:
            return conn.execute("SELECT to_regclass(%s)", (HNSW_INDEX,)).fetchone()[0] is not None

    def create_index(self, *, maintenance_work_mem: str | None = "1GB") -> bool:
        """Create the HNSW index when it is missing (pgvector builds it in memory when it fits
        ``maintenance_work_mem``); returns whether it was created."""
        with self.connection() as conn, conn.transaction():
            if conn.execute("SELECT to_regclass(%s)", (HNSW_INDEX,)).fetchone()[0] is not None:
                return False
            if maintenance_work_mem:
                conn.execute("SELECT set_config('maintenance_work_mem', %s, true)",
                             (maintenance_work_mem,))
            self._create_index(conn, self.space)
        return True

    @contextlib.contextmanager
    def bulk_load(self, *, maintenance_work_mem: str | None = "1GB"):
        """``with store.bulk_load(): store.put(...)…`` — drop the HNSW index, load, and build it
        once at the end (pgvector builds an index several times faster than it inserts into
        one), then ``ANALYZE`` the table (the planner's estimates steer filtered searches). Each
        ``put`` still commits on its own; searches meanwhile are exact scans (correct, slower).
        The index is rebuilt even when the block fails."""
        with self.connection() as conn:
            conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
        try:
            yield self
        finally:
            self.create_index(maintenance_work_mem=maintenance_work_mem)
            with self.connection() as conn:
                conn.execute("ANALYZE rerank_documents")

    # ------------------------------------------------------------------ status, lifetime
    def info(self) -> dict:
        """What this store is: backend, URL (password redacted), model, dim, space, documents,
        schema, token dtype, the server's and pgvector's versions, the replica, the index."""
        with self.connection() as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
            pgvector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = "
                                    "'vector'").fetchone()[0]
            index = conn.execute("SELECT to_regclass(%s)", (HNSW_INDEX,)).fetchone()[0]
        return {"backend": self.backend, "path": self.url, "url": self.url,
                "model_id": self.model_id, "dim": self.dim, "space": self.space,
                "documents": self.count(), "schema_version": SCHEMA_VERSION,
                "token_dtype": self.token_dtype, "server_version": server,
                "pgvector": pgvector, "replica": self.replica,
                "hnsw_index": None if index is None else {"m": self.M,
                                                          "ef_construction":
                                                              self.ef_construction}}

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            pools = {id(p): p for p in (self._pool, self._read_pool) if p is not None}
            for pool in pools.values():
                pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PostgresStore({self.url!r}, model_id={self.model_id!r}, dim={self.dim}, "
                f"{'closed' if self._closed else 'open'})")


def _has_nul(value) -> bool:
    """Whether a string, or any key or string inside a JSON value, holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def conn_broken(exc: BaseException) -> bool:
    """Whether a psycopg OperationalError means the connection or server is gone (not a query
    the server refused)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def describe(url: str, *, connect_timeout: float = 5.0) -> dict | None:
    """What the store at ``url`` holds (documents, model, dim, schema, bytes), read-only and
    without knowing its model in advance; ``None`` when the database holds no rerank store."""
    psycopg = _psycopg()
    shown = redact_url(url)
    _check_conninfo(psycopg, url, "db")
    with _connect(psycopg, url, connect_timeout, autocommit=True) as conn:
        version = PostgresStore._schema_version(conn)
        meta = PostgresStore._meta_rows(conn) if version else {}
        if not meta:
            return None
        try:
            docs, n_tok, tok_bytes, tok_count, vec_bytes = conn.execute(
                "SELECT count(*), count(tokens), coalesce(sum(length(tokens)), 0), "
                "coalesce(sum(token_count), 0), "
                "coalesce(sum(pg_column_size(embedding)) FILTER (WHERE tokens IS NOT NULL), 0) "
                "FROM rerank_documents").fetchone()
            size = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c)), 0) FROM unnest(ARRAY["
                "to_regclass('rerank_documents'), to_regclass('rerank_token_df'), "
                "to_regclass('rerank_meta')]) AS c WHERE c IS NOT NULL").fetchone()[0]
            index = conn.execute("SELECT pg_relation_size(to_regclass(%s))",
                                 (HNSW_INDEX,)).fetchone()[0]
        except psycopg.Error as exc:
            raise ValueError(f"{shown} is not a readable rerank store: {_reason(exc)}") from None
    return {"backend": "postgresql", "path": shown, "url": shown, "documents": int(docs),
            "model_id": meta.get("model_id"), "dim": int(meta.get("dim", 0)),
            "space": meta.get("space", "cosine"),
            "schema_version": version,
            "bytes": int(size), "index_bytes": None if index is None else int(index),
            "token_dtype": meta.get("token_dtype", "int8"),
            "documents_with_tokens": int(n_tok),
            "tokens_per_document": round(int(tok_count) / n_tok, 1) if n_tok else 0,
            "token_bytes_per_document": round(int(tok_bytes) / n_tok) if n_tok else 0,
            "vector_bytes_per_document": round(int(vec_bytes) / n_tok) if n_tok else 0}
