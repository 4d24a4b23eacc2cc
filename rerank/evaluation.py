"""``rerank eval``: rank a labelled BEIR collection with dense retrieval alone and with each rerank
scorer over the dense top ``depth``; report nDCG@10, recall@10/100, MRR@10, time per query and a
paired sign-flip test against dense; optionally choose the text rerank's settings by 2-fold
cross-validation over queries (each query is scored with the setting chosen on the other half).

Every method's ranking is its reranked top ``depth`` followed by the dense ranks depth+1 … 100,
so recall@100 compares like with like.
"""
from __future__ import annotations

import time

import numpy as np

from . import metrics, scoring
from .text_settings import DEFAULT, FAMILY, TextRerankSettings, query_token_weights

#: Depth of the dense ranking every method is scored on (recall@100).
LIST_DEPTH = 100
#: Tokens per chunk when hierarchical scoring pools chunk vectors from stored token vectors.
CHUNK_TOKENS = 32


def _zmix(dense: np.ndarray, sim: np.ndarray, lam: float) -> np.ndarray:
    def z(x):
        sd = x.std()
        return (x - x.mean()) / sd if sd > 1e-6 * max(np.abs(x).max(), 1e-30) else 0.0 * x
    return z(dense.astype(np.float64)) + lam * z(sim.astype(np.float64))


def _pooled_chunks(tokens: np.ndarray, offsets: np.ndarray, size: int):
    """Chunk vectors: the normalised mean of each run of ``size`` token vectors per document
    (int8 codes are normalised per token first: their scales do not matter)."""
    if tokens.dtype == np.int8:
        tokens = tokens.astype(np.float32)
        tokens /= np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    chunks, counts = [], []
    for a, b in zip(offsets[:-1], offsets[1:]):
        parts = [tokens[i:min(i + size, b)].mean(axis=0) for i in range(a, b, size)]
        chunks.extend(parts)
        counts.append(len(parts))
    chunks = np.stack(chunks)
    chunks /= np.maximum(np.linalg.norm(chunks, axis=1, keepdims=True), 1e-12)
    return chunks.astype(np.float32), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _metrics_row(name, rankings, qrels, qids, ms, dense_ndcg=None, *, default=False, **extra):
    ndcg = np.array([metrics.ndcg_at_k(rankings[q], qrels[q], 10) for q in qids])
    row = {"method": name, "default": default,
           "ndcg@10": float(ndcg.mean()),
           "recall@10": float(np.mean([metrics.recall_at_k(rankings[q], qrels[q], 10)
                                       for q in qids])),
           "recall@100": float(np.mean([metrics.recall_at_k(rankings[q], qrels[q], 100)
                                        for q in qids])),
           "mrr@10": float(np.mean([metrics.mrr_at_k(rankings[q], qrels[q], 10) for q in qids])),
           "ms_per_query": float(ms),
           "p_value": (None if dense_ndcg is None else
                       float(metrics.paired_sign_flip_test(ndcg, dense_ndcg)))}
    row.update(extra)
    return row, ndcg


