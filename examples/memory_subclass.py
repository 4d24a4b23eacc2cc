"""ADR-029's second integration example: a memory service whose ``retrieve`` reranks with
attention, subclassed to change one step. ``RecencyMemory`` overrides ``score``: the attention
score plus a bonus for recent memories, on a temporary SQLite file.

The memories are synthetic vectors (d = 64) around 4 topics, each with a day stamp; the query is
near topic 2, so both classes rank topic-2 memories — the subclass the recent ones first.

Run: python examples/memory_subclass.py
"""
import os
import tempfile

import numpy as np

from memory_adapter import AttentionEnhancedMemory


class RecencyMemory(AttentionEnhancedMemory):
    """Attention score + ``bonus`` per day of age below the newest (read from metadata)."""

    candidate_documents = True          # score needs the candidates' metadata
    bonus = 0.002

    def score(self, query, candidates):
        base = super().score(query, candidates)
        days = np.array([m["day"] for m in candidates.metadata], dtype=np.float32)
        return base + self.bonus * (days - days.max())


rng = np.random.default_rng(3)
topics = rng.standard_normal((4, 64)).astype(np.float32)
records = [{"id": f"m{i:02d}", "vector": topics[i % 4] + 0.9 * rng.standard_normal(64),
            "text": f"memory {i} about topic {i % 4}", "metadata": {"day": int(i)}}
           for i in range(80)]
query = topics[2] + 0.5 * rng.standard_normal(64).astype(np.float32)

mean_day = {}
with tempfile.TemporaryDirectory() as folder:
    db = os.path.join(folder, "memory.db")      # stored once, reopened by the subclass
    for cls in (AttentionEnhancedMemory, RecencyMemory):
        with cls.open(db, dim=64, model_id="synthetic-64") as memory:
            if memory.available() == 0:
                memory.store(records)
            results = memory.retrieve(query, 5)
            print(f"{cls.__name__}: {memory.available()} memories in {os.path.basename(db)}, "
                  f"reranked by {results.mechanism} on {results.backend}")
            for r in results:
                print(f"  {r['corpus_id']}  score {r['score']:+.3f}  day {r['metadata']['day']:>2}"
                      f"  {r['text']}")
            mean_day[cls.__name__] = np.mean([r["metadata"]["day"] for r in results])
print("mean day of the top 5: " + ", ".join(f"{k} {v:.1f}" for k, v in mean_day.items()))
print("the subclass lifted recent memories:",
      "yes" if mean_day["RecencyMemory"] > mean_day["AttentionEnhancedMemory"] else "no")
