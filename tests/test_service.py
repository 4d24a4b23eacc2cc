"""AttentionService: backends, selection and fallback, precision, cache, batching, async, explain."""
from __future__ import annotations

import asyncio
import importlib
import threading
import time

import numpy as np
import pytest

import rerank
from rerank import backend, reference, registry
from rerank.reranker import Reranker
from rerank.service import (EXACT_MECHANISMS, MIN_CACHE_BYTES, AttentionResult,
                            AttentionService, precision_error_bound, round_to_precision)

from conftest import COMPILED_AVAILABLE, f32

attention_module = importlib.import_module("rerank.attention")
needs_compiled = pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")


def qkv(rng, *shape, scale=1.0):
    return tuple(f32(rng, *shape, scale=scale) for _ in range(3))


@pytest.fixture
def spy(monkeypatch):
    """Records which path exact attention took ('compiled' kernel or 'numpy' reference), per
    thread name."""
    calls = []
    real_compiled, real_reference = attention_module.run_compiled, reference.attention

    def compiled(*args, **kwargs):
        calls.append((threading.current_thread().name, "compiled"))
        return real_compiled(*args, **kwargs)

    def numpy_path(*args, **kwargs):
        calls.append((threading.current_thread().name, "numpy"))
        return real_reference(*args, **kwargs)

    monkeypatch.setattr(attention_module, "run_compiled", compiled)
    monkeypatch.setattr(reference, "attention", numpy_path)
    return calls


# -- backends ----------------------------------------------------------------------------------

def test_forced_numpy_runs_numpy_and_restores_the_process_setting(rng, spy):
    before = backend.requested()
    q, k, v = qkv(rng, 32, 16)
    result = AttentionService("numpy", enable_cache=False).forward(q, k, v)
    assert isinstance(result, AttentionResult)
    assert result.backend == "numpy" and result.mechanism == "flash-attention-v2"
    assert [path for _, path in spy] == ["numpy"]
    assert backend.requested() == before
    np.testing.assert_allclose(result.output, reference.attention(q, k, v), atol=1e-5)


@needs_compiled
def test_forced_compiled_runs_the_kernel(rng, spy):
    q, k, v = qkv(rng, 32, 16)
    with rerank.use_backend("numpy"):          # the process asks for numpy; the service forces
        result = AttentionService("compiled", enable_cache=False).forward(q, k, v)
        assert backend.requested() == "numpy"
    assert result.backend == "compiled" and [p for _, p in spy] == ["compiled"]


@needs_compiled
def test_auto_follows_the_process_setting(rng, spy):
    q, k, v = qkv(rng, 32, 16)
    service = AttentionService("auto", enable_cache=False)
    assert service.forward(q, k, v).backend == "compiled"
    with rerank.use_backend("numpy"):
        result = service.forward(q, k, v)
        info = service.explain(q, k, v)
    assert result.backend == "numpy" and info["backend"] == "numpy"
    assert "numpy backend was requested" in info["compiled_reason"]
    assert [p for _, p in spy] == ["compiled", "numpy"]


def test_compiled_backend_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "_kernels", None)
    monkeypatch.setattr(backend, "_import_error", "hidden for the test")
    with pytest.raises(RuntimeError, match="hidden for the test"):
        AttentionService("compiled")
    info = AttentionService("auto").explain(seq_len=100)
    assert info["backend"] == "numpy" and info["compiled_reason"].endswith("hidden for the test")


def test_a_mechanism_without_a_compiled_kernel_reports_numpy(rng):
    assert not registry.spec("talking-heads-attention").compiled
    q, k, v = qkv(rng, 2, 16, 8)
    service = AttentionService(enable_cache=False)
    info = service.explain(q, k, v, mechanism="talking-heads-attention")
    result = service.forward(q, k, v, mechanism="talking-heads-attention")
    assert result.backend == info["backend"] == "numpy" and not info["compiled"]
    assert "spec.compiled is False" in info["compiled_reason"]


