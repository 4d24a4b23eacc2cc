"""A first run of rerank: which backend is active, exact attention, the rerank scorers, and the
memory service on the embedded SQLite default.

Vectors here are synthetic (the text demo arrives with the embeddings adapter): 300 memory slots
around 10 topics; a query near one topic must rank that topic's slots first.
"""
import tempfile
import time

import numpy as np

import rerank
from memory_adapter import AttentionEnhancedMemory
from rerank import registry

rng = np.random.default_rng(7)
info = rerank.status()
print(f"backend: {info['backend']} (threads {info['threads']}, openmp {info['openmp']}, "
      f"native {info['native']})" + (f" — {info['reason']}" if info["reason"] else ""))

# 300 memory slots around 10 topic centres, d = 384
topics = rng.standard_normal((10, 384)).astype(np.float32)
labels = np.repeat(np.arange(10), 30)
memory = topics[labels] + 0.8 * rng.standard_normal((300, 384)).astype(np.float32)
query = topics[3] + 0.8 * rng.standard_normal(384).astype(np.float32)

scorer = registry.get("memory-attention", heads=4)
scores = scorer.score(query, memory)
top = np.argsort(-scores)[:10]
print(f"memory-attention top 10 slots: {top.tolist()} (topics {labels[top].tolist()})")

start = time.perf_counter()
for _ in range(1000):
    scorer.score(query, memory[:30])
print(f"one scoring call, 30 candidates × 384, 4 heads: {(time.perf_counter() - start) * 1e3:.1f} µs")

# late interaction: 30 candidates (3 per topic) as ragged token matrices of 8–40 tokens each
picked = np.arange(0, 300, 10)
lengths = rng.integers(8, 40, size=30)
offsets = np.concatenate([[0], np.cumsum(lengths)])
doc_tokens = np.concatenate([memory[picked[i]] + 0.5 * rng.standard_normal((n, 384)) for i, n in
                             enumerate(lengths)]).astype(np.float32)
query_tokens = (query + 0.5 * rng.standard_normal((12, 384))).astype(np.float32)
details = registry.get("cross-attention").score(query_tokens, doc_tokens, offsets, details=True)
print(f"late interaction best candidate: {int(np.argmax(details.final))} "
      f"(topic {labels[picked[np.argmax(details.final)]]}), MaxSim range "
      f"{details.similarity.min():.3f}…{details.similarity.max():.3f}")

# exact attention, causal, 8 heads × 1024 × 64, checked against the numpy reference
q = rng.standard_normal((8, 1024, 64)).astype(np.float32)
start = time.perf_counter()
out = rerank.attention(q, q, q, causal=True)
elapsed = time.perf_counter() - start
error = np.abs(out - rerank.reference.attention(q, q, q, causal=True)).max()
print(f"causal attention 8×1024×64: {elapsed * 1e3:.1f} ms, max |error| vs numpy {error:.1e}")

# the memory service on the embedded SQLite default: store the 300 slots, retrieve with rerank

with tempfile.TemporaryDirectory() as tmp, \
        AttentionEnhancedMemory.open(f"{tmp}/memory.db", dim=384, model_id="demo-synthetic",
                                     reranker=rerank.Reranker("memory-attention", heads=4)) as mem:
    mem.store([{"id": f"slot-{i}", "vector": memory[i], "text": f"slot {i} of topic {labels[i]}",
                "metadata": {"topic": int(labels[i])}} for i in range(len(memory))])
    result = mem.retrieve(query, k=5)
    print(f"memory.retrieve top 5 ({result.mechanism}, {result.backend}, "
          f"{result.timings_ms['total']:.2f} ms): {[r['text'] for r in result]}")
    odd = mem.retrieve(query, k=3, filter={"topic": {"$in": [1, 5]}})
    print(f"with filter topic ∈ {{1, 5}}: {[r['text'] for r in odd]}")
    print(f"store: {mem.status()['documents']} documents in {mem.status()['path']}")
