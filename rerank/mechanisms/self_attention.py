"""Self-attention family: causal and bidirectional attention, relative positions (T5 buckets, Shaw
et al.'s relative embeddings), DeBERTa's disentangled attention, talking heads and the synthesizer.

Exact attention with an additive bias runs through :func:`rerank.attention` (the compiled kernel
when it is active): the bias rides in the float ``mask``. Relative positions of query i and key j
are j − i' with i' = i + m − n, the queries aligned to the end of the keys as the causal mask is.
"""
from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from .. import reference
from ..attention import attention, prepare
from ..position import relative_buckets
from ..validation import as_float32, check_finite, positive_int
from .base import Mechanism, MechanismSpec

CATEGORY = "self-attention"


# --------------------------------------------------------------------------------------------
# helpers

def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """A generator fixed by the seed and the weight's key (kind, shape), whatever the call order."""
    return np.random.default_rng([seed, *key])


def _weight(name: str, x, shape: tuple) -> np.ndarray:
    """A given weight as finite float32 of ``shape`` (None = any size on that axis)."""
    arr = as_float32(name, x, (len(shape),))
    if any(want is not None and got != want for got, want in zip(arr.shape, shape)):
        expected = "(" + ", ".join("·" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {expected}; got {arr.shape}")
    check_finite(name, arr)
    return arr


def _inputs(q, k, v, mask, scale):
    """``prepare`` plus a finiteness check of q, k, v (numpy math would carry NaN into a bias)."""
    q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
    for name, x in (("q", q4), ("k", k4), ("v", v4)):
        check_finite(name, x)
    return q4, k4, v4, mask4, scale, out_shape


def _query_key_offsets(n: int, m: int) -> np.ndarray:
    """(n, m) relative position j − i' of key j from query i, with i' = i + m − n."""
    return np.arange(m)[None, :] - (np.arange(n)[:, None] + (m - n))


def _biased_attention(q4, k4, v4, bias, mask4, causal, scale, out_shape) -> np.ndarray:
    """softmax(q·kᵀ·scale + bias + mask)·v through rerank.attention (compiled when active)."""
    if bias is not None and mask4 is not None:
        bias = bias + mask4
    elif bias is None:
        bias = mask4
    return attention(q4, k4, v4, mask=bias, causal=causal, scale=scale).reshape(out_shape)


def _masked_softmax(logits: np.ndarray, mask4, causal: bool) -> np.ndarray:
    """softmax over keys of (b, h, n, m) logits after the mask and the bottom-right causal mask."""
    if mask4 is not None:
        logits = logits + mask4
    if causal:
        logits = np.where(reference.causal_mask(*logits.shape[-2:]), logits, -np.inf)
    return reference.softmax(logits)


def _finished(out: np.ndarray, out_shape) -> np.ndarray:
    check_finite("attention output (overflow: inputs too large)", out)
    return out.astype(np.float32).reshape(out_shape)


def _as64(x: np.ndarray, heads: int | None = None) -> np.ndarray:
    x = x.astype(np.float64)
    return x if heads is None else reference.expand_kv_heads(x, heads)


# --------------------------------------------------------------------------------------------
# causal and bidirectional

class CausalSelfAttention(Mechanism):
    """softmax(q·kᵀ/√d + causal + mask)·v: query i sees keys j ≤ i + m − n (bottom-right when
    n ≠ m, as when decoding with a cache). The causal mask is always applied, whatever ``causal``
    says; an extra ``mask`` combines with it; a query that sees no key returns zeros."""

    spec = MechanismSpec(
        name="causal-self-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Autoregressive",
        paper="Vaswani et al. 2017, Attention Is All You Need (arXiv:1706.03762); "
              "Radford et al. 2018, GPT",
        compiled=True, notes="always causal; runs the exact tiled kernel with causal=True")

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        return attention(q, k, v, mask=mask, causal=True, scale=scale)


class BidirectionalSelfAttention(Mechanism):
    """softmax(q·kᵀ/√d + mask)·v with every position attending to every position (BERT's encoder).
    ``lengths`` (one int per batch item, or a scalar without a batch axis; needs n == m) pads:
    keys j ≥ length are masked out and query rows i ≥ length return zeros. ``causal`` is refused."""

    spec = MechanismSpec(
        name="bidirectional-self-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Understanding",
        paper="Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers "
              "(arXiv:1810.04805)",
        compiled=True,
        notes="lengths: keys ≥ length masked, padded query rows are zeros; causal not supported")
    supports_causal = False

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        return [r + " (every position sees every position; use causal-self-attention)"
                if "causal" in r else r for r in reasons]

    def _forward(self, q, k, v, *, mask=None, causal=False, lengths=None, scale=None):
        if lengths is None:
            return attention(q, k, v, mask=mask, scale=scale)
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        b, _, n, _ = q4.shape
        m = k4.shape[2]
        if n != m:
            raise ValueError(f"lengths pads one sequence of queries and keys, so it needs n == m; "
                             f"got {n} queries and {m} keys")
        lengths = _lengths(lengths, b, m)
        real = np.arange(m)[None, :] < lengths[:, None]                         # (b, m)
        padding = np.where(real, np.float32(0), np.float32(-np.inf))[:, None, None, :]
        out = _biased_attention(q4, k4, v4, padding, mask4, False, scale, q4.shape[:3] + (-1,))
        out *= real[:, None, :, None]                 # padded query rows are not tokens: zeros
        return out.reshape(out_shape)


def _lengths(lengths, b: int, m: int) -> np.ndarray:
    """Per-batch-item lengths as int64 (b,), each in [0, m]."""
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers; got dtype {arr.dtype}")
    if arr.shape not in ((b,), ()):
        raise ValueError(f"lengths must have one entry per batch item ({b},); got shape "
                         f"{arr.shape}")
    arr = np.broadcast_to(arr.astype(np.int64), (b,))
    if (arr < 0).any() or (arr > m).any():
        raise ValueError(f"lengths must lie in [0, {m}] (the sequence length); got "
                         f"{arr.tolist()[:8]}")
    return arr


# --------------------------------------------------------------------------------------------
# relative positions

class RelativePositionAttention(Mechanism):
    """``mode="t5"`` (Raffel et al. 2020): softmax(q·kᵀ/√d + b[h, bucket(j − i)] + mask)·v with a
    (heads, num_buckets) bias table, buckets bidirectional unless causal. ``mode="shaw"`` (Shaw et
    al. 2018): e_ij = q_i·(k_j + aᴷ_r)/√d, out_i = Σ_j α_ij (v_j + aⱽ_r), r = clip(j − i, −K, K)."""

    spec = MechanismSpec(
        name="relative-position-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Sequence modeling",
        paper="Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified "
              "Text-to-Text Transformer (arXiv:1910.10683); Shaw et al. 2018, Self-Attention "
              "with Relative Position Representations (arXiv:1803.02155)",
        compiled=True,
        notes="t5 (default): the bias table rides in the exact kernel's float mask; "
              "shaw: numpy (relative keys and values are not a logit bias)")

    MODES = ("t5", "shaw")

    def __init__(self, *, mode="t5", num_buckets=32, max_distance=128, bias_table=None,
                 max_relative_position=16, rel_keys=None, rel_values=None, seed=0):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}; got {mode!r}")
        self.mode = mode
        self.num_buckets = positive_int("num_buckets", num_buckets)
        self.max_distance = positive_int("max_distance", max_distance)
        self.max_relative_position = positive_int("max_relative_position",
                                                  max_relative_position)
        self.seed = _seed(seed)
        width = 2 * self.max_relative_position + 1
        self.bias_table = None if bias_table is None else \
            _weight("bias_table", bias_table, (None, self.num_buckets))
        self.rel_keys = None if rel_keys is None else _weight("rel_keys", rel_keys, (width, None))
        self.rel_values = None if rel_values is None else \
            _weight("rel_values", rel_values, (width, None))
        #: Seeded weights made on first use, per shape: heads → table, d → aᴷ, dv → aⱽ.
        self.bias_tables: dict[int, np.ndarray] = {}
        self.rel_key_tables: dict[int, np.ndarray] = {}
        self.rel_value_tables: dict[int, np.ndarray] = {}

    @property
    def backend(self) -> str:
        return "numpy" if self.mode == "shaw" else super().backend

    def table_for(self, heads: int) -> np.ndarray:
        """The (heads, num_buckets) bias table: the given one, or N(0, 1) from the seed."""
        if self.bias_table is not None:
            if self.bias_table.shape[0] != heads:
                raise ValueError(f"bias_table has {self.bias_table.shape[0]} heads; q has {heads}")
            return self.bias_table
        if heads not in self.bias_tables:
            draw = _rng(self.seed, 0, heads).standard_normal((heads, self.num_buckets))
            self.bias_tables[heads] = draw.astype(np.float32)
        return self.bias_tables[heads]

    def shaw_tables(self, d: int, dv: int) -> tuple[np.ndarray, np.ndarray]:
        """aᴷ (2K+1, d) and aⱽ (2K+1, dv): the given ones, or N(0, 1) from the seed."""
        width = 2 * self.max_relative_position + 1
        a_k = self.rel_keys
        if a_k is None:
            if d not in self.rel_key_tables:
                draw = _rng(self.seed, 1, d).standard_normal((width, d))
                self.rel_key_tables[d] = draw.astype(np.float32)
            a_k = self.rel_key_tables[d]
        a_v = self.rel_values
        if a_v is None:
            if dv not in self.rel_value_tables:
                draw = _rng(self.seed, 2, dv).standard_normal((width, dv))
                self.rel_value_tables[dv] = draw.astype(np.float32)
            a_v = self.rel_value_tables[dv]
        if a_k.shape[1] != d:
            raise ValueError(f"rel_keys must have shape ({width}, {d}) for d = {d}; "
                             f"got {a_k.shape}")
        if a_v.shape[1] != dv:
            raise ValueError(f"rel_values must have shape ({width}, {dv}) for v's last "
                             f"dimension {dv}; got {a_v.shape}")
        return a_k, a_v

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = _inputs(q, k, v, mask, scale)
        if self.mode == "shaw":
            return self._shaw(q4, k4, v4, mask4, causal, scale, out_shape)
        _, h, n, _ = q4.shape
        m = k4.shape[2]
        bias = self.table_for(h)[:, self._buckets(n, m, bidirectional=not causal)]
        return _biased_attention(q4, k4, v4, bias[None], mask4, causal, scale, out_shape)

    def _buckets(self, n: int, m: int, *, bidirectional: bool) -> np.ndarray:
        """(n, m) buckets of j − i' (queries aligned to the end of the keys)."""
        size = max(n, m)
        full = relative_buckets(size, size, num_buckets=self.num_buckets,
                                max_distance=self.max_distance, bidirectional=bidirectional)
        return full[size - n:, size - m:]

    def _shaw(self, q4, k4, v4, mask4, causal, scale, out_shape):
        h, n, d = q4.shape[1:]
        m, dv = k4.shape[2], v4.shape[3]
        a_k, a_v = (t.astype(np.float64) for t in self.shaw_tables(d, dv))
        K = self.max_relative_position
        rel = np.clip(_query_key_offsets(n, m), -K, K) + K                      # (n, m)
        rows = np.arange(n)[:, None]
        q64 = _as64(q4)
        logits = q64 @ np.swapaxes(_as64(k4, h), -1, -2) + (q64 @ a_k.T)[..., rows, rel]
        alpha = _masked_softmax(logits * scale, mask4, causal)
        per_offset = np.zeros(alpha.shape[:3] + (2 * K + 1,))                   # Σ_j α_ij[r_ij=r]
        np.add.at(per_offset, (slice(None), slice(None), rows, rel), alpha)
        return _finished(alpha @ _as64(v4, h) + per_offset @ a_v, out_shape)


