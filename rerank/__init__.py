"""rerank: exact, fast attention kernels and rerank scorers for vector-memory retrieval.

``rerank.attention`` computes exact attention; ``rerank.registry.get(name)`` returns a mechanism;
``rerank.status()`` says which backend runs and why.
"""
from . import backend, reference, scoring
from .attention import attention
from .backend import get_num_threads, set_backend, set_num_threads, status, use_backend
from .mechanisms import Mechanism, MechanismSpec, registry
from .reranker import Candidates, RankedResults, Reranker
from .scoring import ScoreDetails

__version__ = "0.1.0"

__all__ = [
    "Candidates", "Mechanism", "MechanismSpec", "RankedResults", "Reranker", "ScoreDetails", "attention", "backend", "get_num_threads",
    "reference", "registry", "scoring", "set_backend", "set_num_threads", "status", "use_backend", "__version__",
]
