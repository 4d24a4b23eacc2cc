"""Multi-head attention family: per-head projections around exact attention, with rotary or ALiBi
positions, shared key/value heads (GQA, MQA), differential maps, or a gated mixture of heads.

Inputs are already split into heads: q (n, d), (h, n, d) or (b, h, n, d); k, v with h_kv heads.
Every mechanism here takes per-head projections W_q (h, d, d), W_k (h_kv, d, d), W_v (h_kv, dv, dv)
— or one (d, d) matrix shared by all heads — and an output projection W_o (h·dv, h·dv) applied to
the concatenated heads. Omitted projections are the identity. The attention core runs through
:func:`rerank.attention` (the compiled FlashAttention kernel when that backend is active).
"""
from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from .. import position
from ..attention import attention, prepare
from ..reference import softmax
from ..validation import as_float32, check_finite, finite_float, positive_float, positive_int
from .base import Mechanism, MechanismSpec

CATEGORY = "multi-head"

#: Differential Transformer's λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) for layer l = 1.
LAMBDA_INIT = 0.8 - 0.6 * math.exp(-0.3 * 0)
#: The paper's RMSNorm epsilon for the per-head normalisation.
HEAD_NORM_EPS = 1e-5
#: Standard deviation of the seeded λ vectors (the paper's initialisation).
LAMBDA_VECTOR_STD = 0.1


# --------------------------------------------------------------------------------------------
# weights

def _weight(name: str, w, ndims: tuple[int, ...]) -> np.ndarray | None:
    """A given weight as a finite C-contiguous float32 array (None stays None)."""
    if w is None:
        return None
    arr = as_float32(name, w, ndims)
    check_finite(name, arr)
    return arr


def _projection(name: str, w) -> np.ndarray | None:
    """A square projection: (a, a) shared by every head, or (heads, a, a)."""
    arr = _weight(name, w, (2, 3))
    if arr is not None and arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} must be square per head, (a, a) or (heads, a, a); "
                         f"got shape {arr.shape}")
    return arr


def _check_per_head(name: str, w: np.ndarray, heads: int, dim: int, of: str) -> None:
    expected = (heads, dim, dim)[3 - w.ndim:]
    if w.shape != expected:
        raise ValueError(f"{name} must have shape {(dim, dim)} or {(heads, dim, dim)} for {of} "
                         f"with {heads} heads of dimension {dim}; got {w.shape}")


def _project(name: str, w: np.ndarray | None, x4: np.ndarray, of: str) -> np.ndarray:
    """x_h W[h] for every head of the 4-D x (identity when w is None)."""
    if w is None:
        return x4
    _check_per_head(name, w, x4.shape[1], x4.shape[3], of)
    return np.ascontiguousarray(np.matmul(x4, w), dtype=np.float32)


