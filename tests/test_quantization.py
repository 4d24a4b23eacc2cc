"""rerank.quantization: int8 / float16 storage round trips, the 7-bit query codes of the int8
late-interaction kernel, and the error bounds that int8 MaxSim is documented to respect."""
from __future__ import annotations

import numpy as np
import pytest

from rerank import quantization, reference, scoring
from rerank.quantization import (FORMATS, HALF_STEP, Int8Rows, bytes_per_row, decode, decode_int8,
                                 dequantize_int8, direction_error_bound, encode, maxsim_error_bound,
                                 quantize_int8, quantize_query)

from conftest import f32

F32_MAX = float(np.finfo(np.float32).max)


def within_half_step(x, q: Int8Rows) -> np.ndarray:
    """|x − code·scale| ≤ scale/2 per element (HALF_STEP covers quantize_int8's float32 rounding of
    x/scale; np.spacing the rounding of the dequantised product)."""
    deq = q.dequantize()
    err = np.abs(deq.astype(np.float64) - np.asarray(x, np.float64))
    return err <= q.scales[:, None].astype(np.float64) * HALF_STEP + np.spacing(np.abs(deq))


# --------------------------------------------------------------------------------------------
# int8 rows: round trip

SCALES = {"unit": 1.0, "tiny": 1e-30, "subnormal-scale": 1e-39, "smallest": 1e-45,
          "huge": 1e37, "near-max": 3e38}


@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (5, 31), (4, 384), (2, 1000)])
@pytest.mark.parametrize("scale", list(SCALES.values()), ids=list(SCALES))
def test_int8_round_trip_error_is_at_most_half_a_step(rng, shape, scale):
    x = np.clip(rng.standard_normal(shape) * scale, -F32_MAX, F32_MAX).astype(np.float32)
    x[0, 0] = np.float32(scale)                   # at least one element of the row at that scale
    q = quantize_int8(x)
    assert q.codes.dtype == np.int8 and q.codes.shape == shape
    assert q.scales.dtype == np.float32 and q.scales.shape == (shape[0],)
    assert within_half_step(x, q).all()
    assert np.isfinite(q.dequantize()).all()
    assert (np.abs(q.codes.astype(int)) <= 127).all()
    normal = q.scales >= np.finfo(np.float32).tiny     # subnormal scales are too coarse for 127
    assert (np.abs(q.codes[normal].astype(int)).max(axis=1) == 127).all()    # the peak uses 127


def test_int8_zero_rows_stay_zero(rng):
    x = f32(rng, 4, 16)
    x[[0, 2]] = 0.0
    q = quantize_int8(x)
    assert (q.codes[[0, 2]] == 0).all() and (q.scales[[0, 2]] == 0).all()
    assert (q.dequantize()[[0, 2]] == 0).all()
    assert within_half_step(x, q).all()


def test_int8_codes_are_the_nearest_step(rng):
    """Rounding, not truncation: with scale s, code = round(x/s) exactly for values off the ties."""
    x = np.array([[127.0, 1.4, -1.6, 2.5001, -0.49, 0.0]], np.float32)
    q = quantize_int8(x)
    assert q.scales[0] == np.float32(1.0)
    np.testing.assert_array_equal(q.codes[0], [127, 1, -2, 3, 0, 0])


def test_int8_rows_helpers(rng):
    x = f32(rng, 3, 10)
    q = quantize_int8(x)
    np.testing.assert_array_equal(q.dequantize(), dequantize_int8(q.codes, q.scales))
    assert q.nbytes == 3 * 10 + 3 * 4
    with pytest.raises(TypeError):
        dequantize_int8(q.codes.astype(np.int16), q.scales)
    with pytest.raises(ValueError):
        dequantize_int8(q.codes, q.scales[:2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fn", [quantize_int8, quantize_query, lambda x: encode(x, "int8")],
                         ids=["quantize_int8", "quantize_query", "encode"])
def test_nonfinite_values_cannot_be_quantised(rng, fn, bad):
    x = f32(rng, 2, 5)
    x[1, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(x)


# --------------------------------------------------------------------------------------------
# storage formats

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (7, 384)])
def test_encode_decode_round_trip(rng, fmt, shape):
    x = f32(rng, *shape)
    blob = encode(x, fmt)
    assert isinstance(blob, bytes)
    assert len(blob) == shape[0] * bytes_per_row(shape[1], fmt)
    back = decode(blob, *shape, fmt)
    assert back.dtype == np.float32 and back.shape == shape
    if fmt == "float32":
        np.testing.assert_array_equal(back, x)
    elif fmt == "float16":
        assert (np.abs(back - x) <= 2.0 ** -11 * np.abs(x) + 2.0 ** -25).all()
    else:
        q = quantize_int8(x)
        np.testing.assert_array_equal(back, q.dequantize())
        assert within_half_step(x, q).all()
        codes = decode_int8(blob, *shape)
        np.testing.assert_array_equal(codes.codes, q.codes)
        np.testing.assert_array_equal(codes.scales, q.scales)


def test_unknown_format_and_float16_range():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="unknown storage format"):
        encode(x, "int4")
    with pytest.raises(ValueError, match="unknown storage format"):
        decode(b"", 2, 3, "bfloat16")
    with pytest.raises(ValueError, match="float16"):
        encode(x * 1e5, "float16")


# --------------------------------------------------------------------------------------------
# query codes (7 bits)

def test_query_codes_by_hand():
    x = np.array([[0.5, -1.0, 0.26, 0.0], [0, 0, 0, 0], [3.0, 1.5, -0.75, 1e-3]], np.float32)
    q = quantize_query(x)
    np.testing.assert_array_equal(q.codes, [[32, -64, 17, 0], [0, 0, 0, 0], [64, 32, -16, 0]])
    np.testing.assert_array_equal(q.scales, np.float32([1 / 64, 0, 3 / 64]))


