"""``AttentionEnhancedMemory``: a memory whose ``retrieve`` reranks with attention (ADR-029's
second integration example): candidates from ``search`` at k·overfetch, the attention rerank, top k.

Subclasses override one step: ``candidates`` (what to fetch), ``rerank`` (how to order) or
``score`` (the scores alone).
"""
from __future__ import annotations

import numpy as np

from rerank import backend
from rerank.pipeline import Pipeline
from rerank.reranker import Candidates, RankedResults, Reranker, results_in_order

from .unified import UnifiedMemoryService


class AttentionEnhancedMemory(UnifiedMemoryService):
    """``retrieve(query, k, filter=None)`` → top k after an attention rerank of
    min(k·overfetch, cap) vector candidates; falls back to the vector order if reranking fails."""

    def __init__(self, *args, reranker: Reranker | None = None, overfetch: int = 3,
                 cap: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        self.reranker = reranker or Reranker("memory-attention")
        self.pipeline = Pipeline(self.candidates, self.rerank, overfetch=overfetch, cap=cap)

    def retrieve(self, query, k: int, *, filter=None) -> RankedResults:
        """Top ``k`` documents for ``query`` (a vector, or text with an embedder)."""
        query_vector = self._embed_query(query)
        return self.pipeline.run(query_vector, k, available=self.available(filter), filter=filter)

    def candidates(self, query_vector: np.ndarray, n: int, filter=None):
        """Step 1: ``(Candidates, vector_scores)`` — the parent's ``search`` for exactly n."""
        hits = self.search(query_vector, n, filter=filter)
        cands = Candidates(vectors=np.stack([h["vector"] for h in hits]),
                           ids=[h["corpus_id"] for h in hits],
                           texts=[h.get("text") for h in hits],
                           metadata=[h.get("metadata") for h in hits])
        return cands, np.array([h["score"] for h in hits], dtype=np.float32)

    def rerank(self, query_vector: np.ndarray, candidates: Candidates, k: int) -> RankedResults:
        """Step 2: order the candidates by ``score`` and keep the best k."""
        scores = self.score(query_vector, candidates)
        order = np.argsort(-scores, kind="stable")[:k]
        return RankedResults(results_in_order(candidates, order, scores),
                             mechanism=self.reranker.mechanism_for(candidates),
                             backend=backend.active())

    def score(self, query_vector: np.ndarray, candidates: Candidates) -> np.ndarray:
        """Step 3: one score per candidate (the reranker's scorer)."""
        return self.reranker.score(query_vector, candidates)
