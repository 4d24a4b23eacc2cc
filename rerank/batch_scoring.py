"""Score and rank many queries, each over its own candidate rows of one shared table.

The unit of work of batch reranking (``rerank.batch``): query i (d,) is scored by memory-attention
over ``table[rows[offsets[i]:offsets[i+1]]]`` and its candidates are ordered best first. The
compiled kernel reads the rows in place through their indices; the numpy fallback gathers one
sub-batch at a time. Either way a query's scores depend only on that query, its rows and the
parameters, never on the batch it lands in, so every engine and chunking gives the same result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend, reference
from .scoring import MEMORY_TAU
from .validation import (as_float32, check_finite, finite_float, kernel_error, offsets,
                         positive_float, positive_int)

#: Candidate rows per sub-batch by default: one kernel call and one sort per sub-batch; its
#: scores, sort keys and order (~16 bytes a row) stay within a core's L2 cache.
SUB_BATCH_ROWS = 16384


@dataclass(frozen=True)
class MemoryParams:
    """memory-attention's parameters (``heads``, ``tau``, ``alpha``), validated against ``dim``."""
    heads: int = 1
    tau: float = MEMORY_TAU
    alpha: float = 0.0

    @classmethod
    def checked(cls, dim: int, heads=1, tau=MEMORY_TAU, alpha=0.0) -> "MemoryParams":
        heads = positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide the dimension d = {dim}")
        return cls(heads, positive_float("tau", tau), finite_float("alpha", alpha))