# --------------------------------------------------------------------------------------------
# DeBERTa

class DisentangledAttention(Mechanism):
    """DeBERTa: Ã_ij = Qᶜ_i·Kᶜ_j + Qᶜ_i·Kʳ_δ(i,j) + Kᶜ_j·Qʳ_δ(j,i), softmax(Ã/√(3d) + mask)·v, with
    δ(i,j) = clip(i − j + k, 0, 2k − 1), Qʳ = P·W_q,r, Kʳ = P·W_k,r and P (2k, d) relative position
    embeddings. q, k, v are the content projections Qᶜ, Kᶜ, Vᶜ; P and W_r are shared by heads."""

    spec = MechanismSpec(
        name="disentangled-attention", category=CATEGORY, complexity="O(n²)",
        use_case="NLU (DeBERTa)",
        paper="He et al. 2021, DeBERTa: Decoding-enhanced BERT with Disentangled Attention "
              "(arXiv:2006.03654)",
        compiled=True,
        notes="content-to-position and position-to-content terms are gathered in numpy and ride "
              "in the exact kernel's float mask; scale 1/√(3d) whichever terms are on")

    TERMS = ("c2p", "p2c")

    def __init__(self, *, span=16, positions=None, w_q_r=None, w_k_r=None, terms=TERMS, seed=0):
        self.span = positive_int("span", span)
        self.seed = _seed(seed)
        terms = tuple(terms)
        unknown = [t for t in terms if t not in self.TERMS]
        if unknown:
            raise ValueError(f"terms must be among {', '.join(self.TERMS)}; got {unknown}")
        self.terms = terms
        self.positions = None if positions is None else \
            _weight("positions", positions, (2 * self.span, None))
        width = None if self.positions is None else self.positions.shape[1]
        self.w_q_r = None if w_q_r is None else _weight("w_q_r", w_q_r, (width, None))
        self.w_k_r = None if w_k_r is None else _weight("w_k_r", w_k_r, (width, None))
        #: Seeded position embeddings made on first use, per d.
        self.position_tables: dict[int, np.ndarray] = {}

    def position_embeddings(self, d: int) -> np.ndarray:
        """P (2k, d_p): the given one, or N(0, 1) from the seed with d_p = d."""
        if self.positions is not None:
            return self.positions
        if d not in self.position_tables:
            draw = _rng(self.seed, 3, d).standard_normal((2 * self.span, d))
            self.position_tables[d] = draw.astype(np.float32)
        return self.position_tables[d]

    def relative_projections(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Qʳ = P·W_q,r and Kʳ = P·W_k,r, (2k, d) in float64 (W identity when not given)."""
        p = self.position_embeddings(d).astype(np.float64)
        out = []
        for name, w in (("w_q_r", self.w_q_r), ("w_k_r", self.w_k_r)):
            if w is None:
                if p.shape[1] != d:
                    raise ValueError(f"{name} is needed to map positions of width {p.shape[1]} "
                                     f"to d = {d}")
                out.append(p)
            elif w.shape != (p.shape[1], d):
                raise ValueError(f"{name} must have shape ({p.shape[1]}, {d}); got {w.shape}")
            else:
                out.append(p @ w.astype(np.float64))
        return out[0], out[1]

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        d = np.shape(q)[-1] if np.ndim(q) else 1
        scale = 1.0 / math.sqrt(3 * d) if scale is None else scale
        q4, k4, v4, mask4, scale, out_shape = _inputs(q, k, v, mask, scale)
        bias = self._position_logits(q4, k4) if self.terms else None
        if bias is not None:
            bias *= scale
        return _biased_attention(q4, k4, v4, bias, mask4, causal, scale, out_shape)

    def _position_logits(self, q4, k4) -> np.ndarray:
        """(b, h, n, m) Qᶜ_i·Kʳ_δ(i,j) + Kᶜ_j·Qʳ_δ(j,i) for the enabled terms."""
        h, n, d = q4.shape[1:]
        m = k4.shape[2]
        q_r, k_r = self.relative_projections(d)
        i_minus_j = -_query_key_offsets(n, m)
        last = 2 * self.span - 1
        logits = np.zeros((q4.shape[0], h, n, m))
        if "c2p" in self.terms:
            delta_ij = np.clip(i_minus_j + self.span, 0, last)
            logits += (_as64(q4) @ k_r.T)[..., np.arange(n)[:, None], delta_ij]
        if "p2c" in self.terms:
            delta_ji = np.clip(-i_minus_j + self.span, 0, last)
            logits += (_as64(k4, h) @ q_r.T)[..., np.arange(m)[None, :], delta_ji]
        return logits


# --------------------------------------------------------------------------------------------
# talking heads

class TalkingHeadsAttention(Mechanism):
    """Talking heads: logits L_h = q_h·k_hᵀ/√d are mixed across heads before the softmax,
    L'_g = Σ_h P_l[h, g]·L_h, and the weights after it, W'_g = Σ_h P_w[h, g]·softmax(L'_h + mask);
    out_g = W'_g·v_g. P_l, P_w (heads × heads) are projections: identity (plain MHA) by default."""

    spec = MechanismSpec(
        name="talking-heads-attention", category=CATEGORY, complexity="O(n²)",
        use_case="Complex reasoning",
        paper="Shazeer et al. 2020, Talking-Heads Attention (arXiv:2003.02436)",
        compiled=False,
        notes="numpy: the (b, h, n, m) logits and weights are materialised to mix heads; "
              "the mask is added after the logit mixing")

    def __init__(self, *, p_logits=None, p_weights=None):
        self.p_logits = None if p_logits is None else _weight("p_logits", p_logits, (None, None))
        self.p_weights = None if p_weights is None else \
            _weight("p_weights", p_weights, (None, None))
        for name, p in (("p_logits", self.p_logits), ("p_weights", self.p_weights)):
            if p is not None and p.shape[0] != p.shape[1]:
                raise ValueError(f"{name} must be square (heads × heads); got {p.shape}")

    def mixing(self, heads: int) -> tuple[np.ndarray, np.ndarray]:
        """P_l and P_w as float64 (heads, heads) matrices."""
        out = []
        for name, p in (("p_logits", self.p_logits), ("p_weights", self.p_weights)):
            if p is None:
                out.append(np.eye(heads))
            elif p.shape != (heads, heads):
                raise ValueError(f"{name} must have shape ({heads}, {heads}) for {heads} query "
                                 f"heads; got {p.shape}")
            else:
                out.append(p.astype(np.float64))
        return out[0], out[1]

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = _inputs(q, k, v, mask, scale)
        h = q4.shape[1]
        p_logits, p_weights = self.mixing(h)
        logits = _as64(q4) @ np.swapaxes(_as64(k4, h), -1, -2) * scale
        mixed = np.einsum("hg,bhnm->bgnm", p_logits, logits)
        weights = np.einsum("hg,bhnm->bgnm", p_weights, _masked_softmax(mixed, mask4, causal))
        return _finished(weights @ _as64(v4, h), out_shape)


# --------------------------------------------------------------------------------------------
# synthesizer

class SynthesizerAttention(Mechanism):
    """Synthesizer: softmax(B + mask)·v with logits synthesized without keys (k is validated,
    never used). dense: B_i = W2·relu(W1·q_i + b1) + b2, first m of max_len logits; random:
    B = R[:n, :m] (rows = query index, columns = key index); mixed: (B_dense + B_random)/2."""

    spec = MechanismSpec(
        name="synthesizer-attention", category=CATEGORY, complexity="O(n)",
        use_case="Fast inference",
        paper="Tay et al. 2020, Synthesizer: Rethinking Self-Attention in Transformer Models "
              "(arXiv:2005.00743)",
        compiled=True,
        notes="keys are not used; softmax(B)·v runs in the exact kernel with zero queries/keys "
              "and B as the float mask; m ≤ max_len (and n ≤ max_len for random/mixed); "
              "the dense weights are shared by all heads")

    VARIANTS = ("dense", "random", "mixed")

    def __init__(self, *, variant="dense", max_len=512, hidden=None, dense_weights=None,
                 random_logits=None, seed=0):
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(self.VARIANTS)}; "
                             f"got {variant!r}")
        self.variant = variant
        self.max_len = positive_int("max_len", max_len)
        self.hidden = None if hidden is None else positive_int("hidden", hidden)
        self.seed = _seed(seed)
        self.dense_weights = None if dense_weights is None else self._given_dense(dense_weights)
        if random_logits is None and variant == "dense":
            self.random_logits = None
        elif random_logits is None:
            draw = _rng(self.seed, 4).standard_normal((self.max_len, self.max_len))
            self.random_logits = draw.astype(np.float32)
        else:
            rank = np.ndim(random_logits)
            if rank not in (2, 3):
                raise ValueError(f"random_logits must be (rows, keys) or (heads, rows, keys); "
                                 f"got shape {np.shape(random_logits)}")
            self.random_logits = _weight("random_logits", random_logits, (None,) * rank)
        #: Seeded dense weights (W1, b1, W2, b2) made on first use, per d.
        self.dense_tables: dict[int, tuple] = {}

    @staticmethod
    def _given_dense(weights) -> tuple:
        if len(weights) != 4:
            raise ValueError("dense_weights must be (W1 (hidden, d), b1 (hidden,), "
                             "W2 (max_len, hidden), b2 (max_len,))")
        w1 = _weight("W1", weights[0], (None, None))
        b1 = _weight("b1", weights[1], (w1.shape[0],))
        w2 = _weight("W2", weights[2], (None, w1.shape[0]))
        b2 = _weight("b2", weights[3], (w2.shape[0],))
        return w1, b1, w2, b2

    def _key_capacity(self) -> int:
        limits = []
        if self.variant != "random":
            limits.append(self.max_len if self.dense_weights is None
                          else self.dense_weights[2].shape[0])
        if self.variant != "dense":
            limits.append(self.random_logits.shape[-1])
        return min(limits)

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        n, m = (np.shape(q)[-2], np.shape(k)[-2]) if min(np.ndim(q), np.ndim(k)) >= 2 \
            else (0, 0)
        if m > self._key_capacity():
            reasons.append(f"{self.spec.name} synthesizes logits for at most "
                           f"{self._key_capacity()} keys; got m = {m}")
        if self.variant != "dense" and n > self.random_logits.shape[-2]:
            reasons.append(f"{self.spec.name}'s random logits have "
                           f"{self.random_logits.shape[-2]} rows; got n = {n} queries")
        return reasons

    def dense_for(self, d: int) -> tuple:
        """(W1, b1, W2, b2) as float64: the given weights, or scaled normals from the seed."""
        if self.dense_weights is not None:
            if self.dense_weights[0].shape[1] != d:
                raise ValueError(f"W1 must have shape (hidden, {d}) for d = {d}; got "
                                 f"{self.dense_weights[0].shape}")
            return tuple(w.astype(np.float64) for w in self.dense_weights)
        if d not in self.dense_tables:
            hidden = self.hidden or d
            rng = _rng(self.seed, 5, d)
            self.dense_tables[d] = (
                (rng.standard_normal((hidden, d)) / math.sqrt(d)).astype(np.float32),
                (rng.standard_normal(hidden) * 0.1).astype(np.float32),
                (rng.standard_normal((self.max_len, hidden)) / math.sqrt(hidden))
                .astype(np.float32),
                (rng.standard_normal(self.max_len) * 0.1).astype(np.float32))
        return tuple(w.astype(np.float64) for w in self.dense_tables[d])

    def synthesized_logits(self, q4: np.ndarray, m: int) -> np.ndarray:
        """B, (b, h, n, m) float64, for the configured variant."""
        b, h, n, d = q4.shape
        parts = []
        if self.variant != "random":
            w1, b1, w2, b2 = self.dense_for(d)
            hidden = np.maximum(_as64(q4) @ w1.T + b1, 0.0)
            parts.append(hidden @ w2[:m].T + b2[:m])
        if self.variant != "dense":
            r = self.random_logits
            if r.ndim == 3 and r.shape[0] != h:
                raise ValueError(f"random_logits has {r.shape[0]} heads; q has {h}")
            r = r[..., :n, :m].astype(np.float64)
            parts.append(np.broadcast_to(r if r.ndim == 3 else r[None], (b, h, n, m)))
        return sum(parts) / len(parts)

    def _forward(self, q, k, v, *, mask=None, causal=False):
        q4, k4, v4, mask4, _, out_shape = _inputs(q, k, v, mask, None)
        b, h, n, _ = q4.shape
        h_kv, m = k4.shape[1:3]
        logits = self.synthesized_logits(q4, m)
        # softmax(0·0 + B + mask)·v: zero queries and keys of width 1 leave B as the only logits.
        zeros_q = np.zeros((b, h, n, 1), np.float32)
        zeros_k = np.zeros((b, h_kv, m, 1), np.float32)
        return _biased_attention(zeros_q, zeros_k, v4, logits, mask4, causal, 1.0, out_shape)


MECHANISMS = (CausalSelfAttention, BidirectionalSelfAttention, RelativePositionAttention,
              DisentangledAttention, TalkingHeadsAttention, SynthesizerAttention)
