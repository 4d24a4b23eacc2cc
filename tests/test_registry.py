"""The mechanism registry and the Mechanism contract."""
from __future__ import annotations

import numpy as np
import pytest

import rerank
from rerank import Mechanism, MechanismSpec, reference, registry, scoring
from rerank.mechanisms import registry as registry_module

from conftest import assert_close, f32

#: ADR-029's 39 mechanisms, in its order, with their categories.
ALL = {
    **dict.fromkeys(["standard-mha", "rotary-mha", "alibi-mha", "grouped-query-attention",
                     "multi-query-attention", "differential-attention", "mixture-attention"],
                    "multi-head"),
    **dict.fromkeys(["causal-self-attention", "bidirectional-self-attention",
                     "relative-position-attention", "disentangled-attention",
                     "talking-heads-attention", "synthesizer-attention"], "self-attention"),
    **dict.fromkeys(["cross-attention", "perceiver-attention", "gated-cross-attention",
                     "memory-attention", "hierarchical-cross-attention"], "cross-attention"),
    **dict.fromkeys(["bigbird-attention", "longformer-attention", "local-attention",
                     "strided-attention", "sparse-transformer-attention", "star-attention",
                     "blockwise-attention", "random-attention"], "sparse"),
    **dict.fromkeys(["linear-attention", "performer-attention", "cosformer-attention",
                     "rfa-attention", "nystrom-attention", "linformer-attention"], "linear"),
    **dict.fromkeys(["flash-attention-v2", "flash-attention-v3", "flash-decoding"], "flash"),
    **dict.fromkeys(["moe-attention", "soft-moe-attention", "switch-attention",
                     "expert-choice-attention"], "moe"),
}
#: The first four, whose forward is exact attention (tested below on both backends).
BUILTINS = {name: ALL[name] for name in ("flash-attention-v2", "cross-attention",
                                         "memory-attention", "hierarchical-cross-attention")}
SCORERS = ("cross-attention", "memory-attention", "hierarchical-cross-attention")


@pytest.fixture
def clean_registry():
    """Names registered by a test are removed afterwards; builtins replaced by a test restored."""
    registry.names()                                    # load the builtins first
    factories = dict(registry_module._factories)
    specs = dict(registry_module._specs)
    yield registry
    registry_module._factories.clear()
    registry_module._factories.update(factories)
    registry_module._specs.clear()
    registry_module._specs.update(specs)


def custom_spec(name="test-double-attention", compiled=False, category="test"):
    return MechanismSpec(name=name, category=category, complexity="O(n·m)",
                         use_case="tests", paper="none", compiled=compiled)


class DoubleAttention(Mechanism):
    """Exact attention with the values doubled: distinguishable from every builtin."""
    spec = custom_spec()
    supports_causal = False

    def __init__(self, factor=2.0):
        self.factor = factor

    def _forward(self, q, k, v, *, mask=None, causal=False):
        return self.factor * rerank.attention(q, k, v, mask=mask)


# --------------------------------------------------------------------------------------------
# builtins

def test_all_39_in_adr_order_with_their_categories():
    assert len(ALL) == 39
    assert registry.names() == list(ALL)                # registration order = ADR-029's order
    for name, category in ALL.items():
        assert registry.spec(name).category == category


@pytest.mark.parametrize("name", list(ALL))
def test_builtin_specs_are_complete(name):
    spec = registry.spec(name)
    assert isinstance(spec, MechanismSpec)
    assert spec.name == name
    for field in ("name", "category", "complexity", "use_case", "paper"):
        value = getattr(spec, field)
        assert isinstance(value, str) and value.strip(), field
    assert isinstance(spec.compiled, bool) and (spec.compiled or name not in BUILTINS)
    assert spec.to_dict()["name"] == name
    assert set(spec.to_dict()) >= {"name", "category", "complexity", "use_case", "paper", "compiled"}


def test_list_returns_specs_in_order():
    specs = registry.list()
    assert all(isinstance(s, MechanismSpec) for s in specs)
    assert [s.name for s in specs] == registry.names()


def test_by_category_and_compiled_only():
    flash = registry.by_category("flash")
    assert [s.name for s in flash] == ["flash-attention-v2", "flash-attention-v3",
                                       "flash-decoding"]
    cross = {s.name for s in registry.by_category("cross-attention")}
    assert cross == set(SCORERS) | {"perceiver-attention", "gated-cross-attention"}
    assert registry.by_category("no-such-category") == []
    compiled = {s.name for s in registry.compiled_only()}
    assert compiled >= set(BUILTINS)
    assert all(s.compiled for s in registry.compiled_only())


