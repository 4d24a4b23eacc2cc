"""Exact attention at the public boundary: validate once, then run the compiled tiled kernel or the
numpy reference.

softmax(q·kᵀ·scale + mask)·v for q (n, d), (h, n, d) or (b, h, n, d); k and v of the same rank
with h_kv heads (h % h_kv == 0, GQA/MQA) and m keys. ``mask`` broadcasts to (b, h, n, m): boolean
(True = keep) or additive float (no NaN, no +inf). ``causal`` aligns bottom-right: query i sees
keys j ≤ i + m − n. Rows with every key masked return zeros. The output has q's shape with v's last
dimension, float32.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend, reference
from .validation import as_float32, check_finite, finite_float, kernel_error

#: Query rows per tile and keys per tile of the compiled kernel (measured: benchmarks/bench_kernels).
BLOCK_Q, BLOCK_K = 256, 512


def _as_4d(x: np.ndarray) -> np.ndarray:
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def prepare(q, k, v, mask=None, scale=None):
    """Validate and convert inputs; returns 4-D q, k, v, a float32 4-D (broadcast) mask or None,
    the scale and the output shape."""
    q = as_float32("q", q, (2, 3, 4))
    k = as_float32("k", k, (q.ndim,))
    v = as_float32("v", v, (q.ndim,))
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k's last dimension must equal q's (d = {q.shape[-1]}); got k {k.shape}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must match k in every axis but the last; got k {k.shape}, v {v.shape}")
    if q.ndim == 4 and k.shape[0] != q.shape[0]:
        raise ValueError(f"k and q must have the same batch size; got q {q.shape}, k {k.shape}")
    if q.ndim >= 3 and q.shape[-3] % k.shape[-3]:
        raise ValueError(f"q's heads ({q.shape[-3]}) must be a multiple of k's and v's heads "
                         f"({k.shape[-3]})")
    q4, k4, v4 = _as_4d(q), _as_4d(k), _as_4d(v)
    b, h, n, _ = q4.shape
    m = k4.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else finite_float("scale", scale)
    mask4 = None
    if mask is not None:
        arr = np.asarray(mask)
        if arr.dtype == np.bool_:
            arr = np.where(arr, np.float32(0), np.float32(-np.inf))
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
            if np.isnan(arr).any() or np.isposinf(arr).any():
                raise ValueError("mask must not contain NaN or +inf (use -inf or False to mask)")
        else:
            raise TypeError(f"mask must be boolean (True = keep) or an additive float array; "
                            f"got dtype {arr.dtype}")
        try:
            mask4 = np.broadcast_to(arr, (b, h, n, m))
        except ValueError:
            raise ValueError(f"mask of shape {arr.shape} does not broadcast to the attention "
                             f"logits' shape {(b, h, n, m)[4 - q.ndim:]}") from None
    out_shape = q.shape[:-1] + (v.shape[-1],)
    return q4, k4, v4, mask4, scale, out_shape


def attention(q, k, v, *, mask=None, causal=False, scale=None) -> np.ndarray:
    """Exact softmax(q·kᵀ·scale + mask)·v (see the module docstring for shapes and masks)."""
    q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
    kernels = backend.compiled_kernels()
    if kernels is None:
        for name, arr in (("q", q4), ("k", k4), ("v", v4)):
            check_finite(name, arr)
        out = reference.attention(q4, k4, v4, mask=mask4, causal=bool(causal), scale=scale)
        check_finite("attention output (overflow: inputs too large)", out)
        return out.reshape(out_shape)
    return run_compiled(kernels, q4, k4, v4, mask4, bool(causal), scale).reshape(out_shape)


def run_compiled(kernels, q4, k4, v4, mask4, causal, scale) -> np.ndarray:
    """The tiled online-softmax kernel on validated 4-D float32 inputs."""
    b, h, n, d = q4.shape
    m, dv = k4.shape[2], v4.shape[3]
    threads = backend.get_num_threads()
    # Tiles depend on the shape only, so results are bit-identical whatever the thread count.
    block_q = BLOCK_Q if b * h * math.ceil(n / BLOCK_Q) >= 4 else 64
    out = np.empty((b, h, n, dv), dtype=np.float32)
    bad = backend.call_holding_blas(min(n, block_q), min(m, BLOCK_K), max(d, dv),
                                    kernels.attention, q4, k4, v4, out, mask4, causal, scale,
                                    threads, block_q, BLOCK_K)
    if bad:
        raise kernel_error(bad, "attention", q=q4, k=k4, v=v4)
    return out