def _seeded(seed: int, shape: tuple[int, ...], std: float) -> np.ndarray:
    """N(0, std²) weights drawn from a fresh generator, so they depend on seed and shape only."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def _head_dim(q) -> int | None:
    shape = np.shape(q)
    return shape[-1] if len(shape) >= 1 else None


def _query_heads(q) -> int:
    shape = np.shape(q)
    return shape[-3] if len(shape) >= 3 else 1


# --------------------------------------------------------------------------------------------
# the shared skeleton: validate, project, attend, project the output

class _ProjectedHeads(Mechanism):
    """Validation and the per-head input / output projections shared by the family."""

    def __init__(self, *, w_q=None, w_k=None, w_v=None, w_o=None):
        self.w_q = _projection("w_q", w_q)
        self.w_k = _projection("w_k", w_k)
        self.w_v = _projection("w_v", w_v)
        self.w_o = _weight("w_o", w_o, (2,))

    @staticmethod
    def _inputs(q, k, v, mask, scale):
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        for name, x in (("q", q4), ("k", k4), ("v", v4)):
            check_finite(name, x)
        return q4, k4, v4, mask4, scale, out_shape

    def _project_inputs(self, q4, k4, v4):
        return (_project("w_q", self.w_q, q4, "q"), _project("w_k", self.w_k, k4, "k"),
                _project("w_v", self.w_v, v4, "v"))

    def _project_output(self, out4: np.ndarray) -> np.ndarray:
        """concat_h O_h (n, h·dv) @ W_o, split back into heads."""
        if self.w_o is None:
            return out4
        b, h, n, dv = out4.shape
        if self.w_o.shape != (h * dv, h * dv):
            raise ValueError(f"w_o must have shape {(h * dv, h * dv)} (heads·dv square) for "
                             f"{h} heads of dimension {dv}; got {self.w_o.shape}")
        concat = out4.transpose(0, 2, 1, 3).reshape(b, n, h * dv)
        mixed = np.matmul(concat, self.w_o).reshape(b, n, h, dv)
        return np.ascontiguousarray(mixed.transpose(0, 2, 1, 3), dtype=np.float32)


class StandardMHA(_ProjectedHeads):
    """O_h = softmax(Q_h K_hᵀ/√d + mask)·V_h with Q_h = q_h W_q[h], K_h = k_h W_k[h],
    V_h = v_h W_v[h]; output concat_h(O_h)·W_o split back into heads. With identity projections
    (the default) it is exact attention per head."""

    spec = MechanismSpec(
        name="standard-mha", category=CATEGORY, complexity="O(n²)", use_case="General purpose",
        paper="Vaswani et al. 2017, Attention Is All You Need (arXiv:1706.03762)",
        compiled=True,
        notes="per-head W_q/W_k/W_v (identity by default) and W_o over the concatenated heads; "
              "the attention core is rerank.attention (FlashAttention kernel when compiled)")

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None, **params):
        q4, k4, v4, mask4, scale, out_shape = self._inputs(q, k, v, mask, scale)
        queries, keys, values = self._project_inputs(q4, k4, v4)
        out = self._attend(queries, keys, values, mask4, bool(causal), scale, **params)
        return self._project_output(out).reshape(out_shape)

    def _attend(self, queries, keys, values, mask4, causal, scale):
        return attention(queries, keys, values, mask=mask4, causal=causal, scale=scale)


class RotaryMHA(StandardMHA):
    """Standard MHA with RoPE (Su et al. 2021) on the projected queries and keys: query i sits at
    position m − n + i + offset (aligned to the end of the keys), key j at j + offset, so
    softmax((R_{p_i} Q_i)·(R_{p_j} K_j)/√d) depends on p_i − p_j only."""

    spec = MechanismSpec(
        name="rotary-mha", category=CATEGORY, complexity="O(n²)", use_case="Long sequences (RoPE)",
        paper="Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding "
              "(arXiv:2104.09864)",
        compiled=True,
        notes="pairs (x_2i, x_2i+1) rotated by p·base^(−2i/d) after the projections; forward "
              "takes offset= (the position of key 0); needs an even head dimension")

    def __init__(self, *, base: float = 10000.0, w_q=None, w_k=None, w_v=None, w_o=None):
        super().__init__(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
        self.base = positive_float("base", base)

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        d = _head_dim(q)
        if d is not None and d % 2:
            reasons.append(f"rotary-mha rotates pairs of dimensions: the head dimension must be "
                           f"even; got d = {d}")
        return reasons

    def _attend(self, queries, keys, values, mask4, causal, scale, offset=0):
        offset = finite_float("offset", offset)
        n, m = queries.shape[2], keys.shape[2]
        queries = position.apply_rope(queries, np.arange(n) + (m - n) + offset, base=self.base)
        keys = position.apply_rope(keys, np.arange(m) + offset, base=self.base)
        return super()._attend(queries, keys, values, mask4, causal, scale)


class AlibiMHA(StandardMHA):
    """Standard MHA with ALiBi (Press et al. 2022): logits_h(i, j) = Q_i·K_j/√d − s_h·|i' − j|
    (+ mask), query i at position i' = i + m − n; slopes s_h = 2^(−8h/H) by default. Decoders use
    it with causal=True."""

    spec = MechanismSpec(
        name="alibi-mha", category=CATEGORY, complexity="O(n²)", use_case="Extrapolation",
        paper="Press et al. 2022, Train Short, Test Long: Attention with Linear Biases Enables "
              "Input Length Extrapolation (arXiv:2108.12409)",
        compiled=True,
        notes="the bias is an additive float mask of rerank.attention; slopes= overrides the "
              "paper's geometric slopes (one per query head)")

    def __init__(self, *, slopes=None, w_q=None, w_k=None, w_v=None, w_o=None):
        super().__init__(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
        self.slopes = _weight("slopes", slopes, (1,))

    def bias(self, heads: int, n: int, m: int) -> np.ndarray:
        """(heads, n, m) ALiBi bias −s_h·|i + m − n − j|."""
        if self.slopes is None:
            return position.alibi_bias(heads, n, m)
        if self.slopes.shape != (heads,):
            raise ValueError(f"slopes must have one entry per query head ({heads}); "
                             f"got shape {self.slopes.shape}")
        distance = np.abs(np.arange(n)[:, None] + (m - n) - np.arange(m)[None, :])
        return -self.slopes[:, None, None] * distance.astype(np.float32)

    def _attend(self, queries, keys, values, mask4, causal, scale):
        bias = self.bias(queries.shape[1], queries.shape[2], keys.shape[2])[None]
        biased = bias if mask4 is None else mask4 + bias
        return super()._attend(queries, keys, values, biased, causal, scale)


class GroupedQueryAttention(StandardMHA):
    """GQA (Ainslie et al. 2023): g key/value heads, each shared by h/g consecutive query heads.
    k/v given with g heads are used as they are; with a multiple of g heads (e.g. h) they are
    mean-pooled within each group first (the paper's checkpoint conversion):
    K_j = mean of K over heads j·r … (j+1)·r − 1, r = h_kv/g."""

    spec = MechanismSpec(
        name="grouped-query-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Memory efficient (GQA)",
        paper="Ainslie et al. 2023, GQA: Training Generalized Multi-Query Transformer Models from "
              "Multi-Head Checkpoints (arXiv:2305.13245)",
        compiled=True,
        notes="groups=None keeps k/v's heads as given; the shared heads go to the attention "
              "kernel as kv heads (never copied per query head)")

    def __init__(self, *, groups=None, w_q=None, w_k=None, w_v=None, w_o=None):
        super().__init__(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
        self.groups = None if groups is None else positive_int("groups", groups)

    def pool(self, x4: np.ndarray, heads: int) -> np.ndarray:
        """Key or value heads (b, h_kv, m, ·) mean-pooled to (b, g, m, ·) for ``heads`` queries."""
        g = x4.shape[1] if self.groups is None else self.groups
        h_kv = x4.shape[1]
        if heads % g:
            raise ValueError(f"groups ({g}) must divide the number of query heads ({heads})")
        if h_kv % g:
            raise ValueError(f"k and v have {h_kv} heads: {self.spec.name} needs groups ({g}) "
                             f"heads, or a multiple of it to mean-pool")
        if h_kv == g:
            return x4
        b, _, m, e = x4.shape
        return np.ascontiguousarray(x4.reshape(b, g, h_kv // g, m, e).mean(axis=2),
                                    dtype=np.float32)

    def _attend(self, queries, keys, values, mask4, causal, scale):
        heads = queries.shape[1]
        return super()._attend(queries, self.pool(keys, heads), self.pool(values, heads), mask4,
                               causal, scale)


class MultiQueryAttention(GroupedQueryAttention):
    """MQA (Shazeer 2019): every query head attends to one shared key/value head; k/v given with
    several heads are mean-pooled into one. GQA with g = 1."""

    spec = MechanismSpec(
        name="multi-query-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Fast inference (MQA)",
        paper="Shazeer 2019, Fast Transformer Decoding: One Write-Head is All You Need "
              "(arXiv:1911.02150)",
        compiled=True,
        notes="grouped-query-attention with groups=1: the kernel reads one key/value head")

    def __init__(self, *, w_q=None, w_k=None, w_v=None, w_o=None):
        super().__init__(groups=1, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)


class DifferentialAttention(_ProjectedHeads):
    """Differential attention (Ye et al. 2024): with Q, K split in halves along d,
    A_i = softmax(Q_i K_iᵀ/√(d/2) + mask) and O = (A_1 − λ·A_2)·V = A_1·V − λ·A_2·V;
    head_norm: O ← RMSNorm(O)·γ·(1 − λ_init) per head. λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init."""

    spec = MechanismSpec(
        name="differential-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Change detection",
        paper="Ye et al. 2024, Differential Transformer (arXiv:2410.05258)",
        compiled=True,
        notes="two rerank.attention calls (one per half of the head dimension) combined as "
              "A1·V − λ·A2·V; λ re-parameterised from seeded λ vectors (N(0, 0.1²), shared by "
              "the heads) unless lam= is given; λ_init = 0.8 − 0.6·e^0 = 0.2 (layer 1); "
              "head_norm = the paper's per-head RMSNorm (eps 1e-5, gain γ) times (1 − λ_init); "
              "needs an even head dimension")

    def __init__(self, *, lam=None, lambda_init: float = LAMBDA_INIT, lambda_vectors=None,
                 head_norm: bool = True, norm_weight=None, eps: float = HEAD_NORM_EPS, seed=0,
                 w_q=None, w_k=None, w_v=None, w_o=None):
        super().__init__(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
        self.lam = None if lam is None else finite_float("lam", lam)
        self.lambda_init = finite_float("lambda_init", lambda_init)
        self.lambda_vectors = _weight("lambda_vectors", lambda_vectors, (2,))
        if self.lambda_vectors is not None and self.lambda_vectors.shape[0] != 4:
            raise ValueError("lambda_vectors must have shape (4, d/2): rows λq1, λk1, λq2, λk2; "
                             f"got {self.lambda_vectors.shape}")
        self._given_vectors = self.lambda_vectors is not None
        self.head_norm = bool(head_norm)
        self.norm_weight = _weight("norm_weight", norm_weight, (1,))
        self.eps = positive_float("eps", eps)
        self.seed = _seed(seed)

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        d = _head_dim(q)
        if d is not None and d % 2:
            reasons.append(f"differential-attention splits the head dimension in two halves: it "
                           f"must be even; got d = {d}")
        return reasons

    def vectors(self, half: int) -> np.ndarray:
        """(4, d/2) rows λq1, λk1, λq2, λk2: the given ones, or drawn from the seed for d/2."""
        if not self._given_vectors:
            if self.lambda_vectors is None or self.lambda_vectors.shape[1] != half:
                self.lambda_vectors = _seeded(self.seed, (4, half), LAMBDA_VECTOR_STD)
        elif self.lambda_vectors.shape[1] != half:
            raise ValueError(f"lambda_vectors must have shape (4, {half}) for head dimension "
                             f"{2 * half}; got {self.lambda_vectors.shape}")
        return self.lambda_vectors

    def lambda_value(self, half: int) -> float:
        """λ: the given lam, else exp(λq1·λk1) − exp(λq2·λk2) + λ_init."""
        if self.lam is not None:
            return self.lam
        q1, k1, q2, k2 = self.vectors(half).astype(np.float64)
        return float(np.exp(q1 @ k1) - np.exp(q2 @ k2) + self.lambda_init)

    def _normalise_heads(self, out4: np.ndarray) -> np.ndarray:
        """RMSNorm over each head's output vector, times the gain γ and (1 − λ_init)."""
        dv = out4.shape[-1]
        gain = np.ones(dv) if self.norm_weight is None else self.norm_weight.astype(np.float64)
        if gain.shape != (dv,):
            raise ValueError(f"norm_weight must have shape ({dv},) (v's last dimension); "
                             f"got {gain.shape}")
        x = out4.astype(np.float64)
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x / rms * gain * (1.0 - self.lambda_init)).astype(np.float32)

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, given_scale, out_shape = self._inputs(q, k, v, mask, scale)
        half = q4.shape[-1] // 2
        scale = 1.0 / math.sqrt(half) if scale is None else given_scale
        queries, keys, values = self._project_inputs(q4, k4, v4)
        lam = self.lambda_value(half)
        first = attention(queries[..., :half], keys[..., :half], values, mask=mask4,
                          causal=causal, scale=scale)
        second = attention(queries[..., half:], keys[..., half:], values, mask=mask4,
                           causal=causal, scale=scale)
        out = (first.astype(np.float64) - lam * second).astype(np.float32)
        if self.head_norm:
            out = self._normalise_heads(out)
        return self._project_output(out).reshape(out_shape)


