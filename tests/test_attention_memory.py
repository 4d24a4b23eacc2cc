"""AttentionEnhancedMemory: retrieve = search at k·overfetch → attention rerank → top k, with
steps a subclass can override."""
import numpy as np
import pytest

from memory_adapter import AttentionEnhancedMemory
from rerank import Reranker, reference

from conftest import f32


@pytest.fixture
def memory(tmp_path, rng):
    vectors = f32(rng, 200, 16)
    with AttentionEnhancedMemory.open(tmp_path / "m.db", dim=16, model_id="test-vectors") as mem:
        mem.store([{"id": f"doc{i}", "vector": v, "text": f"text {i}",
                    "metadata": {"group": "even" if i % 2 == 0 else "odd", "age": i}}
                   for i, v in enumerate(vectors)])
        yield mem, vectors


def test_retrieve_reranks_search_candidates(memory, rng):
    mem, vectors = memory
    q = f32(rng, 16)
    hits = mem.search(q, 15)                                  # what retrieve fetches for k = 5
    res = mem.retrieve(q, 5)
    cand = np.stack([h["vector"] for h in hits])
    expected = reference.memory_attention_scores(q, cand)[0]
    order = np.argsort(-expected, kind="stable")[:5]
    assert res.ids == [hits[i]["corpus_id"] for i in order]
    assert res.mechanism == "memory-attention" and res.fallback is None
    assert {"retrieve", "rerank", "documents", "total"} <= set(res.timings_ms)
    assert all(r["text"] == "text " + r["corpus_id"][3:] for r in res)


def test_retrieve_asks_search_for_k_times_overfetch(tmp_path, rng):
    asked = []

    class Spy(AttentionEnhancedMemory):
        def search(self, query, k, filter=None, **kw):
            asked.append(k)
            return super().search(query, k, filter=filter, **kw)

    with Spy.open(tmp_path / "s.db", dim=8, model_id="m", overfetch=4, cap=10) as mem:
        mem.store([{"id": str(i), "vector": v} for i, v in enumerate(f32(rng, 30, 8))])
        mem.retrieve(f32(rng, 8), 2)
        mem.retrieve(f32(rng, 8), 5)                         # 20 capped at 10
    assert asked == [8, 10]


def test_retrieve_with_filter_and_limits(memory, rng):
    mem, _ = memory
    res = mem.retrieve(f32(rng, 16), 4, filter={"group": "odd"})
    assert len(res) == 4 and all(r["metadata"]["group"] == "odd" for r in res)
    with pytest.raises(ValueError, match="100"):
        mem.retrieve(f32(rng, 16), 101, filter={"group": "odd"})


class RecencyMemory(AttentionEnhancedMemory):
    """A subclass that overrides only the scoring step: attention score plus a recency bonus."""

    candidate_documents = True

    def score(self, query, candidates):
        base = super().score(query, candidates)
        age = np.array([m["age"] for m in candidates.metadata], dtype=np.float32)
        return base + 0.01 * age


def test_a_subclass_overrides_the_scoring_step(tmp_path, rng):
    vectors = f32(rng, 50, 8)
    with RecencyMemory.open(tmp_path / "r.db", dim=8, model_id="m") as mem:
        mem.store([{"id": str(i), "vector": v, "metadata": {"age": i}}
                   for i, v in enumerate(vectors)])
        q = f32(rng, 8)
        res = mem.retrieve(q, 5)
        hits = mem.search(q, 15)
        cand = np.stack([h["vector"] for h in hits])
        bonus = 0.01 * np.array([h["metadata"]["age"] for h in hits])
        expected = reference.memory_attention_scores(q, cand)[0] + bonus
        assert res.ids == [hits[i]["corpus_id"] for i in np.argsort(-expected, kind="stable")[:5]]


def test_rerank_failure_returns_the_vector_order(memory, rng):
    mem, _ = memory

    class Broken(Reranker):
        def score(self, query, candidates):
            raise RuntimeError("scorer down")

    mem.reranker = Broken()
    q = f32(rng, 16)
    res = mem.retrieve(q, 5)
    assert "scorer down" in res.fallback
    assert res.ids == [h["corpus_id"] for h in mem.search(q, 15)][:5]


def test_candidates_deleted_between_search_and_token_read_are_dropped(tmp_path, rng, monkeypatch):
    from memory_adapter.attention_memory import MemoryQuery

    vectors = f32(rng, 40, 16)
    with AttentionEnhancedMemory.open(tmp_path / "t.db", dim=16, model_id="test-vectors") as mem:
        mem.store([{"id": f"doc{i}", "vector": v, "tokens": f32(rng, 3, 16)}
                   for i, v in enumerate(vectors)])
        query = MemoryQuery(vectors[0], tokens=f32(rng, 2, 16))
        first = [h["corpus_id"] for h in mem.search(vectors[0], 6)]
        read = AttentionEnhancedMemory.candidate_tokens

        def delete_then_read(self, ids):     # a concurrent delete lands after the search
            if first[2] in self:
                self.delete(first[2])
            return read(self, ids)

        monkeypatch.setattr(AttentionEnhancedMemory, "candidate_tokens", delete_then_read)
        cands, scores = mem.candidates(query, 6)
        assert list(cands.ids) == [i for i in first if i != first[2]]
        assert len(scores) == 5 and cands.token_offsets[-1] == 15


def test_a_filtered_retrieve_resolves_the_filter_once(memory, rng, monkeypatch):
    mem, _ = memory
    store, calls = mem.document_store, []
    resolve = type(store).resolve_filter

    def counting(self, filter):
        calls.append(filter)
        return resolve(self, filter)

    monkeypatch.setattr(type(store), "resolve_filter", counting)
    q = f32(rng, 16)
    res = mem.retrieve(q, 5, filter={"group": "even"})
    assert len(calls) == 1 and all(r["metadata"]["group"] == "even" for r in res)
    mem.retrieve(q, 5, filter={"group": "odd"})               # a new call resolves again
    assert len(calls) == 2
    with mem.filter_snapshot():                               # one block: one resolution
        assert mem.available({"group": "odd"}) == 100
        assert [h["corpus_id"] for h in mem.search(q, 3, filter={"group": "odd"})] == \
            [r["corpus_id"] for r in mem.search(q, 3, filter={"group": "odd"})]
    assert len(calls) == 3
    with pytest.raises(ValueError, match="operator"):         # malformed filters still say why
        with mem.filter_snapshot():
            mem.available({"group": {"$gt": 1}})
