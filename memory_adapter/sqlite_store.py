"""The embedded document store: one SQLite file, the memory service's source of truth.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so a committed batch survives
a killed process or a power loss; every write (:meth:`SQLiteStore.put`, :meth:`SQLiteStore.delete`)
validates its whole batch first and then runs in ONE ``BEGIN IMMEDIATE … COMMIT`` transaction,
rolled back on any error — a batch is stored completely or not at all.

Every store is bound to one embedding model: the ``meta`` table records ``model_id`` and ``dim``
when the store is created, and opening it for another model or dimension raises ``ValueError``
naming both (vectors of different models side by side give meaningless scores).

Layout (``documents``): ``id`` TEXT PRIMARY KEY, ``text``, ``metadata`` (JSON), ``vector`` (float32
BLOB), ``tokens`` (token vectors: int8 with a float32 scale per token by default, see
:mod:`rerank.quantization`), ``token_count``, ``token_ids`` (the tokens' word-piece ids, int32 BLOB),
``chunks`` (float32 BLOB), ``chunk_count``, ``seq`` (the write that last changed the row) and
``updated`` (unix time). ``token_df`` holds, per word piece, the number of documents containing it
(kept in the same transactions as the documents): the corpus statistics of query-token IDF.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from typing import Iterable, Sequence

import numpy as np
import sqlite_utils

from rerank import quantization
from rerank.validation import as_float32, positive_int

from .filters import parse_filter
from .interfaces import Record

__all__ = ["SQLiteStore", "SCHEMA_VERSION"]

#: The on-disk schema this code writes and reads.
SCHEMA_VERSION = 2

_RESERVED_META = frozenset({"schema_version", "model_id", "dim", "created", "write_seq",
                            "token_dtype", "token_id_documents"})
#: How token vectors can be kept: int8 (+ a scale per token, the default), float16, float32.
TOKEN_DTYPES = quantization.FORMATS

_COLUMNS = ("id", "text", "metadata", "vector", "tokens", "token_count", "token_ids", "chunks",
            "chunk_count", "seq", "updated")
_UPSERT = (f"INSERT INTO documents ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))}) "
           "ON CONFLICT(id) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]))
_SELECT = ("SELECT id, text, metadata, vector, tokens, token_count, token_ids, chunks, "
           "chunk_count FROM documents")
_IN_IDS = "id IN (SELECT value FROM json_each(?))"


def _as_ids(name: str, ids) -> list[str]:
    """``ids`` as a list of non-empty strings (a bare string is refused: it is not a list)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a list of string ids, not a single {type(ids).__name__} "
                        f"(wrap it: [{ids!r}])")
    try:
        out = list(ids)
    except TypeError:
        raise TypeError(f"{name} must be a list of string ids; got {type(ids).__name__}") from None
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"{name}[{i}] must be a string id; got {type(x).__name__} {x!r}")
    return out


# A metadata field matches a candidate value when both have the same JSON type (integers and reals
# are one type: numbers) and the same value; a field holding an array matches when one of its
# elements does. Objects never match a scalar.
_TYPE_CLASS = "(CASE WHEN {0}.type IN ('integer', 'real') THEN 'number' ELSE {0}.type END)"
_FIELD_MATCH = (
    "EXISTS (SELECT 1 FROM json_each(documents.metadata, ?) AS f, json_each(?) AS v "
    "WHERE json_type(documents.metadata, ?) != 'object' "
    f"AND {_TYPE_CLASS.format('f')} = {_TYPE_CLASS.format('v')} "
    "AND (f.type = 'null' OR f.atom = v.atom))")


