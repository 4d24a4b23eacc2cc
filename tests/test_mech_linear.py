"""The linear attention family: linear, performer, cosformer, rfa, nystrom, linformer.

Each mechanism is checked against a form written directly from its paper (the quadratic, masked
n × m form for the feature maps; F·A⁺·B·v for Nyström; attention over E·k, F·v for Linformer), on
2-D, 3-D, GQA 4-D and n ≠ m inputs, on both backends; plus the property tests of each paper
(random-feature estimates converging, the gated recurrence against a plain loop, exactness limits).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rerank
from rerank import backend, reference, registry
from rerank.mechanisms import linear

from conftest import assert_close, f32

torch.set_num_threads(1)

NAMES = ["linear-attention", "performer-attention", "cosformer-attention", "rfa-attention",
         "nystrom-attention", "linformer-attention"]
TABLE = {  # ADR-029: name → (complexity, use case)
    "linear-attention": ("O(n)", "Real-time inference"),
    "performer-attention": ("O(n)", "Large scale (FAVOR+)"),
    "cosformer-attention": ("O(n)", "Efficient softmax"),
    "rfa-attention": ("O(n)", "Memory efficient"),
    "nystrom-attention": ("O(n)", "Matrix approximation"),
    "linformer-attention": ("O(n)", "Low-rank projection"),
}
FEATURE_MAPS = ["linear-attention", "performer-attention", "cosformer-attention", "rfa-attention"]
NON_CAUSAL = {"nystrom-attention", "linformer-attention"}
#: float32 kernels against float64 references
TOL = 1e-4

# (b, h, h_kv, n, m, d, dv): b = 0 → 3-D, h = 0 → 2-D
SHAPES = [
    (0, 0, 0, 37, 37, 8, 8),
    (0, 0, 0, 20, 45, 6, 5),          # n < m
    (0, 0, 0, 45, 20, 6, 5),          # n > m: the first queries see no key when causal
    (0, 3, 3, 33, 33, 16, 16),
    (2, 4, 2, 30, 41, 8, 12),         # GQA, n ≠ m
    (1, 2, 1, 300, 300, 16, 16),      # MQA; > one 256-row readout tile
    (0, 0, 0, 5, 5, 4, 3),            # ≤ 8 rows: the kernel's dot-product paths
    (1, 2, 2, 70, 70, 16, 64),        # the causal step's 32-column vector blocks
    (0, 0, 0, 50, 60, 8, 45),         # 32 + 8 + 5 columns
]
SHAPE_IDS = ["b{}-h{}-hkv{}-n{}-m{}-d{}-dv{}".format(*s) for s in SHAPES]


def inputs(rng, shape, scale=1.0):
    b, h, h_kv, n, m, d, dv = shape
    lead_q = ((b,) if b else ()) + ((h,) if h else ())
    lead_k = ((b,) if b else ()) + ((h_kv,) if h else ())
    return (f32(rng, *lead_q, n, d, scale=scale), f32(rng, *lead_k, m, d, scale=scale),
            f32(rng, *lead_k, m, dv))


def as4(q, k, v):
    """float64 4-D copies with k and v expanded to q's heads (GQA)."""
    def four(x):
        x = np.asarray(x, dtype=np.float64)
        return x.reshape((1,) * (4 - x.ndim) + x.shape)
    q4, k4, v4 = four(q), four(k), four(v)
    heads = q4.shape[1]
    return q4, reference.expand_kv_heads(k4, heads), reference.expand_kv_heads(v4, heads)


def quadratic(weights, v4, causal, shape):
    """The n × m form: out_i = Σ_j w_ij v_j / Σ_j w_ij over the visible keys, reshaped like q."""
    n, m = weights.shape[-2:]
    if causal:
        weights = np.where(reference.causal_mask(n, m), weights, 0.0)
    den = weights.sum(-1, keepdims=True)
    out = np.divide(weights @ v4, den, out=np.zeros(weights.shape[:-1] + (v4.shape[-1],)),
                    where=den != 0)
    return out.reshape(shape[:-1] + (v4.shape[-1],))


