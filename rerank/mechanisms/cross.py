"""Cross-attention family. The three rerank scorers live here: their ``forward`` is exact attention
of the queries over the memory / candidate tokens / chunks, and ``score`` ranks candidates."""
from __future__ import annotations

import math

import numpy as np

from .. import scoring
from ..attention import attention, prepare
from ..validation import as_float32, check_finite, finite_float, positive_int
from .base import Mechanism, MechanismSpec


class _ExactForward(Mechanism):
    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        return attention(q, k, v, mask=mask, causal=causal, scale=scale)


class CrossAttention(_ExactForward):
    """Queries attend to another sequence: softmax(q·kᵀ/√d)·v with n ≠ m. As a scorer it is late
    interaction: query tokens attend to each candidate's tokens (MaxSim, or soft-MaxSim with τ),
    IDF-weighted, z-mixed with the dense score: final = z(dense) + λ·z(MaxSim)."""

    spec = MechanismSpec(
        name="cross-attention", category="cross-attention", complexity="O(n·m)",
        use_case="Agent coordination; late-interaction rerank",
        paper="Vaswani et al. 2017 (arXiv:1706.03762); ColBERT, Khattab & Zaharia 2020 "
              "(arXiv:2004.12832)",
        compiled=True)

    def __init__(self, *, tau=None, lam=scoring.LAMBDA):
        self.tau = tau
        self.lam = lam

    def score(self, query_tokens, doc_tokens, doc_offsets, *, tau=..., idf=None, dense=None,
              lam=None, details=False):
        """Late-interaction scores (c,) or (m, c); see :func:`rerank.scoring.late_interaction`."""
        return scoring.late_interaction(
            query_tokens, doc_tokens, doc_offsets, tau=self.tau if tau is ... else tau, idf=idf,
            dense=dense, lam=self.lam if lam is None else lam, details=details)


class MemoryAttention(_ExactForward):
    """A query reads a memory of c slots: softmax(q·kᵀ/√d)·v. As a scorer, per head h
    w_h(i) = softmax_i(q̂_h·k̂_{i,h}/τ) and score_i = Σ_h w_h(i)/h (optionally after refining q
    with α). With heads = 1 and α = 0 the order equals the dense (cosine) order."""

    spec = MechanismSpec(
        name="memory-attention", category="cross-attention", complexity="O(n·k)",
        use_case="RAG retrieval", paper="Memory networks: Sukhbaatar et al. 2015, End-To-End "
                                        "Memory Networks (arXiv:1503.08895)",
        compiled=True)

    def __init__(self, *, heads=1, tau=scoring.MEMORY_TAU, alpha=0.0):
        self.heads = heads
        self.tau = tau
        self.alpha = alpha

    def score(self, query, candidates, *, heads=None, tau=None, alpha=None):
        """Memory-attention scores (c,) or (m, c); see :func:`rerank.scoring.memory_attention`."""
        return scoring.memory_attention(
            query, candidates, heads=self.heads if heads is None else heads,
            tau=self.tau if tau is None else tau, alpha=self.alpha if alpha is None else alpha)


class HierarchicalCrossAttention(_ExactForward):
    """Document-level attention through chunks: s_i = Σ_c softmax_c(q̂·ĉ/τ)·(q̂·ĉ) over a
    candidate's chunks (passages or sentences), final = z(dense) + λ·z(s)."""

    spec = MechanismSpec(
        name="hierarchical-cross-attention", category="cross-attention", complexity="O(n·m)",
        use_case="Document analysis",
        paper="Yang et al. 2016, Hierarchical Attention Networks for Document Classification "
              "(NAACL)",
        compiled=True)

    def __init__(self, *, tau=scoring.HIERARCHICAL_TAU, lam=scoring.LAMBDA):
        self.tau = tau
        self.lam = lam

    def score(self, query, chunks, chunk_offsets, *, tau=None, dense=None, lam=None,
              details=False):
        """Hierarchical scores (c,) or (m, c); see :func:`rerank.scoring.hierarchical`."""
        return scoring.hierarchical(
            query, chunks, chunk_offsets, tau=self.tau if tau is None else tau, dense=dense,
            lam=self.lam if lam is None else lam, details=details)


