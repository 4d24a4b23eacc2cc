"""Reranker and Pipeline: agreement of rank / rank_batch / rank_async, ordering, errors, fallback."""
import asyncio

import numpy as np
import pytest

from rerank import Candidates, RankedResults, Reranker, reference, scoring
from rerank.pipeline import Pipeline

from conftest import f32


def _cands(rng, c=30, d=32):
    return f32(rng, c, d)


def test_rank_orders_by_the_scorer(backend_name, rng):
    q, cands = f32(rng, 32), _cands(rng)
    res = Reranker().rank(q, cands)
    expected = reference.memory_attention_scores(q, cands)[0]
    assert res.ids == list(np.argsort(-expected, kind="stable"))
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    assert res.mechanism == "memory-attention" and res.backend == backend_name
    assert res.timings_ms["rerank"] >= 0


def test_rank_batch_and_async_agree_with_rank(backend_name, rng):
    queries = [f32(rng, 32) for _ in range(5)]
    sets = [_cands(rng) for _ in range(5)]
    r = Reranker(heads=4)
    single = [r.rank(q, c, top_k=7) for q, c in zip(queries, sets)]
    batch = r.rank_batch(queries, sets, top_k=7)
    asynced = [asyncio.run(r.rank_async(q, c, top_k=7)) for q, c in zip(queries, sets)]
    assert [x.ids for x in asyncio.run(r.rank_batch_async(queries, sets, top_k=7))] == \
        [x.ids for x in batch]
    for a, b, c in zip(single, batch, asynced):
        assert a.ids == b.ids == c.ids
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], rtol=1e-5)
        assert len(a) == 7


def test_rank_batch_of_unequal_sets_falls_back_to_rank(rng):
    r = Reranker()
    sets = [_cands(rng, 5), _cands(rng, 9)]
    queries = [f32(rng, 32), f32(rng, 32)]
    assert [x.ids for x in r.rank_batch(queries, sets)] == [r.rank(q, c).ids
                                                            for q, c in zip(queries, sets)]


def test_top_k_and_results_carry_ids_texts_metadata(rng):
    cands = Candidates(vectors=_cands(rng, 4), ids=["a", "b", "c", "d"], texts=list("ABCD"),
                       metadata=[{"i": i} for i in range(4)])
    res = Reranker().rank(f32(rng, 32), cands)
    assert set(res.ids) == {"a", "b", "c", "d"}
    for item in res:
        assert item["text"] == item["corpus_id"].upper()
        assert item["metadata"]["i"] == "abcd".index(item["corpus_id"])
    assert res.top_k(2).ids == res.ids[:2] and isinstance(res.top_k(2), RankedResults)


def test_one_candidate(backend_name, rng):
    res = Reranker().rank(f32(rng, 32), _cands(rng, 1))
    assert res.ids == [0] and res[0]["score"] == pytest.approx(1.0)


def test_errors(rng):
    r = Reranker()
    with pytest.raises(ValueError, match="empty"):
        r.rank(f32(rng, 32), np.zeros((0, 32), np.float32))
    with pytest.raises(ValueError, match="dimension"):
        r.rank(f32(rng, 16), _cands(rng))
    with pytest.raises(TypeError, match="embedder"):
        r.rank("a text query", _cands(rng))
    with pytest.raises(ValueError, match="unknown mechanism"):
        Reranker("flash-atention-v2")
    with pytest.raises(ValueError, match="no rerank scorer"):
        Reranker("flash-attention-v2")
    with pytest.raises(ValueError, match="top_k"):
        r.rank(f32(rng, 32), _cands(rng), top_k=0)
    with pytest.raises(ValueError, match="ids has 2 entries"):
        Candidates(vectors=_cands(rng, 3), ids=["a", "b"])
    with pytest.raises(ValueError, match="query tokens"):
        Reranker("cross-attention").rank(f32(rng, 32), _cands(rng))


def test_auto_picks_late_interaction_for_tokens(backend_name, rng):
    vectors = _cands(rng, 3)
    tokens, offsets = f32(rng, 12, 32), np.array([0, 4, 5, 12])
    qt = f32(rng, 6, 32)
    res = Reranker().rank(qt, Candidates(vectors=vectors, tokens=tokens, token_offsets=offsets))
    assert res.mechanism == "cross-attention"
    qn = qt.mean(axis=0) / np.linalg.norm(qt.mean(axis=0))
    dense = vectors @ qn / np.linalg.norm(vectors, axis=1)
    final = reference.late_interaction_scores(qt, tokens, offsets, dense=dense)[0]
    assert res.ids == list(np.argsort(-final, kind="stable"))


def test_auto_picks_hierarchical_for_chunks(backend_name, rng):
    chunks, offsets = f32(rng, 9, 32), np.array([0, 2, 9])
    q = f32(rng, 32)
    res = Reranker().rank(q, Candidates(chunks=chunks, chunk_offsets=offsets))
    assert res.mechanism == "hierarchical-cross-attention"
    expected = scoring.hierarchical(q, chunks, offsets)
    assert res.ids == list(np.argsort(-expected, kind="stable"))


def _pipeline_parts(rng, fail=False):
    corpus = _cands(rng, 50)
    asked = []

    def candidates(q, n, _filter):
        asked.append(n)
        scores = corpus @ q
        order = np.argsort(-scores)[:n]
        return Candidates(vectors=corpus[order], ids=[int(i) for i in order]), scores[order]

    def rerank(q, cands, k):
        if fail:
            raise RuntimeError("scorer exploded")
        return Reranker().rank(q, cands, top_k=k)

    return candidates, rerank, asked


def test_pipeline_overfetches_and_owns_the_final_order(rng):
    candidates, rerank, asked = _pipeline_parts(rng)
    p = Pipeline(candidates, rerank, overfetch=3, cap=20)
    res = p.run(f32(rng, 32), 5, available=50)
    assert asked == [15] and len(res) == 5 and res.fallback is None
    assert p.candidate_count(10, 50) == 20          # capped
    assert p.candidate_count(10, 12) == 12          # no more than available
    assert p.candidate_count(30, 50) == 30          # never fewer than k
    with pytest.raises(ValueError, match="larger than the 50"):
        p.run(f32(rng, 32), 51, available=50)
    assert set(res.timings_ms) == {"retrieve", "rerank", "total"}


def test_pipeline_falls_back_to_vector_order(rng):
    candidates, rerank, _ = _pipeline_parts(rng, fail=True)
    q = f32(rng, 32)
    res = Pipeline(candidates, rerank).run(q, 4, available=50)
    assert "scorer exploded" in res.fallback and res.mechanism == "vector-order"
    cands, scores = candidates(q, 12, None)
    assert res.ids == cands.ids[:4]
    with pytest.raises(RuntimeError):
        Pipeline(candidates, rerank, fallback_on_error=False).run(q, 4, available=50)
