"""The rerank scorers (DESIGN.md, "The rerank scorers"): validate once, then run the compiled
kernels or the numpy reference. Every argument may carry a leading batch axis m (one candidate set
per query); results are (c,) for one query and (m, c) for a batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import backend, reference
from .quantization import Int8Rows
from .validation import (as_float32, check_finite, finite_float, kernel_error, non_finite_error,
                         offsets, positive_float, positive_int, same)

#: Default temperatures and mix weight. Provisional until the quality issue measures them.
MEMORY_TAU = 0.1
HIERARCHICAL_TAU = 0.1
LAMBDA = 1.0
#: Document tokens per tile in the late-interaction kernel (bounds its memory to t·tile floats).
BLOCK_TOKENS = 1024
#: The same for int8 tokens (no BLAS call to amortise; document rows are read in place, so the
#: tile only sizes the t·tile similarities: 32 … 4096 measured the same).
BLOCK_TOKENS_INT8 = 256
#: Largest dimension of int8 token vectors: the kernel's int32 sums (≤ 2¹⁴·d) stay exact.
MAX_INT8_DIM = 1 << 16
#: Multiply-adds under which one query's candidates are not split across threads (~50 µs).
_SPLIT_WORK = 1 << 21


class ScoreDetails(NamedTuple):
    """final = z(dense) + λ·z(similarity), with both ingredients; each (c,) or (m, c)."""
    final: np.ndarray
    similarity: np.ndarray
    dense: np.ndarray


def memory_attention(query, candidates, *, heads=1, tau=MEMORY_TAU, alpha=0.0) -> np.ndarray:
    """score_i = Σ_h softmax_i(q̂_h·k̂_{i,h}/τ)/h over candidates (c, d) for a query (d,);
    with α ≠ 0 the query is refined once (q' = normalise(q̂ + α·Σ_i score_i·k̂_i)).
    With heads = 1 and α = 0 the order equals the dense (cosine) order."""
    kernels = backend.compiled_kernels()
    if kernels is not None:  # one float32 query: validated inside the kernel call
        try:
            out = kernels.memory_scores_one(query, candidates, heads, tau, alpha)
        except FloatingPointError:
            raise non_finite_error("memory-attention", query=query, candidates=candidates) from None
        if out is not None:
            return out
    cands = as_float32("candidates", candidates, (2, 3))
    q = as_float32("query", query, (cands.ndim - 1,))
    d = cands.shape[-1]
    if q.shape[-1] != d:
        raise ValueError(f"query has dimension {q.shape[-1]} but candidates have {d}")
    if cands.ndim == 3 and q.shape[0] != cands.shape[0]:
        raise ValueError(f"batch sizes differ: query {q.shape}, candidates {cands.shape}")
    if heads != 1:
        heads = positive_int("heads", heads)
        if d % heads:
            raise ValueError(f"heads ({heads}) must divide the dimension d = {d}")
    if tau != MEMORY_TAU:
        tau = positive_float("tau", tau)
    if alpha != 0.0:
        alpha = finite_float("alpha", alpha)
    if kernels is None:
        check_finite("query", q)
        check_finite("candidates", cands)
        if cands.ndim == 2:
            return reference.memory_attention_scores(q, cands, heads=heads, tau=tau, alpha=alpha)[0]
        return np.stack([reference.memory_attention_scores(qi, ci, heads=heads, tau=tau,
                                                           alpha=alpha)[0]
                         for qi, ci in zip(q, cands)])
    out = np.empty(cands.shape[:-1], dtype=np.float32)
    threads = backend.get_num_threads() if cands.ndim == 3 else 1
    bad = kernels.memory_scores(q, cands, out, heads, tau, alpha, threads)
    if bad:
        raise kernel_error(bad, "memory-attention", query=q, candidates=cands)
    return out


def _ragged_batch(name_q, q, name_tok, tokens, name_off, offs, tok_rank):
    """Flatten (single or batched) query tokens and ragged token matrices into the kernel's form:
    qtok (Q, d), q_off (m+1,), dtok (D, d), d_off (m, c+1) with global row offsets."""
    batched = tokens.ndim == tok_rank + 1
    if batched:
        m, rows = tokens.shape[0], tokens.shape[1]
        if q.shape[0] != m:
            raise ValueError(f"batch sizes differ: {name_q} {q.shape}, {name_tok} {tokens.shape}")
        offs = offsets(name_off, offs, rows, exact_end=False)
        if offs.ndim != 2 or offs.shape[0] != m:
            raise ValueError(f"{name_off} must have shape (m, c+1) = ({m}, c+1) for a batch; "
                             f"got {offs.shape}")
        d_off = offs + (np.arange(m, dtype=np.int64) * rows)[:, None]
        dtok = tokens.reshape(m * rows, tokens.shape[-1])
    else:
        offs = offsets(name_off, offs, tokens.shape[0])
        if offs.ndim != 1:
            raise ValueError(f"{name_off} must be 1-D (c+1,) for one query; got {offs.shape}")
        d_off = offs[None, :]
        dtok = tokens
    return batched, d_off, dtok


def _mixing_inputs(name, dense, shape):
    if dense is None:
        return None
    arr = as_float32(name, dense, (len(shape),))
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {arr.shape}")
    check_finite(name, arr)
    return arr


def _work_items(d_off: np.ndarray, threads: int, work: int) -> np.ndarray:
    """(query, c0, c1) rows: one per query when queries alone keep the threads busy (or the
    ``work``, in multiply-adds, is too small to share), else each query's candidates split into
    parts of about equal token counts."""
    m, c = d_off.shape[0], d_off.shape[1] - 1
    shared = threads > 1 and m < 2 * threads and work > _SPLIT_WORK
    parts = min(c, -(-2 * threads // m)) if shared else 1
    if parts == 1:
        items = np.zeros((m, 3), dtype=np.int64)
        items[:, 0] = np.arange(m)
        items[:, 2] = c
        return items
    rows = []
    for qi in range(m):
        row = d_off[qi]
        goals = row[0] + (row[-1] - row[0]) * np.arange(1, parts) / parts
        cuts = np.unique(np.concatenate([[0], np.searchsorted(row, goals), [c]]))
        cuts = cuts[(cuts >= 0) & (cuts <= c)]
        rows.extend((qi, a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a)
    return np.array(rows, dtype=np.int64)


def _kernel_args(qtok, q_off, idf, dtok, d_off, tau, dense, lam):
    """The late-interaction kernels' shared arguments, with fresh (m, c) outputs and the work
    items; returns (args, t, threads, (final, sim, dense_out))."""
    m, c = d_off.shape[0], d_off.shape[1] - 1
    outputs = tuple(np.empty((m, c), np.float32) for _ in range(3))
    threads = backend.get_num_threads()
    t = qtok.shape[0] // m                        # every query has t tokens
    items = _work_items(d_off, threads, t * dtok.shape[0] * dtok.shape[1])
    args = (qtok, q_off, idf, dtok, d_off, items, -1.0 if tau is None else tau,
            None if dense is None else dense.reshape(m, c), lam, *outputs, threads)
    return args, t, outputs


def _run_pooling(kernels, qtok, q_off, idf, dtok, d_off, tau, dense, lam):
    args, t, outputs = _kernel_args(qtok, q_off, idf, dtok, d_off, tau, dense, lam)
    bad = backend.call_holding_blas(t, BLOCK_TOKENS, dtok.shape[1], kernels.late_interaction,
                                    *args, BLOCK_TOKENS)
    return (bad, *outputs)


def _doc_token_matrix(doc_tokens, doc_scales, ndim):
    """``doc_tokens`` as (array, is_int8): float32, or int8 codes from an int8 array or an
    :class:`Int8Rows` (whose scales are only checked: the cosine cancels them)."""
    if doc_scales is None and type(doc_tokens) is np.ndarray and doc_tokens.dtype == np.float32:
        return as_float32("doc_tokens", doc_tokens, (ndim,)), False
    if isinstance(doc_tokens, Int8Rows):
        if doc_scales is not None:
            raise ValueError("doc_scales given twice: doc_tokens is an Int8Rows with its scales")
        doc_tokens, doc_scales = doc_tokens.codes, doc_tokens.scales
    arr = np.asarray(doc_tokens)
    if arr.dtype == np.int8:
        if arr.ndim != ndim:
            raise ValueError(f"doc_tokens must be {ndim}-D like query_tokens; got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"doc_tokens must not be empty; got shape {arr.shape}")
        if arr.shape[-1] > MAX_INT8_DIM:
            raise ValueError(f"int8 doc_tokens support d ≤ {MAX_INT8_DIM}; got d = {arr.shape[-1]}")
        if doc_scales is not None:
            _check_scales(doc_scales, arr.shape[:-1])
        return np.ascontiguousarray(arr), True
    if arr.dtype.kind in "biu":
        raise TypeError(f"doc_tokens must be a floating-point array (float32 preferred) or int8 "
                        f"codes; got dtype {arr.dtype}")
    if doc_scales is not None:
        raise ValueError("doc_scales go with int8 doc_tokens only")
    return as_float32("doc_tokens", arr, (ndim,)), False


def _check_scales(scales, shape):
    arr = as_float32("doc_scales", scales, (len(shape),))
    if arr.shape != shape:
        raise ValueError(f"doc_scales must have shape {shape} (one per token); got {arr.shape}")
    check_finite("doc_scales", arr)
    if (arr < 0).any():
        raise ValueError("doc_scales must be ≥ 0")


def _run_int8(kernels, qtok, q_off, idf, codes, d_off, tau, dense, lam):
    args, _, outputs = _kernel_args(qtok, q_off, idf, codes, d_off, tau, dense, lam)
    return (kernels.late_interaction_int8(*args, BLOCK_TOKENS_INT8), *outputs)


def late_interaction(query_tokens, doc_tokens, doc_offsets, *, tau=None, idf=None, dense=None,
                     lam=LAMBDA, details=False, doc_scales=None):
    """Late-interaction rerank: MaxSim_i = Σ_t idf_t·max_j(q̂_t·d̂_ij)/Σ_t idf_t (soft form with τ:
    Σ_j softmax_j(q̂_t·d̂_ij/τ)·q̂_t·d̂_ij); final_i = z(dense_i) + λ·z(MaxSim_i).

    One query: query_tokens (t, d), doc_tokens (T, d), doc_offsets (c+1,) ending at T, idf (t,),
    dense (c,). A batch adds a leading m to each (doc_offsets (m, c+1) may end before T: padding).
    ``dense`` defaults to cos(mean q̂_t, mean d̂_ij). Returns final scores, or ScoreDetails.

    ``doc_tokens`` may be int8 codes b (an int8 array, or an :class:`~rerank.quantization.Int8Rows`;
    ``doc_scales`` (T,) are optional and only checked: d̂ = b/‖b‖ needs no scale). Then the query
    tokens are quantised too, to 7 bits (a_t = rint(64·q_t/max|q_t|), quantization.quantize_query),
    on both backends, and d̂_ij, q̂_t above become b̂_ij, â_t: similarities are exact integer dot
    products over the norms. Against float MaxSim of the unquantised vectors the error is at most
    mean_t ‖q̂_t − â_t‖ + max_j ‖x̂_ij − b̂_ij‖ (quantization.maxsim_error_bound: ≈ 0.035 for
    d = 384 tokens with spread-out values; measured errors are ~3·10⁻⁴ on average, 1.6·10⁻³ at
    most on all-MiniLM-L6-v2 token vectors).
    """
    kernels = backend.compiled_kernels()
    if kernels is not None and idf is None and doc_scales is None:
        try:    # one query on int8 codes: validated inside the kernel call
            out = kernels.late_interaction_int8_one(
                query_tokens, doc_tokens, doc_offsets, tau, dense, lam,
                backend.get_num_threads(), _SPLIT_WORK, BLOCK_TOKENS_INT8)
        except FloatingPointError:
            raise non_finite_error("late interaction", query_tokens=query_tokens) from None
        if out is not None:
            return ScoreDetails(*out) if details else out[0]
    qt = as_float32("query_tokens", query_tokens, (2, 3))
    dt, int8 = _doc_token_matrix(doc_tokens, doc_scales, qt.ndim)
    same("query_tokens", qt.shape[-1], "doc_tokens", dt.shape[-1], "the last dimension (d)")
    batched, d_off, dtok = _ragged_batch("query_tokens", qt, "doc_tokens", dt, "doc_offsets",
                                         doc_offsets, 2)
    m, c, t = d_off.shape[0], d_off.shape[1] - 1, qt.shape[-2]
    tau = positive_float("tau", tau, allow_none=True)
    lam = finite_float("lam", lam)
    if idf is not None:
        idf = as_float32("idf", idf, (qt.ndim - 1,))
        if idf.shape != qt.shape[:-1]:
            raise ValueError(f"idf must have shape {qt.shape[:-1]} (one weight per query token); "
                             f"got {idf.shape}")
        check_finite("idf", idf)
        if (idf < 0).any() or (idf.reshape(m, t).sum(axis=1) <= 0).any():
            raise ValueError("idf weights must be ≥ 0 with a positive sum per query")
    dense = _mixing_inputs("dense", dense, (m, c) if batched else (c,))
    qtok = qt.reshape(m * t, qt.shape[-1])
    if kernels is None:
        check_finite("query_tokens", qt)
        score = reference.late_interaction_int8_scores if int8 else reference.late_interaction_scores
        rows = []
        for i in range(m):
            lo = d_off[i, 0]
            if not int8:
                check_finite("doc_tokens", dtok[lo:d_off[i, -1]])   # padding rows are not input
            rows.append(score(
                qtok[i * t:(i + 1) * t], dtok[lo:d_off[i, -1]], d_off[i] - lo, tau=tau,
                idf=None if idf is None else idf.reshape(m, t)[i],
                dense=None if dense is None else dense.reshape(m, c)[i], lam=lam))
        final, sim, dense_out = (np.stack(x) for x in zip(*rows))
        bad = not np.isfinite(final).all()
    else:
        q_off = np.arange(m + 1, dtype=np.int64) * t
        run = _run_int8 if int8 else _run_pooling
        bad, final, sim, dense_out = run(kernels, qtok, q_off,
                                         None if idf is None else idf.reshape(-1),
                                         dtok, d_off, tau, dense, lam)
    if bad:
        raise kernel_error(bad, "late interaction", query_tokens=qt, doc_tokens=dtok)
    return _shape_result(final, sim, dense_out, batched, details)


def _shape_result(final, sim, dense_out, batched, details):
    if not batched:
        final, sim, dense_out = final[0], sim[0], dense_out[0]
    return ScoreDetails(final, sim, dense_out) if details else final


def hierarchical(query, chunks, chunk_offsets, *, tau=HIERARCHICAL_TAU, dense=None, lam=LAMBDA,
                 details=False):
    """Hierarchical cross-attention rerank: s_i = Σ_c softmax_c(q̂·ĉ/τ)·(q̂·ĉ) over candidate i's
    chunks; final_i = z(dense_i) + λ·z(s_i); ``dense`` defaults to cos(q̂, mean ĉ_i).

    One query: query (d,), chunks (C, d), chunk_offsets (c+1,) ending at C, dense (c,); a batch
    adds a leading m to each (chunk_offsets (m, c+1) may end before C: padding)."""
    ch = as_float32("chunks", chunks, (2, 3))
    q = as_float32("query", query, (ch.ndim - 1,))
    same("query", q.shape[-1], "chunks", ch.shape[-1], "the last dimension (d)")
    qtok = q.reshape(-1, q.shape[-1])
    batched, d_off, dtok = _ragged_batch("query", qtok, "chunks", ch, "chunk_offsets",
                                         chunk_offsets, 2)
    m, c = d_off.shape[0], d_off.shape[1] - 1
    tau = positive_float("tau", tau)
    lam = finite_float("lam", lam)
    dense = _mixing_inputs("dense", dense, (m, c) if batched else (c,))
    kernels = backend.compiled_kernels()
    if kernels is None:
        check_finite("query", q)
        rows = []
        for i in range(m):
            lo = d_off[i, 0]
            check_finite("chunks", dtok[lo:d_off[i, -1]])       # padding rows are not input
            rows.append(reference.hierarchical_scores(
                qtok[i], dtok[lo:d_off[i, -1]], d_off[i] - lo, tau=tau,
                dense=None if dense is None else dense.reshape(m, c)[i], lam=lam)[:3])
        final, sim, dense_out = (np.stack(x) for x in zip(*rows))
        bad = not np.isfinite(final).all()
    else:
        q_off = np.arange(m + 1, dtype=np.int64)
        bad, final, sim, dense_out = _run_pooling(kernels, qtok, q_off, None, dtok, d_off, tau,
                                                  dense, lam)
    if bad:
        raise kernel_error(bad, "hierarchical cross-attention", query=q, chunks=dtok)
    return _shape_result(final, sim, dense_out, batched, details)
