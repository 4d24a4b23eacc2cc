"""ADR-029's fourth integration example: hooks. A memory's ``retrieve`` runs its hooks first:
an ``intelligence`` hook picks the mechanism for the query's task (the built-in table, refined
here for a "quick-lookup" task), and a ``pre-retrieval`` hook then changes the settings of one
query (here: asking for more than 3 results means memory-attention over 4 candidates per result,
whatever the task). A hook that
fails is logged, recorded in ``results.hook_errors`` and skipped; the query still answers.

Run: python examples/hooks_demo.py
"""
import logging
import os
import tempfile

import numpy as np

from memory_adapter import AttentionEnhancedMemory
from rerank.hooks import HookRegistry

logging.basicConfig(level=logging.WARNING, format="  [log] %(levelname)s %(message)s")
hooks = HookRegistry()                 # this memory's own hooks (the built-in table comes first)


@hooks.register("intelligence")
def quick_lookups(ctx):
    """Refine the built-in table: quick lookups use linear attention; others keep its choice."""
    return "linear-attention" if ctx.task == "quick-lookup" else None


@hooks.register("pre-retrieval")
def wide_queries(ctx):
    """More than 3 results: memory-attention over 4 candidates per result."""
    if ctx.k > 3:
        return {"mechanism": "memory-attention", "overfetch": 4}
    return None


rng = np.random.default_rng(5)
vectors = rng.standard_normal((60, 32)).astype(np.float32)
query = vectors[7] + 0.3 * rng.standard_normal(32).astype(np.float32)

with tempfile.TemporaryDirectory() as folder:
    with AttentionEnhancedMemory.open(os.path.join(folder, "m.db"), dim=32, model_id="demo",
                                      hooks=hooks) as memory:
        memory.store([{"id": f"d{i}", "vector": v, "text": f"doc {i}"}
                      for i, v in enumerate(vectors)])

        def show(label, k=3, **kw):
            res = memory.retrieve(query, k, **kw)
            print(f"{label:<24} mechanism={res.mechanism:<29} top={res.ids}"
                  + (f" recommended={res.recommended}" if res.recommended else "")
                  + (f" hook_errors={len(res.hook_errors)}" if res.hook_errors else ""))
            return res

        show("no task")
        for task in ("code-analysis", "memory-retrieval", "long-context", "quick-lookup"):
            show(f"task={task}", task=task)
        show("k=5, task=long-context", k=5, task="long-context")

        def broken(ctx):
            raise RuntimeError("analyzer offline")
        with hooks.temporary("pre-retrieval", broken):
            res = show("with a failing hook", task="memory-retrieval")
        print("skipped:", res.hook_errors[0])