@needs_compiled
def test_services_on_different_backends_run_concurrently_without_mixing(rng, spy, monkeypatch):
    """The process-wide backend is switched through a gate: every numpy call runs numpy and every
    compiled call runs the kernel, even when both run at once from several threads (a short sleep
    before the kernel reads the backend lets other threads run in between)."""
    real = backend.compiled_kernels

    def slow_compiled_kernels():
        time.sleep(0.001)
        return real()

    monkeypatch.setattr(backend, "compiled_kernels", slow_compiled_kernels)
    q, k, v = qkv(rng, 48, 16)
    services = {"numpy": AttentionService("numpy", enable_cache=False),
                "compiled": AttentionService("compiled", enable_cache=False)}
    results, errors = [], []

    def work(name):
        try:
            for _ in range(15):
                results.append((name, services[name].forward(q, k, v).backend))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    before = backend.requested()
    threads = [threading.Thread(target=work, args=(name,), name=f"{name}-{i}")
               for i in range(3) for name in services]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 90 and all(name == ran for name, ran in results)
    assert all(thread.startswith(path) for thread, path in spy) and len(spy) == 90
    assert backend.requested() == before


# -- selection and fallback --------------------------------------------------------------------

def test_fallback_above_the_long_sequence_threshold(rng):
    service = AttentionService(long_sequence_threshold=64, enable_cache=False)
    short, long_ = qkv(rng, 64, 8), qkv(rng, 65, 8)
    a, b = service.forward(*short), service.forward(*long_)
    assert a.mechanism == "flash-attention-v2" and b.mechanism == "linear-attention"
    assert "long_sequence_threshold" in b.reason
    np.testing.assert_array_equal(b.output, registry.get("linear-attention").forward(*long_))
    np.testing.assert_array_equal(a.output, registry.get("flash-attention-v2").forward(*short))
    # the key length counts too (a few queries over a long cache)
    q = f32(rng, 4, 8)
    k, v = f32(rng, 100, 8), f32(rng, 100, 8)
    assert service.forward(q, k, v).mechanism == "linear-attention"
    custom = AttentionService(fallback_mechanism="performer-attention",
                              long_sequence_threshold=64, enable_cache=False)
    assert custom.forward(*long_).mechanism == "performer-attention"


@pytest.mark.parametrize("seq_len, expected", [(16, "flash-attention-v2"),
                                               (100, "linear-attention"),
                                               (9000, "linear-attention"),
                                               (40000, "longformer-attention")])
def test_recommend_follows_the_selector(seq_len, expected):
    service = AttentionService(long_sequence_threshold=64)
    first = service.recommend(seq_len, 2)
    assert first["mechanism"] == expected and service.recommend(seq_len, 2) == first
    assert first["mechanism"] == service.selector.select(seq_len=seq_len, batch_size=2)
    first["mechanism"] = "changed"                        # callers get their own dict
    assert service.recommend(seq_len, 2)["mechanism"] == expected


@pytest.mark.parametrize("n", [16, 80, 200])
def test_explain_and_recommend_agree_with_what_forward_runs(rng, n):
    service = AttentionService(long_sequence_threshold=64)
    q, k, v = qkv(rng, 2, n, 8)
    info = service.explain(q, k, v)
    result = service.forward(q, k, v)
    assert (info["mechanism"], info["backend"]) == (result.mechanism, result.backend)
    assert info["reason"] == result.reason
    assert service.recommend(n)["mechanism"] == result.mechanism
    assert info["cache"]["used"] == (q.nbytes * 3 >= MIN_CACHE_BYTES)
    assert service.explain(seq_len=n)["mechanism"] == result.mechanism
    assert info["compiled"] == (result.backend == "compiled")


def test_explain_reports_unsupported_inputs_and_forced_numpy(rng):
    q, k, v = qkv(rng, 32, 8)
    info = AttentionService("numpy").explain(q, k, v, mechanism="linformer-attention",
                                             causal=True)
    assert info["backend"] == "numpy" and "forced" in info["compiled_reason"]
    assert any("causal" in r for r in info["unsupported"])
    with pytest.raises(ValueError, match="causal"):
        AttentionService("numpy").forward(q, k, v, mechanism="linformer-attention", causal=True)
    with pytest.raises(ValueError, match="seq_len"):
        AttentionService().explain()