def test_query_codes_range_and_scale_invariance(rng):
    x = f32(rng, 20, 31, scale=3.0)
    q = quantize_query(x)
    assert (np.abs(q.codes.astype(int)) <= quantization.QUERY_LEVELS).all()
    assert (np.abs(q.codes.astype(int)).max(axis=1) == 64).all()
    assert within_half_step(x, q).all()
    for k in (2.0 ** -100, 0.25, 2.0 ** 100):          # powers of two: x·k is exact
        np.testing.assert_array_equal(quantize_query(x * np.float32(k)).codes, q.codes)


# --------------------------------------------------------------------------------------------
# error bounds

def unit(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


@pytest.mark.parametrize("d", [1, 2, 8, 31, 384])
def test_direction_error_bound_holds_for_every_preimage(rng, d):
    """x/scale anywhere in the cube c ± ½ (random, corners, and the corner pointing away from c)."""
    codes = quantize_int8(f32(rng, 200, d)).codes
    bound = direction_error_bound(codes)
    c = codes.astype(np.float64)
    worst = 0.0
    for kind in ("uniform", "corners", "away"):
        if kind == "uniform":
            e = rng.uniform(-0.5, 0.5, c.shape)
        elif kind == "corners":
            e = rng.choice([-0.5, 0.5], c.shape)
        else:   # a corner pointing away from c: close to the angle-maximising perturbation
            g = rng.standard_normal(c.shape)
            e = 0.5 * np.sign(g - np.sum(g * unit(c), axis=1, keepdims=True) * unit(c))
        err = np.linalg.norm(unit(c + e) - unit(c), axis=1)
        assert (err <= bound + 1e-12).all(), kind
        worst = max(worst, (err / bound).max())
    if d > 1:
        assert worst > 0.2                   # the bound is not vacuous either
    if d == 384:
        assert bound.max() < 0.05


def test_direction_error_bound_edge_cases():
    codes = np.array([[0, 0, 0], [1, 0, 0], [127, 0, 0]], np.int8)
    bound = direction_error_bound(codes)
    assert bound[0] == 0.0                       # a zero row stands for the zero vector
    assert bound[1] == pytest.approx(2 * np.sin(np.arcsin(HALF_STEP * np.sqrt(3)) / 2))
    assert bound[2] < 0.01
    np.testing.assert_array_equal(direction_error_bound(Int8Rows(codes, np.ones(3, np.float32))),
                                  bound)


def float_maxsim(q, x, offsets, idf=None):
    return reference.late_interaction_scores(q, x, offsets, idf=idf)[1].astype(np.float64)


@pytest.mark.parametrize("use_idf", [False, True])
@pytest.mark.parametrize("t, d, lengths", [(24, 384, [81, 116, 99, 3, 1]), (3, 31, [1, 200, 7]),
                                           (33, 8, [2, 1, 60]), (1, 384, [5, 5])])
def test_int8_maxsim_within_the_derived_bound(backend_name, rng, t, d, lengths, use_idf):
    """|MaxSim(q, x) − MaxSim_int8(q, quantize_int8(x))| ≤ maxsim_error_bound (+ float32 rounding),
    on both backends, and the int8 path really is quantised (the error is not zero)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    q = f32(rng, t, d)
    x = f32(rng, int(offsets[-1]), d)
    idf = rng.uniform(0.2, 3.0, t).astype(np.float32) if use_idf else None
    stored = quantize_int8(x)
    got = scoring.late_interaction(q, stored, offsets, idf=idf, details=True).similarity
    bound = maxsim_error_bound(q, stored.codes, offsets, idf=idf)
    err = np.abs(got - float_maxsim(q, x, offsets, idf))
    assert (err <= bound + 1e-6).all(), (err, bound)
    assert err.max() > 0
    if d == 384:
        assert bound.max() < 0.05


def test_int8_maxsim_bound_is_per_pair_and_per_token(rng):
    """The ingredients of maxsim_error_bound, checked on every (t, j) pair: |q̂·x̂ − â·b̂| ≤ e_t + f_j,
    with adversarial documents whose codes sit as far as rounding allows from the float vector."""
    t, d = 6, 16
    q = f32(rng, t, d)
    codes = quantize_int8(f32(rng, 50, d)).codes
    shift = np.where(np.abs(codes) == 127, 0.0, rng.choice([-0.499, 0.499], codes.shape))
    x = (codes + shift).astype(np.float32)       # scale 1, and every element rounds to its code
    np.testing.assert_array_equal(quantize_int8(x).codes, codes)
    a = quantize_query(q).codes
    exact = unit(q) @ unit(x).T
    quant = unit(a) @ unit(codes).T
    e = np.linalg.norm(unit(q) - unit(a), axis=1)
    f = direction_error_bound(codes)
    assert (np.abs(exact - quant) <= e[:, None] + f[None, :] + 1e-12).all()
    offsets = np.array([0, 20, 21, 50])
    assert np.allclose(maxsim_error_bound(q, codes, offsets),
                       e.mean() + np.array([f[:20].max(), f[20], f[21:].max()]))


def test_maxsim_error_bound_ignores_padding_rows(rng):
    q = f32(rng, 3, 8)
    codes = quantize_int8(f32(rng, 10, 8)).codes
    codes[7:] = 1                                # padding: huge direction error, not input
    offsets = np.array([0, 3, 7])
    np.testing.assert_array_equal(maxsim_error_bound(q, codes, offsets),
                                  maxsim_error_bound(q, codes[:7], offsets))
