"""``rerank.evaluation``: a labelled fixture with a known answer (metrics checked by hand),
cross-validation that never scores a query with a setting chosen on it, and the text settings."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from memory_adapter import AttentionEnhancedMemory
from rerank import evaluation, metrics
from rerank.corpus import BeirDataset
from rerank.text_settings import (DEFAULT, FAMILY, TextRerankSettings, idf_weights,
                                  query_token_weights)

D = 32


class WordEmbedder:
    """A TEST DOUBLE, not a model: a word is a fixed random unit vector (seeded by its crc32), a
    text the normalised sum of its words; tokens are the words, their ids the crc32 mod 30000."""

    model_id = "test-word-embedder"
    dim = D

    @staticmethod
    def _word(word):
        v = np.random.default_rng(zlib.crc32(word.encode())).standard_normal(D)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed(self, texts):
        out = np.stack([sum(self._word(w) for w in t.split()) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def embed_tokens(self, texts):
        rows = [[self._word(w) for w in t.split()] for t in texts]
        return (np.stack([v for r in rows for v in r]),
                np.cumsum([0] + [len(r) for r in rows]).astype(np.int64))

    def token_ids(self, texts):
        return [np.array([zlib.crc32(w.encode()) % 30000 for w in t.split()], np.int32)
                for t in texts]

    def is_word(self, ids):
        return np.ones(len(ids), bool)


DOCS = {"d1": "red apples grow on tall trees", "d2": "blue whales swim in deep oceans",
        "d3": "green frogs jump near small ponds", "d4": "yellow taxis drive through busy streets",
        "d5": "old castles stand on rocky hills"}


@pytest.fixture
def memory(tmp_path):
    with AttentionEnhancedMemory.open(tmp_path / "eval.db", embedder=WordEmbedder()) as mem:
        mem.store([{"id": i, "text": t} for i, t in DOCS.items()])
        yield mem


def test_a_fixture_with_a_known_answer(memory):
    # q1 is d1's text: rank 1 under every method. q2 is d2's text, and a second relevant document
    # ("gone") is judged but not in the corpus, so it is never retrieved.
    data = BeirDataset(corpus={}, queries={"q1": DOCS["d1"], "q2": DOCS["d2"], "q3": "unjudged"},
                       qrels={"q1": {"d1": 1}, "q2": {"d2": 1, "gone": 1}}, name="fixture")
    out = evaluation.evaluate(memory, data, depth=3, cv=True)
    assert out["dataset"] == "fixture" and out["queries"] == 2 and out["documents"] == 5
    names = [m["method"] for m in out["methods"]]
    assert names == ["dense", "cross-attention", "memory-attention",
                     "hierarchical-cross-attention", "cross-attention (2-fold CV)"]
    # by hand: q1 nDCG = 1; q2 DCG = 1/log2(2) = 1, IDCG = 1 + 1/log2(3) → 1/1.6309 = 0.61315
    ndcg = (1 + 1 / (1 + 1 / np.log2(3))) / 2
    for m in out["methods"]:
        assert m["ndcg@10"] == pytest.approx(ndcg, abs=1e-9), m["method"]
        assert m["recall@10"] == pytest.approx(0.75) and m["recall@100"] == pytest.approx(0.75)
        assert m["mrr@10"] == pytest.approx(1.0) and m["ms_per_query"] >= 0
        assert m["p_value"] == (None if m["method"] == "dense" else pytest.approx(1.0))
    assert [m["default"] for m in out["methods"]] == [False, True, False, False, False]
    cv = out["cross_validation"]
    assert cv["family_size"] == len(FAMILY) and len(cv["folds"]) == 2


def test_rerank_methods_reorder_only_the_head_and_keep_the_dense_tail(memory, monkeypatch):
    """Every method's ranking = reranked top depth + the dense order after it (recall@100 is
    comparable); checked by recording the rankings the metrics see."""
    seen = {}
    original = evaluation._metrics_row

    def record(name, rankings, *args, **kwargs):
        seen[name] = dict(rankings)
        return original(name, rankings, *args, **kwargs)

    monkeypatch.setattr(evaluation, "_metrics_row", record)
    data = BeirDataset(corpus={}, queries={"q": "apples on busy hills"}, qrels={"q": {"d5": 1}})
    evaluation.evaluate(memory, data, depth=2)
    dense = seen["dense"]["q"]
    assert sorted(dense) == sorted(DOCS)
    for name, ranking in seen.items():
        assert sorted(ranking["q"][:2]) == sorted(dense[:2]) and ranking["q"][2:] == dense[2:]


def test_cross_validation_scores_each_half_with_the_other_halfs_choice():
    qids = [f"q{i}" for i in range(40)]
    (train_a, test_a), (train_b, test_b) = metrics.two_fold_splits(qids)
    assert sorted(test_a + test_b) == sorted(qids) and set(train_a) == set(test_b)
    qrels = {q: {"hit": 1} for q in qids}
    good, bad = FAMILY[0], FAMILY[1]
    # `good` ranks the relevant doc first on the first half's test queries only, `bad` on the others
    family_rank = {good: {q: ["hit", "x"] if q in test_a else ["x", "hit"] for q in qids},
                   bad: {q: ["x", "hit"] if q in test_a else ["hit", "x"] for q in qids}}
    rows = []
    cv = evaluation._cross_validate(family_rank, qrels, qids, np.zeros(len(qids)), 0.0, rows)
    # trained on train_a (= test_b), `bad` wins and is then applied to test_a, where it is wrong
    assert cv["folds"][0]["chosen"] == bad.to_dict() and cv["folds"][1]["chosen"] == good.to_dict()
    assert cv["folds"][0]["test_ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert rows[0]["method"] == "cross-attention (2-fold CV)"
    assert rows[0]["ndcg@10"] == pytest.approx(1 / np.log2(3))   # every held-out choice is wrong


def test_evaluate_refuses_what_it_cannot_measure(tmp_path, memory):
    with AttentionEnhancedMemory.open(tmp_path / "empty.db", embedder=WordEmbedder()) as empty:
        data = BeirDataset(corpus={}, queries={"q": "x"}, qrels={"q": {"d": 1}})
        with pytest.raises(ValueError, match="memory is empty"):
            evaluation.evaluate(empty, data)
    with pytest.raises(ValueError, match="no queries with relevance"):
        evaluation.evaluate(memory, BeirDataset(corpus={}, queries={"q": "x"}, qrels={}))


def test_idf_and_query_token_weights():
    # BM25 idf by hand: n = 10, df = 0 → ln(1 + 10.5/0.5) = ln 22; df = 10 → ln(1 + 0.5/10.5)
    np.testing.assert_allclose(idf_weights([0, 10, 3], 10),
                               [np.log(22), np.log(1 + 0.5 / 10.5), np.log(1 + 7.5 / 3.5)],
                               rtol=1e-6)
    assert (idf_weights([5, 5], 0) > 0).all()
    words = np.array([True, False, True])
    s = TextRerankSettings(idf=False, words_only=True)
    assert query_token_weights(s, None, 0, words).tolist() == [1, 0, 1]
    assert query_token_weights(s, None, 0, np.zeros(3, bool)) is None   # never drop everything
    assert query_token_weights(TextRerankSettings(idf=False), [1, 2, 3], 5, words) is None
    w = query_token_weights(TextRerankSettings(idf=True, words_only=True), [1, 2, 3], 5, words)
    np.testing.assert_allclose(w, idf_weights([1, 2, 3], 5) * words)
    assert DEFAULT in FAMILY and len(set(FAMILY)) == 24


def test_memory_weights_query_tokens_by_the_stored_corpus_idf(memory):
    q = memory.query("red whales near busy zebras")
    pieces = WordEmbedder().token_ids(["red whales near busy zebras"])[0]
    df, n = memory.document_store.document_frequencies(pieces)
    assert n == 5 and df.tolist() == [1, 1, 1, 1, 0]          # "zebras" is in no document
    np.testing.assert_allclose(q.weights, idf_weights(df, n), rtol=1e-6)
    memory.delete(["d2"])                                      # statistics follow the corpus
    df2, n2 = memory.document_store.document_frequencies(pieces)
    assert n2 == 4 and df2.tolist() == [1, 0, 1, 1, 0]
    memory.text_settings = TextRerankSettings(idf=False)
    assert memory.query("red whales").weights is None
    assert memory.query(memory.embedder.embed(["red"])[0]).tokens is None   # a vector query