def _weight(name: str, w, ndim: int = 2) -> np.ndarray | None:
    """A given weight matrix as float32 (None stays None: the identity)."""
    if w is None:
        return None
    arr = as_float32(name, w, (ndim,))
    check_finite(name, arr)
    return arr


def _expect_shape(name: str, w: np.ndarray | None, shape: tuple[int, int]) -> None:
    if w is not None and w.shape != shape:
        raise ValueError(f"{name} must have shape {shape} for these inputs; got {w.shape}")


def _project(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    return x if w is None else x @ w


class PerceiverAttention(Mechanism):
    """A latent array Z0 (l × d) reads the inputs, then the queries read the latents:
    Z = softmax(Z0·W_q·(k·W_k)ᵀ/√d)·(v·W_v) (encode; ``process`` rounds Z ← softmax(Z·Zᵀ/√d)·Z),
    out = softmax(q·Zᵀ/√d)·(Z·W_o) (decode): O(m·l + n·l) instead of O(n·m)."""

    spec = MechanismSpec(
        name="perceiver-attention", category="cross-attention", complexity="O(n·l)",
        use_case="Large inputs",
        paper="Jaegle et al. 2021, Perceiver IO: A General Architecture for Structured Inputs & "
              "Outputs (arXiv:2107.14795)",
        compiled=True,
        notes="Encode, process and decode are rerank.attention calls (the compiled tiled kernel). "
              "Latents Z0 default to a seeded standard-normal (num_latents × d) array, shared by "
              "every batch and head; W_q, W_k (d × d) default to the identity. The latents have "
              "d channels, so the decode compares q with Z: when dv = d, W_v and W_o default to "
              "the identity; when dv ≠ d both must be given (W_v: dv × d, W_o: d × dv). The "
              "process rounds are plain latent self-attention (the paper's residual MLP blocks "
              "and layer norms are out of scope). Queries never see the keys, so causal masks "
              "and per-query masks are not supported; a key-padding mask (shape (m,) or "
              "(…, 1, 1, m)) applies to the encode. GQA: the latents read each key/value head; "
              "query head h reads the latents of its key/value head.")

    supports_causal = False

    def __init__(self, *, num_latents=32, latents=None, w_q=None, w_k=None, w_v=None, w_o=None,
                 process=0, seed=0):
        self.latents = _weight("latents", latents)
        self.num_latents = (self.latents.shape[0] if self.latents is not None
                            else positive_int("num_latents", num_latents))
        self.w_q, self.w_k = _weight("w_q", w_q), _weight("w_k", w_k)
        self.w_v, self.w_o = _weight("w_v", w_v), _weight("w_o", w_o)
        for name, w in (("w_q", self.w_q), ("w_k", self.w_k)):
            if w is not None and w.shape[0] != w.shape[1]:
                raise ValueError(f"{name} must be square (d × d); got {w.shape}")
        if isinstance(process, bool) or not isinstance(process, int) or process < 0:
            raise ValueError(f"process must be a non-negative integer; got {process!r}")
        self.process = process
        self.seed = seed
        #: Seeded latent arrays per width d, made on first use when ``latents`` is not given.
        self.seeded_latents: dict[int, np.ndarray] = {}

    def latents_for(self, d: int) -> np.ndarray:
        """Z0 (l × d): the given latents, or the seeded ones for this d."""
        if self.latents is not None:
            return self.latents
        if d not in self.seeded_latents:
            rng = np.random.default_rng(self.seed)
            self.seeded_latents[d] = rng.standard_normal((self.num_latents, d)).astype(np.float32)
        return self.seeded_latents[d]

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        shape = np.shape(mask) if mask is not None else ()
        if len(shape) >= 2 and shape[-2] != 1 or len(shape) >= 3 and shape[-3] != 1:
            reasons.append("perceiver-attention supports only key-padding masks (shape (m,) or "
                           "(…, 1, 1, m)): queries attend to the latents, not to the keys")
        d, dv = np.shape(q)[-1], np.shape(v)[-1]
        if dv != d and (self.w_v is None or self.w_o is None):
            reasons.append(f"perceiver-attention with dv ({dv}) ≠ d ({d}) needs w_v (dv × d) "
                           "and w_o (d × dv): the latents have d channels")
        return reasons

    def _check_shapes(self, d: int, dv: int) -> None:
        if self.latents is not None and self.latents.shape[1] != d:
            raise ValueError(f"latents must have d = {d} columns; got {self.latents.shape}")
        _expect_shape("w_q", self.w_q, (d, d))
        _expect_shape("w_k", self.w_k, (d, d))
        _expect_shape("w_v", self.w_v, (dv, d))
        _expect_shape("w_o", self.w_o, (d, dv))

    def _encode4(self, k4, v4, key_mask, scale):
        d = k4.shape[-1]
        z0 = _project(self.latents_for(d), self.w_q)
        z0 = np.broadcast_to(z0, k4.shape[:2] + z0.shape)
        z = attention(z0, _project(k4, self.w_k), _project(v4, self.w_v), mask=key_mask,
                      scale=scale)
        for _ in range(self.process):
            z = attention(z, z, z, scale=scale)
        return z

    def encode(self, k, v, *, mask=None, scale=None) -> np.ndarray:
        """The latents after encode and process: (l, d), (h_kv, l, d) or (b, h_kv, l, d)."""
        _, k4, v4, mask4, scale, _ = prepare(k, k, v, mask, scale)
        self._check_shapes(k4.shape[-1], v4.shape[-1])
        key_mask = None if mask4 is None else mask4[:, :1, :1, :]
        z = self._encode4(k4, v4, key_mask, scale)
        return z.reshape(np.shape(k)[:-2] + z.shape[-2:])

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        self._check_shapes(q4.shape[-1], v4.shape[-1])
        key_mask = None if mask4 is None else mask4[:, :1, :1, :]
        z = self._encode4(k4, v4, key_mask, scale)
        return attention(q4, z, _project(z, self.w_o), scale=scale).reshape(out_shape)


class GatedCrossAttention(Mechanism):
    """Flamingo's tanh-gated cross-attention: y = q + tanh(α)·softmax(q·kᵀ/√d + mask)·v, a
    residual whose gate α starts at 0, so a fresh layer passes q through unchanged."""

    spec = MechanismSpec(
        name="gated-cross-attention", category="cross-attention", complexity="O(n·m)",
        use_case="Multi-modal",
        paper="Alayrac et al. 2022, Flamingo: a Visual Language Model for Few-Shot Learning "
              "(arXiv:2204.14198)",
        compiled=True,
        notes="alpha (the learned scalar gate) defaults to 0 as in the paper: the frozen "
              "language model's activations pass through unchanged at initialisation. q, k, v "
              "are taken as already projected (Flamingo's W_q, W_k, W_v, W_o live outside this "
              "layer), and the gated feed-forward half of the block (y + tanh(β)·FFW(y)) is out "
              "of scope. The residual needs dv = d. Attention runs in the compiled tiled kernel.")

    def __init__(self, *, alpha=0.0):
        self.alpha = finite_float("alpha", alpha)

    @property
    def gate(self) -> float:
        return math.tanh(self.alpha)

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        d, dv = np.shape(q)[-1], np.shape(v)[-1]
        if dv != d:
            reasons.append(f"gated-cross-attention adds the attention to q, so dv ({dv}) must "
                           f"equal d ({d})")
        return reasons

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        attended = attention(q4, k4, v4, mask=mask4, causal=causal, scale=scale)
        return (q4 + np.float32(self.gate) * attended).reshape(out_shape)


MECHANISMS = (CrossAttention, PerceiverAttention, GatedCrossAttention, MemoryAttention,
              HierarchicalCrossAttention)
