"""``AttentionEnhancedMemory``: a memory whose ``retrieve`` reranks with attention (ADR-029's
second integration example): candidates from ``search`` at k·overfetch, the attention rerank, top k.

Subclasses override one step: ``candidates`` (what to fetch), ``rerank`` (how to order) or
``score`` (the scores alone).

``retrieve`` runs the memory's hooks first (``memory.hooks``: the registry given as ``hooks=``,
else the global :data:`rerank.hooks.default_registry`): with ``task=`` the intelligence hooks pick
the mechanism, and pre-retrieval hooks may change the mechanism, overfetch or text settings for
that query. The mechanism that ran is ``results.mechanism``; skipped hooks are in
``results.hook_errors``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from rerank import backend, scoring
from rerank.hooks import AttentionSettings, HookRegistry
from rerank.mechanisms import registry
from rerank.pipeline import Pipeline
from rerank.reranker import Candidates, RankedResults, Reranker, results_in_order
from rerank.text_settings import DEFAULT, TextRerankSettings, query_token_weights
from rerank.validation import positive_int

from .unified import UnifiedMemoryService


@dataclass(frozen=True)
class MemoryQuery:
    """A query as the retrieve steps see it: its vector (d,) and, for text, its token vectors
    (t, d) with their weights (t,) (IDF over the stored corpus; ``None``: equal weights), and
    what the hooks chose for it: ``mechanism`` and ``text_settings`` (``None``: the memory's)."""
    vector: np.ndarray
    tokens: np.ndarray | None = None
    weights: np.ndarray | None = None
    mechanism: str | None = None
    text_settings: TextRerankSettings | None = None


def attention_scores(mechanism: str, query, vectors, dense=None) -> np.ndarray:
    """One score per candidate from any registry mechanism: the attention weight the query
    (d,) puts on each candidate row of ``vectors`` (c, d), i.e. ``forward(q, K, I_c)``. The
    scorers score: ``memory-attention`` as it does, ``hierarchical-cross-attention`` with each
    candidate as its own single chunk, mixed with ``dense``. Mechanisms whose forward cannot
    take one query over c keys (e.g. ``star-attention``) raise."""
    mech = registry.get(mechanism)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    q = np.ascontiguousarray(query, dtype=np.float32)
    if mechanism == "memory-attention":
        return mech.score(q, vectors)
    if mechanism == "hierarchical-cross-attention":
        return mech.score(q, vectors, np.arange(len(vectors) + 1, dtype=np.int64), dense=dense)
    return np.asarray(mech.forward(q[None], vectors, np.eye(len(vectors), dtype=np.float32)),
                      dtype=np.float32).reshape(-1)


class AttentionEnhancedMemory(UnifiedMemoryService):
    """``retrieve(query, k, filter=None)`` → top k after an attention rerank of
    min(k·overfetch, cap) vector candidates; falls back to the vector order if reranking fails.

    Candidates carry the index's vectors only; texts and metadata are read from the store for the
    final k. A subclass whose ``score`` needs the candidates' texts or metadata sets
    ``candidate_documents = True`` (one store read of every candidate, ~0.5 ms for 30).

    ``text_settings``: τ, λ, IDF and the query-token filter of the text rerank (default:
    :data:`rerank.text_settings.DEFAULT`, chosen by cross-validation). ``hooks``: the
    :class:`~rerank.hooks.HookRegistry` ``retrieve`` runs (default: the global one)."""

    candidate_documents = False

    def __init__(self, *args, reranker: Reranker | None = None, overfetch: int = 3,
                 cap: int = 100, text_settings: TextRerankSettings = DEFAULT,
                 hooks: HookRegistry | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(text_settings, TextRerankSettings):
            raise TypeError("text_settings must be a rerank.text_settings.TextRerankSettings; got "
                            f"{type(text_settings).__name__}")
        self.reranker = reranker or Reranker()
        self.text_settings = text_settings
        self.pipeline = Pipeline(self.candidates, self.rerank, overfetch=overfetch, cap=cap,
                                 hooks=hooks)

    @property
    def hooks(self) -> HookRegistry:
        """The hook registry ``retrieve`` runs (the pipeline's)."""
        return self.pipeline.hooks

    def query(self, query, text_settings: TextRerankSettings | None = None) -> MemoryQuery:
        """The query as its vector and, for text when token vectors are stored, its tokens and
        their weights (IDF from the store's word-piece statistics, when the embedder gives
        word-piece ids) under ``text_settings`` (default: the memory's)."""
        settings = self.text_settings if text_settings is None else text_settings
        vector = self._embed_query(query)
        if not (isinstance(query, str) and self.store_tokens):
            return MemoryQuery(vector)
        tokens = self.embedder.embed_tokens([query])[0]
        ids = self._embed_token_ids([query], [tokens])
        df = n = is_word = None
        if ids is not None:
            if settings.idf and hasattr(self.document_store, "document_frequencies"):
                df, n = self.document_store.document_frequencies(ids[0])
            if settings.words_only and callable(getattr(self.embedder, "is_word",
                                                                  None)):
                is_word = self.embedder.is_word(ids[0])
        weights = query_token_weights(settings, df, n or 0, is_word)
        return MemoryQuery(vector, tokens, weights)

    def retrieve(self, query, k: int, *, filter=None, task: str | None = None) -> RankedResults:
        """Top ``k`` documents for ``query`` (a vector, or text with an embedder). Text queries
        over stored token vectors rerank by late interaction (cross-attention), z-mixed with the
        vector scores; otherwise memory-attention reranks the pooled vectors — unless the hooks
        (run first; ``task`` consults the intelligence hooks) choose another mechanism."""
        with self.filter_snapshot():
            return self._retrieve(query, k, filter, task)

    def _retrieve(self, query, k: int, filter, task) -> RankedResults:
        prepared = self.pipeline.prepare(
            query, k, task=task, filter=filter, source="memory",
            settings=AttentionSettings(overfetch=self.pipeline.overfetch,
                                       text_settings=self.text_settings))
        chosen = prepared.settings
        mq = (self.query(query) if chosen.text_settings in (None, self.text_settings)
              else self.query(query, chosen.text_settings))
        mq = replace(mq, mechanism=chosen.mechanism, text_settings=chosen.text_settings)
        # the pipeline fetches at most max(k, cap) candidates: counting further is wasted
        available = self.available(filter, at_most=max(positive_int("k", k), self.pipeline.cap))
        ranked = self.pipeline.run(mq, k, available=available, filter=filter,
                                   prepared=prepared)
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

    def candidates(self, query: MemoryQuery, n: int, filter=None):
        """Step 1: ``(Candidates, vector_scores)`` — the parent's ``search`` for exactly n, with
        the candidates' stored token vectors when the query has tokens."""
        hits = self.search(query.vector, n, filter=filter, documents=self.candidate_documents)
        ids = [h["corpus_id"] for h in hits]
        tokens = offsets = None
        for attempt in range(3 if query.tokens is not None else 0):
            try:
                tokens, offsets = self.candidate_tokens(ids)
                break
            except KeyError:
                # deleted by a concurrent write since the search: drop them, as search does
                if attempt == 2:
                    raise
                present = self.document_store.documents(ids)
                hits = [h for h, d in zip(hits, present) if d is not None]
                ids = [h["corpus_id"] for h in hits]
        if not hits:
            raise KeyError("every candidate was deleted by a concurrent write; search again")
        scores = np.array([h["score"] for h in hits], dtype=np.float32)
        cands = Candidates(vectors=np.stack([h["vector"] for h in hits]), ids=ids,
                           texts=[h["text"] for h in hits] if self.candidate_documents else None,
                           metadata=([h["metadata"] for h in hits] if self.candidate_documents
                                     else None),
                           tokens=tokens, token_offsets=offsets, dense=scores)
        return cands, scores

    def candidate_tokens(self, ids) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The stored token vectors of ``ids`` as one ragged matrix (T, d) and offsets (c+1,),
        or ``(None, None)`` when any of them has none. An int8 store gives its int8 codes as
        they are (the int8 late-interaction kernel reads them; no dequantising)."""
        store = self.document_store
        if getattr(store, "token_dtype", None) == "int8" and hasattr(store, "token_codes"):
            stored = [None if t is None else t.codes for t in store.token_codes(ids)]
        else:
            stored = self.token_vectors(ids)
        if not stored or any(t is None for t in stored):
            return None, None
        return (np.concatenate(stored),
                np.concatenate([[0], np.cumsum([len(t) for t in stored])]).astype(np.int64))

    def rerank(self, query: MemoryQuery, candidates: Candidates, k: int) -> RankedResults:
        """Step 2: order the candidates by ``score`` and keep the best k."""
        scores = self.score(query, candidates)
        order = np.argsort(-scores, kind="stable")[:k]
        return RankedResults(results_in_order(candidates, order, scores),
                             mechanism=query.mechanism or self.reranker.mechanism_for(candidates),
                             backend=backend.active())

    def score(self, query: MemoryQuery, candidates: Candidates) -> np.ndarray:
        """Step 3: one score per candidate: late interaction with ``text_settings`` when both
        sides have token vectors (z-mixed with the vector scores), else the reranker's scorer
        (memory-attention over the pooled vectors). A ``query.mechanism`` chosen by the hooks
        scores with that mechanism instead (:func:`attention_scores` for those that have no
        rerank scorer)."""
        mechanism = query.mechanism
        late = candidates.tokens is not None and query.tokens is not None
        if late and mechanism in (None, "cross-attention"):
            s = query.text_settings or self.text_settings
            return scoring.late_interaction(query.tokens, candidates.tokens,
                                            candidates.token_offsets, tau=s.tau,
                                            idf=query.weights, dense=candidates.dense, lam=s.lam)
        if mechanism is None:
            return self.reranker.score(query.vector, candidates)
        if mechanism == "memory-attention" and self.reranker.mechanism in (None, mechanism):
            return self.reranker.score(query.vector, candidates.vectors)  # its params (heads, τ)
        return attention_scores(mechanism, query.vector, candidates.vectors, candidates.dense)
