"""perceiver-attention, gated-cross-attention, flash-attention-v3 and flash-decoding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rerank
from rerank import backend, reference, registry
from rerank.mechanisms import cross, flash
from rerank.mechanisms.flash import FlashAttentionV3, FlashDecoding, chunk_size

from conftest import COMPILED_AVAILABLE, assert_close, f32

NEW = ("perceiver-attention", "gated-cross-attention", "flash-attention-v3", "flash-decoding")

#: (q leading axes, k/v leading axes, n, m, d, dv)
SHAPES = [
    ((), (), 7, 13, 8, 8),
    ((4,), (2,), 5, 9, 16, 16),              # GQA
    ((2, 4), (2, 1), 6, 6, 8, 8),            # MQA, n = m
    ((2, 2), (2, 2), 3, 40, 4, 4),
]


def make(rng, lead_q, lead_kv, n, m, d, dv, scale=1.0):
    return (f32(rng, *lead_q, n, d, scale=scale), f32(rng, *lead_kv, m, d, scale=scale),
            f32(rng, *lead_kv, m, dv))


def softmax64(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def as4(x):
    x = np.asarray(x, np.float64)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


# --------------------------------------------------------------------------------------------
# registry entries (ADR-029)

def test_category_modules_list_the_new_mechanisms_in_adr_order():
    assert [c.spec.name for c in cross.MECHANISMS] == [
        "cross-attention", "perceiver-attention", "gated-cross-attention", "memory-attention",
        "hierarchical-cross-attention"]
    assert [c.spec.name for c in flash.MECHANISMS] == [
        "flash-attention-v2", "flash-attention-v3", "flash-decoding"]


@pytest.mark.parametrize("name, category, complexity, use_case", [
    ("perceiver-attention", "cross-attention", "O(n·l)", "Large inputs"),
    ("gated-cross-attention", "cross-attention", "O(n·m)", "Multi-modal"),
    ("flash-attention-v3", "flash", "O(n²) IO-opt", "Hopper GPUs"),
    ("flash-decoding", "flash", "O(n²) cached", "Fast generation"),
])
def test_specs_follow_adr_029(name, category, complexity, use_case):
    spec = registry.spec(name)
    assert (spec.category, spec.complexity, spec.use_case) == (category, complexity, use_case)
    assert "arXiv:" in spec.paper and spec.notes and spec.compiled is True
    assert type(registry.get(name)).__doc__.strip()


class _Spy:
    """Stands in for rerank.backend.compiled_kernels and records which kernels were used."""

    def __init__(self, real):
        self.real, self.used = real, []

    def __call__(self):
        kernels = self.real()
        if kernels is None:
            return None
        spy = self

        class Proxy:
            def __getattr__(self, attr):
                spy.used.append(attr)
                return getattr(kernels, attr)
        return Proxy()


@pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("name, kernel", [
    ("perceiver-attention", "attention"), ("gated-cross-attention", "attention"),
    ("flash-attention-v3", "attention"), ("flash-decoding", "flash_decoding")])
def test_compiled_spec_means_a_compiled_kernel_runs(compiled, monkeypatch, rng, name, kernel):
    spy = _Spy(backend.compiled_kernels)
    monkeypatch.setattr(backend, "compiled_kernels", spy)
    q, k, v = make(rng, (2,), (2,), 3, 20, 8, 8)
    registry.get(name).forward(q, k, v)
    assert kernel in spy.used


# --------------------------------------------------------------------------------------------
# perceiver-attention

def perceiver_by_hand(q, k, v, z0, wq, wk, wv, wo, process, scale):
    """The Perceiver IO encode / process / decode written out with float64 numpy."""
    q, k, v = as4(q), as4(k), as4(v)
    group = q.shape[1] // k.shape[1]
    z = softmax64((z0 @ wq) @ np.swapaxes(k @ wk, -1, -2) * scale) @ (v @ wv)
    for _ in range(process):
        z = softmax64(z @ np.swapaxes(z, -1, -2) * scale) @ z
    z = np.repeat(z, group, axis=1)
    return softmax64(q @ np.swapaxes(z, -1, -2) * scale) @ (z @ wo)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("process", [0, 2])
def test_perceiver_matches_hand_reference(backend_name, rng, shape, process):
    lead_q, lead_kv, n, m, d, _ = shape
    dv = d + 3                                               # dv ≠ d: W_v and W_o project
    q, k, v = make(rng, lead_q, lead_kv, n, m, d, dv)
    z0 = f32(rng, 5, d)
    wq, wk = f32(rng, d, d, scale=0.5), f32(rng, d, d, scale=0.5)
    wv, wo = f32(rng, dv, d, scale=0.5), f32(rng, d, dv, scale=0.5)
    mech = registry.get("perceiver-attention", latents=z0, w_q=wq, w_k=wk, w_v=wv, w_o=wo,
                        process=process)
    out = mech.forward(q, k, v)
    assert out.shape == q.shape[:-1] + (dv,) and out.dtype == np.float32
    want = perceiver_by_hand(q, k, v, z0, wq, wk, wv, wo, process, 1 / math.sqrt(d))
    assert_close(out, want.reshape(out.shape))
    assert mech.backend == backend_name


@pytest.mark.parametrize("lead", [(), (3,)])
def test_perceiver_encode_with_keys_as_latents_is_key_self_attention(backend_name, rng, lead):
    """l = m, Z0 = k and identity weights: the encode is self-attention of the keys."""
    q, k, v = make(rng, lead, lead, 6, 11, 8, 8)
    k0 = k.reshape(-1, 11, 8)[0]                             # the latents (shared by all heads)
    mech = registry.get("perceiver-attention", latents=k0)
    z = mech.encode(k, v)
    assert z.shape == k.shape
    assert_close(z.reshape(-1, 11, 8)[0], reference.attention(k0, k0, v.reshape(-1, 11, 8)[0]))
    assert_close(z, reference.attention(np.broadcast_to(k0, k.shape), k, v))
    assert_close(mech.forward(q, k, v), reference.attention(q, z, z))


def test_perceiver_one_latent_gives_every_query_the_same_row(backend_name, rng):
    q, k, v = make(rng, (2,), (2,), 9, 30, 8, 8)
    mech = registry.get("perceiver-attention", num_latents=1, seed=3)
    out = mech.forward(q, k, v)
    z0 = mech.latents_for(8)
    assert z0.shape == (1, 8)
    row = reference.attention(np.broadcast_to(z0, (2, 1, 8)), k, v)    # (2, 1, 8)
    assert_close(out, np.broadcast_to(row, out.shape))


def test_perceiver_differs_from_attention_and_is_seeded(rng):
    q, k, v = make(rng, (2,), (2,), 10, 50, 8, 8)
    out = registry.get("perceiver-attention").forward(q, k, v)
    assert np.abs(out - reference.attention(q, k, v)).max() > 0.1
    np.testing.assert_array_equal(out, registry.get("perceiver-attention").forward(q, k, v))
    other = registry.get("perceiver-attention", seed=1).forward(q, k, v)
    assert np.abs(other - out).max() > 1e-3
    mech = registry.get("perceiver-attention", num_latents=7)
    mech.forward(q, k, v)
    assert mech.seeded_latents[8].shape == (7, 8)


@pytest.mark.parametrize("mask_shape", [(40,), (2, 1, 1, 40)])
def test_perceiver_key_padding_mask_drops_keys(backend_name, rng, mask_shape):
    q, k, v = make(rng, (2, 2), (2, 2), 4, 40, 8, 8)
    keep = np.ones(40, bool)
    keep[[0, 5, 17, 39]] = False
    mech = registry.get("perceiver-attention", num_latents=6, process=1)
    out = mech.forward(q, k, v, mask=np.broadcast_to(keep, mask_shape))
    assert_close(out, mech.forward(q, k[..., keep, :], v[..., keep, :]))
    assert np.abs(out - mech.forward(q, k, v)).max() > 1e-4


def test_perceiver_not_supported_and_bad_weights(rng):
    q, k, v = make(rng, (), (), 5, 8, 4, 4)
    mech = registry.get("perceiver-attention")
    assert mech.not_supported_reasons(q, k, v) == []
    assert mech.not_supported_reasons(q, k, v, mask=np.ones(8, bool)) == []
    for kwargs in ({"causal": True}, {"mask": np.ones((5, 8), bool)}):
        assert mech.not_supported_reasons(q, k, v, **kwargs)
        with pytest.raises(ValueError, match="perceiver-attention"):
            mech.forward(q, k, v, **kwargs)
    v6 = f32(rng, 8, 6)
    assert "dv" in mech.not_supported_reasons(q, k, v6)[0]
    with pytest.raises(ValueError, match="w_v"):
        mech.forward(q, k, v6)
    with pytest.raises(ValueError, match="square"):
        registry.get("perceiver-attention", w_q=np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="w_k"):
        registry.get("perceiver-attention", w_k=np.eye(3, dtype=np.float32)).forward(q, k, v)
    with pytest.raises(ValueError, match="latents"):
        registry.get("perceiver-attention", latents=np.ones((3, 5), np.float32)).forward(q, k, v)
    with pytest.raises(ValueError, match="latents"):
        registry.get("perceiver-attention", latents=np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="process"):
        registry.get("perceiver-attention", process=-1)
    with pytest.raises(TypeError):
        mech.forward(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k"):
        mech.forward(q, np.where(k > 0, np.inf, k), v)


# --------------------------------------------------------------------------------------------
# gated-cross-attention

@pytest.mark.parametrize("shape", SHAPES)
def test_gated_fresh_layer_is_the_identity(backend_name, rng, shape):
    q, k, v = make(rng, *shape)
    mech = registry.get("gated-cross-attention")
    assert mech.alpha == 0.0
    np.testing.assert_array_equal(mech.forward(q, k, v, causal=True), q)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.7, -1.3, 40.0])
def test_gated_adds_tanh_alpha_times_attention(backend_name, rng, shape, alpha):
    q, k, v = make(rng, *shape)
    mask = rng.random((shape[2], shape[3])) < 0.8
    out = registry.get("gated-cross-attention", alpha=alpha).forward(q, k, v, mask=mask,
                                                                     causal=True)
    attended = reference.attention(q, k, v, mask=mask, causal=True)
    assert_close(out, q + math.tanh(alpha) * attended.astype(np.float64))
    assert np.abs(out - attended).max() > 0.1                # not plain attention
    if alpha == 40.0:                                        # the gate saturates: q + attention
        assert_close(out, q + attended.astype(np.float64))


def test_gated_hand_worked_value(backend_name):
    q = np.array([[1.0, 0.0]], np.float32)
    k = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    v = np.array([[2.0, 0.0], [0.0, 4.0]], np.float32)
    # logits (1/√2, 0): weights (e^{1/√2}, 1) / (e^{1/√2} + 1)
    p = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    g = math.tanh(0.5)
    want = np.array([[1.0 + g * 2 * p, g * 4 * (1 - p)]])
    assert_close(registry.get("gated-cross-attention", alpha=0.5).forward(q, k, v), want)


def test_gated_not_supported_and_bad_alpha(rng):
    q, k, v = make(rng, (), (), 4, 6, 8, 5)
    mech = registry.get("gated-cross-attention", alpha=1.0)
    assert "dv" in mech.not_supported_reasons(q, k, v)[0]
    with pytest.raises(ValueError, match="dv"):
        mech.forward(q, k, v)
    assert mech.not_supported_reasons(q, k, f32(rng, 6, 8), causal=True,
                                      mask=np.ones((4, 6), bool)) == []
    for alpha in (math.nan, math.inf, "1"):
        with pytest.raises(ValueError, match="alpha"):
            registry.get("gated-cross-attention", alpha=alpha)
    with pytest.raises(ValueError, match="q"):
        mech.forward(np.full((4, 8), np.nan, np.float32), k, f32(rng, 6, 8))


# --------------------------------------------------------------------------------------------
# flash-attention-v3

V3_CONFIGS = [("fp16", False), ("fp8", True), ("fp8", False), ("int8", True), ("int8", False)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("precision, rotate", V3_CONFIGS)
def test_v3_is_exact_attention_of_its_dequantized_inputs(backend_name, rng, shape, precision,
                                                        rotate):
    q, k, v = make(rng, *shape, scale=2.0)
    mask = rng.random((shape[2], shape[3])) < 0.8
    mech = registry.get("flash-attention-v3", precision=precision, rotate=rotate, block=4)
    out = mech.forward(q, k, v, mask=mask, causal=True)
    qd, kd, vd = mech.dequantized(q, k, v)
    assert (qd.shape, kd.shape, vd.shape) == (q.shape, k.shape, v.shape)
    assert_close(out, reference.attention(qd, kd, vd, mask=mask, causal=True))
    exact = reference.attention(q, k, v, mask=mask, causal=True)
    assert np.abs(out - exact).max() > 1e-5                  # not fp32 attention


@pytest.mark.parametrize("precision, rotate", V3_CONFIGS)
@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_v3_error_against_fp32_attention_within_its_bound(rng, precision, rotate, scale):
    q, k, v = make(rng, (2, 4), (2, 2), 40, 70, 32, 16, scale=scale)
    mech = FlashAttentionV3(precision=precision, rotate=rotate, block=16)
    err = np.abs(mech.forward(q, k, v) - reference.attention(q, k, v)).max(axis=-1)
    bound = mech.error_bound(q, k, v)
    assert bound.shape == q.shape[:-1]
    assert (err <= bound + 1e-6).all(), (err.max(), bound.max())
    if precision == "fp16":                                  # a useful guarantee, not vacuous
        assert bound.max() < 0.06 * max(scale, 1.0) ** 2


def test_v3_typical_errors_are_ordered_by_precision(rng):
    q, k, v = make(rng, (4,), (4,), 64, 64, 64, 64)
    exact = reference.attention(q, k, v)
    errs = {p: np.abs(FlashAttentionV3(precision=p).forward(q, k, v) - exact).max()
            for p in ("fp16", "int8", "fp8")}
    assert 0 < errs["fp16"] < 2e-3 < errs["int8"] < errs["fp8"] < 0.2, errs


@pytest.mark.parametrize("d", [16, 64, 24])
def test_v3_rotation_is_orthogonal_and_keeps_qk(rng, d):
    mech = FlashAttentionV3(precision="int8", seed=5)
    r = mech.rotation(d)
    np.testing.assert_allclose(r @ r.T, np.eye(d), atol=1e-12)
    if d & (d - 1) == 0:                                     # random-sign Hadamard / √d
        np.testing.assert_allclose(np.abs(r), 1 / math.sqrt(d))
    q, k = rng.standard_normal((9, d)), rng.standard_normal((11, d))
    np.testing.assert_allclose((q @ r) @ (k @ r).T, q @ k.T, atol=1e-12)
    assert mech.rotation(d) is r                             # cached, and seeded:
    np.testing.assert_array_equal(FlashAttentionV3(precision="int8", seed=5).rotation(d), r)
    assert np.abs(FlashAttentionV3(precision="int8", seed=6).rotation(d) - r).max() > 0.1


@pytest.mark.parametrize("precision, gain", [("int8", 0.75), ("fp8", 1.0)])
def test_v3_incoherent_processing_reduces_error_with_outliers(rng, precision, gain):
    """FA3's experiment: N(0, 1) entries, 0.1% of them outliers from N(0, 10²)."""
    def with_outliers(*shape):
        x = rng.standard_normal(shape)
        hit = rng.random(shape) < 0.001
        x[hit] = 10 * rng.standard_normal(hit.sum())
        return x.astype(np.float32)

    q, k, v = with_outliers(4, 256, 64), with_outliers(4, 256, 64), with_outliers(4, 256, 64)
    exact = reference.attention(q, k, v)

    def rmse(rotate):
        out = FlashAttentionV3(precision=precision, rotate=rotate, block=64).forward(q, k, v)
        return np.sqrt(np.mean((out - exact.astype(np.float64)) ** 2))

    assert rmse(True) < gain * rmse(False), (rmse(True), rmse(False))


