"""The pgvector candidate source: HNSW search inside PostgreSQL, over the store's own table.

:class:`PgVectorSource` answers ``search(query, n, filter=...)`` with ONE statement (one round
trip): ``SELECT id, embedding … ORDER BY embedding <op> q LIMIT n`` with ``hnsw.ef_search =
max(ef_search, n)`` set for that transaction only (see :meth:`PgVectorSource._fetch`), and returns
the candidates WITH their vectors, as :class:`rerank.retrieval.HNSWIndex` does
(:class:`~rerank.retrieval.SearchResult`: ids, scores higher-is-better recomputed exactly from the
vectors in float64, vectors L2-normalised in cosine space).

Filters are pushed into the query as jsonb containment conditions (GIN-indexed). pgvector's HNSW
scan filters AFTER the graph walk, so a selective filter could leave fewer than n rows. So:
a filter the planner expects at most :attr:`PgVectorSource.exact_search_limit` documents to pass
is answered exactly (index scans off: the GIN bitmap, then a sort); a broader one walks the graph
with ``hnsw.iterative_scan = strict_order`` (on until n rows pass or ``hnsw.max_scan_tuples`` were
visited), and when fewer than n rows still come back the query runs again exactly. A search
returns exactly n candidates whenever at least n documents match.

The index lives in the store's table and is updated in the store's write transactions, so
``add``, ``delete`` and ``save`` have nothing to do; ``rebuild`` reindexes.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from rerank.retrieval import SearchResult
from rerank.validation import as_float32, positive_int

from .filters import parse_filter
from .postgres_store import (HNSW_INDEX, SPACE_OPERATORS, PostgresStore, _decode_vectors,
                             filter_sql)

__all__ = ["PgVectorSource", "NotEnoughCandidates"]

log = logging.getLogger(__name__)


class NotEnoughCandidates(ValueError):
    """Fewer than the requested number of documents exist (or match the filter);
    ``available`` says how many do."""

    def __init__(self, message: str, available: int):
        super().__init__(message)
        self.available = available


class PgVectorSource:
    """A :class:`~memory_adapter.interfaces.CandidateSource` over a :class:`PostgresStore`'s HNSW
    index. ``ef_search``: the least HNSW search breadth (raised to n for each search).
    ``max_scan_tuples``: how many index tuples a filtered iterative scan may visit before the
    exact scan takes over (``None``: pgvector's default, 20,000). ``exact_search_limit``: see the
    attribute (``None``: its default)."""

    #: The index is part of the store: writes reach it in the store's transactions.
    lives_in_store = True
    #: ``search`` takes ``filter=`` and evaluates it in the database.
    pushes_filters = True
    #: A filtered search that the planner expects at most this many documents to pass reads
    #: them all and sorts them (exact) instead of walking the graph. Measured at 100k × 384 on
    #: 2 cores: reading matches costs ~3 µs each (10% = 10,000 rows: 31 ms exactly, 9.5 ms by
    #: the iterative HNSW scan); at 500–1,000 matches both took 5–9 ms.
    exact_search_limit = 1_000

    def __init__(self, store: PostgresStore, *, ef_search: int = 40,
                 max_scan_tuples: int | None = None, exact_search_limit: int | None = None):
        if not isinstance(store, PostgresStore):
            raise TypeError(f"store must be a PostgresStore; got {type(store).__name__}")
        self.store = store
        self.ef_search = positive_int("ef_search", ef_search)
        self.max_scan_tuples = (None if max_scan_tuples is None
                                else positive_int("max_scan_tuples", max_scan_tuples))
        if exact_search_limit is not None:
            if isinstance(exact_search_limit, bool) or not isinstance(exact_search_limit, int) \
                    or exact_search_limit < 0:
                raise ValueError(f"exact_search_limit must be an integer ≥ 0; got "
                                 f"{exact_search_limit!r}")
            self.exact_search_limit = exact_search_limit
        op = SPACE_OPERATORS[store.space][0]
        self._order = f"ORDER BY embedding {op} %b LIMIT %s"

    model_id = property(lambda self: self.store.model_id)
    dim = property(lambda self: self.store.dim)
    space = property(lambda self: self.store.space)

    @property
    def ef(self) -> int:
        """Alias of ``ef_search`` (the name ``HNSWIndex`` uses)."""
        return self.ef_search

    @property
    def count(self) -> int:
        """The number of indexed documents: every stored document."""
        return self.store.count()

    def __len__(self) -> int:
        return self.count

    def __contains__(self, id) -> bool:
        return id in self.store

    def ids(self) -> list[str]:
        return self.store.ids()

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` as the index compares them (normalised in cosine)."""
        x = self.store.vectors(ids)
        return _normalised(x) if self.space == "cosine" else x

    def add(self, ids: Sequence[str], vectors) -> None:
        """Nothing to do: the store's ``put`` indexed them in its transaction."""

    def delete(self, ids: Sequence[str]) -> int:
        """Nothing to do: the store's ``delete`` removed them from the index; returns 0."""
        return 0

    def save(self, path=None) -> None:
        """Nothing to do: the index is in the database."""

    def rebuild(self, store=None) -> None:
        """Rebuild the HNSW index from the table (``REINDEX``; created when missing)."""
        if not self.store.create_index():
            with self.store.connection() as conn:
                conn.execute(f"REINDEX INDEX {HNSW_INDEX}")

    def repair(self) -> str | None:
        """Create the HNSW index when it is missing (an interrupted bulk load); returns what was
        done, or ``None``. A read-only database is left as it is (searches scan exactly)."""
        if self.store.has_index():
            return None
        try:
            self.store.create_index()
        except self.store._psycopg.errors.ReadOnlySqlTransaction:
            log.warning("the HNSW index of %s is missing and the database is read-only: "
                        "searches scan every row until the primary rebuilds it", self.store.url)
            return None
        return "the HNSW index was missing: created from the table"

    # ------------------------------------------------------------------ search
    def _queries(self, vectors) -> np.ndarray:
        q = as_float32("vectors", vectors, (1, 2))
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} columns (the store's dim); got "
                             f"shape {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("vectors contains NaN or Inf values")
        if self.space == "cosine" and not np.einsum("ij,ij->i", q, q).all():
            raise ValueError("vectors has a row of all zeros: cosine similarity is undefined")
        return q

    def _fetch(self, q: np.ndarray, n: int, where: str, params: list, *, exact: bool,
               filtered: bool) -> list[tuple]:
        """The n nearest rows (id, raw vector) in one statement.

        HNSW: the settings are made transaction-local (what ``SET LOCAL`` does) by
        ``set_config(…, true)`` in an uncorrelated subquery of the same statement — PostgreSQL
        evaluates it as an InitPlan gating the scan, before the index scan reads them — so a
        search costs one round trip. Exact: index scans are switched off for one transaction
        (the rare path: a selective filter, or an HNSW walk that gave up early)."""
        if exact:
            sql = f"SELECT id, embedding FROM rerank_documents {where} {self._order}"
            with self.store.connection(read=True) as conn, conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                return conn.cursor(binary=True).execute(sql, [*params, q, n]).fetchall()
        settings = [("hnsw.ef_search", str(max(self.ef_search, n)))]
        if filtered:
            settings.append(("hnsw.iterative_scan", "strict_order"))
            if self.max_scan_tuples is not None:
                settings.append(("hnsw.max_scan_tuples", str(self.max_scan_tuples)))
        gate = " || ".join("set_config(%s, %s, true)" for _ in settings)
        condition = where.replace("WHERE ", "AND ", 1)
        sql = (f"SELECT id, embedding FROM rerank_documents WHERE (SELECT {gate}) IS NOT NULL "
               f"{condition} {self._order}")
        with self.store.connection(read=True) as conn:
            return conn.cursor(binary=True).execute(
                sql, [v for pair in settings for v in pair] + [*params, q, n]).fetchall()

    def _estimate(self, where: str, params: list) -> int:
        """The planner's estimate of how many documents pass ``where``."""
        with self.store.connection(read=True) as conn:
            plan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM rerank_documents {where}",
                                params).fetchone()[0]
        return int(plan[0]["Plan"]["Plan Rows"])

    def search(self, vectors, n: int, allowed: set[str] | None = None, *,
               filter: dict | None = None) -> SearchResult:
        """The exactly ``n`` nearest documents of each query row, best first, among those whose
        metadata match ``filter`` and (when given) whose ids are in ``allowed``.
        :class:`NotEnoughCandidates` (a ``ValueError``) when fewer than ``n`` exist."""
        n = positive_int("n", n)
        q = self._queries(vectors)
        parsed = parse_filter(filter)
        clauses, params = [], []
        if parsed is not None:
            where, params = filter_sql(parsed)
            clauses.append(where)
        if allowed is not None:
            allowed = [allowed] if isinstance(allowed, str) else list(allowed)
            clauses.append("id = ANY(%s)")
            params = [*params, allowed]
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        filtered = bool(clauses)
        exact = False
        if filtered:   # few matches: reading them all beats walking the graph past the rest
            matches = len(allowed) if parsed is None else self._estimate(where, params)
            exact = matches <= self.exact_search_limit
        ids, vecs = [], []
        for row in q:
            rows = self._fetch(row, n, where, params, exact=exact, filtered=filtered)
            if len(rows) < n and not exact:   # the graph walk gave up early: scan exactly
                rows = self._fetch(row, n, where, params, exact=True, filtered=filtered)
            if len(rows) < n:
                what = "matching items" if filtered else "items"
                raise NotEnoughCandidates(f"n = {n} candidates requested but only {len(rows)} "
                                          f"{what} are in the index", len(rows))
            ids.append([r[0] for r in rows])
            vecs.append(_decode_vectors([r[1] for r in rows], self.dim))
        return self._ranked(q, ids, np.stack(vecs))

    def _ranked(self, q: np.ndarray, ids: list[list[str]], cand: np.ndarray) -> SearchResult:
        """Exact float64 scores of the fetched vectors, best first (ties keep the server's
        order); vectors normalised in cosine space."""
        q64, c64 = q.astype(np.float64), cand.astype(np.float64)
        if self.space == "l2":
            diff = c64 - q64[:, None, :]
            scores = -np.einsum("mnd,mnd->mn", diff, diff)
        else:
            scores = np.einsum("mnd,md->mn", c64, q64)
            if self.space == "cosine":
                norms = np.sqrt(np.einsum("mnd,mnd->mn", c64, c64))
                scores /= norms * np.sqrt(np.einsum("md,md->m", q64, q64))[:, None]
                cand = (c64 / np.where(norms > 0, norms, 1)[:, :, None]).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        if (order != np.arange(order.shape[1])).any():
            scores = np.take_along_axis(scores, order, axis=1)
            cand = np.take_along_axis(cand, order[:, :, None], axis=1)
            ids = [[row[j] for j in o] for row, o in zip(ids, order.tolist())]
        return SearchResult(ids=ids, scores=scores.astype(np.float32),
                            vectors=np.ascontiguousarray(cand, dtype=np.float32))

    def __repr__(self) -> str:
        return (f"PgVectorSource({self.store.url!r}, space={self.space!r}, "
                f"ef_search={self.ef_search})")


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)
