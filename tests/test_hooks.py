"""Hooks (rerank.hooks): the contract, order, failure isolation, and their effect on the pipeline
and on AttentionEnhancedMemory.retrieve."""
import logging

import numpy as np
import pytest

from memory_adapter import AttentionEnhancedMemory
from memory_adapter.attention_memory import attention_scores
from rerank import hooks, reference
from rerank.hooks import (AttentionSettings, HookContext, HookRegistry,
                          TASK_MECHANISMS, task_intelligence)
from rerank.pipeline import Pipeline, PipelineResults
from rerank.reranker import Candidates, RankedResults, results_in_order
from rerank.text_settings import TextRerankSettings

from conftest import f32


def ctx(task=None, **kw):
    return HookContext(query="q", k=3, task=task, **kw)


# ------------------------------------------------------------------ the registry and its contract
@pytest.mark.parametrize("task, expected", [
    ("code-analysis", "hierarchical-cross-attention"), ("memory-retrieval", "memory-attention"),
    ("long-context", "longformer-attention"), ("swarm-coordination", "star-attention"),
    ("default", "flash-attention-v2"), ("something-else", "flash-attention-v2")])
def test_builtin_intelligence_table(task, expected):
    assert task_intelligence(ctx(task)) == expected
    assert HookRegistry().recommend(task) == (expected, [])


def test_table_names_are_registry_names():
    for name in TASK_MECHANISMS.values():
        assert hooks.check_mechanism(name) == name


def test_builtin_is_first_and_optional():
    assert HookRegistry().hooks("intelligence") == (task_intelligence,)
    assert HookRegistry(builtin=False).recommend("code-analysis") == (None, [])


def test_registration_order_is_call_order_and_later_hooks_see_earlier_changes():
    reg, calls = HookRegistry(), []

    def first(c):
        calls.append(("first", c.settings.overfetch))
        return {"overfetch": 5}

    def second(c):
        calls.append(("second", c.settings.overfetch))
        return {"overfetch": c.settings.overfetch + 1}

    reg.register("pre-retrieval", first)
    reg.register("pre-retrieval", second)
    out = reg.prepare(ctx(settings=AttentionSettings(overfetch=3)))
    assert calls == [("first", 3), ("second", 5)]
    assert out.settings.overfetch == 6 and out.errors == []


def test_intelligence_hooks_refine_the_builtin_in_order():
    reg, seen = HookRegistry(), []

    def keep(c):
        seen.append(c.recommended)
        return None

    reg.register("intelligence", keep)
    reg.register("intelligence", lambda c: "linear-attention" if c.task == "fast" else None)
    assert reg.recommend("code-analysis") == ("hierarchical-cross-attention", [])
    assert reg.recommend("fast") == ("linear-attention", [])
    assert seen == ["hierarchical-cross-attention", "flash-attention-v2"]


def test_intelligence_then_pre_retrieval_has_the_last_word():
    reg = HookRegistry()
    reg.register("pre-retrieval",
                 lambda c: {"mechanism": "memory-attention"} if c.recommended else None)
    out = reg.prepare(ctx("long-context"))
    assert out.recommended == "longformer-attention"
    assert out.settings.mechanism == "memory-attention"
    assert reg.prepare(ctx()).settings.mechanism is None       # no task: no intelligence


def test_a_failing_hook_is_logged_recorded_and_skipped(caplog):
    reg, ran = HookRegistry(), []

    def broken(c):
        raise RuntimeError("boom")

    reg.register("pre-retrieval", broken)
    reg.register("pre-retrieval", lambda c: ran.append(1) or {"overfetch": 4})
    with caplog.at_level(logging.WARNING, logger="rerank.hooks"):
        out = reg.prepare(ctx())
    assert ran == [1] and out.settings.overfetch == 4
    assert len(out.errors) == 1 and "broken" in out.errors[0] and "boom" in out.errors[0]
    assert "boom" in caplog.text


@pytest.mark.parametrize("answer, message", [
    ("flash-atention-v2", "unknown mechanism 'flash-atention-v2'"),
    (42, "must be a registry name"),
])
def test_unknown_recommendations_are_rejected(answer, message):
    reg = HookRegistry()
    reg.register("intelligence", lambda c: answer)
    name, errors = reg.recommend("memory-retrieval")
    assert name == "memory-attention"                          # the rejected answer is skipped
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("answer, message", [
    ({"mechanism": "no-such-attention"}, "unknown mechanism 'no-such-attention'"),
    ({"heads": 4}, "unknown setting(s) 'heads'"),
    ({"overfetch": 0}, "overfetch must be a positive int"),
    ({"text_settings": {"lam": 1}}, "text_settings must be a TextRerankSettings"),
    (["mechanism"], "returns a dict of changes"),
])
def test_bad_pre_retrieval_answers_are_rejected(answer, message):
    reg = HookRegistry()
    reg.register("pre-retrieval", lambda c: answer)
    out = reg.prepare(ctx(settings=AttentionSettings(overfetch=3)))
    assert out.settings == AttentionSettings(overfetch=3)
    assert len(out.errors) == 1 and message in out.errors[0]