def test_v3_quantized_values_are_representable(rng):
    q, k, v = make(rng, (2,), (2,), 50, 70, 16, 16, scale=3.0)
    qd, _, vd = FlashAttentionV3(precision="fp16").dequantized(q, k, v)
    np.testing.assert_array_equal(qd, q.astype(np.float16).astype(np.float32))
    # int8: per block of 8 rows, x̃ = code·max|x|/127 with integer codes in [−127, 127]
    _, _, vd = FlashAttentionV3(precision="int8", block=8).dequantized(q, k, v)
    for b0 in range(0, 70, 8):
        blk, orig = vd[:, b0:b0 + 8].astype(np.float64), v[:, b0:b0 + 8]
        for h in range(2):
            codes = blk[h] / (np.abs(orig[h]).max() / 127)
            np.testing.assert_allclose(codes, np.rint(codes), atol=1e-4)
            assert np.abs(codes).max() <= 127 + 1e-4
    # fp8: x̃ / scale is an e4m3 number, rounded as torch rounds to float8_e4m3fn
    mech = FlashAttentionV3(precision="fp8", block=10, rotate=False)
    _, _, vd = mech.dequantized(q, k, v)
    blocks = v.reshape(2, 7, 10, 16).astype(np.float64)
    scales = np.abs(blocks).max(axis=(-1, -2), keepdims=True) / 448
    y = blocks / scales
    torch_e4m3 = torch.from_numpy(y).to(torch.float8_e4m3fn).to(torch.float64).numpy()
    np.testing.assert_allclose(vd.reshape(2, 7, 10, 16), torch_e4m3 * scales, rtol=2e-7)
    assert np.abs(torch_e4m3 - y).max() > 1e-3               # the rounding is real


