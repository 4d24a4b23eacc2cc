"""retrieve → rerank → top k. The pipeline alone over-fetches and owns the final order.

It asks its candidate step for n = min(k·overfetch, cap, available) candidates (at least k), gives
them to the rerank step, and keeps the first k of the reranked order. If reranking fails, the
vector order is returned and ``RankedResults.fallback`` says why. Every result carries per-stage
timings (``retrieve``, ``rerank``, ``total``, in ms) and the mechanism and backend that ran.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from .reranker import Candidates, RankedResults, results_in_order
from .validation import positive_int

log = logging.getLogger(__name__)


class Pipeline:
    """Two steps and the policy between them: ``candidates(query, n, filter)`` returns
    ``(Candidates, vector_scores)`` best first by vector score, ``rerank(query, candidates, k)``
    returns :class:`RankedResults`."""

    def __init__(self, candidates: Callable, rerank: Callable, *, overfetch: int = 3,
                 cap: int = 100, fallback_on_error: bool = True):
        self.candidates = candidates
        self.rerank = rerank
        self.overfetch = positive_int("overfetch", overfetch)
        self.cap = positive_int("cap", cap)
        self.fallback_on_error = fallback_on_error

    def candidate_count(self, k: int, available: int) -> int:
        """How many candidates to fetch for top ``k``: min(k·overfetch, cap, available), ≥ k."""
        k = positive_int("k", k)
        if k > available:
            raise ValueError(f"k = {k} is larger than the {available} documents available")
        return min(max(k, min(k * self.overfetch, self.cap)), available)

    def run(self, query, k: int, *, available: int, filter=None) -> RankedResults:
        """Top ``k`` for ``query``: fetch, rerank (or fall back to the vector order), cut."""
        start = time.perf_counter()
        n = self.candidate_count(k, available)
        cands, vector_scores = self.candidates(query, n, filter)
        fetched = time.perf_counter()
        try:
            ranked = self.rerank(query, cands, k)
            fallback = None
        except Exception as exc:  # noqa: BLE001 - the policy is: never lose the answer
            if not self.fallback_on_error:
                raise
            log.warning("rerank failed, returning the vector order: %s", exc)
            ranked = RankedResults(results_in_order(cands, range(len(cands)), vector_scores),
                                   mechanism="vector-order", backend="none")
            fallback = f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        timings = {"retrieve": (fetched - start) * 1e3, "rerank": (done - fetched) * 1e3,
                   "total": (done - start) * 1e3}
        return RankedResults(ranked.results[:k], mechanism=ranked.mechanism,
                             backend=ranked.backend, timings_ms=timings, fallback=fallback)


__all__ = ["Candidates", "Pipeline", "RankedResults"]
