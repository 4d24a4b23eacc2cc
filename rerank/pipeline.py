"""retrieve → rerank → top k. The pipeline alone over-fetches and owns the final order.

It asks its candidate step for n = min(k·overfetch, cap, available) candidates (at least k), gives
them to the rerank step, and keeps the first k of the reranked order. If reranking fails, the
vector order is returned and ``RankedResults.fallback`` says why. Every result carries per-stage
timings (``retrieve`` (hooks included), ``rerank``, ``total``, in ms) and the mechanism and
backend that ran.

Before fetching, the pipeline runs its hooks (:mod:`rerank.hooks`: the intelligence hooks for a
``task``, then the pre-retrieval hooks). Their ``overfetch`` sets n; their ``mechanism`` and
``text_settings`` reach a rerank step that takes a ``settings`` keyword. The result is a
:class:`PipelineResults`: ``hook_errors`` lists hooks that failed and were skipped.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Callable

from .hooks import AttentionSettings, HookContext, HookOutcome, HookRegistry, default_registry
from .reranker import Candidates, RankedResults, results_in_order
from .validation import positive_int

log = logging.getLogger(__name__)


class PipelineResults(RankedResults):
    """:class:`RankedResults` of one pipeline run, plus what the hooks did: the ``task``, the
    intelligence's ``recommended`` mechanism and ``hook_errors`` (hooks skipped, one line each)."""

    def __init__(self, results: list[dict], *, task: str | None = None,
                 recommended: str | None = None, hook_errors: list[str] | None = None, **kwargs):
        super().__init__(results, **kwargs)
        self.task = task
        self.recommended = recommended
        self.hook_errors = list(hook_errors or [])

    def top_k(self, n: int) -> "PipelineResults":
        """The first ``n`` results (with the same provenance and hook record)."""
        return PipelineResults(self.results[:positive_int("n", n)], task=self.task,
                               recommended=self.recommended, hook_errors=self.hook_errors,
                               mechanism=self.mechanism, backend=self.backend,
                               timings_ms=self.timings_ms, fallback=self.fallback)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "task": self.task, "recommended": self.recommended,
                "hook_errors": self.hook_errors}


def _takes_settings(step) -> bool:
    try:
        params = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "settings" or p.kind is p.VAR_KEYWORD for p in params)


class Pipeline:
    """Two steps and the policy between them: ``candidates(query, n, filter)`` returns
    ``(Candidates, vector_scores)`` best first by vector score, ``rerank(query, candidates, k)``
    (or ``rerank(query, candidates, k, settings=AttentionSettings)``) returns
    :class:`RankedResults`. ``hooks``: the :class:`~rerank.hooks.HookRegistry` it runs
    (default: the global :data:`rerank.hooks.default_registry`)."""

    def __init__(self, candidates: Callable, rerank: Callable, *, overfetch: int = 3,
                 cap: int = 100, fallback_on_error: bool = True,
                 hooks: HookRegistry | None = None):
        if hooks is not None and not isinstance(hooks, HookRegistry):
            raise TypeError("hooks must be a rerank.hooks.HookRegistry; got "
                            f"{type(hooks).__name__}")
        self.candidates = candidates
        self.rerank = rerank
        self.overfetch = positive_int("overfetch", overfetch)
        self.cap = positive_int("cap", cap)
        self.fallback_on_error = fallback_on_error
        self.hooks = default_registry if hooks is None else hooks

    def _step_takes_settings(self) -> bool:
        """Whether the rerank step takes ``settings`` (looked up once per step object)."""
        step = self.rerank
        cached = getattr(self, "_settings_probe", None)
        if cached is None or cached[0] is not step:
            cached = self._settings_probe = (step, _takes_settings(step))
        return cached[1]

    def candidate_count(self, k: int, available: int, overfetch: int | None = None) -> int:
        """How many candidates to fetch for top ``k``: min(k·overfetch, cap, available), ≥ k
        (``overfetch`` default: the pipeline's)."""
        k = positive_int("k", k)
        overfetch = self.overfetch if overfetch is None else positive_int("overfetch", overfetch)
        if k > available:
            raise ValueError(f"k = {k} is larger than the {available} documents available")
        return min(max(k, min(k * overfetch, self.cap)), available)

    def prepare(self, query, k: int, *, task: str | None = None, filter=None,
                source: str = "pipeline", settings: AttentionSettings | None = None
                ) -> HookOutcome:
        """Run this pipeline's hooks for one query (``query`` as the caller gave it) starting
        from ``settings`` (default: this pipeline's overfetch, everything else automatic)."""
        settings = AttentionSettings(overfetch=self.overfetch) if settings is None else settings
        return self.hooks.prepare(HookContext(query=query, k=k, task=task, filter=filter,
                                              source=source, settings=settings))

    def run(self, query, k: int, *, available: int, filter=None, task: str | None = None,
            prepared: HookOutcome | None = None) -> PipelineResults:
        """Top ``k`` for ``query``: run the hooks (unless the caller ran them: ``prepared``),
        fetch, rerank (or fall back to the vector order), cut."""
        start = time.perf_counter()
        if prepared is None:
            prepared = self.prepare(query, k, task=task, filter=filter)
        settings, hook_errors = prepared.settings, list(prepared.errors)
        n = self.candidate_count(k, available, settings.overfetch)
        cands, vector_scores = self.candidates(query, n, filter)
        fetched = time.perf_counter()
        try:
            if self._step_takes_settings():
                ranked = self.rerank(query, cands, k, settings=settings)
            else:
                ranked = self.rerank(query, cands, k)
            fallback = None
            if settings.mechanism is not None and ranked.mechanism != settings.mechanism:
                hook_errors.append(f"the hooks chose {settings.mechanism!r} but the rerank step "
                                   f"ran {ranked.mechanism!r}")
        except Exception as exc:  # noqa: BLE001 - the policy is: never lose the answer
            if not self.fallback_on_error:
                raise
            log.warning("rerank failed, returning the vector order: %s", exc)
            ranked = RankedResults(results_in_order(cands, range(len(cands)), vector_scores),
                                   mechanism="vector-order", backend="none")
            fallback = f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        timings = {"retrieve": (fetched - start) * 1e3, "rerank": (done - fetched) * 1e3,
                   "total": (done - start) * 1e3}
        return PipelineResults(ranked.results[:k], mechanism=ranked.mechanism,
                               backend=ranked.backend, timings_ms=timings, fallback=fallback,
                               task=prepared.task, recommended=prepared.recommended,
                               hook_errors=hook_errors)


__all__ = ["Candidates", "Pipeline", "PipelineResults", "RankedResults"]
