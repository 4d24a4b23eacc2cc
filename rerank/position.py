"""Position encodings and biases: sinusoidal, rotary (RoPE), ALiBi slopes and biases, and T5's
relative-position buckets. Pure numpy; float32 out."""
from __future__ import annotations

import math

import numpy as np

from .validation import positive_int


def sinusoidal(n: int, d: int, *, base: float = 10000.0) -> np.ndarray:
    """(n, d): PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))
    (Vaswani et al. 2017); an odd d ends with a sine column."""
    n, d = positive_int("n", n), positive_int("d", d)
    pos = np.arange(n, dtype=np.float64)[:, None]
    freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    out = np.empty((n, d), np.float64)
    out[:, 0::2] = np.sin(pos * freq)
    out[:, 1::2] = np.cos(pos * freq[: d // 2])
    return out.astype(np.float32)


def rope_angles(positions, d: int, *, base: float = 10000.0) -> np.ndarray:
    """θ[p, i] = positions[p] · base^(−2i/d) for i < d/2: the rotation angles of RoPE."""
    d = positive_int("d", d)
    if d % 2:
        raise ValueError(f"RoPE needs an even dimension; got d = {d}")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 1)
    return pos * base ** (-np.arange(0, d, 2, dtype=np.float64) / d)


def apply_rope(x, positions=None, *, base: float = 10000.0) -> np.ndarray:
    """Rotary position embedding (Su et al. 2021): each pair (x_{2i}, x_{2i+1}) of the vector at
    position p is rotated by θ[p, i], so (R_p q)·(R_s k) depends on p − s only. ``x`` is
    (..., n, d); ``positions`` default to 0 … n−1."""
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape[-2], x.shape[-1]
    theta = rope_angles(np.arange(n) if positions is None else positions, d, base=base)
    if theta.shape[0] != n:
        raise ValueError(f"positions must have {n} entries (one per row); got {theta.shape[0]}")
    cos, sin = np.cos(theta), np.sin(theta)
    even, odd = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    out = np.empty(x.shape, np.float64)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.astype(np.float32)


def alibi_slopes(heads: int) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al. 2022): for h a power of two, m_i = 2^(−8i/h),
    i = 1 … h; otherwise the slopes of the next lower power of two, then every other slope of
    twice that count (the paper's reference implementation)."""
    heads = positive_int("heads", heads)

    def power_of_two(h):
        start = 2.0 ** (-8.0 / h)
        return [start ** (i + 1) for i in range(h)]

    if math.log2(heads).is_integer():
        slopes = power_of_two(heads)
    else:
        low = 2 ** math.floor(math.log2(heads))
        slopes = power_of_two(low) + power_of_two(2 * low)[0::2][: heads - low]
    return np.array(slopes, dtype=np.float32)


def alibi_bias(heads: int, n: int, m: int | None = None) -> np.ndarray:
    """(heads, n, m) additive bias −m_h·|i' − j| with query i at position i' = i + m − n (queries
    aligned to the end of the keys, as with a cache); causal use adds the causal mask on top."""
    m = n if m is None else positive_int("m", m)
    n = positive_int("n", n)
    qpos = np.arange(n)[:, None] + (m - n)
    dist = np.abs(qpos - np.arange(m)[None, :]).astype(np.float32)
    return -alibi_slopes(heads)[:, None, None] * dist[None]


def relative_buckets(n: int, m: int | None = None, *, num_buckets: int = 32,
                     max_distance: int = 128, bidirectional: bool = True) -> np.ndarray:
    """(n, m) int64 T5 relative-position buckets of key j relative to query i (j − i): half the
    buckets per direction when bidirectional; exact buckets for small distances, then
    logarithmic up to ``max_distance`` (Raffel et al. 2020, T5's ``_relative_position_bucket``)."""
    m = n if m is None else positive_int("m", m)
    n = positive_int("n", n)
    num_buckets = positive_int("num_buckets", num_buckets)
    rel = np.arange(m)[None, :] - np.arange(n)[:, None]
    out = np.zeros((n, m), np.int64)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    small = rel < max_exact
    with np.errstate(divide="ignore"):
        large = max_exact + (np.log(np.maximum(rel, 1) / max_exact)
                             / math.log(max_distance / max_exact)
                             * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return out + np.where(small, rel, large)
