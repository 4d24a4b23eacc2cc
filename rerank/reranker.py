"""``Reranker``: rank candidates for a query with one of the rerank scorers.

Results are shaped like sentence-transformers' ``CrossEncoder.rank``: a list of
``{"corpus_id", "score", "text"?, "metadata"?}`` best first, in a :class:`RankedResults` that also
records the mechanism and backend that ran and per-stage timings.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .mechanisms import registry
from .validation import as_float32, positive_int

#: The scorers a Reranker can run, by what the candidates carry.
SCORERS = ("memory-attention", "cross-attention", "hierarchical-cross-attention")


@dataclass
class Candidates:
    """A candidate set: pooled ``vectors`` (c, d) and, optionally, ``ids``, ``texts``, ``metadata``,
    token vectors (``tokens`` (T, d) + ``token_offsets`` (c+1,); int8 codes or an ``Int8Rows``
    as stored run the int8 late-interaction kernel), chunk vectors (``chunks`` (C, d) +
    ``chunk_offsets`` (c+1,)) and ``dense`` (c,): first-stage scores that late interaction and
    hierarchical scoring mix with (default: cosine of query and ``vectors``)."""
    vectors: np.ndarray | None = None
    ids: Sequence | None = None
    texts: Sequence[str] | None = None
    metadata: Sequence[dict] | None = None
    tokens: np.ndarray | None = None
    token_offsets: np.ndarray | None = None
    chunks: np.ndarray | None = None
    chunk_offsets: np.ndarray | None = None
    dense: np.ndarray | None = None

    def __post_init__(self):
        if self.vectors is None and self.tokens is None and self.chunks is None:
            raise ValueError("candidates need vectors, tokens or chunks")
        if self.vectors is not None:
            self.vectors = as_float32("candidates.vectors", self.vectors, (2,))
        for name, offs in (("token_offsets", self.token_offsets),
                           ("chunk_offsets", self.chunk_offsets)):
            if (offs is None) != (getattr(self, name.split("_")[0] + "s") is None):
                raise ValueError(f"candidates.{name} and candidates.{name.split('_')[0]}s "
                                 "come together")
        size = len(self)
        for name in ("ids", "texts", "metadata"):
            value = getattr(self, name)
            if value is not None and len(value) != size:
                raise ValueError(f"candidates.{name} has {len(value)} entries for {size} candidates")

    def __len__(self) -> int:
        if self.vectors is not None:
            return len(self.vectors)
        offsets = self.token_offsets if self.tokens is not None else self.chunk_offsets
        return len(offsets) - 1


class RankedResults(Sequence):
    """Ranked candidates, best first: each a dict ``{"corpus_id", "score", "text"?, "metadata"?}``
    (``corpus_id`` is the candidate's id, or its position when no ids were given)."""

    def __init__(self, results: list[dict], *, mechanism: str, backend: str,
                 timings_ms: dict | None = None, fallback: str | None = None):
        self.results = results
        self.mechanism = mechanism
        self.backend = backend
        self.timings_ms = dict(timings_ms or {})
        self.fallback = fallback

    def __getitem__(self, i):
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)

    def top_k(self, n: int) -> "RankedResults":
        """The first ``n`` results (with the same provenance)."""
        return RankedResults(self.results[:positive_int("n", n)], mechanism=self.mechanism,
                             backend=self.backend, timings_ms=self.timings_ms,
                             fallback=self.fallback)

    @property
    def ids(self) -> list:
        return [r["corpus_id"] for r in self.results]

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism, "backend": self.backend,
                "timings_ms": self.timings_ms, "fallback": self.fallback,
                "results": self.results}

    def __repr__(self) -> str:
        return (f"RankedResults({len(self)} results, mechanism={self.mechanism!r}, "
                f"backend={self.backend!r}{', fallback' if self.fallback else ''})")


