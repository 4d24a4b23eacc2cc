"""Flash-attention family: exact attention computed tile by tile with an online softmax."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..attention import attention, prepare
from ..reference import expand_kv_heads
from ..validation import check_finite, kernel_error, non_finite_error, positive_int
from .base import Mechanism, MechanismSpec


class FlashAttentionV2(Mechanism):
    """Exact softmax(q·kᵀ/√d + mask)·v by the FlashAttention-2 recurrence: per query tile, key
    tiles update a running max m, sum l and output o (o ← o·e^(m−m') + e^(s−m')·v); memory
    O(tile·d) per thread, never O(n²). Parallel over batch × head × query tile."""

    spec = MechanismSpec(
        name="flash-attention-v2", category="flash", complexity="O(n²) IO-opt",
        use_case="GPU optimization", paper="Dao 2023, FlashAttention-2 (arXiv:2307.08691)",
        compiled=True,
        notes="query tiles of 256 rows × key tiles of 512, sgemm per tile, online softmax in fp32")

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        return attention(q, k, v, mask=mask, causal=causal, scale=scale)


# ---------------------------------------------------------------------------------------------
# FlashAttention-3: low-precision inputs, fp32 accumulation

#: Largest finite float16 and e4m3 (fp8) magnitudes.
FP16_MAX, FP8_MAX = 65504.0, 448.0
#: Half an ulp, relative (normal numbers) and absolute (subnormals, in units of the block scale).
_FP16_REL, _FP16_ABS = 2.0 ** -11, 2.0 ** -25
_FP8_REL, _FP8_ABS = 2.0 ** -4, 2.0 ** -10
#: Relative slack for the float32 rounding of dequantised and rotated values.
_F32_REL = 2.0 ** -23


def _round_fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _round_e4m3(y: np.ndarray) -> np.ndarray:
    """y (|y| ≤ 448) rounded to the nearest e4m3 value (4 exponent bits, bias 7, 3 mantissa bits;
    subnormals below 2⁻⁶), ties to even."""
    _, exponent = np.frexp(y)                      # |y| = f·2^e, f ∈ [0.5, 1)
    ulp = np.exp2(np.maximum(exponent - 1, -6) - 3.0)
    return np.clip(np.rint(y / ulp) * ulp, -FP8_MAX, FP8_MAX)


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    """(..., L, d) → (..., ⌈L/block⌉, block, d), zero-padded: the quantisation blocks."""
    rows = x.shape[-2]
    nb = -(-rows // block)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, nb * block - rows), (0, 0)]
    return np.pad(x, pad).reshape(*x.shape[:-2], nb, block, x.shape[-1])


def _unblock(x: np.ndarray, rows: int) -> np.ndarray:
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :rows, :]


def _hadamard(d: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order d (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


class FlashAttentionV3(Mechanism):
    """softmax(q̃·k̃ᵀ/√d + mask)·ṽ with q̃, k̃, ṽ the inputs rounded to low precision, accumulated
    in fp32 by the tiled kernel: fp16 rounding, or FA3's FP8 path as per-block scaled e4m3 ("fp8")
    or int8 codes, after an optional seeded random orthogonal rotation R of q and k (incoherent
    processing: (qR)(kR)ᵀ = qkᵀ, but outliers spread over all channels before quantising)."""

    spec = MechanismSpec(
        name="flash-attention-v3", category="flash", complexity="O(n²) IO-opt",
        use_case="Hopper GPUs",
        paper="Shah, Bikshandi, Zhang, Thakkar, Ramani, Dao 2024, FlashAttention-3: Fast and "
              "Accurate Attention with Asynchrony and Low-precision (arXiv:2407.08608)",
        compiled=True,
        notes="Exact to its precision: the output is exact attention (the FlashAttention-2 tiled "
              "kernel, fp32) of the dequantised inputs. precision='fp16' rounds q, k, v to "
              "float16; 'fp8' (e4m3) and 'int8' quantise per block of `block` rows with one "
              "scale per block (max|x|/448 or max|x|/127), after a seeded random orthogonal "
              "rotation of q and k (random-sign Hadamard when d is a power of two; rotate=True, "
              "the default for fp8/int8: FA3's incoherent processing; with FA3's 0.1% outliers "
              "it lowered the RMS error ~1.8× for int8, ~1.2× for e4m3 here). error_bound() "
              "gives a guaranteed bound on |out − exact fp32 attention| from the rounding "
              "errors. What of FA3 does not apply on a CPU: warp specialisation (producer/"
              "consumer warps), asynchronous TMA copies, Hopper WGMMA tensor cores, the "
              "ping-pong overlap of softmax with GEMMs, and real FP8 arithmetic (here products "
              "of the dequantised values run in fp32).")

    PRECISIONS = ("fp16", "fp8", "int8")

    def __init__(self, *, precision="fp16", block=128, rotate=None, seed=0):
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(self.PRECISIONS)}; "
                             f"got {precision!r}")
        self.precision = precision
        self.block = positive_int("block", block)
        self.rotate = precision != "fp16" if rotate is None else bool(rotate)
        self.seed = seed
        #: The seeded rotation per head dimension d (created on first use).
        self.rotations: dict[int, np.ndarray] = {}

    def rotation(self, d: int) -> np.ndarray:
        """The (d, d) orthogonal matrix of the incoherent processing: a random-sign Hadamard
        matrix / √d when d is a power of two, else a random orthogonal matrix (QR), seeded."""
        if d not in self.rotations:
            rng = np.random.default_rng(self.seed)
            if d & (d - 1) == 0:
                signs = rng.choice([-1.0, 1.0], size=d)
                r = signs[:, None] * _hadamard(d) / math.sqrt(d)
            else:
                qm, rm = np.linalg.qr(rng.standard_normal((d, d)))
                r = qm * np.sign(np.diag(rm))
            self.rotations[d] = r
        return self.rotations[d]

    # -- quantisation -------------------------------------------------------------------------
    def _block_scales(self, x: np.ndarray, top: float) -> np.ndarray:
        """One scale per block of rows, shape (..., blocks, 1, 1): max|x_block| / top."""
        peak = np.abs(_blocks(x, self.block)).max(axis=(-1, -2), keepdims=True)
        return np.where(peak > 0, peak / top, 1.0)

    def _round(self, name: str, x: np.ndarray) -> np.ndarray:
        """x (float64, (..., L, d)) rounded to this precision and dequantised (float64)."""
        if self.precision == "fp16":
            if np.abs(x).max() > FP16_MAX:
                raise ValueError(f"{name} has values beyond float16's range (±{FP16_MAX:g}); "
                                 "use precision='fp8' or 'int8' (block-scaled)")
            return _round_fp16(x)
        top = FP8_MAX if self.precision == "fp8" else 127.0
        scales = self._block_scales(x, top)
        y = _blocks(x, self.block) / scales
        codes = _round_e4m3(y) if self.precision == "fp8" else np.clip(np.rint(y), -127, 127)
        return _unblock(codes * scales, x.shape[-2])

    def _rounding_error(self, x: np.ndarray) -> np.ndarray:
        """An elementwise bound on |x̃ − x| (x float64 as it is before rounding)."""
        ax = np.abs(x)
        if self.precision == "fp16":
            err = np.maximum(_FP16_REL * ax, _FP16_ABS)
        elif self.precision == "fp8":
            scales = self._block_scales(x, FP8_MAX)
            floor = _unblock(np.broadcast_to(_FP8_ABS * scales, _blocks(x, self.block).shape),
                             x.shape[-2])
            err = np.maximum(_FP8_REL * ax, floor)
        else:
            scales = self._block_scales(x, 127.0)
            err = _unblock(np.broadcast_to(0.5 * scales, _blocks(x, self.block).shape),
                           x.shape[-2])
        return err + _F32_REL * (ax + err)

    def _rotated(self, q4, k4):
        q64, k64 = q4.astype(np.float64), k4.astype(np.float64)
        if not self.rotate:
            return q64, k64
        r = self.rotation(q4.shape[-1])
        return q64 @ r, k64 @ r

    def _dequantized4(self, q4, k4, v4):
        for name, arr in (("q", q4), ("k", k4), ("v", v4)):
            check_finite(name, arr)
        qr, kr = self._rotated(q4, k4)
        return tuple(self._round(name, x).astype(np.float32)
                     for name, x in (("q", qr), ("k", kr), ("v", v4.astype(np.float64))))

    def dequantized(self, q, k, v):
        """(q̃, k̃, ṽ): the float32 inputs the kernel attends with (q, k rotated when ``rotate``),
        in the shapes of q, k, v."""
        q4, k4, v4, _, _, _ = prepare(q, k, v)
        return tuple(x.reshape(np.shape(a)) for x, a in zip(self._dequantized4(q4, k4, v4),
                                                            (q, k, v)))

    def error_bound(self, q, k, v, *, scale=None) -> np.ndarray:
        """A guaranteed bound on max_c |out − exact attention| per query row (q's shape without
        d), for any mask. With Δ_i = max_j |scale·(q̃_i·k̃_j − q_i·k_j)| (bounded from the
        elementwise rounding bounds e: Σ_t e_q|k| + |q|e_k + e_q·e_k), every weight ratio p̃/p
        lies in e^(±2Δ_i), so the weights move by at most tanh(Δ_i) in total variation and
        |Δout_i| ≤ tanh(Δ_i)·(range of ṽ over the keys) + max e_v. Leaves out the kernel's own
        fp32 accumulation error (~1e-6 relative)."""
        q4, k4, v4, _, scale, out_shape = prepare(q, k, v, None, scale)
        h = q4.shape[1]
        qr, kr = self._rotated(q4, k4)
        eq, ek = self._rounding_error(qr), expand_kv_heads(self._rounding_error(kr), h)
        ka = expand_kv_heads(np.abs(kr), h)
        kt = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
        delta = (scale * (eq @ kt(ka) + np.abs(qr) @ kt(ek) + eq @ kt(ek))).max(axis=-1)
        v64 = v4.astype(np.float64)
        ev = self._rounding_error(v64).max(axis=(-1, -2))                       # (b, h_kv)
        spread = (v64.max(axis=-2) - v64.min(axis=-2)).max(axis=-1) + 2 * ev     # range of ṽ
        per_head = lambda x: expand_kv_heads(x[..., None, None], h)[..., 0]  # noqa: E731
        bound = np.tanh(delta) * per_head(spread) + per_head(ev)
        return bound.reshape(out_shape[:-1])

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        qd, kd, vd = self._dequantized4(q4, k4, v4)
        out = attention(qd, kd, vd, mask=mask4, causal=causal, scale=scale)
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# Flash-decoding: parallel over chunks of the key/value cache

#: Default chunking: at least MIN_CHUNK keys per chunk, at most MAX_SPLITS chunks per head.
MIN_CHUNK, MAX_SPLITS = 1024, 64


def chunk_size(m: int, n: int, splits: int | None) -> int:
    """Keys per chunk for m keys and n query rows. ``splits`` = the number of chunks asked for
    (the last chunk may be shorter; more than m gives one key per chunk); by default
    min(64, m // 1024, m // n) chunks (≥ 1), so the partial results (n·(dv + 2) floats per chunk)
    stay no larger than the cache. Depends on the shape only, never on the thread count."""
    if splits is None:
        splits = max(1, min(MAX_SPLITS, m // MIN_CHUNK, m // max(n, 1)))
    return -(-m // min(splits, m))


def _decode_numpy(q4, k4, v4, mask4, causal, scale, chunk):
    """flash_decoding's algorithm in float64: per chunk of keys its max, sum and un-normalised
    output, then a log-sum-exp combination."""
    b, h, n, _ = q4.shape
    m, dv = k4.shape[2], v4.shape[3]
    chunks = -(-m // chunk)
    k = expand_kv_heads(k4.astype(np.float64), h)
    v = expand_kv_heads(v4.astype(np.float64), h)
    logits = q4.astype(np.float64) @ np.swapaxes(k, -1, -2) * scale
    if np.abs(logits).max() > np.finfo(np.float32).max:      # as the fp32 kernel would overflow
        raise non_finite_error("flash-decoding", q=q4, k=k4, v=v4)
    if mask4 is not None:
        logits = logits + mask4
    if causal:
        visible = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
        logits = np.where(visible, logits, -np.inf)
    pad = chunks * chunk - m
    logits = np.pad(logits, [(0, 0)] * 3 + [(0, pad)], constant_values=-np.inf)
    logits = logits.reshape(b, h, n, chunks, chunk).transpose(0, 1, 3, 2, 4)   # (b,h,C,n,chunk)
    v = np.pad(v, [(0, 0), (0, 0), (0, pad), (0, 0)]).reshape(b, h, chunks, chunk, dv)
    local_max = logits.max(axis=-1)                                           # (b,h,C,n)
    e = np.exp(logits - np.where(np.isneginf(local_max), 0.0, local_max)[..., None])
    local_sum, local_out = e.sum(axis=-1), e @ v                              # (b,h,C,n,dv)
    top = local_max.max(axis=2, keepdims=True)
    w = np.exp(local_max - np.where(np.isneginf(top), 0.0, top))              # 0 where −inf
    total = (w * local_sum).sum(axis=2)[..., None]                            # (b,h,n,1)
    out = (w[..., None] * local_out).sum(axis=2)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0).astype(np.float32)


class FlashDecoding(Mechanism):
    """Exact softmax(q·kᵀ/√d + mask)·v for a few query rows against a long key/value cache: the m
    keys are split into chunks processed in parallel, each giving its max m_c, sum l_c and
    un-normalised output o_c; then out = Σ_c e^(m_c−M)·o_c / Σ_c e^(m_c−M)·l_c, M = max_c m_c."""

    spec = MechanismSpec(
        name="flash-decoding", category="flash", complexity="O(n²) cached",
        use_case="Fast generation",
        paper="Dao, Haziza, Massa, Sizov 2023, Flash-Decoding for long-context inference "
              "(PyTorch blog); Hong et al. 2023, FlashDecoding++ (arXiv:2311.01282)",
        compiled=True,
        notes="Differs from flash-attention-v2 in what runs in parallel: v2 splits the queries "
              "into tiles (one decoding row leaves one tile per head, so with few heads most "
              "threads idle); flash-decoding splits the key/value cache into chunks and runs the "
              "(batch·head, chunk) items in parallel, then combines the chunks by log-sum-exp. "
              "Chunks depend on the shape only (splits, or min(64, m/1024, m/n)), so results do "
              "not depend on the thread count. Dot products and axpy per key (no BLAS); best for "
              "n ≤ a few rows, any n works. Causal is bottom-right aligned (the cache's last key "
              "is the last query's own).")

    def __init__(self, *, splits=None):
        self.splits = None if splits is None else positive_int("splits", splits)

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None, splits=None):
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        splits = self.splits if splits is None else positive_int("splits", splits)
        chunk = chunk_size(k4.shape[2], q4.shape[2], splits)
        kernels = backend.compiled_kernels()
        if kernels is None:
            for name, arr in (("q", q4), ("k", k4), ("v", v4)):
                check_finite(name, arr)
            out = _decode_numpy(q4, k4, v4, mask4, bool(causal), scale, chunk)
            check_finite("flash-decoding output (overflow: inputs too large)", out)
        else:
            out = np.empty(q4.shape[:3] + (v4.shape[3],), dtype=np.float32)
            bad = kernels.flash_decoding(q4, k4, v4, out, mask4, bool(causal), scale,
                                         backend.get_num_threads(), chunk)
            if bad:
                raise kernel_error(bad, "flash-decoding", q=q4, k=k4, v=v4)
        return out.reshape(out_shape)


MECHANISMS = (FlashAttentionV2, FlashAttentionV3, FlashDecoding)