@pytest.mark.parametrize("name", list(BUILTINS))
@pytest.mark.parametrize("causal", [False, True])
def test_forward_is_exact_attention(backend_name, rng, name, causal):
    mech = registry.get(name)
    assert isinstance(mech, Mechanism)
    assert mech.spec is registry.spec(name) or mech.spec == registry.spec(name)
    q, k, v = f32(rng, 2, 4, 65, 16), f32(rng, 2, 2, 513, 16), f32(rng, 2, 2, 513, 12)
    mask = rng.random((65, 513)) < 0.9
    expected = reference.attention(q, k, v, mask=mask, causal=causal)
    out = mech.forward(q, k, v, mask=mask, causal=causal)
    assert out.shape == (2, 4, 65, 12)
    assert_close(out, expected)
    np.testing.assert_array_equal(mech(q, k, v, mask=mask, causal=causal), out)
    assert mech.not_supported_reasons(q, k, v, mask=mask, causal=causal) == []
    assert mech.backend == backend_name
    assert name in repr(mech)


def test_flash_forward_accepts_scale(backend_name, rng):
    q, k, v = f32(rng, 30, 8), f32(rng, 40, 8), f32(rng, 40, 8)
    out = registry.get("flash-attention-v2").forward(q, k, v, scale=0.5)
    assert_close(out, reference.attention(q, k, v, scale=0.5))


def test_memory_attention_score_delegates(backend_name, rng):
    q, cands = f32(rng, 24), f32(rng, 30, 24)
    mech = registry.get("memory-attention")
    np.testing.assert_array_equal(mech.score(q, cands), scoring.memory_attention(q, cands))
    np.testing.assert_array_equal(mech.score(q, cands, heads=3, tau=0.5, alpha=0.5),
                                  scoring.memory_attention(q, cands, heads=3, tau=0.5, alpha=0.5))
    configured = registry.get("memory-attention", heads=8, tau=0.2, alpha=0.5)
    expected = scoring.memory_attention(q, cands, heads=8, tau=0.2, alpha=0.5)
    np.testing.assert_array_equal(configured.score(q, cands), expected)
    assert_close(expected, reference.memory_attention_scores(q, cands, heads=8, tau=0.2,
                                                             alpha=0.5)[0])
    # the constructor parameters matter (not silently ignored)
    assert np.abs(configured.score(q, cands) - mech.score(q, cands)).max() > 1e-4