def test_settings_object_answer_and_async_hook():
    reg = HookRegistry()
    reg.register("pre-retrieval", lambda c: AttentionSettings(mechanism="linear-attention"))

    async def asynchronous(c):
        return {"overfetch": 9}

    reg.register("pre-retrieval", asynchronous)
    out = reg.prepare(ctx(settings=AttentionSettings(overfetch=2)))
    assert out.settings == AttentionSettings(mechanism="linear-attention", overfetch=2)
    assert "synchronous" in out.errors[0]


def test_register_unregister_temporary_and_bad_arguments():
    reg = HookRegistry(builtin=False)
    hook = reg.register("pre-retrieval", lambda c: None)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("pre-retrieval", hook)
    reg.unregister("pre-retrieval", hook)
    with pytest.raises(ValueError, match="not registered"):
        reg.unregister("pre-retrieval", hook)
    with pytest.raises(ValueError, match="unknown hook event 'post-retrieval'"):
        reg.register("post-retrieval", hook)
    with pytest.raises(TypeError, match="must be callable"):
        reg.register("intelligence", "memory-attention")

    @reg.register("intelligence")
    def decorated(c):
        return "memory-attention"

    assert reg.hooks("intelligence") == (decorated,)
    with pytest.raises(KeyError):
        with reg.temporary("pre-retrieval", hook):
            assert reg.hooks("pre-retrieval") == (hook,)
            raise KeyError("inside")
    assert reg.hooks("pre-retrieval") == ()
    reg.clear()
    assert reg.hooks("intelligence") == ()


def test_task_must_be_a_string():
    with pytest.raises(TypeError, match="task must be a string"):
        ctx(task=3)


def test_global_helpers_use_the_default_registry():
    def hook(c):
        return None

    with hooks.temporary("pre-retrieval", hook):
        assert hook in hooks.default_registry.hooks("pre-retrieval")
    assert hook not in hooks.default_registry.hooks("pre-retrieval")
    hooks.register("pre-retrieval", hook)
    hooks.unregister("pre-retrieval", hook)
    assert hook not in hooks.default_registry.hooks("pre-retrieval")


# ----------------------------------------------------------------------------- the pipeline
def _steps(rng, total=40, d=8, *, takes_settings=True):
    vectors = f32(rng, total, d)
    asked = {}

    def candidates(query, n, filter=None):
        asked["n"] = n
        scores = vectors[:n] @ query
        return Candidates(vectors=vectors[:n], ids=[f"d{i}" for i in range(n)]), scores

    def rerank_with(query, cands, k, settings=None):
        asked["settings"] = settings
        scores = cands.vectors @ query
        return RankedResults(results_in_order(cands, np.argsort(-scores), scores),
                             mechanism=(settings and settings.mechanism) or "memory-attention",
                             backend="numpy")

    def rerank_plain(query, cands, k):
        return rerank_with(query, cands, k)

    return candidates, rerank_with if takes_settings else rerank_plain, asked


def test_pipeline_applies_hook_settings(rng):
    reg = HookRegistry()
    reg.register("pre-retrieval", lambda c: {"overfetch": 5})
    candidates, rerank, asked = _steps(rng)
    pipe = Pipeline(candidates, rerank, overfetch=2, hooks=reg)
    res = pipe.run(f32(rng, 8), 3, available=40, task="long-context")
    assert isinstance(res, PipelineResults)
    assert asked["n"] == 15 and asked["settings"].overfetch == 5
    assert res.mechanism == "longformer-attention" == res.recommended
    assert res.task == "long-context" and res.hook_errors == [] and len(res) == 3
    assert res.to_dict()["recommended"] == "longformer-attention"
    assert res.top_k(2).recommended == "longformer-attention"


def test_pipeline_survives_a_failing_hook(rng):
    reg = HookRegistry()
    reg.register("pre-retrieval", lambda c: 1 / 0)
    candidates, rerank, asked = _steps(rng)
    res = Pipeline(candidates, rerank, hooks=reg).run(f32(rng, 8), 3, available=40)
    assert len(res) == 3 and asked["n"] == 9 and res.fallback is None
    assert "ZeroDivisionError" in res.hook_errors[0]
    assert res.to_dict()["hook_errors"] == res.hook_errors