def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def linear_reference(q, k, v, causal):
    q4, k4, v4 = as4(q, k, v)
    return quadratic(elu1(q4) @ np.swapaxes(elu1(k4), -1, -2), v4, causal, q.shape)


def cosformer_reference(q, k, v, causal):
    """The paper's eq.: w_ij = relu(q_i)·relu(k_j)·cos(π/2·(p_i − j)/M), p_i = i + m − n."""
    q4, k4, v4 = as4(q, k, v)
    n, m = q4.shape[2], k4.shape[2]
    big_m = max(n, m)
    distance = (np.arange(n)[:, None] + m - n) - np.arange(m)[None, :]
    reweight = np.cos(np.pi / 2 * distance / big_m)
    sim = np.maximum(q4, 0) @ np.swapaxes(np.maximum(k4, 0), -1, -2)
    return quadratic(sim * reweight, v4, causal, q.shape)


def feature_reference(phi, q, k, v, causal):
    """The quadratic form of a mechanism's own (unstabilised) feature map."""
    q4, k4, v4 = as4(q, k, v)
    return quadratic(phi(q4) @ np.swapaxes(phi(k4), -1, -2), v4, causal, q.shape)


def segment_mean_reference(x4, parts):
    n = x4.shape[2]
    bounds = [(i * n) // parts for i in range(parts + 1)]
    return np.stack([x4[:, :, a:b].mean(axis=2) for a, b in zip(bounds[:-1], bounds[1:])], axis=2)


def paper_pinv(a, iterations=6):
    """Xiong et al. eq. (16): Z_{j+1} = ¼ Z_j (13I − A Z_j (15I − A Z_j (7I − A Z_j)))."""
    eye = np.eye(a.shape[-1])
    norms = np.abs(a).sum(-2).max(-1) * np.abs(a).sum(-1).max(-1)      # ‖A‖₁·‖A‖∞
    z = np.swapaxes(a, -1, -2) / norms[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_reference(q, k, v, landmarks, exact):
    q4, k4, v4 = as4(q, k, v)
    scale = 1.0 / math.sqrt(q4.shape[-1])
    l = min(landmarks, q4.shape[2], k4.shape[2])
    qm, km = segment_mean_reference(q4, l), segment_mean_reference(k4, l)
    soft = lambda a, b: reference.softmax(a @ np.swapaxes(b, -1, -2) * scale)  # noqa: E731
    f, a, bmat = soft(q4, km), soft(qm, km), soft(qm, k4)
    pinv = np.linalg.pinv(a) if exact else paper_pinv(a)
    return (f @ pinv @ bmat @ v4).reshape(q.shape[:-1] + (v4.shape[-1],))


def reference_for(name, mech, q, k, v, causal):
    if name == "linear-attention":
        return linear_reference(q, k, v, causal)
    if name == "cosformer-attention":
        return cosformer_reference(q, k, v, causal)
    if name == "performer-attention":
        return feature_reference(mech.feature_map, q, k, v, causal)
    if name == "rfa-attention":
        return feature_reference(mech.feature_map, q, k, v, causal)
    if name == "nystrom-attention":
        return nystrom_reference(q, k, v, mech.landmarks, mech.pinv == "exact")
    e, f = mech.projections(k.shape[-2])
    return reference.attention(q, np.matmul(e, k.astype(np.float64)),
                               np.matmul(f, v.astype(np.float64)))


def configured(name):
    """Instances with non-trivial settings (few landmarks / projected rows: approximations)."""
    return {"nystrom-attention": lambda: registry.get(name, landmarks=7),
            "linformer-attention": lambda: registry.get(name, k_proj=9, seed=3),
            "performer-attention": lambda: registry.get(name, features=32, seed=5),
            "rfa-attention": lambda: registry.get(name, features=24, sigma=0.7, seed=2),
            }.get(name, lambda: registry.get(name))()


# --------------------------------------------------------------------------------------------
# registry and specs

def test_registered_in_order_with_adr_specs():
    specs = registry.by_category("linear")
    assert [s.name for s in specs] == NAMES
    assert [c.spec.name for c in linear.MECHANISMS] == NAMES
    for spec in specs:
        assert (spec.complexity, spec.use_case) == TABLE[spec.name]
        assert spec.compiled is True
        assert "arXiv:" in spec.paper and spec.notes
        assert type(registry.get(spec.name)).__doc__.strip()


# --------------------------------------------------------------------------------------------
# every mechanism against its paper's form

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_the_papers_form(backend_name, rng, name, shape, causal):
    if causal and name in NON_CAUSAL:
        pytest.skip(f"{name} is not causal (tested below)")
    q, k, v = inputs(rng, shape)
    mech = configured(name)
    out = mech.forward(q, k, v, causal=causal)
    assert out.dtype == np.float32 and out.shape == q.shape[:-1] + (v.shape[-1],)
    assert_close(out, reference_for(name, mech, q, k, v, causal), TOL, what=name)
    np.testing.assert_array_equal(mech.forward(q, k, v, causal=causal), out)   # deterministic
    assert mech.backend == backend_name


@pytest.mark.parametrize("name", NAMES)
def test_differs_from_exact_attention(backend_name, rng, name):
    q, k, v = inputs(rng, (0, 2, 2, 64, 64, 8, 8), scale=1.5)
    out = configured(name).forward(q, k, v)
    assert np.abs(out - reference.attention(q, k, v)).max() > 0.05


@pytest.mark.parametrize("name", NAMES)
def test_compiled_forward_runs_the_compiled_kernel_and_agrees(compiled, monkeypatch, rng, name):
    q, k, v = inputs(rng, (2, 4, 2, 70, 300, 16, 8))
    mech = configured(name)
    with backend.use_backend("numpy"):
        numpy_out = mech.forward(q, k, v)
    used = []
    real = backend.compiled_kernels()

    class Spy:
        def __getattr__(self, attr):
            used.append(attr)
            return getattr(real, attr)

    monkeypatch.setattr(backend, "compiled_kernels", lambda: Spy())
    out = mech.forward(q, k, v)
    kernel = "attention" if name in NON_CAUSAL else "linear_feature_attention"
    assert kernel in used
    assert mech.backend == "compiled"
    assert_close(out, numpy_out, TOL, what=f"{name} compiled vs numpy")


@pytest.mark.parametrize("variant", ["full", "causal", "gated"])
@pytest.mark.parametrize("name", FEATURE_MAPS)
def test_compiled_agrees_with_numpy_at_length(compiled, rng, name, variant):
    """Thousands of keys: the causal recurrence (numpy side: blockwise, float64) and the
    non-causal form's sum of partial states over 4096-key chunks."""
    if variant == "gated" and name != "rfa-attention":
        pytest.skip("only rfa has a gate")
    q, k, v = inputs(rng, (1, 2, 1, 2500, 9000, 16, 40))
    mech = registry.get(name, gated=True) if variant == "gated" else registry.get(name)
    causal = variant != "full"
    out = mech.forward(q, k, v, causal=causal)
    with backend.use_backend("numpy"):
        assert_close(out, mech.forward(q, k, v, causal=causal), 2e-4, what=name)


def test_kernel_results_do_not_depend_on_thread_count(compiled, rng):
    q, k, v = inputs(rng, (2, 4, 2, 600, 9000, 16, 16))
    mech = registry.get("linear-attention")
    results = []
    for threads in (1, 2, 3):
        rerank.set_num_threads(threads)
        results.append((mech.forward(q, k, v), mech.forward(q, k, v, causal=True)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# linear-attention

def test_linear_hand_example(backend_name):
    """φ = elu + 1: φ([0, 1]) = [1, 2], φ([1, 0]) = [2, 1], φ([0, 0]) = [1, 1].
    q0·k: 4, 3 → [4, 3]/7; q1·k: 5, 3 → [5, 3]/8; causally q0 sees only k0 → v0."""
    q = np.array([[0, 1], [1, 0]], np.float32)
    k = np.array([[1, 0], [0, 0]], np.float32)
    v = np.array([[1, 0], [0, 1]], np.float32)
    mech = registry.get("linear-attention")
    assert_close(mech.forward(q, k, v), [[4 / 7, 3 / 7], [5 / 8, 3 / 8]], 1e-6)
    assert_close(mech.forward(q, k, v, causal=True), [[1, 0], [5 / 8, 3 / 8]], 1e-6)
    softmax = reference.attention(q, k, v)
    assert np.abs(softmax - [[4 / 7, 3 / 7], [5 / 8, 3 / 8]]).max() > 0.05


def test_linear_recurrent_form_equals_prefix_sums(backend_name, rng):
    """The RNN view (Katharopoulos eq. 18–20) step by step, decoding with a growing cache."""
    q, k, v = f32(rng, 12, 4), f32(rng, 12, 4), f32(rng, 12, 3)
    mech = registry.get("linear-attention")
    full = mech.forward(q, k, v, causal=True)
    s, z = np.zeros((4, 3)), np.zeros(4)
    for i in range(12):
        s += np.outer(elu1(k[i]), v[i])
        z += elu1(k[i])
        expected = elu1(q[i]) @ s / (elu1(q[i]) @ z)
        assert_close(full[i], expected, TOL)
        # one query against the cache so far: bottom-right alignment makes it the last row
        step = mech.forward(q[i:i + 1], k[:i + 1], v[:i + 1], causal=True)
        assert_close(step[0], expected, TOL)


def test_causal_queries_before_any_key_get_zeros(backend_name, rng):
    q, k, v = np.abs(f32(rng, 6, 4)) + 0.1, np.abs(f32(rng, 2, 4)) + 0.1, f32(rng, 2, 4)
    for name in FEATURE_MAPS:
        out = registry.get(name).forward(q, k, v, causal=True)
        np.testing.assert_array_equal(out[:4], 0.0)     # query i sees keys j ≤ i − 4
        assert np.abs(out[4:]).max() > 0


def test_zero_denominator_is_guarded(backend_name):
    """cosformer's relu features of an all-negative query miss every key: zeros, not NaN."""
    q = -np.ones((3, 4), np.float32)
    k, v = np.ones((5, 4), np.float32), np.ones((5, 2), np.float32)
    for causal in (False, True):
        out = registry.get("cosformer-attention").forward(q, k, v, causal=causal)
        np.testing.assert_array_equal(out, 0.0)


# --------------------------------------------------------------------------------------------
# performer-attention

def test_performer_error_shrinks_with_features(backend_name, rng):
    """Mean |error| to exact softmax attention over seeds falls as r grows (≈ 1/√r), and at
    r = 1024 it is well below that of uniform weights (so it does approximate the softmax)."""
    q, k, v = inputs(rng, (0, 2, 2, 64, 64, 16, 8), scale=0.5)
    exact = reference.attention(q, k, v)
    errors = []
    for r in (16, 64, 256, 1024):
        errs = [np.abs(registry.get("performer-attention", features=r, seed=s).forward(q, k, v)
                       - exact).mean() for s in range(6)]
        errors.append(np.mean(errs))
    uniform = np.abs(v.mean(axis=-2, keepdims=True) - exact).mean()
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.015 and errors[0] > 3 * errors[-1] and errors[-1] < 0.5 * uniform, \
        (errors, uniform)


def test_performer_kernel_estimate_is_unbiased(rng):
    """E_ω[φ(x)·φ(y)] = exp(x·y/√d) over seeds (positive orthogonal features)."""
    x, y = f32(rng, 8, scale=0.7), f32(rng, 8, scale=0.7)
    exact = math.exp(float(x.astype(np.float64) @ y) / math.sqrt(8))
    estimates = []
    for seed in range(400):
        mech = registry.get("performer-attention", features=16, seed=seed)
        estimates.append(float(mech.feature_map(x.astype(np.float64))
                               @ mech.feature_map(y.astype(np.float64))))
    estimates = np.array(estimates)
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * stderr + 1e-9, (estimates.mean(), exact, stderr)
    assert estimates.std() > 0                       # a real random estimate, not the closed form


def test_performer_features_are_orthogonal_blocks_with_chi_norms():
    mech = registry.get("performer-attention", features=40, seed=1)
    w = mech.omega(16).astype(np.float64)
    assert w.shape == (40, 16)
    for block in (w[:16], w[16:32], w[32:]):
        gram = block @ block.T
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() < 1e-4 * np.abs(gram).max()
    norms = np.linalg.norm(w, axis=1)
    assert norms.std() > 0.1                         # resampled from chi(d), not all √d
    np.testing.assert_array_equal(w, registry.get("performer-attention", features=40,
                                                  seed=1).omega(16))


def test_performer_is_seeded(backend_name, rng):
    q, k, v = inputs(rng, (0, 2, 2, 30, 30, 8, 8))
    a = registry.get("performer-attention", seed=7).forward(q, k, v)
    np.testing.assert_array_equal(a, registry.get("performer-attention", seed=7).forward(q, k, v))
    assert np.abs(a - registry.get("performer-attention", seed=8).forward(q, k, v)).max() > 1e-4


def test_performer_given_projection(backend_name, rng):
    q, k, v = f32(rng, 10, 4), f32(rng, 12, 4), f32(rng, 12, 3)
    omega = f32(rng, 6, 4)
    mech = registry.get("performer-attention", projection=omega)
    assert mech.features == 6 and mech.omega(4) is mech.projection

    def phi(x):                                  # x scaled by d^(−1/4), r = 6
        x = x * 4 ** -0.25
        return np.exp(x @ omega.T.astype(np.float64) - 0.5 * (x * x).sum(-1, keepdims=True)) \
            / math.sqrt(6)

    assert_close(mech.forward(q, k, v), feature_reference(phi, q, k, v, False), TOL)
    with pytest.raises(ValueError, match="projection must have shape"):
        mech.forward(f32(rng, 10, 5), f32(rng, 12, 5), v)


def test_performer_stabiliser_survives_large_logits(backend_name, rng):
    """Unstabilised, exp(ω·x) overflows float32 here; the max-subtraction keeps it finite."""
    q, k, v = f32(rng, 20, 8, scale=12.0), f32(rng, 20, 8, scale=12.0), f32(rng, 20, 4)
    mech = registry.get("performer-attention", features=64)
    out = mech.forward(q, k, v)
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= np.abs(v).max() + 1e-4   # positive weights: a convex mix of v


# --------------------------------------------------------------------------------------------
# rfa-attention

def test_rfa_kernel_estimate_converges_to_gaussian(rng):
    """φ(x)·φ(y) → exp(−‖x − y‖²/(2σ²)) for unit x, y as the number of features grows."""
    x, y = reference.normalize(rng.standard_normal(8)), reference.normalize(rng.standard_normal(8))
    sigma = 0.8
    exact = math.exp(-np.sum((x - y) ** 2) / (2 * sigma ** 2))
    errors = []
    for features in (16, 256, 4096):
        est = [float(m.feature_map(x) @ m.feature_map(y)) for m in
               (registry.get("rfa-attention", features=features, sigma=sigma, seed=s)
                for s in range(20))]
        errors.append(np.mean(np.abs(np.array(est) - exact)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors


def test_rfa_approaches_normalised_softmax(backend_name, rng):
    """With many features RFA ≈ softmax(q̂·k̂ᵀ/σ²)·v (its paper's target)."""
    q, k, v = f32(rng, 30, 8), f32(rng, 40, 8), f32(rng, 40, 4)
    mech = registry.get("rfa-attention", features=8192, sigma=0.6)
    target = reference.attention(reference.normalize(q), reference.normalize(k), v,
                                 scale=1 / 0.6 ** 2)
    assert np.abs(mech.forward(q, k, v) - target).max() < 0.05


def gated_loop(mech, q, k, v):
    """RFA-Gate written as the paper's recurrence, one step at a time (float64)."""
    q4, k4, v4 = as4(q, k, v)
    weight, bias = mech.gate(k.shape[-3] if k.ndim >= 3 else 1, k.shape[-1])
    group = q4.shape[1] // len(bias)
    weight, bias = np.repeat(weight, group, axis=0), np.repeat(bias, group)     # per query head
    b, h, n, _ = q4.shape
    m = k4.shape[2]
    out = np.zeros((b, h, n, v4.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            phi_q, phi_k = mech.feature_map(q4[bi, hi]), mech.feature_map(k4[bi, hi])
            s, z = np.zeros((phi_k.shape[1], v4.shape[-1])), np.zeros(phi_k.shape[1])
            states = []
            for t in range(m):
                g = 1 / (1 + math.exp(-(k4[bi, hi, t] @ weight[hi] + bias[hi])))
                s = g * s + (1 - g) * np.outer(phi_k[t], v4[bi, hi, t])
                z = g * z + (1 - g) * phi_k[t]
                states.append((s, z))
            for i in range(n):
                if i + m - n >= 0:
                    s, z = states[i + m - n]
                    out[bi, hi, i] = phi_q[i] @ s / (phi_q[i] @ z)
    return out.reshape(q.shape[:-1] + (v.shape[-1],))


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[2], SHAPES[4]], ids=str)
def test_rfa_gated_recurrence_matches_a_loop(backend_name, rng, shape):
    q, k, v = inputs(rng, shape)
    mech = registry.get("rfa-attention", gated=True, features=16, seed=4)
    out = mech.forward(q, k, v, causal=True)
    assert_close(out, gated_loop(mech, q, k, v), TOL)
    ungated = registry.get("rfa-attention", features=16, seed=4).forward(q, k, v, causal=True)
    assert np.abs(out - ungated).max() > 1e-3


def test_rfa_gate_weights_are_parameters(backend_name, rng):
    q, k, v = f32(rng, 2, 15, 8), f32(rng, 2, 15, 8), f32(rng, 2, 15, 4)
    w, b = f32(rng, 2, 8), np.array([0.5, -1.0], np.float32)
    mech = registry.get("rfa-attention", gated=True, gate_weight=w, gate_bias=b)
    got_w, got_b = mech.gate(2, 8)
    np.testing.assert_array_equal(got_w, w)
    np.testing.assert_array_equal(got_b, b)
    assert_close(mech.forward(q, k, v, causal=True), gated_loop(mech, q, k, v), TOL)
    with pytest.raises(ValueError, match="gate_weight must have shape"):
        registry.get("rfa-attention", gated=True, gate_weight=f32(rng, 3, 8)).forward(
            q, k, v, causal=True)


def test_rfa_gated_is_causal_only(rng):
    q, k, v = f32(rng, 5, 4), f32(rng, 5, 4), f32(rng, 5, 4)
    mech = registry.get("rfa-attention", gated=True)
    assert mech.not_supported_reasons(q, k, v) and not mech.not_supported_reasons(q, k, v,
                                                                                  causal=True)
    with pytest.raises(ValueError, match="causal only"):
        mech.forward(q, k, v)


# --------------------------------------------------------------------------------------------
# nystrom-attention

@pytest.mark.parametrize("shape", [(0, 0, 0, 24, 24, 8, 8), (2, 4, 2, 16, 16, 8, 5)], ids=str)
def test_nystrom_is_exact_with_one_landmark_per_token(backend_name, rng, shape):
    q, k, v = inputs(rng, shape)
    mech = registry.get("nystrom-attention", landmarks=shape[3], pinv="exact")
    assert_close(mech.forward(q, k, v), reference.attention(q, k, v), 1e-3)


def test_nystrom_error_decreases_with_landmarks(backend_name, rng):
    """Smooth sequences (as in text): more landmarks, better approximation (median over draws);
    n landmarks: exact."""
    t = np.linspace(0, 1, 64)[:, None]
    per_draw = []
    for _ in range(5):
        base = lambda: np.sin(2 * np.pi * (t * rng.uniform(0.5, 2, 8) + rng.random(8)))  # noqa
        q, k = (2 * base()).astype(np.float32), (2 * base()).astype(np.float32)
        v = f32(rng, 64, 8)
        exact = reference.attention(q, k, v)
        per_draw.append([np.abs(registry.get("nystrom-attention", landmarks=l, pinv="exact")
                                .forward(q, k, v) - exact).mean() for l in (2, 8, 16, 32, 64)])
    errors = np.median(per_draw, axis=0)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert np.max(per_draw, axis=0)[-1] < 1e-5 and errors[0] > 0.05


def test_nystrom_iterative_pinv_approaches_the_pseudo_inverse():
    """On a well-conditioned softmax matrix the paper's iteration converges within 6 steps."""
    x = np.random.default_rng(0).standard_normal((2, 16, 16)) * 1.2
    a = reference.attention_weights(x, x)
    assert max(np.linalg.cond(a[0]), np.linalg.cond(a[1])) < 5
    exact = np.linalg.pinv(a)
    errors = [np.abs(linear.iterative_pinv(a, i) - exact).max() / np.abs(exact).max()
              for i in (1, 3, 6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9, errors


def test_nystrom_landmarks_are_segment_means():
    x = np.arange(10, dtype=np.float64).reshape(1, 1, 10, 1)
    np.testing.assert_allclose(linear.segment_means(x, 3)[0, 0, :, 0], [1.0, 4.0, 7.5])
    np.testing.assert_allclose(linear.segment_means(x, 10), x)


def test_nystrom_rejects_bad_parameters():
    with pytest.raises(ValueError, match="pinv must be one of"):
        registry.get("nystrom-attention", pinv="svd")
    with pytest.raises(ValueError, match="landmarks"):
        registry.get("nystrom-attention", landmarks=0)


# --------------------------------------------------------------------------------------------
# linformer-attention

@pytest.mark.parametrize("shape", [(0, 0, 0, 20, 33, 8, 8), (2, 4, 2, 17, 17, 8, 5)], ids=str)
def test_linformer_identity_projections_are_exact(backend_name, rng, shape):
    q, k, v = inputs(rng, shape)
    eye = np.eye(shape[4], dtype=np.float32)
    mech = registry.get("linformer-attention", E=eye, F=eye)
    assert mech.k_proj == shape[4]
    assert_close(mech.forward(q, k, v), reference.attention(q, k, v), TOL)


def test_linformer_against_torch(backend_name, rng):
    q, k, v = f32(rng, 2, 3, 40, 16), f32(rng, 2, 3, 50, 16), f32(rng, 2, 3, 50, 8)
    e, f = f32(rng, 12, 50, scale=0.2), f32(rng, 12, 50, scale=0.2)
    out = registry.get("linformer-attention", E=e, F=f).forward(q, k, v)
    t = lambda x: torch.from_numpy(np.asarray(x, dtype=np.float64))  # noqa: E731
    expected = torch.nn.functional.scaled_dot_product_attention(t(q), t(e) @ t(k), t(f) @ t(v))
    assert_close(out, expected.numpy(), TOL)


def test_linformer_hand_example(backend_name):
    """One projected row (the key mean): every query attends to it alone → F·v for every row."""
    k = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    v = np.array([[2.0], [4.0]], np.float32)
    e = np.array([[0.5, 0.5]], np.float32)
    f = np.array([[1.0, 0.25]], np.float32)
    out = registry.get("linformer-attention", E=e, F=f).forward(np.ones((3, 2), np.float32), k, v)
    assert_close(out, np.full((3, 1), 3.0), 1e-6)


def test_linformer_projection_shapes_are_checked(rng):
    q, k, v = f32(rng, 10, 4), f32(rng, 12, 4), f32(rng, 12, 4)
    with pytest.raises(ValueError, match=r"E must have shape \(k_proj, m\) = \(5, 12\)"):
        registry.get("linformer-attention", E=f32(rng, 5, 11)).forward(q, k, v)
    with pytest.raises(ValueError, match="F must have shape"):
        registry.get("linformer-attention", E=f32(rng, 5, 12), F=f32(rng, 4, 12)).forward(q, k, v)
    mech = registry.get("linformer-attention", k_proj=6, seed=1)
    e, f = mech.projections(12)
    assert e.shape == f.shape == (6, 12) and np.abs(e - f).max() > 0
    np.testing.assert_array_equal(e, registry.get("linformer-attention", k_proj=6,
                                                  seed=1).projections(12)[0])


# --------------------------------------------------------------------------------------------
# what is not supported, and bad input

@pytest.mark.parametrize("name", NAMES)
def test_not_supported_reasons(rng, name):
    q, k, v = f32(rng, 6, 4), f32(rng, 6, 4), f32(rng, 6, 4)
    mech = registry.get(name)
    assert mech.not_supported_reasons(q, k, v) == []
    reasons = mech.not_supported_reasons(q, k, v, mask=np.ones((6, 6), bool))
    assert reasons and "mask" in reasons[0]
    with pytest.raises(ValueError, match="does not support attention masks"):
        mech.forward(q, k, v, mask=np.ones((6, 6), bool))
    causal_reasons = mech.not_supported_reasons(q, k, v, causal=True)
    assert bool(causal_reasons) == (name in NON_CAUSAL)
    if name in NON_CAUSAL:
        with pytest.raises(ValueError, match="does not support causal"):
            mech.forward(q, k, v, causal=True)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(backend_name, rng, name):
    q, k, v = f32(rng, 6, 4), f32(rng, 7, 4), f32(rng, 7, 3)
    mech = registry.get(name)
    with pytest.raises(TypeError, match="q must be a floating-point"):
        mech.forward(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k's last dimension"):
        mech.forward(q, f32(rng, 7, 5), v)
    with pytest.raises(ValueError, match="v must match k"):
        mech.forward(q, k, f32(rng, 8, 3))
    with pytest.raises(ValueError, match="heads"):
        mech.forward(f32(rng, 3, 6, 4), f32(rng, 2, 7, 4), f32(rng, 2, 7, 3))
    for arg in ("q", "k", "v"):
        bad = {"q": q.copy(), "k": k.copy(), "v": v.copy()}
        bad[arg][1, 1] = np.nan
        with pytest.raises(ValueError, match=f"{arg} contains NaN or Inf"):
            mech.forward(bad["q"], bad["k"], bad["v"])


@pytest.mark.parametrize("name", NAMES)
def test_huge_inputs_never_give_nan(backend_name, rng, name):
    q, k, v = f32(rng, 6, 4, scale=1e30), f32(rng, 6, 4, scale=1e30), f32(rng, 6, 4, scale=1e30)
    try:
        out = registry.get(name).forward(q, k, v)
    except ValueError as exc:
        assert "overflow" in str(exc) or "NaN or Inf" in str(exc)
    else:
        assert np.isfinite(out).all()


def test_float64_and_non_contiguous_inputs_are_accepted(backend_name, rng):
    q = rng.standard_normal((8, 12))[:, ::2]
    k, v = rng.standard_normal((9, 6)), rng.standard_normal((9, 5))
    for name in NAMES:
        out = registry.get(name).forward(q, k, v)
        assert out.dtype == np.float32 and out.shape == (8, 5)


def test_constructor_parameters_are_validated(rng):
    for name, kwargs in [("linear-attention", {"eps": 0}),
                         ("performer-attention", {"features": 0}),
                         ("rfa-attention", {"sigma": -1.0}),
                         ("linformer-attention", {"k_proj": 0})]:
        with pytest.raises(ValueError):
            registry.get(name, **kwargs)
    with pytest.raises(TypeError):
        registry.get("performer-attention", projection=np.ones((4, 4), np.int64))
    with pytest.raises(ValueError, match="omega contains NaN"):
        registry.get("rfa-attention", omega=np.full((4, 4), np.nan))


def test_kernel_rejects_malformed_arrays(compiled):
    kernels = backend.compiled_kernels()
    a = np.zeros((1, 1, 4, 3), np.float32)
    with pytest.raises(ValueError, match="4-D float32"):
        kernels.linear_feature_attention(a.astype(np.float64), a, a, a, None, False, 1e-6, 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        kernels.linear_feature_attention(a, np.zeros((1, 1, 5, 2), np.float32), a, a, None,
                                         False, 1e-6, 1)
    with pytest.raises(ValueError, match="gates"):
        kernels.linear_feature_attention(a, a, a, a, np.zeros((1, 1, 4), np.float32), False,
                                         1e-6, 1)