class MixtureAttention(_ProjectedHeads):
    """Mixture of attention heads (after MoA, Zhang et al. 2022): each query head h's token i
    routes over the h head outputs with gate π_{h,i} = softmax(TopK(q_{h,i}·W_g[h], k)) and
    out_{h,i} = Σ_j π_{h,i,j}·O_j(i), O_j the heads' attention outputs (dense when top_k=None)."""

    spec = MechanismSpec(
        name="mixture-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Hybrid patterns",
        paper="Zhang et al. 2022, Mixture of Attention Heads: Selecting Attention Heads Per Token "
              "(arXiv:2210.05144)",
        compiled=True,
        notes="the experts are the input's heads (one rerank.attention call for all of them); "
              "router W_g (h, d, h) or shared (d, h), seeded N(0, 1/d) when omitted, applied to "
              "the raw query; top_k=k keeps the k largest logits (MoA's sparse routing); needs "
              "at least two query heads")

    def __init__(self, *, w_gate=None, top_k=None, seed=0, w_q=None, w_k=None, w_v=None,
                 w_o=None):
        super().__init__(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
        self.w_gate = _weight("w_gate", w_gate, (2, 3))
        self._given_gate = self.w_gate is not None
        self.top_k = None if top_k is None else positive_int("top_k", top_k)
        self.seed = _seed(seed)

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        if np.ndim(q) in (2, 3, 4) and _query_heads(q) < 2:
            reasons.append("mixture-attention mixes attention heads: q needs at least 2 heads, "
                           f"(h, n, d) or (b, h, n, d); got shape {np.shape(q)}")
        return reasons

    def gate_weights(self, heads: int, d: int) -> np.ndarray:
        """The router W_g: the given one, or (heads, d, heads) drawn from the seed."""
        if not self._given_gate:
            if self.w_gate is None or self.w_gate.shape != (heads, d, heads):
                self.w_gate = _seeded(self.seed, (heads, d, heads), 1.0 / math.sqrt(d))
        elif self.w_gate.shape != (heads, d, heads)[3 - self.w_gate.ndim:]:
            raise ValueError(f"w_gate must have shape {(d, heads)} or {(heads, d, heads)} for "
                             f"{heads} heads of dimension {d}; got {self.w_gate.shape}")
        return self.w_gate

    def gates(self, q4: np.ndarray) -> np.ndarray:
        """(b, h, n, h) routing weights π from the raw queries (float64)."""
        b, h, n, d = q4.shape
        logits = np.matmul(q4.astype(np.float64), self.gate_weights(h, d).astype(np.float64))
        if self.top_k is not None:
            if self.top_k > h:
                raise ValueError(f"top_k ({self.top_k}) must not exceed the number of heads ({h})")
            order = np.argsort(-logits, axis=-1, kind="stable")
            dropped = np.zeros(logits.shape, bool)
            np.put_along_axis(dropped, order[..., self.top_k:], True, axis=-1)
            logits = np.where(dropped, -np.inf, logits)
        return softmax(logits, axis=-1)

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = self._inputs(q, k, v, mask, scale)
        queries, keys, values = self._project_inputs(q4, k4, v4)
        heads_out = attention(queries, keys, values, mask=mask4, causal=causal, scale=scale)
        pi = self.gates(q4)
        mixed = np.einsum("bhij,bjiv->bhiv", pi, heads_out.astype(np.float64))
        return self._project_output(mixed.astype(np.float32)).reshape(out_shape)


MECHANISMS = (StandardMHA, RotaryMHA, AlibiMHA, GroupedQueryAttention, MultiQueryAttention,
              DifferentialAttention, MixtureAttention)
