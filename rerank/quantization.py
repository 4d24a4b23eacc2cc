"""Compact storage of vectors: int8 with one float32 scale per row, or float16.

int8 (symmetric, per row): scale_r = max_j |x_rj| / 127, code_rj = round(x_rj / scale_r), so
x̃_rj = code_rj · scale_r and |x_rj − x̃_rj| ≤ scale_r / 2 for every element (a zero row keeps
scale 0 and codes 0). For a unit vector of dimension d that costs d + 4 bytes instead of 4d.

float16: |x − x̃| ≤ 2⁻¹¹·|x| for normal values (|x| ≥ 2⁻¹⁴), 2⁻²⁵ absolute below.

Cosine similarity needs no scale: x̂ = code / ‖code‖, so the compiled late-interaction kernel works
on the codes alone (the scales give back the stored vectors' magnitudes).
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
    inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
    codes = np.clip(np.rint(arr * inv[:, None]), -127, 127).astype(np.int8)
    return Int8Rows(codes, scales)


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