def test_pipeline_reports_a_step_that_ignores_the_hooks_mechanism(rng):
    candidates, rerank, _ = _steps(rng, takes_settings=False)
    res = Pipeline(candidates, rerank, hooks=HookRegistry()).run(
        f32(rng, 8), 3, available=40, task="code-analysis")
    assert res.mechanism == "memory-attention"
    assert "chose 'hierarchical-cross-attention'" in res.hook_errors[0]


def test_pipeline_without_hooks_uses_the_global_registry(rng):
    candidates, rerank, asked = _steps(rng)
    pipe = Pipeline(candidates, rerank)
    assert pipe.hooks is hooks.default_registry
    with hooks.temporary("pre-retrieval", lambda c: {"overfetch": 4}):
        pipe.run(f32(rng, 8), 2, available=40)
    assert asked["n"] == 8
    with pytest.raises(TypeError, match="HookRegistry"):
        Pipeline(candidates, rerank, hooks=[])


# ------------------------------------------------------------------------------ the memory
@pytest.fixture
def memory(tmp_path, rng):
    vectors = f32(rng, 120, 16)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    reg = HookRegistry()
    with AttentionEnhancedMemory.open(tmp_path / "m.db", dim=16, model_id="v",
                                      hooks=reg) as mem:
        mem.store([{"id": f"doc{i}", "vector": v, "text": f"text {i}"}
                   for i, v in enumerate(vectors)])
        yield mem


def _expected(mem, q, mechanism, k=5):
    hits = mem.search(q, 3 * k)
    cand = np.stack([h["vector"] for h in hits])
    dense = np.array([h["score"] for h in hits], np.float32)
    scores = attention_scores(mechanism, q, cand, dense)
    return [hits[i]["corpus_id"] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("task, mechanism", [
    ("memory-retrieval", "memory-attention"), ("long-context", "longformer-attention"),
    ("code-analysis", "hierarchical-cross-attention"), ("anything", "flash-attention-v2")])
def test_memory_task_picks_the_mechanism(memory, rng, task, mechanism):
    q = f32(rng, 16)
    res = memory.retrieve(q, 5, task=task)
    assert res.mechanism == mechanism and res.fallback is None and res.hook_errors == []
    assert res.ids == _expected(memory, q, mechanism)
    assert all(r["text"].startswith("text ") for r in res)


def test_memory_flash_order_is_exact_attention_order(memory, rng):
    q = f32(rng, 16)
    memory.hooks.register("pre-retrieval", lambda c: {"mechanism": "flash-attention-v2"})
    res = memory.retrieve(q, 5)
    hits = memory.search(q, 15)
    w = reference.attention(q[None], np.stack([h["vector"] for h in hits]),
                            np.eye(15, dtype=np.float32))[0]
    assert res.mechanism == "flash-attention-v2"
    assert res.ids == [hits[i]["corpus_id"] for i in np.argsort(-w, kind="stable")[:5]]


def test_memory_mechanism_that_cannot_score_falls_back(memory, rng):
    q = f32(rng, 16)
    res = memory.retrieve(q, 5, task="swarm-coordination")    # star-attention needs n == m
    assert res.mechanism == "vector-order" and "star-attention" in res.fallback
    assert res.recommended == "star-attention"
    assert res.ids == [h["corpus_id"] for h in memory.search(q, 15)][:5]


def test_memory_failing_hook_and_own_registry(memory, rng, caplog):
    q = f32(rng, 16)
    plain = memory.retrieve(q, 5)
    memory.hooks.register("pre-retrieval", lambda c: {}["missing"])
    with hooks.temporary("pre-retrieval", lambda c: {"mechanism": "linear-attention"}):
        with caplog.at_level(logging.WARNING, logger="rerank.hooks"):
            res = memory.retrieve(q, 5)                          # the global hook is not used
    assert res.ids == plain.ids and res.mechanism == "memory-attention"
    assert len(res.hook_errors) == 1 and "KeyError" in res.hook_errors[0]
    assert "KeyError" in caplog.text


def test_memory_hooks_see_the_raw_query_and_set_text_settings(memory, rng):
    seen, captured = [], []
    chosen = TextRerankSettings(tau=0.05, lam=0.5)
    memory.hooks.register("pre-retrieval",
                          lambda c: seen.append((c.query, c.source, c.k)) or
                          {"text_settings": chosen, "overfetch": 2})
    original = memory.score

    def spy(query, candidates):
        captured.append((query.text_settings, len(candidates)))
        return original(query, candidates)

    memory.score = spy
    memory.pipeline.rerank = memory.rerank
    q = f32(rng, 16)
    memory.retrieve(q, 4)
    assert seen[0][0] is q and seen[0][1:] == ("memory", 4)
    assert captured == [(chosen, 8)]


def test_memory_rejects_a_bad_task(memory, rng):
    with pytest.raises(TypeError, match="task must be a string"):
        memory.retrieve(f32(rng, 16), 5, task=["code-analysis"])