def test_v3_bad_inputs(rng):
    q, k, v = make(rng, (), (), 4, 6, 8, 8)
    with pytest.raises(ValueError, match="precision"):
        FlashAttentionV3(precision="fp4")
    with pytest.raises(ValueError, match="block"):
        FlashAttentionV3(block=0)
    with pytest.raises(ValueError, match="q.*float16"):
        FlashAttentionV3().forward(q * 1e5, k, v)
    np.testing.assert_array_equal(                           # block scaling has no range limit
        FlashAttentionV3(precision="int8").forward(q * 1e5, k * 1e-5, v).shape, (4, 8))
    for name in ("q", "k", "v"):
        args = {"q": q, "k": k, "v": v}
        args[name] = np.where(args[name] > 1, np.nan, args[name]).astype(np.float32)
        with pytest.raises(ValueError, match=name):
            FlashAttentionV3(precision="int8").forward(**args)
    with pytest.raises(TypeError):
        FlashAttentionV3().forward(q, k.astype(np.int8), v)
    assert FlashAttentionV3().not_supported_reasons(q, k, v, causal=True, mask=None) == []


# --------------------------------------------------------------------------------------------
# flash-decoding

DECODE_SHAPES = [
    ((), (), 1, 37, 8, 8),
    ((8,), (2,), 1, 300, 16, 12),            # GQA, a cache longer than a tile
    ((2, 4), (2, 4), 3, 50, 8, 8),
    ((1, 6), (1, 1), 4, 600, 32, 16),        # MQA, several tiles per chunk
]


