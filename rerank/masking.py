"""Boolean attention masks (True = attend) of shape (n, m), and their CSR form for sparse kernels.

Queries sit at key positions p_i = i + m − n (aligned bottom-right, as ``causal`` aligns them), so a
pattern written in positions — a window around p_i, a stride from p_i, p_i's block — means the same
for self-attention (n = m) and for the last n queries of a longer key sequence (decoding). Masks
combine with :func:`combine`; :func:`to_csr` lists each query's allowed keys for the kernels.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = [
    "causal", "padding", "sliding_window", "dilated", "strided", "global_tokens", "block_sparse",
    "random_blocks", "bigbird_layout", "fixed_pattern", "combine", "to_csr", "from_csr",
]


# ---------------------------------------------------------------------------------------------
# argument checks

def _int(name: str, value, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        kind = "positive" if low == 1 else f"≥ {low}"
        raise ValueError(f"{name} must be an integer {kind}; got {value!r}")
    return int(value)


def _sizes(n, m) -> tuple[int, int]:
    return _int("n", n), _int("m", m)


def _positions(n: int, m: int) -> np.ndarray:
    """Key positions p_i = i + m − n of the n queries."""
    return np.arange(n, dtype=np.int64) + (m - n)


def _offsets(n: int, m: int) -> np.ndarray:
    """p_i − j for every (query i, key j): how far key j lies behind query i's position."""
    return _positions(n, m)[:, None] - np.arange(m)[None, :]


def _indices(name: str, indices, size: int) -> np.ndarray:
    """Integer indices into range(size) (negative ones count from the end), as a unique array."""
    arr = np.atleast_1d(np.asarray(() if indices is None else indices))
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"{name} must be a 1-D sequence of integers; got {indices!r}")
    arr = arr.astype(np.int64)
    bad = (arr < -size) | (arr >= size)
    if bad.any():
        raise ValueError(f"{name} must lie in [-{size}, {size}); got {arr[bad].tolist()[:5]}")
    return np.unique(np.where(arr < 0, arr + size, arr))


# ---------------------------------------------------------------------------------------------
# element-wise patterns

def causal(n: int, m: int) -> np.ndarray:
    """Query i sees keys j ≤ i + m − n (bottom-right aligned)."""
    n, m = _sizes(n, m)
    return _offsets(n, m) >= 0


def padding(lengths, n: int, m: int) -> np.ndarray:
    """Key padding: key j is real iff j < length. ``lengths`` an int gives (n, m); a sequence of
    b lengths gives (b, 1, n, m), which broadcasts over heads of a (b, h, n, m) logit tensor."""
    n, m = _sizes(n, m)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise ValueError(f"lengths must be an integer or a 1-D integer sequence; got {lengths!r}")
    if ((arr < 0) | (arr > m)).any():
        raise ValueError(f"lengths must lie in [0, m = {m}]; got {arr.tolist()}")
    keys = np.arange(m)
    if arr.ndim == 0:
        return np.broadcast_to(keys < arr, (n, m)).copy()
    return np.broadcast_to((keys[None, :] < arr[:, None])[:, None, None, :],
                           (arr.size, 1, n, m)).copy()


def sliding_window(n: int, m: int, w: int) -> np.ndarray:
    """|p_i − j| ≤ w: 2w + 1 keys around each query (fewer at the edges)."""
    n, m = _sizes(n, m)
    w = _int("w", w, low=0)
    return np.abs(_offsets(n, m)) <= w


def dilated(n: int, m: int, w: int, dilation: int = 1) -> np.ndarray:
    """Dilated sliding window (Longformer): keys p_i + t·dilation for t = −w … w."""
    n, m = _sizes(n, m)
    w, dilation = _int("w", w, low=0), _int("dilation", dilation)
    off = _offsets(n, m)
    return (np.abs(off) <= w * dilation) & (off % dilation == 0)


