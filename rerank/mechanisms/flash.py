"""Flash-attention family: exact attention computed tile by tile with an online softmax."""
from __future__ import annotations

from ..attention import attention
from .base import Mechanism, MechanismSpec


class FlashAttentionV2(Mechanism):
    """Exact softmax(q·kᵀ/√d + mask)·v by the FlashAttention-2 recurrence: per query tile, key
    tiles update a running max m, sum l and output o (o ← o·e^(m−m') + e^(s−m')·v); memory
    O(tile·d) per thread, never O(n²). Parallel over batch × head × query tile."""

    spec = MechanismSpec(
        name="flash-attention-v2", category="flash", complexity="O(n²) IO-opt",
        use_case="GPU optimization", paper="Dao 2023, FlashAttention-2 (arXiv:2307.08691)",
        compiled=True,
        notes="query tiles of 256 rows × key tiles of 512, sgemm per tile, online softmax in fp32")

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        return attention(q, k, v, mask=mask, causal=causal, scale=scale)


MECHANISMS = (FlashAttentionV2,)