def test_bad_settings_and_inputs_raise_clear_errors(rng):
    with pytest.raises(ValueError, match="backend"):
        AttentionService("gpu")
    with pytest.raises(ValueError, match="precision"):
        AttentionService(precision="bf16")
    with pytest.raises(ValueError, match="unknown mechanism"):
        AttentionService(default_mechanism="flash-attention-v9")
    with pytest.raises(ValueError, match="long_sequence_threshold"):
        AttentionService(long_sequence_threshold=0)
    service = AttentionService()
    q, k, v = qkv(rng, 8, 4)
    with pytest.raises(ValueError, match="unknown mechanism"):
        service.forward(q, k, v, mechanism="no-such-attention")
    with pytest.raises(TypeError, match="mechanism"):
        service.forward(q, k, v, mechanism=3)
    with pytest.raises(TypeError, match="dtype"):
        service.forward(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k's last dimension"):
        service.forward(q, f32(rng, 8, 5), f32(rng, 8, 5))
    with pytest.raises(TypeError, match=r"items\[1\]"):
        service.forward_batch([(q, k, v), "nope"])
    with pytest.raises(ValueError, match=r"items\[0\] is missing v"):
        service.forward_batch([{"q": q, "k": k}])
    with pytest.raises(ValueError, match="seq_len"):
        service.recommend(-1)


# -- precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("shape", [(40, 64), (2, 4, 33, 16)])
def test_precision_error_within_the_documented_bound(rng, precision, shape):
    q, k, v = qkv(rng, *shape, scale=1.5)
    exact = AttentionService(precision="fp32", enable_cache=False).forward(q, k, v)
    low = AttentionService(precision=precision, enable_cache=False).forward(q, k, v, causal=True)
    exact_causal = AttentionService(enable_cache=False).forward(q, k, v, causal=True)
    assert low.precision == precision and exact.precision == "fp32"
    bound = precision_error_bound(q, k, v, precision)
    err = np.abs(low.output - exact_causal.output).max(axis=-1)
    slack = 1e-5 * max(1.0, float(np.abs(exact_causal.output).max()))   # the fp32 kernels' error
    assert (err <= bound + slack).all(), (err.max(), bound.min())
    assert err.max() > 0                                     # the inputs really were rounded
    # and the output is exactly fp32 attention of the rounded inputs
    rounded = [round_to_precision(x, precision) for x in (q, k, v)]
    np.testing.assert_array_equal(low.output, rerank.attention(*rounded, causal=True))


@pytest.mark.parametrize("precision, measured_bound", [("fp16", 2e-3), ("int8", 5e-2)])
def test_precision_error_measured_with_margin(precision, measured_bound):
    """Unit Gaussian q, k, v, n = 256, d = 64: measured 2.6e-4 (fp16) and 6.6e-3 (int8); the
    bounds here are those with a ~8× margin (the service docs state them as measured)."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((256, 64)).astype(np.float32) for _ in range(3))
    exact = AttentionService(enable_cache=False).forward(q, k, v).output
    low = AttentionService(precision=precision, enable_cache=False).forward(q, k, v).output
    assert 0 < np.abs(low - exact).max() <= measured_bound


def test_rounding_matches_the_stored_formats(rng):
    x = f32(rng, 5, 12, scale=3.0)
    np.testing.assert_array_equal(round_to_precision(x, "fp16"),
                                  x.astype(np.float16).astype(np.float32))
    int8 = round_to_precision(x, "int8")
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    assert (np.abs(int8 - x) <= step / 2 * (1 + 1e-5)).all()
    assert len(np.unique(np.rint(int8 / step))) <= 255
    assert round_to_precision(x, "fp32") is x
    with pytest.raises(ValueError, match="float16's range"):
        round_to_precision(np.full((2, 2), 7e4, np.float32), "fp16", "q")
    with pytest.raises(ValueError, match="precision"):
        round_to_precision(x, "fp8")


def test_precision_applies_to_other_mechanisms(rng):
    q, k, v = qkv(rng, 50, 16)
    fp32 = AttentionService(enable_cache=False).forward(q, k, v, mechanism="linear-attention")
    fp16 = AttentionService(precision="fp16", enable_cache=False).forward(
        q, k, v, mechanism="linear-attention")
    rounded = [round_to_precision(x, "fp16") for x in (q, k, v)]
    np.testing.assert_array_equal(fp16.output, registry.get("linear-attention").forward(*rounded))
    assert 0 < np.abs(fp16.output - fp32.output).max() < 1e-2   # measured ~1e-3 at most here


def test_exact_mechanisms_are_exact(rng):
    q, k, v = qkv(rng, 30, 8)
    for name in EXACT_MECHANISMS:
        np.testing.assert_allclose(registry.get(name).forward(q, k, v), reference.attention(q, k, v),
                                   atol=2e-6)


# -- cache -------------------------------------------------------------------------------------

def test_cache_hit_equals_a_fresh_result_and_a_changed_byte_misses(rng):
    q, k, v = qkv(rng, 2, 128, 32)
    assert q.nbytes * 3 >= MIN_CACHE_BYTES
    service = AttentionService()
    fresh = AttentionService(enable_cache=False).forward(q, k, v)
    first = service.forward(q, k, v)
    second = service.forward(q.copy(), k.copy(), v.copy())
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(second.output, fresh.output)
    assert (second.mechanism, second.backend) == (fresh.mechanism, fresh.backend)
    second.output[:] = 0                              # a hit is the caller's own copy
    np.testing.assert_array_equal(service.forward(q, k, v).output, fresh.output)
    for arr_index in range(3):                        # the last byte of each input
        arrays = [q, k, v]
        changed = arrays[arr_index].copy()
        changed.view(np.uint8).reshape(-1)[-1] ^= 1
        arrays[arr_index] = changed
        result = service.forward(*arrays)
        assert not result.cache_hit
        np.testing.assert_array_equal(result.output,
                                      AttentionService(enable_cache=False).forward(*arrays).output)
    for kwargs in ({"causal": True}, {"mechanism": "linear-attention"}, {"scale": 0.3}):
        assert not service.forward(q, k, v, **kwargs).cache_hit
        assert service.forward(q, k, v, **kwargs).cache_hit
    stats = service.cache_stats()
    assert stats["hits"] == 5 and stats["misses"] == 7


def test_precision_is_part_of_the_cache_key(rng):
    q, k, v = qkv(rng, 128, 32)
    fp32, fp16 = AttentionService(), AttentionService(precision="fp16")
    fp16.cache = fp32.cache                           # one shared cache
    a, b = fp32.forward(q, k, v), fp16.forward(q, k, v)
    assert not b.cache_hit and not np.array_equal(a.output, b.output)


def test_small_inputs_are_not_cached(rng):
    service = AttentionService()
    q, k, v = qkv(rng, 4, 8)
    assert q.nbytes * 3 < MIN_CACHE_BYTES
    assert not service.forward(q, k, v).cache_hit and not service.forward(q, k, v).cache_hit
    assert service.cache_stats()["misses"] == 0 and len(service.cache) == 0
    assert "not cached" in service.explain(q, k, v)["cache"]["reason"]
    eager = AttentionService(min_cache_bytes=0)
    eager.forward(q, k, v)
    assert eager.forward(q, k, v).cache_hit


def test_cache_budget_evicts_least_recently_used(rng):
    out_bytes = 128 * 32 * 4
    service = AttentionService(cache_bytes=2 * out_bytes)
    inputs = [qkv(rng, 128, 32) for _ in range(3)]
    for x in inputs:
        service.forward(*x)
    assert not service.forward(*inputs[0]).cache_hit     # evicted by the third
    assert service.forward(*inputs[2]).cache_hit
    assert service.cache.nbytes <= 2 * out_bytes


def test_disabled_cache(rng):
    service = AttentionService(enable_cache=False)
    q, k, v = qkv(rng, 128, 32)
    service.forward(q, k, v)
    assert not service.forward(q, k, v).cache_hit and service.cache_stats() is None
    assert service.explain(q, k, v)["cache"]["used"] is False


def test_array_parameters_are_part_of_the_key(rng):
    q, k, v = qkv(rng, 2, 64, 16)
    service = AttentionService()
    # a mask array is hashed whole: changing its last element misses
    mask = np.ones((64, 64), dtype=bool)
    service.forward(q, k, v, mask=mask)
    assert service.forward(q, k, v, mask=mask.copy()).cache_hit
    mask2 = mask.copy()
    mask2[-1, -1] = False
    assert not service.forward(q, k, v, mask=mask2).cache_hit
    # constructor weights (arrays) too
    w = np.eye(16, dtype=np.float32)
    a = service.forward(q, k, v, mechanism="standard-mha", w_q=w)
    w2 = w.copy()
    w2[-1, -1] = 2.0
    b = service.forward(q, k, v, mechanism="standard-mha", w_q=w2)
    assert not a.cache_hit and not b.cache_hit and not np.array_equal(a.output, b.output)
    assert service.forward(q, k, v, mechanism="standard-mha", w_q=w.copy()).cache_hit


def test_unhashable_parameters_skip_the_cache(rng, monkeypatch):
    """A parameter the key cannot describe exactly is computed, never looked up or stored."""
    from rerank import cache as cache_module
    from rerank import service as service_module

    q, k, v = qkv(rng, 128, 16)
    service = AttentionService()
    calls = []

    def key(*args, **kwargs):
        calls.append(1)
        raise cache_module.UnhashableParameter("for the test")

    monkeypatch.setattr(service_module, "cache_key", key)
    assert not service.forward(q, k, v).cache_hit and not service.forward(q, k, v).cache_hit
    assert len(calls) == 2 and len(service.cache) == 0


# -- batching, async, rerank -------------------------------------------------------------------

def test_forward_batch_equals_a_loop(rng):
    items = [qkv(rng, 64, 16) for _ in range(6)]
    items += [{"q": q, "k": k, "v": v, "mechanism": "linear-attention", "causal": True}
              for q, k, v in (qkv(rng, 2, 40, 8) for _ in range(3))]
    items.append({"q": f32(rng, 3, 16), "k": f32(rng, 300, 16), "v": f32(rng, 300, 16),
                  "mechanism": "flash-decoding", "splits": 4})
    service = AttentionService(enable_cache=False)
    loop = [service.forward(*it) if isinstance(it, tuple) else
            service.forward(it["q"], it["k"], it["v"],
                            **{k: v for k, v in it.items() if k not in "qkv"}) for it in items]
    batch = service.forward_batch(items, max_workers=4)
    assert len(batch) == len(loop)
    for a, b in zip(batch, loop):
        np.testing.assert_array_equal(a.output, b.output)
        assert (a.mechanism, a.backend, a.precision) == (b.mechanism, b.backend, b.precision)
    assert service.forward_batch([]) == []


def test_forward_batch_raises_the_failing_items_error(rng):
    good = qkv(rng, 16, 8)
    bad = (f32(rng, 16, 8), f32(rng, 16, 8), np.full((16, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN|non-finite|Inf"):
        AttentionService(enable_cache=False).forward_batch([good, bad, good])


def test_async_twins_equal_sync(rng):
    service = AttentionService(enable_cache=False)
    q, k, v = qkv(rng, 64, 16)
    items = [qkv(rng, 32, 16) for _ in range(3)]
    query, cands = f32(rng, 24), f32(rng, 20, 24)

    async def run():
        return await asyncio.gather(service.aforward(q, k, v, causal=True),
                                    service.aforward_batch(items),
                                    service.arerank(query, cands, top_k=5))

    fwd, batch, ranked = asyncio.run(run())
    np.testing.assert_array_equal(fwd.output, service.forward(q, k, v, causal=True).output)
    for a, b in zip(batch, service.forward_batch(items)):
        np.testing.assert_array_equal(a.output, b.output)
    sync = service.rerank(query, cands, top_k=5)
    assert ranked.ids == sync.ids and [r["score"] for r in ranked] == [r["score"] for r in sync]


def test_rerank_delegates_to_the_reranker_and_records_provenance(rng):
    query, cands = f32(rng, 32), f32(rng, 30, 32)
    service = AttentionService("numpy")
    ranked = service.rerank(query, cands, top_k=7)
    expected = Reranker().rank(query, cands, top_k=7)
    assert ranked.ids == expected.ids and len(ranked) == 7
    assert ranked.mechanism == "memory-attention" and ranked.backend == "numpy"
    with pytest.raises(ValueError, match="no rerank scorer"):
        service.rerank(query, cands, mechanism="flash-attention-v2")


def test_result_records_what_ran(rng):
    q, k, v = qkv(rng, 3, 20, 8)
    result = AttentionService(precision="fp16").forward(q, k, v, mechanism="performer-attention",
                                                        features=32)
    assert result.mechanism == "performer-attention" and result.reason == "requested by the caller"
    assert result.backend == backend.active() and result.precision == "fp16"
    assert np.asarray(result).shape == q.shape and result.shape == q.shape
    assert set(result.timings_ms) == {"cache", "compute", "total"}
    d = result.to_dict()
    assert d["mechanism"] == "performer-attention" and d["shape"] == list(q.shape)