def strided(n: int, m: int, stride: int) -> np.ndarray:
    """(p_i − j) mod stride = 0: every stride-th key counted from the query's own position."""
    n, m = _sizes(n, m)
    stride = _int("stride", stride)
    return _offsets(n, m) % stride == 0


def global_tokens(n: int, m: int, indices) -> np.ndarray:
    """Global tokens at key positions ``indices``: every query attends to them, and a query
    whose position p_i is one of them attends to every key (negative indices count from m)."""
    n, m = _sizes(n, m)
    idx = _indices("indices", indices, m)
    pos = _positions(n, m)
    mask = np.zeros((pos.size, m), dtype=bool)
    mask[:, idx] = True
    mask[np.isin(pos, idx), :] = True
    return mask


def fixed_pattern(n: int, m: int, block: int, summary: int) -> np.ndarray:
    """Sparse Transformer "fixed" pattern (Child et al. 2019): A1, keys in the query's block of
    ``block`` positions (⌊j/l⌋ = ⌊p_i/l⌋), or A2, the last ``summary`` positions of every block
    (j mod l ≥ l − c). With ``causal`` (AND) this is the paper's autoregressive pattern."""
    n, m = _sizes(n, m)
    block, summary = _int("block", block), _int("summary", summary)
    if summary > block:
        raise ValueError(f"summary ({summary}) must not exceed block ({block})")
    pos = _positions(n, m)
    keys = np.arange(m)
    same_block = (pos[:, None] // block) == (keys[None, :] // block)
    return same_block | (keys % block >= block - summary)[None, :]


# ---------------------------------------------------------------------------------------------
# block patterns

def _block(name: str, block) -> tuple[int, int]:
    if isinstance(block, tuple):
        if len(block) != 2:
            raise ValueError(f"{name} must be an integer or a pair (rows, cols); got {block!r}")
        return _int(f"{name}[0]", block[0]), _int(f"{name}[1]", block[1])
    size = _int(name, block)
    return size, size


def _layout(layout) -> np.ndarray:
    arr = np.asarray(layout)
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise TypeError(f"layout must be boolean (or 0/1 integers); got dtype {arr.dtype}")
        arr = arr.astype(bool)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"layout must be a non-empty 2-D (query blocks, key blocks) array; "
                         f"got shape {arr.shape}")
    return arr


def block_sparse(layout, block, n: int | None = None, m: int | None = None) -> np.ndarray:
    """Expand a (nb, mb) block layout: mask[i, j] = layout[i // bq, j // bk] for block = b or
    (bq, bk). The result is (nb·bq, mb·bk), or its first n rows and m columns when given."""
    layout = _layout(layout)
    bq, bk = _block("block", block)
    mask = np.repeat(np.repeat(layout, bq, axis=0), bk, axis=1)
    rows = mask.shape[0] if n is None else _int("n", n)
    cols = mask.shape[1] if m is None else _int("m", m)
    if rows > mask.shape[0] or cols > mask.shape[1]:
        raise ValueError(f"(n, m) = ({rows}, {cols}) exceeds the expanded layout {mask.shape}")
    return np.ascontiguousarray(mask[:rows, :cols])


def random_blocks(nb: int, mb: int, r: int, *, seed: int = 0, exclude=None) -> np.ndarray:
    """A (nb, mb) layout with r key blocks per query block drawn uniformly without replacement
    from ``np.random.default_rng(seed)``, avoiding the blocks ``exclude`` (nb, mb) already holds
    (a row with fewer than r free blocks takes them all). Rows are drawn in order."""
    nb, mb, r = _int("nb", nb), _int("mb", mb), _int("r", r, low=0)
    taken = np.zeros((nb, mb), bool) if exclude is None else _layout(exclude)
    if taken.shape != (nb, mb):
        raise ValueError(f"exclude must have shape ({nb}, {mb}); got {taken.shape}")
    rng = np.random.default_rng(seed)
    layout = np.zeros((nb, mb), dtype=bool)
    for row in range(nb):
        free = np.flatnonzero(~taken[row])
        if r and free.size:
            layout[row, rng.choice(free, size=min(r, free.size), replace=False)] = True
    return layout