@pytest.mark.parametrize("shape", DECODE_SHAPES)
@pytest.mark.parametrize("splits", [1, 3, "m", None, 10 ** 6])
@pytest.mark.parametrize("causal", [False, True])
def test_decoding_equals_exact_attention(backend_name, rng, shape, splits, causal):
    q, k, v = make(rng, *shape)
    m = shape[3]
    mech = registry.get("flash-decoding", splits=m if splits == "m" else splits)
    out = mech.forward(q, k, v, causal=causal)
    assert out.shape == q.shape[:-1] + (shape[5],)
    assert_close(out, reference.attention(q, k, v, causal=causal))
    assert mech.backend == backend_name


@pytest.mark.parametrize("splits", [1, 4, 37])
def test_decoding_masks(backend_name, rng, splits):
    q, k, v = make(rng, (2, 4), (2, 2), 2, 37, 8, 8)
    mask = rng.random((2, 4, 2, 37)) < 0.6
    mask[0, 1, 0] = False                                    # a row that sees no key: zeros
    mask[1, :, :, :10] = False                               # whole chunks masked
    mech = FlashDecoding(splits=splits)
    out = mech.forward(q, k, v, mask=mask)
    assert_close(out, reference.attention(q, k, v, mask=mask))
    np.testing.assert_array_equal(out[0, 1, 0], 0)
    additive = rng.standard_normal((37,)).astype(np.float32) * 3
    assert_close(mech.forward(q, k, v, mask=additive, causal=True),
                 reference.attention(q, k, v, mask=additive, causal=True))


