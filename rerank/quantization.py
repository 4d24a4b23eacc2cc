"""Compact storage of vectors: int8 with one float32 scale per row, or float16.

int8 (symmetric, per row): scale_r = max_j |x_rj| / 127, code_rj = round(x_rj / scale_r), so
x̃_rj = code_rj · scale_r and |x_rj − x̃_rj| ≤ scale_r / 2 for every element (a zero row keeps
scale 0 and codes 0). For a unit vector of dimension d that costs d + 4 bytes instead of 4d.

float16: |x − x̃| ≤ 2⁻¹¹·|x| for normal values (|x| ≥ 2⁻¹⁴), 2⁻²⁵ absolute below.

Cosine similarity needs no scale: x̂ = code / ‖code‖, so the compiled late-interaction kernel works
on the codes alone (the scales give back the stored vectors' magnitudes). It quantises the query
tokens too, to 7 bits (:func:`quantize_query`); :func:`maxsim_error_bound` bounds what both cost.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .validation import as_float32

#: Storage formats a token matrix can be kept in.
FORMATS = ("int8", "float16", "float32")


class Int8Rows(NamedTuple):
    """Row-quantised matrix: ``codes`` int8 (n, d) and ``scales`` float32 (n,)."""
    codes: np.ndarray
    scales: np.ndarray

    def dequantize(self) -> np.ndarray:
        return dequantize_int8(self.codes, self.scales)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


def quantize_int8(x) -> Int8Rows:
    """Symmetric per-row int8: codes = round(x / scale), scale = max|x_row| / 127."""
    arr = as_float32("x", x, (2,))
    if not np.isfinite(arr).all():
        raise ValueError("x contains NaN or Inf values: they cannot be quantised")
    peak = np.abs(arr).max(axis=1)
    scales = (peak / 127.0).astype(np.float32)
    extreme = (peak > 0) & ((scales < np.finfo(np.float32).tiny) | (scales > _HUGE_SCALE))
    inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=(scales > 0) & ~extreme)
    codes = np.clip(np.rint(arr * inv[:, None]), -127, 127).astype(np.int8)
    if extreme.any():
        codes[extreme], scales[extreme] = _quantize_extreme(arr[extreme], peak[extreme])
    return Int8Rows(codes, scales)


#: The largest scale whose 127·scale is finite in float32 (max|x| near 3.4e38 would overflow).
_HUGE_SCALE = np.float32(2.6793884e36)


def _quantize_extreme(rows, peak):
    """Rows whose scale is subnormal or 0 (1/scale overflows; the rounded scale is coarse) or
    whose 127·scale overflows: round the scale up so no code passes 127, cap it at _HUGE_SCALE and
    divide in float64, so |x − code·scale| ≤ scale/2 still holds."""
    scales = (peak.astype(np.float64) / 127).astype(np.float32)
    scales = np.where(scales.astype(np.float64) * 127 < peak,
                      np.nextafter(scales, np.float32(np.inf)), scales)
    scales = np.minimum(scales, _HUGE_SCALE)
    codes = np.rint(rows.astype(np.float64) / scales.astype(np.float64)[:, None])
    return np.clip(codes, -127, 127).astype(np.int8), scales


#: Query codes of the int8 late-interaction kernel lie in [−QUERY_LEVELS, QUERY_LEVELS] (7 bits:
#: the kernel multiplies a + 64 ∈ [0, 128] by int8 document codes b, and vpmaddubsw's int16 pair
#: sums stay within [2·128·(−128), 2·128·127] = [−32768, 32512]: no saturation). 6 bits (32 levels)
#: would let two such products share one int16 sum (~9% faster dot products) but double e_t:
#: MaxSim errors on all-MiniLM-L6-v2 token vectors went from 1.6·10⁻³ to 2.4·10⁻³ at most.
QUERY_LEVELS = 64


def quantize_query(x) -> Int8Rows:
    """Query tokens as the int8 late-interaction kernel quantises them, per row:
    code = rint(64·x / max|x_row|) ∈ [−64, 64], scale = max|x_row| / 64 (float64 arithmetic, as in
    the kernel, so both give the same codes; a zero row gives zeros)."""
    arr = as_float32("x", x, (2,))
    if not np.isfinite(arr).all():
        raise ValueError("x contains NaN or Inf values: they cannot be quantised")
    peak = np.abs(arr).max(axis=1).astype(np.float64)
    inv = np.divide(float(QUERY_LEVELS), peak, out=np.zeros_like(peak), where=peak > 0)
    codes = np.clip(np.rint(arr.astype(np.float64) * inv[:, None]), -QUERY_LEVELS, QUERY_LEVELS)
    return Int8Rows(codes.astype(np.int8), (peak / QUERY_LEVELS).astype(np.float32))


def dequantize_int8(codes, scales) -> np.ndarray:
    """codes · scale per row, float32 (n, d)."""
    codes = np.asarray(codes)
    scales = np.asarray(scales, dtype=np.float32)
    if codes.dtype != np.int8 or codes.ndim != 2:
        raise TypeError(f"codes must be a 2-D int8 array; got {codes.dtype} {codes.shape}")
    if scales.shape != (codes.shape[0],):
        raise ValueError(f"scales must have shape ({codes.shape[0]},); got {scales.shape}")
    return codes.astype(np.float32) * scales[:, None]


def int8_error_bound(scales) -> np.ndarray:
    """The largest element error per row of :func:`quantize_int8`: scale / 2."""
    return np.asarray(scales, dtype=np.float32) / 2


#: Largest |x/scale − code| per element: ½ plus float32 rounding in quantize_int8 (≤ 2·127·2⁻²⁴).
HALF_STEP = 0.5 + 2.0 ** -15


def _unit_rows(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def direction_error_bound(codes) -> np.ndarray:
    """Per row, the largest ‖x̂ − ĉ‖ over all x that :func:`quantize_int8` maps to the codes c.

    x/scale lies within r = HALF_STEP·√d of c, so the angle between x and c is at most
    θ = arcsin(r/‖c‖) and ‖x̂ − ĉ‖ ≤ 2·sin(θ/2); 2 when r ≥ ‖c‖. A zero row stands for x = 0 (0)."""
    codes = np.asarray(codes.codes if isinstance(codes, Int8Rows) else codes)
    norm = np.linalg.norm(codes.astype(np.float64), axis=-1)
    ratio = np.divide(HALF_STEP * np.sqrt(codes.shape[-1]), norm, out=np.full(norm.shape, 2.0),
                      where=norm > 0)
    bound = 2 * np.sin(np.arcsin(np.minimum(ratio, 1.0)) / 2)
    return np.where(norm == 0, 0.0, np.where(ratio >= 1, 2.0, bound))


def maxsim_error_bound(query_tokens, doc_codes, doc_offsets, *, idf=None) -> np.ndarray:
    """How far int8 MaxSim may be from float MaxSim, per candidate (c,), for one query.

    The int8 path scores cos(a_t, b_j), a_t = quantize_query(q_t), b_j the document codes; float
    MaxSim scores q̂_t·x̂_j for any x_j that quantize_int8 maps to b_j. For unit (or zero) vectors
    |q̂·x̂ − â·b̂| ≤ ‖q̂ − â‖ + ‖x̂ − b̂‖ =: e_t + f_j (f_j: :func:`direction_error_bound`), and
    |max_j u_j − max_j v_j| ≤ max_j |u_j − v_j|, so
    |MaxSim_i − MaxSim_i(int8)| ≤ Σ_t idf_t·e_t / Σ_t idf_t + max_{j ∈ i} f_j.
    For d = 384 tokens with spread-out values (‖c‖ ≈ 6·max|c|) that is about 0.035 (measured
    errors: ~3·10⁻⁴ on Gaussian tokens; on all-MiniLM-L6-v2 token vectors of man pages, 60 queries
    × 30 candidates, 2.7·10⁻⁴ on average and 1.6·10⁻³ at most, against bounds of 0.034–0.041);
    max|a_t| = 64, so e_t ≤ 2·sin(arcsin(√d/128)/2) whatever the query (0.15 at d = 384).
    The soft form (τ) can amplify the per-pair error by up to 1 + 2/τ; this bound is for MaxSim.
    """
    q = as_float32("query_tokens", query_tokens, (2,))
    a = quantize_query(q).codes
    e = np.linalg.norm(_unit_rows(q) - _unit_rows(a), axis=1)
    w = np.ones(len(q)) if idf is None else np.asarray(idf, dtype=np.float64)
    offs = np.asarray(doc_offsets, dtype=np.int64)
    f = direction_error_bound(doc_codes)[:offs[-1]]
    return w @ e / w.sum() + np.maximum.reduceat(f, offs[:-1])


def encode(x, fmt: str) -> bytes:
    """``x`` (n, d) float32 as bytes in ``fmt``; int8 puts the n float32 scales first."""
    arr = as_float32("x", x, (2,))
    if fmt == "int8":
        q = quantize_int8(arr)
        return q.scales.tobytes() + q.codes.tobytes()
    if fmt == "float16":
        if np.abs(arr).max() > np.finfo(np.float16).max:
            raise ValueError("x has values beyond float16's range (±65504)")
        return arr.astype(np.float16).tobytes()
    if fmt == "float32":
        return arr.tobytes()
    raise ValueError(f"unknown storage format {fmt!r}; use one of {FORMATS}")


def decode(blob: bytes, n: int, d: int, fmt: str) -> np.ndarray:
    """Inverse of :func:`encode`: float32 (n, d)."""
    if fmt == "int8":
        scales = np.frombuffer(blob, np.float32, n)
        codes = np.frombuffer(blob, np.int8, n * d, offset=4 * n).reshape(n, d)
        return dequantize_int8(codes, scales)
    if fmt == "float16":
        return np.frombuffer(blob, np.float16).reshape(n, d).astype(np.float32)
    if fmt == "float32":
        return np.frombuffer(blob, np.float32).reshape(n, d).copy()
    raise ValueError(f"unknown storage format {fmt!r}; use one of {FORMATS}")


def decode_int8(blob: bytes, n: int, d: int) -> Int8Rows:
    """The codes and scales of an int8 blob without dequantising (for the int8 kernel)."""
    scales = np.frombuffer(blob, np.float32, n)
    codes = np.frombuffer(blob, np.int8, n * d, offset=4 * n).reshape(n, d)
    return Int8Rows(codes, scales)


def bytes_per_row(d: int, fmt: str) -> int:
    """Storage per row of dimension d."""
    return {"int8": d + 4, "float16": 2 * d, "float32": 4 * d}[fmt]