def bigbird_layout(nb: int, *, window: int = 1, global_blocks=(0,), random: int = 0,
                   seed: int = 0, causal: bool = False) -> np.ndarray:
    """BigBird-ITC block layout over nb × nb blocks of positions (Zaheer et al. 2020): block i
    sees blocks |i − j| ≤ window, the global blocks see and are seen by all, and ``random``
    further key blocks per query block are drawn (:func:`random_blocks`) among those not yet
    seen — among j < i only when ``causal``, so no random draw is wasted on a future block."""
    nb = _int("nb", nb)
    window = _int("window", window, low=0)
    blocks = np.arange(nb)
    layout = np.abs(blocks[:, None] - blocks[None, :]) <= window
    g = _indices("global_blocks", global_blocks, nb)
    layout[g, :] = True
    layout[:, g] = True
    unavailable = layout | (blocks[None, :] > blocks[:, None]) if causal else layout
    return layout | random_blocks(nb, nb, random, seed=seed, exclude=unavailable)


# ---------------------------------------------------------------------------------------------
# combining and converting

def combine(*masks, op: str = "and") -> np.ndarray:
    """Element-wise AND (or OR) of boolean masks, broadcast together."""
    if op not in ("and", "or"):
        raise ValueError(f"op must be 'and' or 'or'; got {op!r}")
    if not masks:
        raise ValueError("combine needs at least one mask")
    arrays = []
    for i, mask in enumerate(masks):
        arr = np.asarray(mask)
        if arr.dtype != np.bool_:
            raise TypeError(f"mask {i} must be boolean (True = attend); got dtype {arr.dtype}")
        arrays.append(arr)
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        raise ValueError(f"masks do not broadcast together: {[a.shape for a in arrays]}") from None
    reduce = np.logical_and if op == "and" else np.logical_or
    out = np.broadcast_to(arrays[0], shape).copy()
    for arr in arrays[1:]:
        reduce(out, arr, out=out)
    return out


def to_csr(mask) -> tuple[np.ndarray, np.ndarray]:
    """Each query's allowed keys as CSR: ``cols`` (nnz,) int64 holds the key indices, row by row in
    increasing order; query i's keys are cols[row_ptr[i]:row_ptr[i+1]]. A (n, m) mask gives
    row_ptr (n+1,); a stack (P, n, m) gives row_ptr (P, n+1), pattern p's rows pointing into the
    same ``cols`` (p's entries follow p−1's)."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (True = attend); got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"mask must be 2-D (n, m) or 3-D (P, n, m); got shape {arr.shape}")
    stack = arr.reshape((-1,) + arr.shape[-2:])
    p, n, _ = stack.shape
    flat = stack.reshape(p * n, -1)
    cols = np.nonzero(flat)[1].astype(np.int64)
    ends = np.concatenate(([0], np.cumsum(np.count_nonzero(flat, axis=1), dtype=np.int64)))
    row_ptr = np.stack([ends[i * n:(i + 1) * n + 1] for i in range(p)])
    return (row_ptr[0] if arr.ndim == 2 else row_ptr), cols


def from_csr(row_ptr, cols, m: int) -> np.ndarray:
    """The boolean mask a CSR pattern describes: (n, m) or (P, n, m) (inverse of :func:`to_csr`)."""
    rp = np.asarray(row_ptr, dtype=np.int64)
    stack = np.atleast_2d(rp)
    cols = np.asarray(cols, dtype=np.int64)
    mask = np.zeros((stack.shape[0], stack.shape[1] - 1, _int("m", m)), dtype=bool)
    for p, ptr in enumerate(stack):
        rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
        mask[p, rows, cols[ptr[0]:ptr[-1]]] = True
    return mask[0] if rp.ndim == 1 else mask