def test_decoding_causal_with_more_queries_than_keys(backend_name, rng):
    q, k, v = make(rng, (2,), (2,), 6, 4, 8, 8)              # rows 0, 1 see no key
    out = FlashDecoding(splits=2).forward(q, k, v, causal=True)
    assert_close(out, reference.attention(q, k, v, causal=True))
    np.testing.assert_array_equal(out[:, :2], 0)


def test_decoding_splits_per_call_and_scale(backend_name, rng):
    q, k, v = make(rng, (3,), (3,), 1, 90, 8, 8)
    mech = FlashDecoding()
    for splits in (1, 2, 7, 90):
        assert_close(mech.forward(q, k, v, splits=splits, scale=0.3),
                     reference.attention(q, k, v, scale=0.3))


@pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("splits", [None, 5, 64])
def test_decoding_is_bit_identical_for_any_thread_count(compiled, rng, splits):
    q, k, v = make(rng, (1, 8), (1, 2), 2, 5000, 64, 64)
    mech = FlashDecoding(splits=splits)
    outs = []
    for threads in (1, 2, 3):
        rerank.set_num_threads(threads)
        outs.append(mech.forward(q, k, v, causal=True))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    assert_close(outs[0], reference.attention(q, k, v, causal=True))


@pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")
def test_decoding_compiled_and_numpy_agree(rng):
    q, k, v = make(rng, (2, 8), (2, 2), 1, 3000, 64, 32, scale=2.0)
    with rerank.use_backend("compiled"):
        a = FlashDecoding(splits=6).forward(q, k, v)
    with rerank.use_backend("numpy"):
        b = FlashDecoding(splits=6).forward(q, k, v)
    assert_close(a, b)


