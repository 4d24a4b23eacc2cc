"""Validation at the public boundary: every error names the argument, the expectation and the value.

float64/float16 or non-contiguous arrays are converted to C-contiguous float32 (documented, not
rejected); any other dtype raises ``TypeError``; wrong shapes, empty arrays and bad offsets raise
``ValueError``.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

F32 = np.dtype(np.float32)


def as_float32(name: str, x, ndims: tuple[int, ...]) -> np.ndarray:
    """``x`` as a C-contiguous float32 array of one of the ranks ``ndims``; never empty."""
    if type(x) is np.ndarray and x.dtype is F32 and x.flags.c_contiguous and x.ndim in ndims \
            and x.size:
        return x
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array (float32 preferred); "
                        f"got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {expected}; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_finite(name: str, x: np.ndarray) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or ±Inf (used by the numpy backend)."""
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")


def positive_float(name: str, value, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def finite_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def offsets(name: str, x, total: int, *, exact_end: bool = True) -> np.ndarray:
    """Ragged offsets as int64 of shape (c+1,) or (m, c+1): each row starts at 0, strictly
    increases (every item owns at least one row of the token matrix) and ends at ``total``
    (at most ``total`` when ``exact_end`` is False: trailing padding rows are then ignored)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (c+1,) or (m, c+1) with c ≥ 1; got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    rows = arr.reshape(-1, arr.shape[-1])
    if (rows[:, 0] != 0).any():
        raise ValueError(f"{name} must start at 0; got {rows[:, 0].tolist()[:5]}")
    steps = np.diff(rows, axis=1)
    if (steps <= 0).any():
        r, i = np.argwhere(steps <= 0)[0]
        raise ValueError(f"{name} must be strictly increasing (every item needs ≥ 1 row); "
                         f"item {i} spans {rows[r, i]}..{rows[r, i + 1]}")
    ends = rows[:, -1]
    if exact_end and (ends != total).any():
        raise ValueError(f"{name} must end at {total} (the number of rows); got {ends.tolist()[:5]}")
    if (ends > total).any():
        raise ValueError(f"{name} point past the end of the token matrix ({total} rows); "
                         f"got {ends.tolist()[:5]}")
    return arr


def same(name_a: str, a: int, name_b: str, b: int, what: str) -> None:
    if a != b:
        raise ValueError(f"{what} of {name_a} ({a}) and {name_b} ({b}) must match")


def kernel_error(code: int, what: str, **inputs) -> Exception:
    """The error for a kernel's non-zero return: -1 means a scratch allocation failed
    (``MemoryError``), a positive count means it met NaN/Inf (see :func:`non_finite_error`)."""
    if code < 0:
        shapes = ", ".join(f"{n} {np.shape(a)}" for n, a in inputs.items() if a is not None)
        return MemoryError(f"{what}: the kernel could not allocate its scratch memory ({shapes})")
    return non_finite_error(what, **inputs)


def non_finite_error(what: str, **inputs) -> ValueError:
    """The error for a kernel that met NaN/Inf: names the input holding non-finite values, or says
    the values overflow float32 (only called on that error path, so the scan costs nothing else)."""
    for name, arr in inputs.items():
        if arr is not None and not np.isfinite(arr).all():
            return ValueError(f"{name} contains NaN or Inf values ({what})")
    names = ", ".join(n for n, a in inputs.items() if a is not None)
    return ValueError(f"{what} met NaN or Inf: the values of {names} overflow float32 "
                      "(scale them down)")