@dataclass
class RankedRows:
    """Ranked candidates of m queries, flat: query i's table rows best first are
    ``rows[offsets[i]:offsets[i+1]]`` (int32) with their ``scores`` (float32)."""
    rows: np.ndarray
    scores: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def query(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of query ``i``, best first."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.rows[a:b], self.scores[a:b]


def check_rows(queries, rows, table, row_offsets=None):
    """Validated ``(queries (m, d) float32, rows (R,) int32, offsets (m+1,) int64, table (N, d)
    float32)``: ``rows`` is an (m, c) integer array, a list of m 1-D integer arrays, or a flat
    (R,) array with ``row_offsets`` (m+1,); every query needs ≥ 1 row, every row index in
    [0, N); queries and table finite."""
    table = as_float32("table", table, (2,))
    queries = as_float32("queries", queries, (2,))
    m, d = queries.shape
    if table.shape[1] != d:
        raise ValueError(f"queries have dimension {d} but the table has {table.shape[1]}")
    if row_offsets is None and isinstance(rows, (list, tuple)):
        parts = [np.asarray(r) for r in rows]
        if any(p.ndim != 1 for p in parts):
            raise ValueError("rows given as a list must hold 1-D arrays, one per query")
        row_offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu":
        raise TypeError(f"rows must be an integer array of table rows; got dtype {rows.dtype}")
    if row_offsets is None:
        if rows.ndim != 2 or rows.shape[1] == 0:
            raise ValueError(f"rows must be (m, c) with c ≥ 1, or flat with row_offsets; got "
                             f"shape {rows.shape}")
        row_offsets = np.arange(rows.shape[0] + 1, dtype=np.int64) * rows.shape[1]
        rows = rows.reshape(-1)
    elif rows.ndim != 1:
        raise ValueError(f"rows must be 1-D when row_offsets are given; got shape {rows.shape}")
    row_offsets = offsets("row_offsets", row_offsets, rows.shape[0])
    if row_offsets.ndim != 1 or len(row_offsets) != m + 1:
        raise ValueError(f"rows describe {len(row_offsets) - 1} candidate sets for {m} queries")
    if rows.size and (rows.min() < 0 or rows.max() >= table.shape[0]):
        bad = int(rows[(rows < 0) | (rows >= table.shape[0])][0])
        raise ValueError(f"rows must index the table's {table.shape[0]} rows; got {bad}")
    check_finite("queries", queries)
    check_finite("table", table)
    return queries, np.ascontiguousarray(rows, dtype=np.int32), row_offsets, table


def memory_scores_rows(queries, table, rows, row_offsets, params: MemoryParams, *,
                       compiled: bool, threads: int = 1) -> np.ndarray:
    """Scores (R,) in ``rows``' order of validated arrays (see :func:`check_rows`): the compiled
    kernel when ``compiled``, else numpy."""
    if compiled:
        kernels = backend.extension()
        if kernels is None:
            raise RuntimeError(f"the compiled backend was asked for but {backend.reason()}")
        out = np.empty(rows.shape[0], dtype=np.float32)
        bad = kernels.memory_scores_rows(queries, table, rows, row_offsets, out, params.heads,
                                         params.tau, params.alpha, threads)
    else:
        out = numpy_scores_rows(queries, table, rows, row_offsets, params)
        bad = 0 if np.isfinite(out).all() else 1
    if bad:
        raise kernel_error(bad, "memory-attention (batch)", queries=queries,
                           candidates=table[rows])
    return out


def numpy_scores_rows(queries, table, rows, row_offsets, params: MemoryParams) -> np.ndarray:
    """The numpy fallback of the kernel, in float64: per query and head,
    w_h(i) = softmax_i(q̂_h·k̂_{i,h}/τ), score_i = Σ_h w_h(i)/h (one refinement when
    α ≠ 0)."""
    m, d = queries.shape
    heads, hd = params.heads, d // params.heads
    widths = np.diff(row_offsets)
    owner = np.repeat(np.arange(m), widths)
    starts = row_offsets[:-1]
    keys = reference.normalize(table[rows])                     # (R, d)
    split_keys = keys.reshape(-1, heads, hd)

    def weights(q):                                             # q (m, d) unit → (R,)
        logits = np.einsum("rhk,rhk->rh", split_keys, q[owner].reshape(-1, heads, hd))
        logits /= params.tau
        logits -= np.maximum.reduceat(logits, starts, axis=0)[owner]
        w = np.exp(logits)
        w /= np.add.reduceat(w, starts, axis=0)[owner]
        return w.mean(axis=1)

    q = reference.normalize(queries)
    score = weights(q)
    if params.alpha:
        q = reference.normalize(q + params.alpha * np.add.reduceat(score[:, None] * keys, starts,
                                                                    axis=0))
        score = weights(q)
    return score.astype(np.float32)


def order_rows(rows, scores, row_offsets, top_k: int | None) -> RankedRows:
    """Each query's rows and scores best first (a stable sort: ties keep the input order), the
    first ``top_k`` of each (all when None)."""
    widths = np.diff(row_offsets)
    m, width = len(widths), int(widths.max())
    if rows.shape[0] == m * width:                              # every query has `width` rows
        keys = -scores.reshape(m, width)
    else:
        owner = np.repeat(np.arange(m), widths)
        column = np.arange(rows.shape[0]) - row_offsets[:-1][owner]
        keys = np.full((m, width), np.inf, dtype=np.float32)    # padding sorts last
        keys[owner, column] = -scores
    order = np.argsort(keys, axis=1, kind="stable")
    keep = np.minimum(widths, width if top_k is None else top_k)
    mask = np.arange(width)[None, :] < keep[:, None]
    picked = (order + row_offsets[:-1, None])[mask]
    return RankedRows(rows[picked], scores[picked],
                      np.concatenate([[0], np.cumsum(keep)]).astype(np.int64))


def default_sub_batch(row_offsets) -> int:
    """Queries per sub-batch: about :data:`SUB_BATCH_ROWS` candidate rows."""
    m = len(row_offsets) - 1
    mean = max(1, int(row_offsets[-1]) // max(m, 1))
    return max(1, SUB_BATCH_ROWS // mean)


def ranked_offsets(row_offsets, top_k: int | None) -> np.ndarray:
    """Where each query's results start in the output: it keeps min(c_i, top_k) of its c_i."""
    keep = np.diff(row_offsets)
    if top_k is not None:
        keep = np.minimum(keep, top_k)
    return np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)


def empty_ranked(row_offsets, top_k: int | None) -> RankedRows:
    """An output to fill: sized for ``top_k`` results of each query."""
    offs = ranked_offsets(row_offsets, top_k)
    return RankedRows(np.empty(offs[-1], np.int32), np.empty(offs[-1], np.float32), offs)


def rank_chunk(queries, table, rows, row_offsets, params: MemoryParams, *, top_k: int | None,
               sub_batch: int, compiled: bool, threads: int = 1,
               out: RankedRows | None = None) -> RankedRows:
    """Score and order one chunk of validated queries in sub-batches of ``sub_batch`` queries
    (the task both engines run; ``threads``: the kernel's threads), written into ``out`` (e.g.
    views of a whole job's output; default: new arrays)."""
    if out is None:
        out = empty_ranked(row_offsets, top_k)
    for s in range(0, queries.shape[0], sub_batch):
        e = min(s + sub_batch, queries.shape[0])
        a, b = row_offsets[s], row_offsets[e]
        sub_rows, sub_offsets = rows[a:b], row_offsets[s:e + 1] - a
        scores = memory_scores_rows(queries[s:e], table, sub_rows, sub_offsets, params,
                                    compiled=compiled, threads=threads)
        part = order_rows(sub_rows, scores, sub_offsets, top_k)
        o0, o1 = out.offsets[s], out.offsets[e]
        out.rows[o0:o1] = part.rows
        out.scores[o0:o1] = part.scores
    return out