def results_in_order(candidates: Candidates, order, scores, top_k=None) -> list[dict]:
    """Result dicts for ``candidates`` in ``order`` (the first ``top_k``) with their ``scores``."""
    order = list(order)[:top_k]
    out = []
    for i in order:
        item = {"corpus_id": candidates.ids[i] if candidates.ids is not None else int(i),
                "score": float(scores[i])}
        if candidates.texts is not None:
            item["text"] = candidates.texts[i]
        if candidates.metadata is not None:
            item["metadata"] = candidates.metadata[i]
        out.append(item)
    return out


@dataclass
class _Query:
    vector: np.ndarray | None = None        # (d,)
    tokens: np.ndarray | None = None        # (t, d)
    extra: dict = field(default_factory=dict)


class Reranker:
    """Rank candidates for a query with a rerank scorer.

    ``mechanism``: ``memory-attention`` (pooled vectors), ``cross-attention`` (late interaction:
    needs query tokens and candidate tokens) or ``hierarchical-cross-attention`` (candidate
    chunks); ``None`` picks by what the candidates carry (tokens → cross, chunks → hierarchical,
    else memory). ``params`` go to the mechanism (``tau``, ``heads``, ``lam`` …). A query is a
    vector (d,), query token vectors (t, d), or text when an ``embedder`` is given.
    """

    def __init__(self, mechanism: str | None = None, *, embedder=None, **params):
        if mechanism is not None and mechanism not in SCORERS:
            registry.spec(mechanism)  # unknown names raise with suggestions
            raise ValueError(f"{mechanism!r} has no rerank scorer; use one of {', '.join(SCORERS)}")
        self.mechanism = mechanism
        self.embedder = embedder
        self.params = params
        self._scorers = {}
        if mechanism is not None:
            self._scorer(mechanism)  # validates params now, not at the first query

    def _scorer(self, name):
        if name not in self._scorers:
            self._scorers[name] = registry.get(name, **self.params)
        return self._scorers[name]

    def mechanism_for(self, candidates) -> str:
        """The scorer ``rank`` runs for these candidates."""
        return self._choose(self._as_candidates(candidates))

    def score(self, query, candidates) -> np.ndarray:
        """One score per candidate, in the candidates' order (higher ranks first)."""
        cands = self._as_candidates(candidates)
        if len(cands) == 0:
            raise ValueError("candidates must not be empty")
        name = self._choose(cands)
        return self._scores(name, self._query(query, name == "cross-attention"), cands)

    def _choose(self, candidates: Candidates) -> str:
        if self.mechanism is not None:
            return self.mechanism
        if candidates.tokens is not None:
            return "cross-attention"
        if candidates.chunks is not None:
            return "hierarchical-cross-attention"
        return "memory-attention"

    def _query(self, query, needs_tokens: bool) -> _Query:
        if isinstance(query, str):
            if self.embedder is None:
                raise TypeError("a text query needs a Reranker(embedder=...); pass a vector instead")
            if needs_tokens:
                tokens, _ = self.embedder.embed_tokens([query])
                return _Query(vector=np.asarray(self.embedder.embed([query]))[0],
                              tokens=as_float32("query tokens", tokens, (2,)))
            return _Query(vector=as_float32("query", self.embedder.embed([query])[0], (1,)))
        arr = as_float32("query", query, (1, 2))
        if arr.ndim == 2:
            return _Query(vector=arr.mean(axis=0), tokens=arr)
        return _Query(vector=arr)

    def _scores(self, name: str, query: _Query, cands: Candidates) -> np.ndarray:
        scorer = self._scorer(name)
        if name == "memory-attention":
            if cands.vectors is None:
                raise ValueError("memory-attention needs candidate vectors")
            if query.vector.shape[0] != cands.vectors.shape[1]:
                raise ValueError(f"query has dimension {query.vector.shape[0]} but candidates "
                                 f"have {cands.vectors.shape[1]}")
            return scorer.score(query.vector, cands.vectors)
        dense = cands.dense
        if dense is None and cands.vectors is not None:
            if query.vector.shape[0] != cands.vectors.shape[1]:
                raise ValueError(f"query has dimension {query.vector.shape[0]} but candidates "
                                 f"have {cands.vectors.shape[1]}")
            qn = query.vector / max(float(np.linalg.norm(query.vector)), 1e-30)
            norms = np.maximum(np.linalg.norm(cands.vectors, axis=1), 1e-30)
            dense = (cands.vectors @ qn) / norms
        if name == "cross-attention":
            if query.tokens is None or cands.tokens is None:
                raise ValueError("cross-attention (late interaction) needs query tokens (a (t, d) "
                                 "array or text with an embedder) and candidate tokens")
            return scorer.score(query.tokens, cands.tokens, cands.token_offsets, dense=dense)
        if cands.chunks is None:
            raise ValueError("hierarchical-cross-attention needs candidate chunks")
        return scorer.score(query.vector, cands.chunks, cands.chunk_offsets, dense=dense)

    @staticmethod
    def _as_candidates(candidates) -> Candidates:
        if isinstance(candidates, Candidates):
            return candidates
        return Candidates(vectors=candidates)

    def rank(self, query, candidates, top_k: int | None = None) -> RankedResults:
        """Candidates ((c, d) array or :class:`Candidates`) ranked best first for ``query``."""
        start = time.perf_counter()
        cands = self._as_candidates(candidates)
        if len(cands) == 0:
            raise ValueError("candidates must not be empty")
        if top_k is not None:
            top_k = positive_int("top_k", top_k)
        name = self._choose(cands)
        q = self._query(query, needs_tokens=name == "cross-attention")
        scores = self._scores(name, q, cands)
        order = np.argsort(-scores, kind="stable")
        ms = (time.perf_counter() - start) * 1e3
        return RankedResults(results_in_order(cands, order, scores, top_k), mechanism=name,
                             backend=backend.active(), timings_ms={"rerank": ms})

    def rank_batch(self, queries, candidate_sets, top_k: int | None = None) -> list[RankedResults]:
        """``rank`` for each (query, candidates) pair; vector queries over equal-sized pooled
        candidate sets run as one batched memory-attention kernel call."""
        sets = [self._as_candidates(c) for c in candidate_sets]
        if len(sets) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(sets)} candidate sets")
        if not sets:
            return []
        if top_k is not None:
            top_k = positive_int("top_k", top_k)
        names = {self._choose(c) for c in sets}
        batched = (names == {"memory-attention"} and all(c.vectors is not None for c in sets)
                   and len({c.vectors.shape for c in sets}) == 1
                   and not any(isinstance(q, str) for q in queries))
        if not batched:
            return [self.rank(q, c, top_k) for q, c in zip(queries, sets)]
        start = time.perf_counter()
        qs = as_float32("queries", queries, (2,))
        if len(sets[0]) == 0:
            raise ValueError("candidates must not be empty")
        scores = self._scorer("memory-attention").score(qs, np.stack([c.vectors for c in sets]))
        ms = (time.perf_counter() - start) * 1e3 / len(sets)
        return [RankedResults(results_in_order(c, np.argsort(-s, kind="stable"), s, top_k),
                              mechanism="memory-attention", backend=backend.active(),
                              timings_ms={"rerank": ms})
                for c, s in zip(sets, scores)]

    async def rank_async(self, query, candidates, top_k: int | None = None) -> RankedResults:
        """``rank`` in a worker thread (the kernels release the GIL)."""
        import asyncio   # here, not at module level: it costs `import rerank` ~35 ms

        return await asyncio.to_thread(self.rank, query, candidates, top_k)

    async def rank_batch_async(self, queries, candidate_sets, top_k=None) -> list[RankedResults]:
        import asyncio

        return await asyncio.to_thread(self.rank_batch, queries, candidate_sets, top_k)
