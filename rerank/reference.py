"""Plain-numpy versions of every kernel: the fallback backend and the test oracle.

Each function reads like the math in DESIGN.md and favours clarity over speed. Inputs are assumed
valid (the public API validates once, at its boundary); computations run in float64 and results are
returned as float32.
"""
from __future__ import annotations

import numpy as np

from .quantization import quantize_query

#: Relative spread under which a z-score treats a signal as constant (all candidates tied).
ZSCORE_RTOL = 1e-6


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x − max) / Σ exp(x − max) along ``axis``; a slice that is entirely −inf gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isneginf(top), 0.0, top)
    e = np.exp(x - top)
    total = np.sum(e, axis=axis, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def causal_mask(n: int, m: int) -> np.ndarray:
    """Boolean (n, m) mask, True = keep, aligned bottom-right: query i sees keys j ≤ i + m − n."""
    return np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)


def additive_mask(mask: np.ndarray) -> np.ndarray:
    """A boolean mask (True = keep) as 0 / −inf; a float mask is returned as float64 unchanged."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return np.where(mask, 0.0, -np.inf)
    return mask.astype(np.float64)


def expand_kv_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """Repeat the head axis (−3) of k or v so h_kv heads serve h query heads (GQA / MQA)."""
    if x.ndim < 3 or x.shape[-3] == heads:
        return x
    return np.repeat(x, heads // x.shape[-3], axis=-3)


def attention_weights(q, k, *, mask=None, causal=False, scale=None) -> np.ndarray:
    """softmax(q·kᵀ·scale + mask) over the last axis, shape (..., n, m); scale defaults to 1/√d."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    if q.ndim >= 3:
        k = expand_kv_heads(k, q.shape[-3])
    logits = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    if mask is not None:
        logits = logits + additive_mask(mask)
    if causal:
        logits = np.where(causal_mask(q.shape[-2], k.shape[-2]), logits, -np.inf)
    return softmax(logits, axis=-1)


