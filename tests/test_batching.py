"""BatchingEmbedder: concurrent calls share forward passes, give the unbatched results, share
errors, and never delay a lone caller."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from embeddings_adapter.batching import BatchingEmbedder

N_THREADS = 8


class SpyEmbedder:
    """An inner embedder with encode(): records every forward pass (its texts)."""

    model_id = "spy"
    dim = 4

    def __init__(self, fail: bool = False):
        self.passes: list[list[str]] = []
        self.fail = fail
        self.gate = None          # called at the start of every pass (to hold the first one)

    def _triple(self, text: str):
        v = np.array([len(text), 1.0, 2.0, 3.0], np.float32)
        return v / np.linalg.norm(v), np.tile(v, (len(text.split()) or 1, 1)), \
            np.arange(len(text.split()) or 1, dtype=np.int32)

    def encode(self, texts):
        if self.gate is not None:
            self.gate()
        self.passes.append(list(texts))
        if self.fail:
            raise RuntimeError("forward pass failed")
        return [self._triple(t) for t in texts]

    def embed(self, texts):
        return np.stack([self._triple(t)[0] for t in texts])

    def is_word(self, ids):
        return np.ones(len(ids), bool)


def hold_first_pass(batcher: BatchingEmbedder, waiting: int):
    """A gate that keeps the first forward pass running until ``waiting`` more requests are
    queued behind it (so the test knows they will form one batch)."""
    first = [True]

    def gate():
        if first[0]:
            first[0] = False
            deadline = time.monotonic() + 30
            while len(batcher._queue) < waiting:
                assert time.monotonic() < deadline, "the other callers never queued"
                time.sleep(0.001)

    return gate


def run_threads(fn, n: int = N_THREADS):
    """fn(i) in n threads started together; returns (results, errors) by thread index."""
    results, errors = [None] * n, [None] * n
    barrier = threading.Barrier(n)

    def work(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    return results, errors


def test_concurrent_calls_share_forward_passes():
    spy = SpyEmbedder()
    batcher = BatchingEmbedder(spy, max_batch=32)
    spy.gate = hold_first_pass(batcher, N_THREADS - 1)
    results, errors = run_threads(lambda i: batcher.embed([f"text number {i}"]))
    assert errors == [None] * N_THREADS
    # the first caller's pass, then ONE pass for the 7 that queued behind it
    assert len(spy.passes) == 2
    assert sorted(len(p) for p in spy.passes) == [1, N_THREADS - 1]
    for i, vectors in enumerate(results):
        np.testing.assert_array_equal(vectors, spy.embed([f"text number {i}"]))
    stats = batcher.stats()
    assert stats["forward_passes"] == 2 and stats["requests"] == N_THREADS
    assert stats["largest_batch"] == N_THREADS - 1


def test_max_batch_splits_the_queue():
    spy = SpyEmbedder()
    batcher = BatchingEmbedder(spy, max_batch=3)
    spy.gate = hold_first_pass(batcher, N_THREADS - 1)
    _, errors = run_threads(lambda i: batcher.embed([f"t{i}"]))
    assert errors == [None] * N_THREADS
    assert all(len(p) <= 3 for p in spy.passes)
    assert sum(len(p) for p in spy.passes) == N_THREADS
    assert len(spy.passes) == 4          # 1, then 7 queued in batches of 3, 3, 1


def test_an_error_in_the_forward_pass_reaches_every_caller():
    spy = SpyEmbedder(fail=True)
    batcher = BatchingEmbedder(spy)
    spy.gate = hold_first_pass(batcher, N_THREADS - 1)
    _, errors = run_threads(lambda i: batcher.embed([f"t{i}"]))
    assert all(isinstance(e, RuntimeError) and "forward pass failed" in str(e) for e in errors)
    spy.fail, spy.gate = False, None      # the batcher is not left stuck
    assert batcher.embed(["again"]).shape == (1, 4)


def test_a_lone_caller_is_not_delayed_by_max_wait():
    spy = SpyEmbedder()
    batcher = BatchingEmbedder(spy, max_wait_ms=5000)
    start = time.perf_counter()
    for i in range(3):
        batcher.embed([f"alone {i}"])
    assert time.perf_counter() - start < 2.5     # three waits would take 15 s
    assert len(spy.passes) == 3


def test_embed_only_inner_batches_embed():
    class EmbedOnly:
        model_id, dim = "plain", 4

        def __init__(self):
            self.calls = 0

        def embed(self, texts):
            self.calls += 1
            return np.ones((len(texts), 4), np.float32)

    inner = EmbedOnly()
    batcher = BatchingEmbedder(inner)
    assert batcher.embed(["a", "b", "a"]).shape == (3, 4)
    assert inner.calls == 1                          # duplicates embedded once
    with pytest.raises(AttributeError):
        batcher.encode(["a"])


def test_close_refuses_new_calls_and_leaves_no_thread():
    before = threading.active_count()
    batcher = BatchingEmbedder(SpyEmbedder())
    batcher.embed(["x"])
    assert threading.active_count() == before        # no background thread at all
    batcher.close()
    batcher.close()
    with pytest.raises(ValueError, match="closed"):
        batcher.embed(["y"])


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_batch": True}, {"max_wait_ms": -1},
                                    {"max_wait_ms": "1"}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        BatchingEmbedder(SpyEmbedder(), **kwargs)


def test_inner_must_be_an_embedder():
    with pytest.raises(TypeError, match="model_id"):
        BatchingEmbedder(object())
    with pytest.raises(TypeError, match="texts"):
        BatchingEmbedder(SpyEmbedder()).embed("not a list")


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    from embeddings_adapter import EmbeddingService

    return EmbeddingService(cache_size=0)          # no cache: every encode is a forward pass


def test_batched_results_equal_unbatched_ones(minilm):
    texts = [f"query {i}: " + "how do I copy files between machines " * (i % 4 + 1)
             for i in range(N_THREADS)]
    expected = [minilm.encode([t])[0] for t in texts]          # one text per pass: no padding
    batcher = BatchingEmbedder(minilm)
    passes = []
    inner_encode = minilm.encode
    gate = hold_first_pass(batcher, N_THREADS - 1)

    def spy(batch):
        gate()
        passes.append(len(batch))
        return inner_encode(batch)

    minilm.encode = spy
    try:
        results, errors = run_threads(lambda i: (batcher.embed([texts[i]]),
                                                 batcher.embed_tokens([texts[i]]),
                                                 batcher.token_ids([texts[i]])))
    finally:
        del minilm.encode
    assert errors == [None] * N_THREADS
    assert passes[0] == 1 and N_THREADS - 1 in passes      # padded batches did happen
    for (vector, (tokens, offsets), ids), (s, t, i) in zip(results, expected):
        np.testing.assert_allclose(vector[0], s, atol=1e-5)
        np.testing.assert_allclose(tokens, t, atol=1e-5)
        assert offsets.tolist() == [0, len(t)]
        np.testing.assert_array_equal(ids[0], i)


def test_tokens_after_embed_need_no_second_pass(minilm):
    minilm.cache_size = 16
    try:
        batcher = BatchingEmbedder(minilm)
        vector = batcher.embed(["a cached text"])[0]
        hit, miss = minilm.cached(["a cached text", "never embedded"])
        assert miss is None
        np.testing.assert_array_equal(hit[0], vector)
        tokens, offsets = batcher.embed_tokens(["a cached text"])
        ids = batcher.token_ids(["a cached text"])[0]
        assert tokens.shape[0] == offsets[-1] == len(ids) > 0
        assert batcher.stats()["forward_passes"] == 1         # tokens and ids came with it
    finally:
        minilm.cache_size = 0
        minilm._cache.clear()