class SQLiteStore:
    """A :class:`~memory_adapter.interfaces.DocumentStore` in one SQLite file.

    ``SQLiteStore(path, model_id=..., dim=...)`` creates the file (and its folder) when missing, or
    opens it and checks that it was created for the same ``model_id`` and ``dim``. ``path`` may be
    ``":memory:"`` (nothing persisted). ``token_dtype`` ("int8", the default: d + 4 bytes per
    token; "float16"; or "float32") is how token vectors are kept on disk (they are returned as
    float32, or as int8 codes and scales by :meth:`token_codes`); it is fixed when the store is
    created.

    Thread-safe: one connection guarded by a re-entrant lock. Several processes may open the same
    file (SQLite serialises their writes; readers never block in WAL mode).
    """

    schema_version: int = SCHEMA_VERSION
    backend = "sqlite"

    def __init__(self, path: str | os.PathLike, *, model_id: str, dim: int,
                 token_dtype: str = "int8"):
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model_id must be a non-empty string naming the embedding model; "
                             f"got {model_id!r}")
        self.dim = positive_int("dim", dim)
        self.model_id = model_id
        if token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {list(TOKEN_DTYPES)}; "
                             f"got {token_dtype!r}")
        self.path = os.fspath(path)
        if self.path != ":memory:":
            self.path = os.path.abspath(os.path.expanduser(self.path))
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.RLock()
        self._closed = False
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                         timeout=30.0)
        except sqlite3.Error as exc:
            raise ValueError(f"cannot open the store at {self.path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            # reads of result rows: a page cache of 64 MiB and memory-mapped reads (measured:
            # the 30-row read took half the time)
            self._conn.execute("PRAGMA cache_size=-65536")
            self._conn.execute("PRAGMA mmap_size=268435456")
            self.db = sqlite_utils.Database(self._conn)
            self._init_schema(model_id, dim, token_dtype)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ValueError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ setup
    def _init_schema(self, model_id: str, dim: int, token_dtype: str) -> None:
        with self._write() as conn:
            tables = set(self.db.table_names())
            if tables and "meta" not in tables:
                raise ValueError(f"{self.path} is a SQLite database but not a rerank store "
                                 f"(it has tables {sorted(tables)} and no 'meta' table); "
                                 "choose another --db")
            self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = {"schema_version": str(SCHEMA_VERSION), "model_id": model_id,
                        "dim": str(dim), "created": repr(time.time()), "write_seq": "0",
                        "token_dtype": token_dtype}
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            version = int(meta.get("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise ValueError(f"the store at {self.path} has schema version {version}, newer "
                                 f"than this rerank understands ({SCHEMA_VERSION}); upgrade rerank")
            self.db["documents"].create(
                {"id": str, "text": str, "metadata": str, "vector": bytes, "tokens": bytes,
                 "token_count": int, "token_ids": bytes, "chunks": bytes, "chunk_count": int,
                 "seq": int, "updated": float},
                pk="id", not_null={"metadata", "vector", "seq", "updated"}, if_not_exists=True)
            self.db["documents"].create_index(["seq"], if_not_exists=True)
            if "token_ids" not in self.db["documents"].columns_dict:     # schema 1 → 2
                conn.execute("ALTER TABLE documents ADD COLUMN token_ids BLOB")
            self.db["token_df"].create({"piece": int, "df": int}, pk="piece",
                                       if_not_exists=True)
            if version < SCHEMA_VERSION:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                             (str(SCHEMA_VERSION),))
        stored_model, stored_dim = meta.get("model_id"), int(meta.get("dim", "0"))
        if stored_model != model_id or stored_dim != dim:
            raise ValueError(
                f"the store at {self.path} holds vectors of model {stored_model!r} (dim "
                f"{stored_dim}); it cannot be opened for model {model_id!r} (dim {dim}): vectors "
                "of different models are not comparable. Use the store's model, or another --db")
        self.created = float(meta["created"])
        self.token_dtype = meta.get("token_dtype", "float16")

    # ------------------------------------------------------------ plumbing
    @property
    def conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ValueError(f"the store at {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self):
        """The lock, and one ``BEGIN IMMEDIATE … COMMIT`` transaction, rolled back on any error
        (also on KeyboardInterrupt)."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self):
        """The lock, and one read transaction: every statement sees the same snapshot."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @staticmethod
    def _next_seq(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'write_seq'")
        return int(conn.execute("SELECT value FROM meta WHERE key = 'write_seq'").fetchone()[0])

    def _write_rows(self, conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
        """Write the encoded rows, one statement each, inside the caller's transaction."""
        for row in rows:
            conn.execute(_UPSERT, row)

    # -------------------------------------------------------------- encode
    def _encode(self, records) -> list[tuple]:
        if isinstance(records, Record):
            records = [records]
        rows, seen = [], {}
        for i, rec in enumerate(records):
            if not isinstance(rec, Record):
                raise TypeError(f"records[{i}] must be a Record; got {type(rec).__name__}")
            if not isinstance(rec.id, str) or not rec.id:
                raise ValueError(f"records[{i}].id must be a non-empty string; got {rec.id!r}")
            if "\x00" in rec.id:   # SQLite's JSON functions, our id lookups, stop at NUL
                raise ValueError(f"records[{i}].id must not contain a NUL character; got "
                                 f"{rec.id!r}")
            where = f"records[{i}] (id {rec.id!r})"
            if rec.id in seen:
                raise ValueError(f"{where} repeats the id of records[{seen[rec.id]}]; one batch "
                                 "may hold each id once")
            seen[rec.id] = i
            if rec.vector is None:
                raise ValueError(f"{where}.vector is missing: a stored document needs its "
                                 f"({self.dim},) vector")
            vec = as_float32(f"{where}.vector", rec.vector, (1,))
            if vec.shape[0] != self.dim:
                raise ValueError(f"{where}.vector must have shape ({self.dim},) (the store's dim); "
                                 f"got {vec.shape}")
            if not np.isfinite(vec).all():
                raise ValueError(f"{where}.vector contains NaN or Inf values")
            if rec.text is not None and not isinstance(rec.text, str):
                raise TypeError(f"{where}.text must be a string or None; got "
                                f"{type(rec.text).__name__}")
            meta = {} if rec.metadata is None else rec.metadata
            if not isinstance(meta, dict):
                raise TypeError(f"{where}.metadata must be a dict; got {type(meta).__name__}")
            bad = [k for k in meta if not isinstance(k, str)]
            if bad:
                raise ValueError(f"{where}.metadata keys must be strings; got {bad[:3]!r}")
            try:
                meta_json = json.dumps(meta, allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}.metadata must be JSON-serialisable (finite numbers, "
                                 f"strings, lists, dicts): {exc}") from None
            tokens, n_tok = self._encode_matrix(f"{where}.tokens", rec.tokens, self.token_dtype)
            token_ids = self._encode_token_ids(where, rec.token_ids, n_tok)
            chunks, n_chunk = self._encode_matrix(f"{where}.chunks", rec.chunks, "float32")
            rows.append((rec.id, rec.text, meta_json, vec.tobytes(), tokens, n_tok, token_ids,
                         chunks, n_chunk))
        return rows

    def _encode_matrix(self, name: str, x, fmt: str) -> tuple[bytes | None, int | None]:
        if x is None:
            return None, None
        arr = as_float32(name, x, (2,))
        if arr.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (n, {self.dim}); got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf values")
        try:
            return quantization.encode(arr, fmt), arr.shape[0]
        except ValueError as exc:
            raise ValueError(f"{name}: {exc} (normalise the token vectors)") from None

    @staticmethod
    def _encode_token_ids(where: str, ids, n_tok: int | None) -> bytes | None:
        if ids is None:
            return None
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise TypeError(f"{where}.token_ids must be a 1-D integer array; got {arr.dtype} "
                            f"{arr.shape}")
        if n_tok is None or arr.shape[0] != n_tok:
            raise ValueError(f"{where}.token_ids has {arr.shape[0]} ids for "
                             f"{n_tok or 0} token vectors: they come together, one id per token")
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{where}.token_ids must be non-negative int32 values")
        return arr.astype(np.int32).tobytes()

    def _decode(self, row) -> Record:
        rid, text, meta, vec, tok, n_tok, tok_ids, chunks, n_chunk = row
        tokens = None if tok is None else quantization.decode(tok, n_tok, self.dim,
                                                             self.token_dtype)
        if chunks is not None:
            chunks = np.frombuffer(chunks, dtype=np.float32).reshape(n_chunk, self.dim).copy()
        token_ids = None if tok_ids is None else np.frombuffer(tok_ids, np.int32).copy()
        return Record(id=rid, vector=np.frombuffer(vec, dtype=np.float32).copy(), text=text,
                      metadata=json.loads(meta), tokens=tokens, chunks=chunks,
                      token_ids=token_ids)

    # --------------------------------------------------------- token statistics
    def _pieces(self, conn: sqlite3.Connection, ids: list[str]) -> tuple[dict, int]:
        """Word-piece document counts of the stored ``ids`` (each piece once per document)."""
        counts: dict[int, int] = {}
        docs = 0
        for start in range(0, len(ids), 10_000):
            rows = conn.execute(f"SELECT token_ids FROM documents WHERE {_IN_IDS} AND "
                                "token_ids IS NOT NULL",
                                (json.dumps(ids[start:start + 10_000]),)).fetchall()
            for (blob,) in rows:
                docs += 1
                for piece in np.unique(np.frombuffer(blob, np.int32)).tolist():
                    counts[piece] = counts.get(piece, 0) + 1
        return counts, docs

    @staticmethod
    def _add_pieces(conn: sqlite3.Connection, counts: dict, docs: int, sign: int) -> None:
        """token_df += sign·counts and the document count += sign·docs (caller's transaction)."""
        if not counts and not docs:
            return
        conn.executemany("INSERT INTO token_df (piece, df) VALUES (?, ?) ON CONFLICT(piece) DO "
                         "UPDATE SET df = df + excluded.df",
                         [(p, sign * n) for p, n in counts.items()])
        if sign < 0:
            conn.execute("DELETE FROM token_df WHERE df <= 0")
        conn.execute("INSERT INTO meta (key, value) VALUES ('token_id_documents', ?) ON "
                     "CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                     (str(max(sign * docs, 0)), sign * docs))

    def document_frequencies(self, pieces) -> tuple[np.ndarray, int]:
        """``(df, n)``: how many stored documents contain each word piece in ``pieces`` and how
        many documents have word-piece ids at all, from one snapshot."""
        pieces = np.asarray(pieces)
        if pieces.dtype.kind not in "iu" or pieces.ndim != 1:
            raise TypeError(f"pieces must be a 1-D integer array; got {pieces.dtype} "
                            f"{pieces.shape}")
        with self._read() as conn:
            rows = dict(conn.execute("SELECT piece, df FROM token_df WHERE piece IN (SELECT value "
                                     "FROM json_each(?))",
                                     (json.dumps(pieces.tolist()),)).fetchall())
            n = conn.execute("SELECT value FROM meta WHERE key = 'token_id_documents'").fetchone()
        return (np.array([rows.get(p, 0) for p in pieces.tolist()], np.int64),
                0 if n is None else int(n[0]))

    # ---------------------------------------------------------------- API
    def put(self, records: Iterable[Record]) -> int:
        """Upsert ``records`` in one transaction (all validated first: nothing is written if any
        is invalid) and return the batch's write sequence number (0 for an empty batch)."""
        rows = self._encode(records)
        if not rows:
            return 0
        now = time.time()
        added: dict[int, int] = {}
        docs = 0
        for row in rows:
            if row[6] is not None:
                docs += 1
                for piece in np.unique(np.frombuffer(row[6], np.int32)).tolist():
                    added[piece] = added.get(piece, 0) + 1
        with self._write() as conn:
            seq = self._next_seq(conn)
            self._add_pieces(conn, *self._pieces(conn, [row[0] for row in rows]), -1)
            self._write_rows(conn, (row + (seq, now) for row in rows))
            self._add_pieces(conn, added, docs, +1)
        return seq

    def get(self, ids: Sequence[str]) -> list[Record | None]:
        ids = _as_ids("ids", ids)
        if not ids:
            return []
        with self._lock:
            rows = self.conn.execute(f"{_SELECT} WHERE {_IN_IDS}", (json.dumps(ids),)).fetchall()
        found = {row[0]: row for row in rows}
        return [self._decode(found[i]) if i in found else None for i in ids]

    def documents(self, ids: Sequence[str]) -> list[tuple[str | None, dict] | None]:
        """``(text, metadata)`` of ``ids`` in order, ``None`` where not stored (no blobs read)."""
        ids = _as_ids("ids", ids)
        if not ids:
            return []
        with self._lock:
            rows = self.conn.execute(f"SELECT id, text, metadata FROM documents WHERE {_IN_IDS}",
                                     (json.dumps(ids),)).fetchall()
        found = {row[0]: (row[1], json.loads(row[2])) for row in rows}
        return [found.get(i) for i in ids]

    def delete(self, ids: Sequence[str]) -> int:
        ids = _as_ids("ids", ids)
        if not ids:
            return 0
        with self._write() as conn:
            self._add_pieces(conn, *self._pieces(conn, ids), -1)
            n = conn.execute(f"DELETE FROM documents WHERE {_IN_IDS}",
                             (json.dumps(ids),)).rowcount
            if n:
                self._next_seq(conn)
        return n

    def count(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT count(*) FROM documents").fetchone()[0])

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id) -> bool:
        with self._lock:
            return self.conn.execute("SELECT 1 FROM documents WHERE id = ?",
                                     (id,)).fetchone() is not None

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT id FROM documents ORDER BY rowid")]

    def _column(self, ids, column: str) -> list:
        ids = _as_ids("ids", ids)
        if not ids:
            return []
        with self._lock:
            rows = self.conn.execute(
                f"SELECT id, {column}, token_count FROM documents WHERE {_IN_IDS}",
                (json.dumps(ids),)).fetchall()
        found = {r[0]: r[1:] for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not stored: {missing[:5]!r}")
        return [found[i] for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        blobs = self._column(ids, "vector")
        if not blobs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.frombuffer(b"".join(b for b, _ in blobs), dtype=np.float32) \
            .reshape(len(blobs), self.dim).copy()

    def token_vectors(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        return [None if b is None else quantization.decode(b, n, self.dim, self.token_dtype)
                for b, n in self._column(ids, "tokens")]

    def token_codes(self, ids: Sequence[str]) -> list[quantization.Int8Rows | None]:
        """The int8 token codes and scales of ``ids`` without dequantising (an int8 store only;
        what the int8 late-interaction kernel reads)."""
        if self.token_dtype != "int8":
            raise ValueError(f"the store keeps token vectors as {self.token_dtype}, not int8")
        return [None if b is None else quantization.decode_int8(b, n, self.dim)
                for b, n in self._column(ids, "tokens")]

    def token_ids(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        """The word-piece ids of the stored tokens of ``ids`` (``None`` where not stored)."""
        return [None if b is None else np.frombuffer(b, np.int32)
                for b, _ in self._column(ids, "token_ids")]

    @property
    def write_seq(self) -> int:
        """The sequence number of the last committed write (put or delete), from any process."""
        with self._lock:
            return int(self.conn.execute(
                "SELECT value FROM meta WHERE key = 'write_seq'").fetchone()[0])

    def changes_since(self, seq: int) -> tuple[list[str], int]:
        """The ids written (put) after write ``seq``, and the current write sequence number — one
        consistent snapshot. Deleted ids are not listed (compare id sets for those)."""
        with self._read() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM documents WHERE seq > ?",
                                              (int(seq),))]
            now = int(conn.execute("SELECT value FROM meta WHERE key = 'write_seq'").fetchone()[0])
        return ids, now

    def get_meta(self, key: str) -> str | None:
        """A value from the ``meta`` table (``None`` when unset)."""
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Record ``key = value`` in the ``meta`` table (the store's own keys are refused)."""
        if not isinstance(key, str) or not key or key in _RESERVED_META:
            raise ValueError(f"key must be a non-empty string other than {sorted(_RESERVED_META)}; "
                             f"got {key!r}")
        with self._write() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                         "SET value = excluded.value", (key, str(value)))

    def resolve_filter(self, filter: dict | None) -> set[str] | None:
        """The ids whose metadata match ``filter``; ``None`` (no restriction) for ``None`` or
        ``{}``.

        ``{"field": value}`` matches documents whose metadata ``field`` equals ``value`` (same JSON
        type; 1 and 1.0 are equal; a field holding a list matches when the list contains
        ``value``); ``{"field": {"$in": [v1, v2, ...]}}`` matches any of the values; several fields
        must all match. Field names are literal top-level metadata keys. Values are strings,
        numbers, booleans or null. Evaluated in SQL (``json_each``/``json_type``).
        """
        parsed = parse_filter(filter)
        if parsed is None:
            return None
        clauses, params = [], []
        for field, values in parsed:
            if not values:
                return set()
            path = f'$."{field}"'
            clauses.append(_FIELD_MATCH)
            params += [path, json.dumps(values), path]
        with self._lock:
            rows = self.conn.execute(f"SELECT id FROM documents WHERE {' AND '.join(clauses)}",
                                     params).fetchall()
        return {r[0] for r in rows}

    def info(self) -> dict:
        """What this store is: backend, path, model, dim, documents, durability settings."""
        with self._lock:
            journal = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
            sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                self.conn.execute("PRAGMA synchronous").fetchone()[0])
            return {"backend": self.backend, "path": self.path, "model_id": self.model_id,
                    "dim": self.dim, "documents": self.count(), "schema_version": SCHEMA_VERSION,
                    "journal_mode": journal, "synchronous": sync, "token_dtype": self.token_dtype}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.count()} documents"
        return f"SQLiteStore({self.path!r}, model_id={self.model_id!r}, dim={self.dim}, {state})"


def describe(path: str | os.PathLike) -> dict | None:
    """What the store at ``path`` holds (documents, model, dim, schema, bytes on disk), read-only
    and without knowing its model in advance; None when no store exists there."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        with_tokens = conn.execute(
            "SELECT count(*), coalesce(sum(length(tokens)), 0), coalesce(sum(token_count), 0), "
            "coalesce(sum(length(vector)), 0) FROM documents WHERE tokens IS NOT NULL").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a readable rerank store: {exc}") from None
    finally:
        conn.close()
    return {"backend": "sqlite", "path": path, "documents": documents,
            "model_id": meta.get("model_id"), "dim": int(meta.get("dim", 0)),
            "schema_version": int(meta.get("schema_version", 0)), "bytes": os.path.getsize(path),
            "token_dtype": meta.get("token_dtype", "float16"),
            "documents_with_tokens": with_tokens[0],
            "tokens_per_document": round(with_tokens[2] / with_tokens[0], 1) if with_tokens[0] else 0,
            "token_bytes_per_document": round(with_tokens[1] / with_tokens[0]) if with_tokens[0] else 0,
            "vector_bytes_per_document": round(with_tokens[3] / with_tokens[0]) if with_tokens[0] else 0}