def attention(q, k, v, *, mask=None, causal=False, scale=None) -> np.ndarray:
    """Exact attention softmax(q·kᵀ·scale + mask)·v on (..., n, d) arrays.

    ``mask`` broadcasts to (..., n, m): boolean (True = keep) or additive float. With ``causal``
    query i sees keys j ≤ i + m − n. A query row whose keys are all masked returns zeros, never NaN.
    """
    w = attention_weights(q, k, mask=mask, causal=causal, scale=scale)
    v = np.asarray(v, dtype=np.float64)
    if np.ndim(q) >= 3:
        v = expand_kv_heads(v, np.shape(q)[-3])
    return np.matmul(w, v).astype(np.float32)


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x / ‖x‖ along ``axis`` (a zero vector stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def zscore(x: np.ndarray) -> np.ndarray:
    """(x − mean) / std over one query's candidates; 0 where their spread is 0 (e.g. one candidate)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    if std <= ZSCORE_RTOL * max(np.abs(x).max(initial=0.0), 1e-30):
        return np.zeros_like(x)
    return (x - x.mean()) / std


def memory_attention_scores(query, candidates, *, heads=1, tau=0.1, alpha=0.0):
    """Memory-attention rerank scores of one query over c candidates.

    q and every k_i are L2-normalised and split into ``heads`` equal parts; per head
    w_h(i) = softmax_i(q_h·k_{i,h}/τ) and score_i = Σ_h w_h(i)/h. With α > 0 the query is refined
    once, q' = normalise(q + α·Σ_i score_i·k_i), and the weights are recomputed with q'.
    Returns ``(scores (c,), weights (heads, c))``.
    """
    q = normalize(query)
    keys = normalize(candidates)
    c, d = keys.shape
    split_keys = keys.reshape(c, heads, d // heads)

    def head_weights(qv):
        logits = np.einsum("hd,chd->hc", qv.reshape(heads, d // heads), split_keys) / tau
        return softmax(logits, axis=-1)

    weights = head_weights(q)
    if alpha:
        refined = normalize(q + alpha * (weights.mean(axis=0) @ keys))
        weights = head_weights(refined)
    return weights.mean(axis=0).astype(np.float32), weights.astype(np.float32)


def _pooled_dense(query_tokens: np.ndarray, doc_tokens: np.ndarray, doc_offsets) -> np.ndarray:
    """Dense score from token vectors: cos(mean_t q̂_t, mean_j d̂_ij) per candidate i."""
    pooled_q = normalize(query_tokens.mean(axis=0))
    return np.array([normalize(doc_tokens[a:b].mean(axis=0)) @ pooled_q
                     for a, b in zip(doc_offsets[:-1], doc_offsets[1:])])


def late_interaction_scores(query_tokens, doc_tokens, doc_offsets, *, tau=None, idf=None,
                            dense=None, lam=1.0):
    """Late-interaction (cross-attention) rerank of c candidates given as ragged token matrices.

    Candidate i owns doc_tokens[doc_offsets[i]:doc_offsets[i+1]]; every token is L2-normalised.
    MaxSim_i = Σ_t idf_t·max_j(q̂_t·d̂_ij) / Σ_t idf_t; with ``tau`` the max is replaced by
    Σ_j softmax_j(q̂_t·d̂_ij/τ)·(q̂_t·d̂_ij). final_i = z(dense_i) + λ·z(MaxSim_i); ``dense``
    defaults to cos(mean q̂, mean d̂_i). Returns ``(final, maxsim, dense)``, each (c,).
    """
    q = normalize(query_tokens)
    docs = normalize(doc_tokens)
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    weights = np.ones(len(q)) if idf is None else np.asarray(idf, dtype=np.float64)
    sims = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        s = q @ docs[a:b].T                      # (t, tokens of candidate i)
        if tau is None:
            per_token = s.max(axis=1)
        else:
            per_token = np.sum(softmax(s / tau, axis=1) * s, axis=1)
        sims.append(weights @ per_token / weights.sum())
    sims = np.array(sims)
    dense = _pooled_dense(q, docs, offsets) if dense is None else np.asarray(dense, np.float64)
    final = zscore(dense) + lam * zscore(sims)
    return final.astype(np.float32), sims.astype(np.float32), dense.astype(np.float32)


def late_interaction_int8_scores(query_tokens, doc_codes, doc_offsets, *, tau=None, idf=None,
                                 dense=None, lam=1.0):
    """:func:`late_interaction_scores` as the int8 kernel computes it: document tokens are int8
    codes b (their scales cancel in the cosine) and query tokens are quantised to 7-bit codes
    a_t = quantize_query(q_t), so every similarity is cos(a_t, b_ij) and ``dense`` defaults to
    cos(mean â_t, mean b̂_ij). Returns ``(final, maxsim, dense)``, each (c,)."""
    a = quantize_query(query_tokens).codes.astype(np.float64)
    return late_interaction_scores(a, np.asarray(doc_codes, dtype=np.float64), doc_offsets,
                                   tau=tau, idf=idf, dense=dense, lam=lam)


def hierarchical_scores(query, chunks, chunk_offsets, *, tau=0.1, dense=None, lam=1.0):
    """Hierarchical cross-attention rerank: a document's chunks are pooled by the query.

    s_i = Σ_c softmax_c(q̂·ĉ/τ)·(q̂·ĉ) over candidate i's chunks; final_i = z(dense_i) + λ·z(s_i);
    ``dense`` defaults to cos(q̂, mean ĉ_i). Returns ``(final, pooled, dense, chunk_weights (C,))``.
    """
    q = normalize(query)
    parts = normalize(chunks)
    offsets = np.asarray(chunk_offsets, dtype=np.int64)
    pooled, chunk_weights = [], []
    for a, b in zip(offsets[:-1], offsets[1:]):
        s = parts[a:b] @ q
        w = softmax(s / tau)
        chunk_weights.append(w)
        pooled.append(w @ s)
    pooled = np.array(pooled)
    dense = _pooled_dense(q[None, :], parts, offsets) if dense is None else np.asarray(dense, np.float64)
    final = zscore(dense) + lam * zscore(pooled)
    return (final.astype(np.float32), pooled.astype(np.float32), dense.astype(np.float32),
            np.concatenate(chunk_weights).astype(np.float32))
