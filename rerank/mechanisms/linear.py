"""Linear attention family: softmax(q·kᵀ) replaced by a kernel feature map φ(q)·φ(k), or by a
low-rank (Linformer) or landmark (Nyströmformer) approximation, so the cost grows as O(n) in the
sequence length instead of O(n·m).

The feature-map mechanisms (linear, performer, cosformer, rfa) share one core,

    out_i = φ(q_i)ᵀ S / guard(φ(q_i)ᵀ z),   S = Σ_j φ(k_j) v_jᵀ,   z = Σ_j φ(k_j),

the sums running over the keys query i sees (all of them, or j ≤ i + m − n when causal): the
compiled kernel ``rerank._kernels.linear_feature_attention`` or :func:`feature_attention`'s numpy
form. guard(x) = x where |x| ≥ eps, else ±eps with x's sign (+eps for 0), eps = 1e-6 by default:
a denominator that is zero (relu features that miss every key, a query that sees no key) gives a
zero row instead of NaN, and one of random Fourier features, which can take either sign, never
divides by ~0. Nyströmformer and Linformer are built from exact attention calls (the compiled
FlashAttention kernel) on landmarks or projected keys and values.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, reference
from ..attention import attention, prepare
from ..validation import as_float32, check_finite, kernel_error, positive_float, positive_int
from .base import Mechanism, MechanismSpec

#: Default guard of the feature-map core's denominator (see the module docstring).
EPS = 1e-6
#: Keys per block of the numpy causal form.
NUMPY_CAUSAL_BLOCK = 128
#: Singular values of Nyström's A below this fraction of the largest are dropped by the exact
#: pseudo-inverse: B·v reaches it in float32, so smaller ones would only amplify rounding.
PINV_RCOND = 1e-6
#: Query rows per readout tile and keys per partial state of the compiled non-causal kernel.
KERNEL_ROW_TILE, KERNEL_KEY_CHUNK = 256, 4096


# ---------------------------------------------------------------------------------------------
# shared helpers

def _inputs(q, k, v, scale=None):
    """Validated, finite 4-D float32 q, k, v, the scale (1/√d by default) and the output shape."""
    q4, k4, v4, _, scale, out_shape = prepare(q, k, v, None, scale)
    for name, arr in (("q", q4), ("k", k4), ("v", v4)):
        check_finite(name, arr)
    return q4, k4, v4, scale, out_shape


def _work_dtype():
    """float32 for the compiled kernel, float64 on the numpy backend (the reference path)."""
    return np.float32 if backend.compiled_kernels() is not None else np.float64


def _weight(name: str, value, ndims: tuple[int, ...]) -> np.ndarray:
    """A given weight array as finite float32 of one of the ranks ``ndims``."""
    arr = as_float32(name, value, ndims)
    check_finite(name, arr)
    return arr


def _guard(den: np.ndarray, eps: float) -> np.ndarray:
    return np.where(np.abs(den) >= eps, den, np.where(den < 0, -eps, eps))


def _repeat_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """Repeat axis 1 (the head axis of a 4-D or 3-D per-head array) from h_kv to ``heads``."""
    return x if x.shape[1] == heads else np.repeat(x, heads // x.shape[1], axis=1)


def feature_attention(phi_q, phi_k, v, *, causal=False, gate_logits=None, eps=EPS,
                      what="linear attention", inputs=None) -> np.ndarray:
    """out_i = φq_i·S / guard(φq_i·z) over the keys query i sees (see the module docstring).

    phi_q (b, h, n, r), phi_k (b, h_kv, m, r), v (b, h_kv, m, dv); ``gate_logits`` None or
    (b, h_kv, m), causal only: with g_j = sigmoid(gate_logits_j) the prefix sums become the gated
    recurrence S_j = g_j·S_{j−1} + (1 − g_j)·φk_j v_jᵀ (z alike). Returns (b, h, n, dv) float32,
    from the compiled kernel when the compiled backend is active. ``inputs`` name the arrays an
    error message blames."""
    inputs = inputs or {"phi_q": phi_q, "phi_k": phi_k, "v": v}
    kernels = backend.compiled_kernels()
    if kernels is not None:
        return _compiled_core(kernels, phi_q, phi_k, v, gate_logits, causal, eps, what, inputs)
    out = _numpy_core(phi_q, phi_k, v, gate_logits, causal, eps)
    check_finite(f"{what} output (overflow: inputs too large)", out)
    return out


def _compiled_core(kernels, phi_q, phi_k, v, gate_logits, causal, eps, what, inputs):
    phi_q, phi_k, v = (np.ascontiguousarray(x, dtype=np.float32) for x in (phi_q, phi_k, v))
    gates = None
    if gate_logits is not None:
        gates = np.ascontiguousarray(_sigmoid(gate_logits), dtype=np.float32)
    b, h, n, r = phi_q.shape
    m, dv = v.shape[2], v.shape[3]
    out = np.empty((b, h, n, dv), dtype=np.float32)
    # bounds of the kernel's sgemm sizes (state r × dv × keys, readout rows × dv × r); the causal
    # form calls no BLAS
    inner = max(r, min(m, KERNEL_KEY_CHUNK))
    rows = 0 if causal else max(r, min(n, KERNEL_ROW_TILE), inner)
    bad = backend.call_holding_blas(rows, dv, inner,
                                    kernels.linear_feature_attention, phi_q, phi_k, v, out, gates,
                                    bool(causal), float(eps), backend.get_num_threads())
    if bad:
        raise kernel_error(bad, what, **inputs)
    return out


def _sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def _numpy_core(phi_q, phi_k, v, gate_logits, causal, eps):
    heads, dtype = phi_q.shape[1], phi_q.dtype
    phi_k = _repeat_heads(phi_k, heads)
    v = _repeat_heads(np.asarray(v, dtype=dtype), heads)
    if not causal:
        state = np.swapaxes(phi_k, -1, -2) @ v                       # (b, h, r, dv)
        norm = phi_k.sum(axis=-2)[..., None]                         # (b, h, r, 1)
        return (phi_q @ state / _guard(phi_q @ norm, eps)).astype(np.float32)
    if gate_logits is None:
        log_decay = np.zeros(v.shape[:-1], dtype=dtype)
        weight = np.ones(v.shape[:-1], dtype=dtype)
    else:
        logits = _repeat_heads(np.asarray(gate_logits, dtype=np.float64), heads)
        log_decay = (-np.logaddexp(0.0, -logits)).astype(dtype)      # log g
        weight = _sigmoid(-logits).astype(dtype)                     # 1 − g
    return _numpy_causal(phi_q, phi_k, v, log_decay, weight, eps)


def _numpy_causal(phi_q, phi_k, v, log_decay, weight, eps, block=NUMPY_CAUSAL_BLOCK):
    """Blockwise form of S_j = a_j·S_{j−1} + c_j·φk_j v_jᵀ (a = e^log_decay, c = weight): a key
    block's keys reach its queries through a masked quadratic product with weights
    c_j·Π_{j<l≤t} a_l, earlier keys through the state carried across blocks. All exponents are
    ≤ 0, so nothing overflows."""
    n, m = phi_q.shape[-2], phi_k.shape[-2]
    shift = m - n
    state = np.zeros(phi_q.shape[:2] + (phi_q.shape[-1], v.shape[-1]), dtype=phi_q.dtype)
    norm = np.zeros(phi_q.shape[:2] + (phi_q.shape[-1], 1), dtype=phi_q.dtype)
    num = np.zeros(phi_q.shape[:-1] + (v.shape[-1],), dtype=phi_q.dtype)
    den = np.zeros(phi_q.shape[:-1] + (1,), dtype=phi_q.dtype)
    for j0 in range(0, m, block):
        j1 = min(j0 + block, m)
        keys, values, c = phi_k[..., j0:j1, :], v[..., j0:j1, :], weight[..., j0:j1]
        cum = np.cumsum(log_decay[..., j0:j1], axis=-1)               # log Π_{j0≤l≤t} a_l
        i0, i1 = max(j0 - shift, 0), min(j1 - shift, n)               # queries ending here
        if i1 > i0:
            last = np.arange(i0, i1) + shift - j0                     # their last key, local
            seen = np.arange(j1 - j0)[None, :] <= last[:, None]
            cum_t = cum[..., last]                                    # (b, h, queries)
            logw = np.where(seen, cum_t[..., :, None] - cum[..., None, :], -np.inf)
            w = np.exp(logw) * c[..., None, :] * (phi_q[..., i0:i1, :] @ np.swapaxes(keys, -1, -2))
            carry = np.exp(cum_t)[..., None]
            num[..., i0:i1, :] = carry * (phi_q[..., i0:i1, :] @ state) + w @ values
            den[..., i0:i1, :] = carry * (phi_q[..., i0:i1, :] @ norm) + w.sum(-1, keepdims=True)
        to_end = np.exp(cum[..., -1:] - cum) * c                      # (b, h, keys)
        decay = np.exp(cum[..., -1])[..., None, None]
        state = decay * state + np.swapaxes(keys * to_end[..., None], -1, -2) @ values
        norm = decay * norm + (keys * to_end[..., None]).sum(-2)[..., None]
    return (num / _guard(den, eps)).astype(np.float32)


class _LinearMechanism(Mechanism):
    """Shared by the family: none takes an attention mask (the point is never to form n × m)."""

    supports_mask = False


# ---------------------------------------------------------------------------------------------
# linear-attention

def elu_feature(x):
    """elu(x) + 1: x + 1 for x > 0, eˣ otherwise (positive everywhere) = max(x, 0) + e^min(x, 0)."""
    x = np.asarray(x)
    out = np.minimum(x, 0)
    np.exp(out, out=out)
    out += np.maximum(x, 0)
    return out


class LinearAttention(_LinearMechanism):
    """φ(x) = elu(x) + 1; out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j). Causal: the sums
    over j ≤ i + m − n, i.e. the recurrence S_i = S_{i−1} + φ(k_i) v_iᵀ, z_i = z_{i−1} + φ(k_i)."""

    spec = MechanismSpec(
        name="linear-attention", category="linear", complexity="O(n)",
        use_case="Real-time inference",
        paper="Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive "
              "Transformers with Linear Attention (arXiv:2006.16236)",
        compiled=True,
        notes="r = d features; non-causal: sgemm state Σφ(k)vᵀ per 4096-key chunk + sgemm "
              "readout per 256-row tile; causal: prefix-sum recurrence parallel over "
              "(batch, kv head); no scale (the feature map replaces softmax)")

    def __init__(self, *, eps=EPS):
        self.eps = positive_float("eps", eps)

    def _forward(self, q, k, v, *, mask=None, causal=False):
        q4, k4, v4, _, out_shape = _inputs(q, k, v)
        dtype = _work_dtype()
        out = feature_attention(elu_feature(q4.astype(dtype, copy=False)),
                                elu_feature(k4.astype(dtype, copy=False)), v4,
                                causal=causal, eps=self.eps, what=self.spec.name,
                                inputs={"q": q4, "k": k4, "v": v4})
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# performer-attention (FAVOR+)

def orthogonal_gaussian(rows: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` random features in blocks of d mutually orthogonal directions (QR of a Gaussian
    matrix, signs fixed so each block is Haar-distributed), each row's norm drawn from chi(d):
    every row is marginally N(0, I_d), rows within a block are orthogonal."""
    blocks = []
    for _ in range(-(-rows // d)):
        qmat, rmat = np.linalg.qr(rng.standard_normal((d, d)))
        blocks.append((qmat * np.sign(np.diag(rmat))).T)
    directions = np.concatenate(blocks)[:rows]
    return directions * np.sqrt(rng.chisquare(d, size=rows))[:, None]


class PerformerAttention(_LinearMechanism):
    """FAVOR+: exp(x·y) = E_ω[φ(x)·φ(y)], φ(x) = exp(ω·x − ‖x‖²/2)/√r with ω orthogonal random
    features; q and k are scaled by scale^½ (d^(−1/4)), so φ(q)·φ(k) ≈ exp(q·k/√d), then linear
    attention. A max is subtracted in the exponent (per query row, per head for the keys)."""

    spec = MechanismSpec(
        name="performer-attention", category="linear", complexity="O(n)",
        use_case="Large scale (FAVOR+)",
        paper="Choromanski et al. 2021, Rethinking Attention with Performers (arXiv:2009.14794)",
        compiled=True,
        notes="positive orthogonal random features (r = 256 by default, drawn per d from the "
              "seed); features by numpy sgemm + exp, then the linear-attention kernel")

    def __init__(self, *, features=256, seed=0, projection=None, eps=EPS):
        self.seed = seed
        self.eps = positive_float("eps", eps)
        self.projection = None if projection is None else _weight("projection", projection, (2,))
        self.features = (positive_int("features", features) if projection is None
                         else self.projection.shape[0])
        self.drawn = {}                    # d → the (features, d) ω drawn from the seed

    def omega(self, d: int) -> np.ndarray:
        """The (r, d) random features used for head dimension d (given, or drawn and cached)."""
        if self.projection is not None:
            if self.projection.shape[1] != d:
                raise ValueError(f"projection must have shape (features, {d}) for d = {d}; got "
                                 f"{self.projection.shape}")
            return self.projection
        if d not in self.drawn:
            rng = np.random.default_rng(self.seed)
            self.drawn[d] = orthogonal_gaussian(self.features, d, rng).astype(np.float32)
        return self.drawn[d]

    def feature_map(self, x, *, scale=None, stabilize=None) -> np.ndarray:
        """φ(x) = exp(ω·x' − ‖x'‖²/2 − c)/√r of x (..., d), x' = x·scale^½ (scale = 1/√d by
        default). c = 0 for stabilize=None (the unbiased estimate), the max per row for 'rows'
        (queries: cancels in the ratio), the max over each head's rows for 'head' (keys)."""
        x = np.asarray(x)
        d = x.shape[-1]
        scale = 1.0 / math.sqrt(d) if scale is None else scale
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        if stabilize not in (None, "rows", "head"):
            raise ValueError(f"stabilize must be None, 'rows' or 'head'; got {stabilize!r}")
        xs = x.astype(dtype) * dtype.type(math.sqrt(scale))
        with np.errstate(over="ignore", invalid="ignore"):   # overflow → NaN → a clear error
            logits = xs @ self.omega(d).T.astype(dtype)
            logits -= 0.5 * np.einsum("...i,...i->...", xs, xs)[..., None]
            if stabilize == "rows":
                logits -= logits.max(axis=-1, keepdims=True)
            elif stabilize == "head":
                logits -= logits.max(axis=(-2, -1), keepdims=True)
            np.exp(logits, out=logits)
        logits *= dtype.type(1 / math.sqrt(logits.shape[-1]))
        return logits

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, scale, out_shape = _inputs(q, k, v, scale)
        dtype = _work_dtype()
        phi_q = self.feature_map(q4.astype(dtype, copy=False), scale=scale, stabilize="rows")
        phi_k = self.feature_map(k4.astype(dtype, copy=False), scale=scale, stabilize="head")
        out = feature_attention(phi_q, phi_k, v4, causal=causal, eps=self.eps,
                                what=self.spec.name, inputs={"q": q4, "k": k4, "v": v4})
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# cosformer-attention

def cosformer_features(x, positions, horizon):
    """[relu(x)·cos(π/2·p/M), relu(x)·sin(π/2·p/M)] for rows at positions p (M = horizon)."""
    angle = (np.pi / 2 / horizon) * np.asarray(positions, dtype=np.float64)
    relu = np.maximum(x, 0)
    d = x.shape[-1]
    out = np.empty(x.shape[:-1] + (2 * d,), dtype=x.dtype)
    np.multiply(relu, np.cos(angle).astype(x.dtype)[:, None], out=out[..., :d])
    np.multiply(relu, np.sin(angle).astype(x.dtype)[:, None], out=out[..., d:])
    return out


class CosformerAttention(_LinearMechanism):
    """Weights relu(q_i)·relu(k_j)·cos(π/2·(p_i − j)/M), M = max(n, m), query i at key position
    p_i = i + m − n (bottom-right, as causal); cos(a − b) = cos a·cos b + sin a·sin b makes it
    linear attention with the 2d features [relu(x)·cos, relu(x)·sin]."""

    spec = MechanismSpec(
        name="cosformer-attention", category="linear", complexity="O(n)",
        use_case="Efficient softmax",
        paper="Qin et al. 2022, cosFormer: Rethinking Softmax in Attention (arXiv:2202.08791)",
        compiled=True,
        notes="its cos and sin halves concatenated into one 2d-wide feature map: one run of "
              "the linear-attention kernel; no scale (relu replaces softmax)")

    def __init__(self, *, eps=EPS):
        self.eps = positive_float("eps", eps)

    def _forward(self, q, k, v, *, mask=None, causal=False):
        q4, k4, v4, _, out_shape = _inputs(q, k, v)
        n, m = q4.shape[2], k4.shape[2]
        dtype = _work_dtype()
        horizon = max(n, m)
        phi_q = cosformer_features(q4.astype(dtype, copy=False), np.arange(n) + (m - n), horizon)
        phi_k = cosformer_features(k4.astype(dtype, copy=False), np.arange(m), horizon)
        out = feature_attention(phi_q, phi_k, v4, causal=causal, eps=self.eps,
                                what=self.spec.name, inputs={"q": q4, "k": k4, "v": v4})
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# rfa-attention

class RandomFeatureAttention(_LinearMechanism):
    """φ(x) = [sin(ω·x̂/σ), cos(ω·x̂/σ)]/√D, x̂ = x/‖x‖, ω ~ N(0, I): φ(q̂)·φ(k̂) ≈
    exp(−‖q̂ − k̂‖²/(2σ²)) ∝ exp(q̂·k̂/σ²), then linear attention. Gated (causal only):
    S_t = g_t·S_{t−1} + (1 − g_t)·φ(k_t) v_tᵀ (z alike), g_t = sigmoid(w_g·k_t + b_g)."""

    spec = MechanismSpec(
        name="rfa-attention", category="linear", complexity="O(n)",
        use_case="Memory efficient",
        paper="Peng et al. 2021, Random Feature Attention (arXiv:2103.02143)",
        compiled=True,
        notes="D = 64 random Fourier features (2D-wide feature map) drawn per d from the seed; "
              "σ is the temperature (a learned value may be passed); the gated recurrence runs "
              "in the same causal kernel")

    def __init__(self, *, features=64, sigma=1.0, gated=False, seed=0, omega=None,
                 gate_weight=None, gate_bias=None, eps=EPS):
        self.seed = seed
        self.eps = positive_float("eps", eps)
        self.sigma = positive_float("sigma", sigma)
        self.gated = bool(gated)
        self.projection = None if omega is None else _weight("omega", omega, (2,))
        self.features = (positive_int("features", features) if omega is None
                         else self.projection.shape[0])
        self.gate_weight = None if gate_weight is None else _weight("gate_weight", gate_weight,
                                                                   (1, 2))
        if gate_bias is not None:
            gate_bias = np.atleast_1d(gate_bias)
            gate_bias = gate_bias.astype(np.float32) if gate_bias.dtype.kind in "iu" else gate_bias
        self.gate_bias = None if gate_bias is None else _weight("gate_bias", gate_bias, (1,))
        self.drawn = {}                    # d → ω (D, d); (h_kv, d) → gate (w_g, b_g)

    def omega(self, d: int) -> np.ndarray:
        """The (D, d) Gaussian directions used for head dimension d (given, or drawn)."""
        if self.projection is not None:
            if self.projection.shape[1] != d:
                raise ValueError(f"omega must have shape (features, {d}) for d = {d}; got "
                                 f"{self.projection.shape}")
            return self.projection
        if d not in self.drawn:
            rng = np.random.default_rng(self.seed)
            self.drawn[d] = rng.standard_normal((self.features, d)).astype(np.float32)
        return self.drawn[d]

    def gate(self, kv_heads: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(w_g (h_kv, d), b_g (h_kv,)) of the gated form: given (broadcast over heads), or drawn
        w_g ~ N(0, 1/d), b_g ~ N(0, 1) from an independent stream of the seed."""
        if (kv_heads, d) not in self.drawn:
            rng = np.random.default_rng([self.seed, 1])
            self.drawn[(kv_heads, d)] = (
                (rng.standard_normal((kv_heads, d)) / math.sqrt(d)).astype(np.float32),
                rng.standard_normal(kv_heads).astype(np.float32))
        weight, bias = self.drawn[(kv_heads, d)]
        if self.gate_weight is not None:
            weight = self.gate_weight
            if weight.shape not in ((d,), (1, d), (kv_heads, d)):
                raise ValueError(f"gate_weight must have shape ({d},) or ({kv_heads}, {d}); got "
                                 f"{weight.shape}")
            weight = np.broadcast_to(weight.reshape(-1, d), (kv_heads, d))
        if self.gate_bias is not None:
            if self.gate_bias.shape not in ((1,), (kv_heads,)):
                raise ValueError(f"gate_bias must be a number or have shape ({kv_heads},); got "
                                 f"{self.gate_bias.shape}")
            bias = np.broadcast_to(self.gate_bias, (kv_heads,))
        return weight, bias

    def feature_map(self, x) -> np.ndarray:
        """φ(x) = [sin(ω·x̂/σ), cos(ω·x̂/σ)]/√D of x (..., d), x̂ = x/‖x‖ (0 stays 0)."""
        x = np.asarray(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        x = x.astype(dtype, copy=False)
        norm = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
        unit = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
        angles = unit @ (self.omega(x.shape[-1]).T.astype(dtype) / dtype.type(self.sigma))
        out = np.empty(angles.shape[:-1] + (2 * self.features,), dtype=dtype)
        np.sin(angles, out=out[..., :self.features])
        np.cos(angles, out=out[..., self.features:])
        out *= dtype.type(1 / math.sqrt(self.features))
        return out

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        if self.gated and not causal:
            reasons.append("gated rfa-attention is causal only (its gate is a recurrence); "
                           "pass causal=True or use gated=False")
        return reasons

    def _forward(self, q, k, v, *, mask=None, causal=False):
        q4, k4, v4, _, out_shape = _inputs(q, k, v)
        dtype = _work_dtype()
        gate_logits = None
        if self.gated:
            weight, bias = self.gate(k4.shape[1], k4.shape[3])
            gate_logits = np.einsum("bgmd,gd->bgm", k4.astype(np.float64), weight) + bias[:, None]
        out = feature_attention(self.feature_map(q4.astype(dtype, copy=False)),
                                self.feature_map(k4.astype(dtype, copy=False)), v4, causal=causal,
                                gate_logits=gate_logits, eps=self.eps, what=self.spec.name,
                                inputs={"q": q4, "k": k4, "v": v4})
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# nystrom-attention

def segment_means(x: np.ndarray, parts: int) -> np.ndarray:
    """Means of ``parts`` contiguous segments of the rows of x (..., n, d) (sizes ⌊n/parts⌋ or
    ⌈n/parts⌉), float64."""
    n = x.shape[-2]
    starts = (np.arange(parts) * n) // parts
    sizes = np.diff(np.append(starts, n))
    return np.add.reduceat(np.asarray(x, dtype=np.float64), starts, axis=-2) / sizes[:, None]


def iterative_pinv(a: np.ndarray, iterations: int = 6) -> np.ndarray:
    """The Nyströmformer's Moore–Penrose iteration on (..., l, l): Z₀ = Aᵀ/(‖A‖₁·‖A‖∞),
    Z ← ¼·Z·(13I − AZ·(15I − AZ·(7I − AZ)))."""
    eye = np.eye(a.shape[-1])
    norm_1 = np.abs(a).sum(axis=-2).max(axis=-1)
    norm_inf = np.abs(a).sum(axis=-1).max(axis=-1)
    z = np.swapaxes(a, -1, -2) / (norm_1 * norm_inf)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(_LinearMechanism):
    """Landmarks q̃, k̃ = segment means of q and k (l segments); F = softmax(q·k̃ᵀ·s),
    A = softmax(q̃·k̃ᵀ·s), B = softmax(q̃·kᵀ·s); out = F·A⁺·(B·v), A⁺ by the paper's
    6-step Moore–Penrose iteration or by SVD (pinv='exact'). l = min(landmarks, n, m)."""

    spec = MechanismSpec(
        name="nystrom-attention", category="linear", complexity="O(n)",
        use_case="Matrix approximation",
        paper="Xiong et al. 2021, Nyströmformer: A Nyström-Based Algorithm for Approximating "
              "Self-Attention (arXiv:2102.03902)",
        compiled=True,
        notes="B·v and F·(A⁺B·v) are exact attention calls (the compiled FlashAttention kernel: "
              "q̃ over k, q over k̃); A⁺ (l × l, l = 64 by default) in numpy float64")

    supports_causal = False
    PINV = ("iterative", "exact")

    def __init__(self, *, landmarks=64, pinv="iterative", pinv_iterations=6):
        self.landmarks = positive_int("landmarks", landmarks)
        if pinv not in self.PINV:
            raise ValueError(f"pinv must be one of {', '.join(self.PINV)}; got {pinv!r}")
        self.pinv = pinv
        self.pinv_iterations = positive_int("pinv_iterations", pinv_iterations)

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, scale, out_shape = _inputs(q, k, v, scale)
        heads, n, m = q4.shape[1], q4.shape[2], k4.shape[2]
        count = min(self.landmarks, n, m)
        q_marks = segment_means(q4, count)
        k_marks = reference.expand_kv_heads(segment_means(k4, count), heads)
        kernel = reference.attention_weights(q_marks, k_marks, scale=scale)    # A (b, h, l, l)
        if self.pinv == "exact":
            pinv = np.linalg.pinv(kernel, rcond=PINV_RCOND)
        else:
            pinv = iterative_pinv(kernel, self.pinv_iterations)
        landmark_values = attention(q_marks.astype(np.float32), k4, v4, scale=scale)   # B·v
        mixed = (pinv @ landmark_values).astype(np.float32)                   # A⁺·B·v
        out = attention(q4, k_marks.astype(np.float32), mixed, scale=scale)    # F·(A⁺·B·v)
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# linformer-attention

class LinformerAttention(_LinearMechanism):
    """Keys and values projected along the sequence axis by E, F (k_proj × m), then exact
    attention over the k_proj projected rows: out = softmax(q·(E·k)ᵀ·s)·(F·v)."""

    spec = MechanismSpec(
        name="linformer-attention", category="linear", complexity="O(n)",
        use_case="Low-rank projection",
        paper="Wang et al. 2020, Linformer: Self-Attention with Linear Complexity "
              "(arXiv:2006.04768)",
        compiled=True,
        notes="E, F shared by every head (the paper's headwise sharing), drawn N(0, 1/k_proj) "
              "per m from the seed (k_proj = 256) unless given; E·k, F·v by numpy sgemm, then "
              "the compiled FlashAttention kernel")

    supports_causal = False

    def __init__(self, *, k_proj=256, seed=0, E=None, F=None):
        self.seed = seed
        self.E = None if E is None else _weight("E", E, (2,))
        self.F = None if F is None else _weight("F", F, (2,))
        given = self.E if self.E is not None else self.F
        self.k_proj = positive_int("k_proj", k_proj) if given is None else given.shape[0]
        self.drawn = {}                    # m → (E, F) drawn from the seed

    def projections(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(E, F), each (k_proj, m): the given ones, the others drawn N(0, 1/k_proj) (cached)."""
        if m not in self.drawn:
            rng = np.random.default_rng(self.seed)
            shape = (self.k_proj, m)
            std = 1.0 / math.sqrt(self.k_proj)
            self.drawn[m] = ((rng.standard_normal(shape) * std).astype(np.float32),
                             (rng.standard_normal(shape) * std).astype(np.float32))
        drawn_e, drawn_f = self.drawn[m]
        e = drawn_e if self.E is None else self.E
        f = drawn_f if self.F is None else self.F
        for name, p in (("E", e), ("F", f)):
            if p.shape != (self.k_proj, m):
                raise ValueError(f"{name} must have shape (k_proj, m) = ({self.k_proj}, {m}) for "
                                 f"{m} keys; got {p.shape}")
        return e, f

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, scale, out_shape = _inputs(q, k, v, scale)
        e, f = self.projections(k4.shape[2])
        dtype = _work_dtype()
        keys = np.matmul(e.astype(dtype, copy=False), k4.astype(dtype, copy=False))
        values = np.matmul(f.astype(dtype, copy=False), v4.astype(dtype, copy=False))
        return attention(q4, keys, values, scale=scale).reshape(out_shape)


MECHANISMS = (LinearAttention, PerformerAttention, CosformerAttention, RandomFeatureAttention,
              NystromAttention, LinformerAttention)
