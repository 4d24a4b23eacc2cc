"""``AttentionEnhancedMemory``: a memory whose ``retrieve`` reranks with attention (ADR-029's
second integration example): candidates from ``search`` at k·overfetch, the attention rerank, top k.

Subclasses override one step: ``candidates`` (what to fetch), ``rerank`` (how to order) or
``score`` (the scores alone).
"""
from __future__ import annotations

import time

import numpy as np

from rerank import backend
from rerank.pipeline import Pipeline
from rerank.reranker import Candidates, RankedResults, Reranker, results_in_order

from .unified import UnifiedMemoryService


class AttentionEnhancedMemory(UnifiedMemoryService):
    """``retrieve(query, k, filter=None)`` → top k after an attention rerank of
    min(k·overfetch, cap) vector candidates; falls back to the vector order if reranking fails.

    Candidates carry the index's vectors only; texts and metadata are read from the store for the
    final k. A subclass whose ``score`` needs the candidates' texts or metadata sets
    ``candidate_documents = True`` (one store read of every candidate, ~0.5 ms for 30)."""

    candidate_documents = False

    def __init__(self, *args, reranker: Reranker | None = None, overfetch: int = 3,
                 cap: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        self.reranker = reranker or Reranker("memory-attention")
        self.pipeline = Pipeline(self.candidates, self.rerank, overfetch=overfetch, cap=cap)

    def retrieve(self, query, k: int, *, filter=None) -> RankedResults:
        """Top ``k`` documents for ``query`` (a vector, or text with an embedder)."""
        query_vector = self._embed_query(query)
        ranked = self.pipeline.run(query_vector, k, available=self.available(filter),
                                   filter=filter)
        if not self.candidate_documents:
            start = time.perf_counter()
            self._attach_documents(ranked)
            ms = (time.perf_counter() - start) * 1e3
            ranked.timings_ms["documents"] = ms
            ranked.timings_ms["total"] += ms
        return ranked

    def _attach_documents(self, ranked: RankedResults) -> None:
        """Add text and metadata to the final results; drop any deleted since the search."""
        documents = self.document_store.documents([r["corpus_id"] for r in ranked])
        kept = []
        for item, document in zip(ranked.results, documents):
            if document is not None:
                item["text"], item["metadata"] = document
                kept.append(item)
        ranked.results = kept

    def candidates(self, query_vector: np.ndarray, n: int, filter=None):
        """Step 1: ``(Candidates, vector_scores)`` — the parent's ``search`` for exactly n."""
        hits = self.search(query_vector, n, filter=filter, documents=self.candidate_documents)
        cands = Candidates(vectors=np.stack([h["vector"] for h in hits]),
                           ids=[h["corpus_id"] for h in hits],
                           texts=[h["text"] for h in hits] if self.candidate_documents else None,
                           metadata=([h["metadata"] for h in hits] if self.candidate_documents
                                     else None))
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
