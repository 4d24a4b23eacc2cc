"""rerank: exact, fast attention kernels and rerank scorers for vector-memory retrieval.

``rerank.attention`` computes exact attention; ``rerank.registry.get(name)`` returns a mechanism;
``rerank.AttentionService`` selects, caches and runs them; ``rerank.status()`` says which backend
runs and why.
"""
from . import backend, reference, scoring
from .attention import attention
from .backend import get_num_threads, set_backend, set_num_threads, status, use_backend
from .mechanisms import Mechanism, MechanismSpec, registry
from .reranker import Candidates, RankedResults, Reranker
from .scoring import ScoreDetails

__version__ = "0.1.0"

#: Loaded on first access (they pull in the cache and the selector).
_LAZY = {"AttentionService": ".service", "AttentionResult": ".service",
         "MechanismSelector": ".selector"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'rerank' has no attribute {name!r}")


__all__ = [
    "AttentionResult", "AttentionService", "Candidates", "Mechanism", "MechanismSelector",
    "MechanismSpec", "RankedResults", "Reranker", "ScoreDetails", "attention", "backend",
    "get_num_threads", "reference", "registry", "scoring", "set_backend", "set_num_threads",
    "status", "use_backend", "__version__",
]
