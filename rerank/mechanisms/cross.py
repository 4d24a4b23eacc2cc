"""Cross-attention family. The three rerank scorers live here: their ``forward`` is exact attention
of the queries over the memory / candidate tokens / chunks, and ``score`` ranks candidates."""
from __future__ import annotations

from .. import scoring
from ..attention import attention
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


MECHANISMS = (CrossAttention, MemoryAttention, HierarchicalCrossAttention)
