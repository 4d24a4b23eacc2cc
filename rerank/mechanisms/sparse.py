"""Sparse attention family: each query attends to the keys of a fixed pattern S(i) only,

    out_i = Σ_{j ∈ S(i)} softmax_j(q_i·k_j·scale + mask_ij)·v_j     (no allowed key → zeros),

computed from the pattern's CSR form (each query's key list) by a compiled kernel in O(nnz·d), or
by numpy on the numpy backend. ``causal`` and a user mask are ANDed with every pattern (a float
mask also adds its values to the allowed scores). Patterns are written in key positions, queries
sitting at p_i = i + m − n (see :mod:`rerank.masking`), and are cached per shape and parameters.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections import OrderedDict

import numpy as np

from .. import backend, masking
from ..attention import attention, prepare
from ..validation import check_finite, kernel_error, positive_int
from .base import Mechanism, MechanismSpec

#: Queries per work item of the compiled sparse kernel.
BLOCK_ROWS = 64
#: Gathered (entries × features) per step of the numpy path, bounding its memory.
NUMPY_STEP = 1 << 22
#: Patterns (CSR) kept per mechanism instance.
CACHE_SIZE = 16


# ---------------------------------------------------------------------------------------------
# attention over a CSR pattern

def check_csr(row_ptr: np.ndarray, cols: np.ndarray, batch: int, heads: int, n: int,
              m: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated int64 CSR: row_ptr (P, n+1) with P ∈ {1, heads, batch·heads}, non-decreasing
    within [0, nnz]; cols (nnz,) in [0, m). Anything else would read out of bounds."""
    row_ptr = np.ascontiguousarray(np.atleast_2d(row_ptr), dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    if row_ptr.ndim != 2 or row_ptr.shape[1] != n + 1 or \
            row_ptr.shape[0] not in (1, heads, batch * heads):
        raise ValueError(f"row_ptr must have shape (P, n+1 = {n + 1}) with P in "
                         f"{{1, {heads}, {batch * heads}}}; got {row_ptr.shape}")
    if cols.ndim != 1:
        raise ValueError(f"cols must be 1-D; got shape {cols.shape}")
    if (np.diff(row_ptr, axis=1) < 0).any() or row_ptr.min() < 0 or row_ptr.max() > cols.size:
        raise ValueError(f"row_ptr must be non-decreasing within [0, nnz = {cols.size}]")
    if cols.size and (cols.min() < 0 or cols.max() >= m):
        raise ValueError(f"cols must lie in [0, m = {m}); got [{cols.min()}, {cols.max()}]")
    return row_ptr, cols


def _numpy_item(q, k, v, ptr, cols, bias, scale) -> np.ndarray:
    """One (batch, head): CSR attention in float64, a block of rows at a time."""
    n, dv = q.shape[0], v.shape[1]
    out = np.zeros((n, dv))
    width = max(q.shape[1], dv, 1)
    start = 0
    while start < n:
        # rows start … stop−1 hold at most NUMPY_STEP / width entries (at least one row)
        stop = int(np.searchsorted(ptr, ptr[start] + NUMPY_STEP // width, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        counts = np.diff(ptr[start:stop + 1])
        rows = np.repeat(np.arange(start, stop), counts)
        keys = cols[ptr[start]:ptr[stop]]
        if keys.size:
            s = np.einsum("ed,ed->e", q[rows], k[keys]) * scale
            if not _fits_float32(s):
                raise FloatingPointError
            if bias is not None:
                s = s + bias[rows, keys]
            present = counts > 0
            first = (ptr[start:stop] - ptr[start])[present]
            top = np.maximum.reduceat(s, first)
            e = np.exp(s - np.repeat(top, counts[present]))
            total = np.add.reduceat(e, first)
            acc = np.add.reduceat(e[:, None] * v[keys], first, axis=0)
            out[np.arange(start, stop)[present]] = acc / total[:, None]
        start = stop
    return out


def _csr_numpy(q4, k4, v4, row_ptr, cols, mask4, scale) -> np.ndarray:
    b, h, n, _ = q4.shape
    group = h // k4.shape[1]
    out = np.empty((b, h, n, v4.shape[3]), dtype=np.float32)
    for bi in range(b):
        for hi in range(h):
            g = hi // group
            bias = None if mask4 is None else mask4[bi, hi].astype(np.float64)
            try:
                out[bi, hi] = _numpy_item(
                    q4[bi, hi].astype(np.float64), k4[bi, g].astype(np.float64),
                    v4[bi, g].astype(np.float64), row_ptr[(bi * h + hi) % len(row_ptr)], cols,
                    bias, scale)
            except FloatingPointError:
                raise kernel_error(1, "sparse attention", q=q4, k=k4, v=v4) from None
    return out


def csr_attention(q4, k4, v4, row_ptr, cols, mask4, scale) -> np.ndarray:
    """Attention of validated 4-D float32 inputs over a CSR pattern (see :func:`check_csr`; the
    pattern of item (b, h) is row_ptr[(b·H + h) mod P]); compiled kernel or numpy."""
    b, h, n, _ = q4.shape
    row_ptr, cols = check_csr(row_ptr, cols, b, h, n, k4.shape[2])
    kernels = backend.compiled_kernels()
    if kernels is None:
        out = _csr_numpy(q4, k4, v4, row_ptr, cols, mask4, scale)
        check_finite("sparse attention output (overflow: inputs too large)", out)
        return out
    out = np.empty((b, h, n, v4.shape[3]), dtype=np.float32)
    bad = kernels.sparse_attention(q4, k4, v4, out, row_ptr, cols, mask4, scale,
                                   backend.get_num_threads(), BLOCK_ROWS)
    if bad:
        raise kernel_error(bad, "sparse attention", q=q4, k=k4, v=v4)
    return out


def validated(q, k, v, mask=None, scale=None):
    """:func:`rerank.attention.prepare` plus the finiteness check of q, k and v (the sparse kernel
    never reads the keys outside the pattern, so it could not tell)."""
    q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
    for name, arr in (("q", q4), ("k", k4), ("v", v4)):
        check_finite(name, arr)
    return q4, k4, v4, mask4, scale, out_shape


def _compact(mask4: np.ndarray) -> np.ndarray:
    """A broadcast (b, h, n, m) view reduced to size 1 along its zero-stride (broadcast) axes."""
    index = tuple(slice(0, 1) if stride == 0 else slice(None) for stride in mask4.strides)
    return mask4[index]


def allowed_stack(pattern, mask4, causal: bool, batch: int, heads: int, n: int,
                  m: int) -> np.ndarray:
    """pattern ∧ causal ∧ (mask > −inf) as a (P, n, m) stack, P ∈ {1, heads, batch·heads}."""
    pattern = np.asarray(pattern)
    if pattern.dtype != np.bool_:
        raise TypeError(f"pattern must be boolean (True = attend); got dtype {pattern.dtype}")
    if not 2 <= pattern.ndim <= 4:
        raise ValueError(f"pattern must be (n, m), (h, n, m) or (b, h, n, m); got {pattern.shape}")
    pattern = pattern.reshape((1,) * (4 - pattern.ndim) + pattern.shape)
    np.broadcast_to(pattern, (batch, heads, n, m))      # raises ValueError when it does not fit
    parts = [pattern]
    if causal:
        parts.append(masking.causal(n, m))
    if mask4 is not None:
        parts.append(_compact(mask4) > -np.inf)
    allowed = masking.combine(*parts)
    allowed = np.broadcast_to(allowed, (allowed.shape[0], allowed.shape[1], n, m))
    if allowed.shape[0] > 1:
        return np.broadcast_to(allowed, (batch, heads, n, m)).reshape(batch * heads, n, m)
    return allowed.reshape(-1, n, m)


def sparse_attention(q, k, v, pattern, *, mask=None, causal=False, scale=None) -> np.ndarray:
    """out_i = Σ_{j ∈ S(i)} softmax_j(q_i·k_j·scale + mask_ij)·v_j for a boolean ``pattern``
    (True = attend) that broadcasts to (b, h, n, m), ANDed with ``causal`` and ``mask``."""
    q4, k4, v4, mask4, scale, out_shape = validated(q, k, v, mask, scale)
    b, h, n, _ = q4.shape
    m = k4.shape[2]
    try:
        stack = allowed_stack(pattern, mask4, bool(causal), b, h, n, m)
    except ValueError:
        raise ValueError(f"pattern of shape {np.shape(pattern)} does not broadcast to "
                         f"{(b, h, n, m)}") from None
    row_ptr, cols = masking.to_csr(stack)
    return csr_attention(q4, k4, v4, row_ptr, cols, mask4, scale).reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# patterns as key lists: built in O(nnz), never as a dense (n, m) mask

def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row r the integers lo[r] … hi[r] − 1 (none when hi ≤ lo), as (rows, values)."""
    lengths = np.maximum(hi - lo, 0)
    rows = np.repeat(np.arange(lo.size), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths - lo, lengths)
    return rows, np.arange(rows.size, dtype=np.int64) - starts


def _window(pos: np.ndarray, m: int, w: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Keys p + t·step for |t| ≤ w inside [0, m) (a sliding window, dilated when step > 1)."""
    lo = np.maximum(-w, -(pos // step))                   # smallest t with p + t·step ≥ 0
    hi = np.minimum(w, (m - 1 - pos) // step) + 1         # past the largest t with p + t·step < m
    rows, t = _ranges(lo, hi)
    return rows, pos[rows] + t * step


def _progression(pos: np.ndarray, m: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys j in [0, m) with (p − j) mod stride = 0."""
    first = pos % stride
    rows, t = _ranges(np.zeros_like(first), -(-(m - first) // stride))
    return rows, first[rows] + t * stride


def _columns(n: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same keys ``cols`` for each of n rows."""
    return np.repeat(np.arange(n), cols.size), np.tile(cols, n)


def _full_rows(rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Every key for the given rows."""
    r, j = _ranges(np.zeros_like(rows), np.full_like(rows, m))
    return rows[r], j


def _union(*parts) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([p[0] for p in parts], dtype=np.int64),
            np.concatenate([p[1] for p in parts], dtype=np.int64))


def _to_csr(patterns, pos: np.ndarray, m: int, causal: bool):
    """(row_ptr (P, n+1), cols) from P (rows, keys) lists: each row's keys sorted and unique,
    keys after the query's position dropped when causal."""
    n = pos.size
    counts, cols = [], []
    for rows, keys in patterns:
        if causal:
            keep = keys <= pos[rows]
            rows, keys = rows[keep], keys[keep]
        flat = rows.astype(np.int64) * m + keys
        if flat.size > 1 and not (flat[1:] > flat[:-1]).all():      # else sorted and unique
            flat.sort()
            flat = flat[np.concatenate(([True], flat[1:] != flat[:-1]))]
        counts.append(np.bincount(flat // m, minlength=n))
        cols.append(flat % m)
    ends = np.concatenate(([0], np.cumsum(np.concatenate(counts), dtype=np.int64)))
    row_ptr = np.stack([ends[p * n:(p + 1) * n + 1] for p in range(len(patterns))])
    return row_ptr, np.concatenate(cols).astype(np.int64)


def _sample(rng, count: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """min(k, count[r]) distinct integers drawn uniformly from [0, count[r]) for each row r
    (Floyd's algorithm, vectorised over rows): (rows, values)."""
    take = np.minimum(k, count)
    chosen = np.full((count.size, max(k, 1)), -1, dtype=np.int64)
    for step in range(k):
        active = step < take
        top = count - take + step                          # Floyd: j = N − k + step
        t = np.floor(rng.random(count.size) * (top + 1)).astype(np.int64)
        seen = (chosen[:, :step] == t[:, None]).any(axis=1)
        chosen[:, step] = np.where(active, np.where(seen, top, t), -1)
    rows, cols = np.nonzero(chosen >= 0)
    return rows, chosen[rows, cols]


class _PatternMechanism(Mechanism):
    """A mechanism whose forward is sparse attention over its pattern; subclasses implement
    ``_keys``: the pattern as (rows, keys) lists, one per head pattern (before causal; it may
    depend on causal where sampling must avoid masked keys). The CSR is built in O(nnz) and
    cached per (n, m, heads, causal)."""

    #: Whether the pattern needs queries at key positions ≥ 0 (n ≤ m).
    needs_n_le_m = False

    def pattern(self, n: int, m: int, *, heads: int = 1, causal: bool = False) -> np.ndarray:
        """The boolean pattern (n, m), or (heads, n, m) when heads differ, ANDed with causal."""
        row_ptr, cols = self._csr(n, m, heads, bool(causal))
        mask = masking.from_csr(row_ptr, cols, m)
        return mask[0] if mask.shape[0] == 1 else mask

    @abstractmethod
    def _keys(self, pos: np.ndarray, m: int, heads: int, causal: bool) -> list:
        """Per head pattern, the allowed keys of the queries at key positions ``pos``."""

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        if self.needs_n_le_m and np.ndim(q) >= 2 and np.ndim(k) >= 2 \
                and np.shape(q)[-2] > np.shape(k)[-2]:
            reasons.append(f"{self.spec.name} places queries at the last n of the m key "
                           f"positions and needs n ≤ m; got n = {np.shape(q)[-2]}, "
                           f"m = {np.shape(k)[-2]}")
        return reasons

    def _csr(self, n: int, m: int, heads: int, causal: bool):
        n, m, heads = positive_int("n", n), positive_int("m", m), positive_int("heads", heads)
        if self.needs_n_le_m and n > m:
            raise ValueError(f"{self.spec.name} needs n ≤ m; got n = {n}, m = {m}")
        cache = self.__dict__.setdefault("_csr_cache", OrderedDict())
        key = (n, m, heads, causal)
        if key not in cache:
            pos = np.arange(n, dtype=np.int64) + (m - n)
            cache[key] = _to_csr(self._keys(pos, m, heads, causal), pos, m, causal)
            if len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = validated(q, k, v, mask, scale)
        b, h, n, _ = q4.shape
        m = k4.shape[2]
        row_ptr, cols = self._csr(n, m, h, bool(causal))
        if mask4 is not None:
            pattern = masking.from_csr(row_ptr, cols, m)[None]
            row_ptr, cols = masking.to_csr(allowed_stack(pattern, mask4, False, b, h, n, m))
        return csr_attention(q4, k4, v4, row_ptr, cols, mask4, scale).reshape(out_shape)


def _check_heads_mode(mode: str) -> str:
    if mode not in ("union", "alternate"):
        raise ValueError(f"heads must be 'union' or 'alternate'; got {mode!r}")
    return mode


def _two_patterns(first, second, heads: int, mode: str) -> list:
    """Child et al.'s factorised heads: the union A1 ∪ A2 in every head ("merged head"), or A1 in
    even heads and A2 in odd heads ("alternate")."""
    if mode == "union":
        return [_union(first, second)]
    return [first if h % 2 == 0 else second for h in range(heads)]


class BigBirdAttention(_PatternMechanism):
    """BigBird-ITC (blocks of b positions): block i attends to blocks |i − j| ≤ window, to the
    global blocks (which attend to all), and to ``random`` seeded random blocks;
    out_i = Σ_{j ∈ S(i)} softmax(q_i·k_j/√d)·v_j."""

    spec = MechanismSpec(
        name="bigbird-attention", category="sparse", complexity="O(n)", use_case="Long documents",
        paper="Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences (arXiv:2007.14062)",
        compiled=True,
        notes="ITC block pattern as in the reference implementation: the first and last blocks "
              "global, a 3-block window, r = 3 random blocks per query block drawn once from "
              "the seed (the same in every head) among the blocks not yet attended (only past "
              "blocks when causal); compiled CSR kernel, O(nnz·d)")
    needs_n_le_m = True

    def __init__(self, *, block=64, window=1, global_blocks=(0, -1), random=3, seed=0):
        self.block = positive_int("block", block)
        self.window = _nonnegative("window", window)
        self.global_blocks = _int_tuple("global_blocks", global_blocks)
        self.random = _nonnegative("random", random)
        self.seed = _nonnegative("seed", seed)

    def layout(self, m: int, *, causal: bool = False) -> np.ndarray:
        """The block layout over the ⌈m / block⌉ blocks of key positions."""
        return masking.bigbird_layout(
            math.ceil(m / self.block), window=self.window, global_blocks=self.global_blocks,
            random=self.random, seed=self.seed, causal=causal)

    def _keys(self, pos, m, heads, causal):
        layout = self.layout(m, causal=causal)
        query_blocks = pos // self.block
        rows, keys = [], []
        for qb in np.unique(query_blocks):
            members = np.flatnonzero(query_blocks == qb)
            key_blocks = np.flatnonzero(layout[qb])
            cols = (key_blocks[:, None] * self.block + np.arange(self.block)).ravel()
            cols = cols[cols < m]
            rows.append(np.repeat(members, cols.size))
            keys.append(np.tile(cols, members.size))
        return [_union(*zip(rows, keys))]


class LongformerAttention(_PatternMechanism):
    """Longformer: a (dilated) sliding window |p_i − j| ≤ w·δ, (p_i − j) mod δ = 0, plus global
    tokens that attend to and are attended by every position; global queries may use their own
    projections: out_g = softmax((q_g W_Q^g)(k W_K^g)ᵀ/√d)·(v W_V^g)."""

    spec = MechanismSpec(
        name="longformer-attention", category="sparse", complexity="O(n)",
        use_case="Long sequences",
        paper="Beltagy et al. 2020, Longformer: The Long-Document Transformer (arXiv:2004.05150)",
        compiled=True,
        notes="window w on each side (512 in all by default), optional dilation, global tokens at "
              "the given positions (default the first); global_weights = (W_Q^g, W_K^g, W_V^g) "
              "give the global rows their own projections (identity when omitted); compiled CSR "
              "kernel, global rows through the compiled exact kernel")

    def __init__(self, *, window=256, dilation=1, global_tokens=(0,), global_weights=None):
        self.window = _nonnegative("window", window)
        self.dilation = positive_int("dilation", dilation)
        self.global_tokens = _int_tuple("global_tokens", global_tokens)
        self.global_weights = _global_weights(global_weights)

    def _global_positions(self, m: int) -> np.ndarray:
        return masking._indices("global_tokens", self.global_tokens, m)

    def _keys(self, pos, m, heads, causal):
        glob = self._global_positions(m)
        return [_union(_window(pos, m, self.window, self.dilation), _columns(pos.size, glob),
                       _full_rows(np.flatnonzero(np.isin(pos, glob)), m))]

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        out = super()._forward(q, k, v, mask=mask, causal=causal, scale=scale)
        if self.global_weights is None or not self.global_tokens:
            return out
        return self._global_rows(out, q, k, v, mask, causal, scale)

    def _global_rows(self, out, q, k, v, mask, causal, scale):
        """Replace the global queries' rows by full attention through the global projections."""
        q4, k4, v4, mask4, scale, _ = validated(q, k, v, mask, scale)
        n, m = q4.shape[2], k4.shape[2]
        wq, wk, wv = self.global_weights
        _check_square("global_weights[0] (W_Q^g)", wq, q4.shape[3])
        _check_square("global_weights[1] (W_K^g)", wk, k4.shape[3])
        _check_square("global_weights[2] (W_V^g)", wv, v4.shape[3])
        rows = self._global_positions(m) - (m - n)
        rows = rows[(rows >= 0) & (rows < n)]
        if not rows.size:
            return out
        keep = masking.causal(n, m)[rows] if causal else np.ones((rows.size, m), bool)
        bias = np.where(keep, np.float32(0), np.float32(-np.inf))
        if mask4 is not None:
            bias = bias + mask4[:, :, rows, :]
        glob = attention(q4[:, :, rows, :] @ wq, k4 @ wk, v4 @ wv, mask=bias, scale=scale)
        out4 = out.reshape(q4.shape[:3] + (v4.shape[3],)).copy()
        out4[:, :, rows, :] = glob
        return out4.reshape(out.shape)


class LocalAttention(_PatternMechanism):
    """Local attention: query i attends to the keys within ±w of its position (the w previous
    keys and itself when causal): out_i = Σ_{|p_i − j| ≤ w} softmax(q_i·k_j/√d)·v_j."""

    spec = MechanismSpec(
        name="local-attention", category="sparse", complexity="O(n·w)", use_case="Local context",
        paper="Luong et al. 2015, Effective Approaches to Attention-based Neural Machine "
              "Translation (arXiv:1508.04025); Parmar et al. 2018, Image Transformer "
              "(arXiv:1802.05751)",
        compiled=True,
        notes="fixed window centred on the query's position (Luong's local-m), 2w+1 keys; "
              "compiled CSR kernel, O(n·w·d)")

    def __init__(self, *, window=64):
        self.window = _nonnegative("window", window)

    def _keys(self, pos, m, heads, causal):
        return [_window(pos, m, self.window)]


class StridedAttention(_PatternMechanism):
    """Sparse Transformer "strided" pattern with stride l: A1 = {j : |p_i − j| ≤ l} (the previous
    l positions when causal, as in the paper) and A2 = {j : (p_i − j) mod l = 0}; heads attend to
    A1 ∪ A2 ("union", the paper's merged head) or alternate A1 / A2 ("alternate")."""

    spec = MechanismSpec(
        name="strided-attention", category="sparse", complexity="O(n·s)",
        use_case="Structured data",
        paper="Child et al. 2019, Generating Long Sequences with Sparse Transformers "
              "(arXiv:1904.10509)",
        compiled=True,
        notes="heads='union' (default: every head attends to A1 ∪ A2) or 'alternate' (even heads "
              "A1, odd heads A2); non-causal use mirrors A1 forward; compiled CSR kernel")

    def __init__(self, *, stride=128, heads="union"):
        self.stride = positive_int("stride", stride)
        self.heads = _check_heads_mode(heads)

    def _keys(self, pos, m, heads, causal):
        return _two_patterns(_window(pos, m, self.stride), _progression(pos, m, self.stride),
                             heads, self.heads)


class SparseTransformerAttention(_PatternMechanism):
    """Sparse Transformer "fixed" pattern: A1 = {j : ⌊j/l⌋ = ⌊p_i/l⌋} (the query's block) and
    A2 = {j : j mod l ≥ l − c} (the last c "summary" positions of every block); heads attend to
    A1 ∪ A2 ("union") or alternate A1 / A2 ("alternate")."""

    spec = MechanismSpec(
        name="sparse-transformer-attention", category="sparse", complexity="O(n√n)",
        use_case="Images/sequences",
        paper="Child et al. 2019, Generating Long Sequences with Sparse Transformers "
              "(arXiv:1904.10509)",
        compiled=True,
        notes="fixed pattern, block l = 128 and c = 8 summary positions by default (l ≈ √n "
              "gives O(n√n)); heads='union' or 'alternate'; compiled CSR kernel")

    def __init__(self, *, block=128, summary=8, heads="union"):
        self.block = positive_int("block", block)
        self.summary = positive_int("summary", summary)
        if self.summary > self.block:
            raise ValueError(f"summary ({summary}) must not exceed block ({block})")
        self.heads = _check_heads_mode(heads)

    def _keys(self, pos, m, heads, causal):
        start = pos // self.block * self.block
        own_block = _ranges(np.clip(start, 0, m), np.clip(start + self.block, 0, m))
        keys = np.arange(m)
        summaries = keys[keys % self.block >= self.block - self.summary]
        if causal:     # only the summaries before the query: O(n·√n) entries, not O(n·m/l·c)
            rows, cols = _ranges(np.zeros_like(pos), np.searchsorted(summaries, pos, "right"))
            summary = rows, summaries[cols]
        else:
            summary = _columns(pos.size, summaries)
        return _two_patterns(own_block, summary, heads, self.heads)


class RandomAttention(_PatternMechanism):
    """Random sparse attention: each query attends to k keys drawn uniformly without replacement
    (seeded; among the keys causal allows) and, with include_self, to its own position:
    out_i = Σ_{j ∈ R(i)} softmax(q_i·k_j/√d)·v_j."""

    spec = MechanismSpec(
        name="random-attention", category="sparse", complexity="O(n·k)", use_case="Approximation",
        paper="Zaheer et al. 2020, Big Bird (arXiv:2007.14062), its random component; cf. "
              "Roy et al. 2021, Routing Transformer (arXiv:2003.05997)",
        compiled=True,
        notes="keys drawn per query by Floyd's algorithm from np.random.default_rng(seed) for "
              "each (n, m, causal): the same in every head and batch item; compiled CSR kernel")

    def __init__(self, *, num_keys=32, include_self=True, seed=0):
        self.num_keys = _nonnegative("num_keys", num_keys)
        self.include_self = bool(include_self)
        self.seed = _nonnegative("seed", seed)

    def _keys(self, pos, m, heads, causal):
        limit = np.clip(pos + 1, 0, m) if causal else np.full_like(pos, m)
        own = (pos >= 0) & (pos < limit)
        skip_self = own if self.include_self else np.zeros_like(own)
        rows, keys = _sample(np.random.default_rng(self.seed), limit - skip_self, self.num_keys)
        keys = keys + (skip_self[rows] & (keys >= pos[rows]))   # step over the query itself
        selves = np.flatnonzero(skip_self)
        return [_union((rows, keys), (selves, pos[selves]))]


# ---------------------------------------------------------------------------------------------
# star and blockwise

class StarAttention(Mechanism):
    """Star-Transformer: the n positions are satellites, a relay s starts as their mean. Each round,
    satellite i attends to its ring neighbours' states h_{i−1}, h_i, h_{i+1}, its embedding e_i
    (k_i, v_i) and the relay; then the relay attends to itself and the new satellite states.
    Between rounds states pass through LayerNorm(ReLU(·)) and the projections W_Q, W_K, W_V."""

    spec = MechanismSpec(
        name="star-attention", category="sparse", complexity="O(n·h)",
        use_case="Swarm coordination",
        paper="Guo et al. 2019, Star-Transformer (arXiv:1902.09113)",
        compiled=True,
        notes="forward(q, k, v): satellites' round-0 queries/keys/values are q, k, v, the relay's "
              "their means; each satellite sees 5 keys (so O(n) per round), the relay n + 1; "
              "returns the satellites' attention output of the last of `cycles` rounds (before "
              "the LayerNorm(ReLU) that starts the next round). No wrap-around of the ring "
              "unless wrap=True; W_Q, W_K, W_V shared by rounds (identity when omitted, which "
              "needs d = dv when cycles > 1). Satellites through the compiled CSR kernel, the "
              "relay through the compiled exact kernel")
    supports_causal = False
    supports_mask = False

    def __init__(self, *, cycles=1, wrap=False, wq=None, wk=None, wv=None):
        self.cycles = positive_int("cycles", cycles)
        self.wrap = bool(wrap)
        self.wq, self.wk, self.wv = (_optional_matrix(name, w) for name, w in
                                     (("wq", wq), ("wk", wk), ("wv", wv)))

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        if np.ndim(q) >= 2 and np.ndim(k) >= 2 and np.shape(q)[-2] != np.shape(k)[-2]:
            reasons.append(f"{self.spec.name}: the positions are both the satellites (queries) "
                           f"and their keys, so n must equal m; got n = {np.shape(q)[-2]}, "
                           f"m = {np.shape(k)[-2]}")
        return reasons

    def pattern(self, n: int, m: int | None = None, *, heads: int = 1,
                causal: bool = False) -> np.ndarray:
        """(n, 2n + 1) over the keys [satellite states; embeddings; relay] of every round."""
        n = positive_int("n", n)
        return masking.from_csr(*self._ring(n), 2 * n + 1)

    def _ring(self, n: int):
        cache = self.__dict__.setdefault("_ring_cache", {})
        if n not in cache:
            rows = []
            for i in range(n):
                near = {i, i - 1, i + 1}
                near = {j % n for j in near} if self.wrap else {j for j in near if 0 <= j < n}
                rows.append(sorted(near) + [n + i, 2 * n])
            row_ptr = np.concatenate(([0], np.cumsum([len(r) for r in rows]))).astype(np.int64)
            cache[n] = row_ptr, np.concatenate(rows).astype(np.int64)
        return cache[n]

    def _weights(self, d: int, dv: int):
        if self.cycles > 1 and self.wq is None and d != dv:
            raise ValueError(f"star-attention with cycles > 1 needs d = dv (identity projections) "
                             f"or wq/wk of shape (dv, d); got d = {d}, dv = {dv}")
        wq = np.eye(dv, d, dtype=np.float32) if self.wq is None else self.wq
        wk = np.eye(dv, d, dtype=np.float32) if self.wk is None else self.wk
        wv = np.eye(dv, dtype=np.float32) if self.wv is None else self.wv
        for name, w, shape in (("wq", wq, (dv, d)), ("wk", wk, (dv, d)), ("wv", wv, (dv, dv))):
            if w.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (state dv → {shape[1]}); "
                                 f"got {w.shape}")
        return wq, wk, wv

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, _, scale, out_shape = validated(q, k, v, None, scale)
        heads, n, d, dv = q4.shape[1], q4.shape[2], q4.shape[3], v4.shape[3]
        wq, wk, wv = self._weights(d, dv)
        group = heads // k4.shape[1]
        emb_k, emb_v = np.repeat(k4, group, axis=1), np.repeat(v4, group, axis=1)
        row_ptr, cols = self._ring(n)
        sat_q, sat_k, sat_v = q4, emb_k, emb_v
        relay_q, relay_k, relay_v = (x.mean(axis=2, keepdims=True) for x in (q4, emb_k, emb_v))
        for cycle in range(self.cycles):
            keys = np.concatenate([sat_k, emb_k, relay_k], axis=2)
            values = np.concatenate([sat_v, emb_v, relay_v], axis=2)
            att = csr_attention(sat_q, keys, values, row_ptr, cols, None, scale)
            if cycle == self.cycles - 1:
                return att.reshape(out_shape)
            state = _layer_norm_relu(att)
            sat_q, sat_k, sat_v = state @ wq, state @ wk, state @ wv
            relay = attention(relay_q, np.concatenate([relay_k, sat_k], axis=2),
                              np.concatenate([relay_v, sat_v], axis=2), scale=scale)
            relay = _layer_norm_relu(relay)
            relay_q, relay_k, relay_v = relay @ wq, relay @ wk, relay @ wv


class BlockwiseAttention(Mechanism):
    """Exact softmax(q·kᵀ/√d + mask)·v computed in chunks (Rabe & Staats): for each chunk of
    queries, key chunks update a running max m, sum l and output o (o ← o·e^(m−m') + e^(s−m')·v),
    so memory is O(query_chunk·key_chunk), never O(n·m)."""

    spec = MechanismSpec(
        name="blockwise-attention", category="sparse", complexity="O(n²) chunked",
        use_case="Memory efficient",
        paper="Rabe & Staats 2021, Self-attention Does Not Need O(n²) Memory (arXiv:2112.05682)",
        compiled=True,
        notes="same function as flash-attention-v2, other chunking: the paper's query chunks of "
              "1024 and key chunks of 4096 (flash-attention-v2: 256 × 512 cache-sized tiles), "
              "scratch query_chunk·(key_chunk + dv) floats per thread; compiled tiled "
              "online-softmax kernel, numpy chunk loop on the numpy backend")

    def __init__(self, *, query_chunk=1024, key_chunk=4096):
        self.query_chunk = positive_int("query_chunk", query_chunk)
        self.key_chunk = positive_int("key_chunk", key_chunk)

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = validated(q, k, v, mask, scale)
        kernels = backend.compiled_kernels()
        if kernels is None:
            out = _blockwise_numpy(q4, k4, v4, mask4, bool(causal), scale, self.query_chunk,
                                   self.key_chunk)
            check_finite("attention output (overflow: inputs too large)", out)
            return out.reshape(out_shape)
        b, h, n, d = q4.shape
        m, dv = k4.shape[2], v4.shape[3]
        out = np.empty((b, h, n, dv), dtype=np.float32)
        block_q, block_k = min(n, self.query_chunk), min(m, self.key_chunk)
        bad = backend.call_holding_blas(
            block_q, block_k, max(d, dv), kernels.attention, q4, k4, v4, out, mask4,
            bool(causal), scale, backend.get_num_threads(), block_q, block_k)
        if bad:
            raise kernel_error(bad, "blockwise attention", q=q4, k=k4, v=v4)
        return out.reshape(out_shape)


def _blockwise_numpy(q4, k4, v4, mask4, causal, scale, query_chunk, key_chunk):
    """Rabe & Staats' chunked algorithm in numpy (float64): running max, sum and output per query
    chunk, one key chunk at a time."""
    b, h, n, _ = q4.shape
    m = k4.shape[2]
    group = h // k4.shape[1]
    k = np.repeat(k4, group, axis=1).astype(np.float64)
    v = np.repeat(v4, group, axis=1).astype(np.float64)
    out = np.empty((b, h, n, v4.shape[3]), dtype=np.float32)
    keep = masking.causal(n, m) if causal else None
    for i0 in range(0, n, query_chunk):
        i1 = min(i0 + query_chunk, n)
        qc = q4[:, :, i0:i1].astype(np.float64)
        top = np.full((b, h, i1 - i0, 1), -np.inf)
        total = np.zeros((b, h, i1 - i0, 1))
        acc = np.zeros((b, h, i1 - i0, v.shape[3]))
        for j0 in range(0, m, key_chunk):
            j1 = min(j0 + key_chunk, m)
            s = qc @ np.swapaxes(k[:, :, j0:j1], -1, -2) * scale
            if not _fits_float32(s):
                raise kernel_error(1, "blockwise attention", q=q4, k=k4, v=v4)
            if mask4 is not None:
                s = s + mask4[:, :, i0:i1, j0:j1]
            if keep is not None:
                s = np.where(keep[i0:i1, j0:j1], s, -np.inf)
            new_top = np.maximum(top, s.max(axis=-1, keepdims=True))
            safe = np.where(np.isneginf(new_top), 0.0, new_top)
            corr = np.exp(top - safe)
            p = np.exp(s - safe)
            total = total * corr + p.sum(axis=-1, keepdims=True)
            acc = acc * corr + p @ v[:, :, j0:j1]
            top = new_top
        out[:, :, i0:i1] = np.divide(acc, total, out=np.zeros_like(acc), where=total > 0)
    return out


# ---------------------------------------------------------------------------------------------
# small helpers

def _int_tuple(name: str, values) -> tuple[int, ...]:
    arr = np.atleast_1d(np.asarray(() if values is None else values))
    if arr.size and (arr.dtype.kind not in "iu" or arr.ndim != 1):
        raise ValueError(f"{name} must be a sequence of integer positions; got {values!r}")
    return tuple(int(x) for x in arr)


def _fits_float32(scores: np.ndarray) -> bool:
    """Float64 scores that the float32 kernels would also hold (finite, within float32 range)."""
    return bool(np.all(np.abs(scores) <= np.finfo(np.float32).max))


def _nonnegative(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
    return int(value)


def _optional_matrix(name: str, w):
    if w is None:
        return None
    arr = np.asarray(w)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point matrix; got dtype {arr.dtype}")
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a finite 2-D matrix; got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _global_weights(weights):
    if weights is None:
        return None
    if not isinstance(weights, (tuple, list)) or len(weights) != 3:
        raise ValueError("global_weights must be a triple (W_Q^g, W_K^g, W_V^g) of square matrices")
    return tuple(_optional_matrix(f"global_weights[{i}]", w) for i, w in enumerate(weights))


def _check_square(name: str, w: np.ndarray, size: int) -> None:
    if w.shape != (size, size):
        raise ValueError(f"{name} must have shape ({size}, {size}); got {w.shape}")


def _layer_norm_relu(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """LayerNorm(ReLU(x)) over the last axis, without gain or bias (Star-Transformer's update)."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    x = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return x.astype(np.float32)


MECHANISMS = (BigBirdAttention, LongformerAttention, LocalAttention, StridedAttention,
              SparseTransformerAttention, StarAttention, BlockwiseAttention, RandomAttention)