def test_chunk_size_depends_on_the_shape_only():
    assert chunk_size(65536, 1, None) == 1024                # 64 chunks of 1024
    assert chunk_size(500, 1, None) == 500                   # short cache: one chunk
    assert chunk_size(65536, 4096, None) == 4096             # many rows: fewer chunks
    assert chunk_size(10, 1, 3) == 4 and chunk_size(10, 1, 10) == 1
    assert chunk_size(10, 1, 1000) == 1
    rerank.set_num_threads(1)
    one = chunk_size(4096, 2, None)
    rerank.set_num_threads(2)
    assert chunk_size(4096, 2, None) == one


def test_decoding_bad_inputs(backend_name, rng):
    q, k, v = make(rng, (2,), (2,), 1, 40, 8, 8)
    mech = FlashDecoding(splits=4)
    for name in ("q", "k", "v"):
        args = {"q": q.copy(), "k": k.copy(), "v": v.copy()}
        args[name][..., 0, 0] = np.nan
        with pytest.raises(ValueError, match=name):
            mech.forward(**args)
    vbad = v.copy()
    vbad[0, 5, 0] = np.inf                                   # NaN/Inf under a masked key too
    keep = np.ones(40, bool)
    keep[5] = False
    with pytest.raises(ValueError, match="v"):
        mech.forward(q, k, vbad, mask=keep)
    with pytest.raises(ValueError, match="overflow"):
        mech.forward(q * 1e20, k * 1e20, v)
    with pytest.raises(ValueError, match="splits"):
        FlashDecoding(splits=0)
    with pytest.raises(ValueError, match="splits"):
        mech.forward(q, k, v, splits=-2)
    with pytest.raises(ValueError, match="heads"):
        mech.forward(f32(rng, 3, 1, 8), k, v)
    with pytest.raises(TypeError):
        mech.forward(q, k, v.astype(np.int16))
    assert mech.not_supported_reasons(q, k, v, causal=True, mask=keep) == []