def evaluate(memory, dataset, *, depth: int = 30, settings: TextRerankSettings = DEFAULT,
             cv: bool = False, family=FAMILY, progress=None) -> dict:
    """Evaluate ``memory`` (an :class:`~memory_adapter.AttentionEnhancedMemory` holding the
    collection's corpus, with an embedder) on ``dataset`` (:class:`rerank.corpus.BeirDataset`).

    Methods: ``dense`` (the index's order), ``cross-attention`` (late interaction with
    ``settings``; the default), ``memory-attention`` (4 heads over the pooled vectors),
    ``hierarchical-cross-attention`` (chunks pooled from runs of 32 stored token vectors) and,
    with ``cv``, ``cross-attention (2-fold CV)`` choosing from ``family``. ``progress``: called
    with (done, total) after each query. Returns DESIGN.md's eval document."""
    if memory.embedder is None:
        raise ValueError("evaluation needs a memory with an embedder (the queries are text)")
    count = memory.count()
    qids = [q for q in dataset.queries if q in dataset.qrels]
    if not qids:
        raise ValueError(f"the dataset {dataset.name!r} has no queries with relevance judgements")
    if count == 0:
        raise ValueError("the memory is empty: index the collection's corpus first "
                         "(rerank index DIR --db ...)")
    depth = min(int(depth), count)
    if depth < 1:
        raise ValueError(f"depth must be ≥ 1; got {depth}")
    list_depth = min(LIST_DEPTH, count)
    texts = [dataset.queries[q] for q in qids]
    start = time.perf_counter()
    vectors = memory.embedder.embed(texts)
    tokens, offsets = memory.embedder.embed_tokens(texts)
    piece_ids = (memory.embedder.token_ids(texts)
                 if callable(getattr(memory.embedder, "token_ids", None)) else None)
    embed_ms = (time.perf_counter() - start) * 1e3 / len(qids)
    is_word = getattr(memory.embedder, "is_word", None)
    store = memory.document_store
    has_df = hasattr(store, "document_frequencies")

    from .mechanisms import registry
    pooled = registry.get("memory-attention", heads=4)
    variants = sorted({(s.tau, s.idf, s.words_only) for s in (family if cv else ())}
                      | {(settings.tau, settings.idf, settings.words_only)},
                      key=repr)
    dense_rank, default_rank, pooled_rank, hier_rank = {}, {}, {}, {}
    family_rank = {s: {} for s in family} if cv else {}
    ms = {"dense": 0.0, "default": 0.0, "pooled": 0.0, "hier": 0.0}
    skipped_tokens = 0
    for n, qid in enumerate(qids):
        t0 = time.perf_counter()
        hits = memory.search(vectors[n], list_depth, documents=False)
        t1 = time.perf_counter()
        ids = [h["corpus_id"] for h in hits]
        dense = np.array([h["score"] for h in hits], np.float32)
        ms["dense"] += (t1 - t0) * 1e3
        dense_rank[qid] = ids
        head, tail = ids[:depth], ids[depth:]
        cand_vectors = np.stack([h["vector"] for h in hits[:depth]])

        t2 = time.perf_counter()
        order = np.argsort(-pooled.score(vectors[n], cand_vectors), kind="stable")
        pooled_rank[qid] = [head[i] for i in order] + tail
        ms["pooled"] += (time.perf_counter() - t2) * 1e3 + (t1 - t0) * 1e3

        t3 = time.perf_counter()
        doc_tokens, doc_offsets = memory.candidate_tokens(head)
        fetched = time.perf_counter()
        if doc_tokens is None:
            skipped_tokens += 1
            for target in (default_rank, hier_rank, *family_rank.values()):
                target[qid] = ids
            continue
        qt = tokens[offsets[n]:offsets[n + 1]]
        pieces = None if piece_ids is None else piece_ids[n]
        df = total = words = None
        if pieces is not None and has_df:
            df, total = store.document_frequencies(pieces)
        if pieces is not None and callable(is_word):
            words = is_word(pieces)
        sims = {}
        for tau, idf, words_only in variants:
            w = query_token_weights(TextRerankSettings(tau, 1.0, idf, words_only), df,
                                    total or 0, words)
            t4 = time.perf_counter()
            sims[(tau, idf, words_only)] = scoring.late_interaction(
                qt, doc_tokens, doc_offsets, tau=tau, idf=w, dense=dense[:depth],
                lam=settings.lam, details=True)
            if (tau, idf, words_only) == (settings.tau, settings.idf, settings.words_only):
                ms["default"] += ((time.perf_counter() - t4) + (fetched - t3) + (t1 - t0)) * 1e3
        chosen = sims[(settings.tau, settings.idf, settings.words_only)]
        default_rank[qid] = [head[i] for i in np.argsort(-chosen.final, kind="stable")] + tail
        for s in family_rank:
            d = sims[(s.tau, s.idf, s.words_only)]
            final = _zmix(d.dense, d.similarity, s.lam)
            family_rank[s][qid] = [head[i] for i in np.argsort(-final, kind="stable")] + tail

        t5 = time.perf_counter()
        chunks, chunk_offsets = _pooled_chunks(doc_tokens, doc_offsets, CHUNK_TOKENS)
        hier = scoring.hierarchical(vectors[n], chunks, chunk_offsets, dense=dense[:depth])
        hier_rank[qid] = [head[i] for i in np.argsort(-hier, kind="stable")] + tail
        ms["hier"] += ((time.perf_counter() - t5) + (fetched - t3) + (t1 - t0)) * 1e3
        if progress is not None:
            progress(n + 1, len(qids))

    qrels = dataset.qrels
    nq = len(qids)
    rows = []
    dense_row, dense_ndcg = _metrics_row("dense", dense_rank, qrels, qids, ms["dense"] / nq)
    rows.append(dense_row)
    row, _ = _metrics_row("cross-attention", default_rank, qrels, qids, ms["default"] / nq,
                          dense_ndcg, default=True, settings=settings.to_dict(),
                          label=settings.label)
    rows.append(row)
    rows.append(_metrics_row("memory-attention", pooled_rank, qrels, qids, ms["pooled"] / nq,
                             dense_ndcg, label="4 heads, τ=0.1, pooled vectors")[0])
    rows.append(_metrics_row("hierarchical-cross-attention", hier_rank, qrels, qids,
                             ms["hier"] / nq, dense_ndcg,
                             label=f"chunks: means of {CHUNK_TOKENS} stored token vectors")[0])
    result = {"dataset": dataset.name, "queries": nq, "documents": count, "depth": depth,
              "embed_ms_per_query": embed_ms, "methods": rows}
    if skipped_tokens:
        result["queries_without_token_vectors"] = skipped_tokens
    if cv:
        result["cross_validation"] = _cross_validate(family_rank, qrels, qids, dense_ndcg,
                                                     ms["default"] / nq, rows)
    return result


def _cross_validate(family_rank, qrels, qids, dense_ndcg, ms, rows) -> dict:
    """Choose a setting on each half of the queries, score the other half with it."""
    per_setting = {s: np.array([metrics.ndcg_at_k(r[q], qrels[q], 10) for q in qids])
                   for s, r in family_rank.items()}
    position = {q: i for i, q in enumerate(qids)}
    held_out, folds = {}, []
    for train, test in metrics.two_fold_splits(qids):
        tr = np.array([position[q] for q in train])
        te = np.array([position[q] for q in test])
        best = max(per_setting, key=lambda s: per_setting[s][tr].mean())   # ties: the first
        folds.append({"chosen": best.to_dict(), "label": best.label,
                      "train_queries": len(train), "test_queries": len(test),
                      "train_ndcg@10": float(per_setting[best][tr].mean()),
                      "test_ndcg@10": float(per_setting[best][te].mean())})
        for q in test:
            held_out[q] = family_rank[best][q]
    row, _ = _metrics_row("cross-attention (2-fold CV)", held_out, qrels, qids, ms, dense_ndcg,
                          label="each half ranked with the setting chosen on the other half")
    rows.append(row)
    overall = max(per_setting, key=lambda s: per_setting[s].mean())
    return {"family_size": len(per_setting), "folds": folds,
            "chosen_on_all_queries": overall.to_dict(),
            "settings": [{"label": s.label, **s.to_dict(), "ndcg@10": float(v.mean())}
                         for s, v in sorted(per_setting.items(), key=lambda kv: -kv[1].mean())]}