def test_cross_attention_score_delegates(backend_name, rng):
    qt, tokens, offsets = f32(rng, 4, 16), f32(rng, 12, 16), np.array([0, 1, 5, 12])
    idf = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
    dense = np.array([0.1, 0.5, 0.2], np.float32)
    mech = registry.get("cross-attention")
    np.testing.assert_array_equal(mech.score(qt, tokens, offsets),
                                  scoring.late_interaction(qt, tokens, offsets))
    got = mech.score(qt, tokens, offsets, tau=0.1, idf=idf, dense=dense, lam=2.0, details=True)
    want = scoring.late_interaction(qt, tokens, offsets, tau=0.1, idf=idf, dense=dense, lam=2.0,
                                    details=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    configured = registry.get("cross-attention", tau=0.1, lam=0.5)
    np.testing.assert_array_equal(configured.score(qt, tokens, offsets),
                                  scoring.late_interaction(qt, tokens, offsets, tau=0.1, lam=0.5))
    # tau=None passed explicitly overrides the configured soft MaxSim
    np.testing.assert_array_equal(configured.score(qt, tokens, offsets, tau=None),
                                  scoring.late_interaction(qt, tokens, offsets, lam=0.5))
    assert_close(got.final, reference.late_interaction_scores(qt, tokens, offsets, tau=0.1,
                                                              idf=idf, dense=dense, lam=2.0)[0])


def test_hierarchical_score_delegates(backend_name, rng):
    q, chunks, offsets = f32(rng, 16), f32(rng, 12, 16), np.array([0, 1, 5, 12])
    mech = registry.get("hierarchical-cross-attention")
    np.testing.assert_array_equal(mech.score(q, chunks, offsets),
                                  scoring.hierarchical(q, chunks, offsets))
    dense = np.array([0.3, 0.1, 0.2], np.float32)
    got = mech.score(q, chunks, offsets, tau=0.5, dense=dense, lam=0.3, details=True)
    want = scoring.hierarchical(q, chunks, offsets, tau=0.5, dense=dense, lam=0.3, details=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    configured = registry.get("hierarchical-cross-attention", tau=0.5, lam=0.3)
    np.testing.assert_array_equal(configured.score(q, chunks, offsets, dense=dense), got.final)


def test_get_returns_fresh_instances():
    a = registry.get("memory-attention", heads=2)
    b = registry.get("memory-attention")
    assert a is not b
    assert a.heads == 2 and b.heads == 1


def test_get_with_unknown_parameter_raises():
    with pytest.raises(TypeError):
        registry.get("memory-attention", no_such_parameter=1)


# --------------------------------------------------------------------------------------------
# registering

def test_register_class_and_get(clean_registry, rng):
    registry.register("test-double-attention", DoubleAttention)
    assert "test-double-attention" in registry.names()
    assert registry.spec("test-double-attention") == DoubleAttention.spec
    mech = registry.get("test-double-attention")
    assert isinstance(mech, DoubleAttention)
    q, k, v = f32(rng, 10, 8), f32(rng, 12, 8), f32(rng, 12, 8)
    assert_close(mech.forward(q, k, v), 2 * reference.attention(q, k, v))
    assert_close(registry.get("test-double-attention", factor=3.0).forward(q, k, v),
                 3 * reference.attention(q, k, v))
    # what it cannot do, it says and refuses
    reasons = mech.not_supported_reasons(q, k, v, causal=True)
    assert reasons and "causal" in reasons[0]
    with pytest.raises(ValueError, match="does not support causal"):
        mech.forward(q, k, v, causal=True)
    assert mech.backend == "numpy"                          # spec.compiled is False
    assert registry.by_category("test") == [DoubleAttention.spec]
    assert DoubleAttention.spec not in registry.compiled_only()


def test_register_function_factory(clean_registry, rng):
    registry.register("test-tripled", lambda factor=3.0: DoubleAttention(factor))
    assert registry.spec("test-tripled") == DoubleAttention.spec
    q, k, v = f32(rng, 5, 4), f32(rng, 6, 4), f32(rng, 6, 4)
    assert_close(registry.get("test-tripled").forward(q, k, v), 3 * reference.attention(q, k, v))


def test_register_duplicate_raises_unless_replace(clean_registry, rng):
    registry.register("test-double-attention", DoubleAttention)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("test-double-attention", DoubleAttention)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("flash-attention-v2", DoubleAttention)
    assert type(registry.get("flash-attention-v2")).__name__ == "FlashAttentionV2"

    class Other(DoubleAttention):
        spec = custom_spec(category="other")

    registry.register("test-double-attention", Other, replace=True)
    assert isinstance(registry.get("test-double-attention"), Other)
    assert registry.spec("test-double-attention").category == "other"
    assert registry.names().count("test-double-attention") == 1


def test_register_rejects_non_mechanisms(clean_registry):
    with pytest.raises(TypeError, match="callable"):
        registry.register("test-bad", 42)
    with pytest.raises(TypeError, match="not a Mechanism"):
        registry.register("test-bad", lambda: "not a mechanism")
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("", DoubleAttention)
    assert "test-bad" not in registry.names()


def test_clean_registry_fixture_restores(clean_registry):
    """Sanity check of the fixture used above: after the tests, no test names remain."""
    assert not [n for n in registry.names() if n.startswith("test-")]


def test_mechanism_is_abstract():
    with pytest.raises(TypeError):
        Mechanism()


# --------------------------------------------------------------------------------------------
# the compiled flag says what really runs

class _KernelSpy:
    """Stands in for the compiled extension module and records which kernels are called."""

    def __init__(self, real):
        self._real = real
        self.called = []

    def __getattr__(self, attr):
        value = getattr(self._real, attr)
        if callable(value):
            def spy(*args, **kwargs):
                self.called.append(attr)
                return value(*args, **kwargs)
            return spy
        return value


@pytest.mark.parametrize("name", list(ALL))
def test_compiled_flag_is_true_exactly_when_a_kernel_runs(name, rng, monkeypatch):
    from rerank import backend
    from conftest import COMPILED_AVAILABLE

    if not COMPILED_AVAILABLE:
        pytest.skip("the compiled extension is not built")
    spy = _KernelSpy(backend.extension())
    monkeypatch.setattr(backend, "_kernels", spy)
    mech = registry.get(name)
    q, k, v = f32(rng, 2, 16, 8), f32(rng, 2, 16, 8), f32(rng, 2, 16, 8)
    with rerank.use_backend("compiled"):
        out = mech.forward(q, k, v)
    assert out.shape == (2, 16, 8) and np.isfinite(out).all()
    assert bool(spy.called) is mech.spec.compiled, (
        f"{name}: spec.compiled={mech.spec.compiled} but kernels called: {spy.called}")
    spy.called.clear()
    with rerank.use_backend("numpy"):
        mech.forward(q, k, v)
    assert spy.called == []
