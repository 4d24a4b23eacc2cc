"""The multi-head family: standard / rotary / ALiBi MHA, GQA, MQA, differential and mixture
attention, against torch, hand-written float64 formulas and their defining properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rerank import backend, reference, registry
from rerank.mechanisms import multihead
from rerank.mechanisms.multihead import (
    AlibiMHA, DifferentialAttention, GroupedQueryAttention, MixtureAttention, MultiQueryAttention,
    RotaryMHA, StandardMHA)

from conftest import assert_close, f32

torch.set_num_threads(1)

TABLE = [  # ADR-029: name, complexity, use case
    ("standard-mha", "O(n²)", "General purpose"),
    ("rotary-mha", "O(n²)", "Long sequences (RoPE)"),
    ("alibi-mha", "O(n²)", "Extrapolation"),
    ("grouped-query-attention", "O(n²)", "Memory efficient (GQA)"),
    ("multi-query-attention", "O(n²)", "Fast inference (MQA)"),
    ("differential-attention", "O(n²)", "Change detection"),
    ("mixture-attention", "O(n²)", "Hybrid patterns"),
]
NAMES = [row[0] for row in TABLE]

#: q, k, v shapes: one head (2-D), n ≠ m with dv ≠ d, GQA kv heads, batch with m > n.
SHAPES = [
    ((9, 8), (9, 8), (9, 8)),
    ((4, 7, 8), (4, 11, 8), (4, 11, 6)),
    ((2, 4, 13, 8), (2, 2, 13, 8), (2, 2, 13, 8)),
    ((2, 4, 5, 8), (2, 4, 17, 8), (2, 4, 17, 12)),
]
SHAPE_IDS = ["2d", "3d-n!=m", "4d-gqa", "4d-m>n"]
TOL = 1e-4   # float32 projections and kernels against float64 oracles


# --------------------------------------------------------------------------------------------
# float64 oracles, written independently of the implementation

def as4(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def np_softmax(x):
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isneginf(top), 0.0, top)
    e = np.exp(x - top)
    s = e.sum(axis=-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def keep_mask(n, m, causal, mask=None):
    """(…, n, m) additive mask: the user's mask plus the bottom-right causal mask."""
    add = np.zeros((n, m))
    if causal:
        add = np.where(np.arange(m)[None, :] <= np.arange(n)[:, None] + m - n, 0.0, -np.inf)
    if mask is not None:
        add = add + (np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask)
    return add


def per_head(w, heads):
    """A (a, a) or (heads, a, a) weight as (heads, a, a) float64 (identity when None)."""
    w = np.asarray(w, dtype=np.float64)
    return np.broadcast_to(w, (heads,) + w.shape[-2:])


def project(x4, w):
    if w is None:
        return x4
    w = per_head(w, x4.shape[1])
    return np.stack([x4[:, h] @ w[h] for h in range(x4.shape[1])], axis=1)


def project_out(o4, w_o):
    """concat_h O_h @ W_o split back into heads (loops, no reshape tricks)."""
    if w_o is None:
        return o4
    dv, h = o4.shape[-1], o4.shape[1]
    mixed = np.concatenate([o4[:, j] for j in range(h)], axis=-1) @ np.asarray(w_o, np.float64)
    return np.stack([mixed[..., j * dv:(j + 1) * dv] for j in range(h)], axis=1)


def attend(q4, k4, v4, *, add=None, scale=None):
    """softmax(q·kᵀ·scale + add)·v with kv heads repeated for the query heads."""
    r = q4.shape[1] // k4.shape[1]
    k4, v4 = np.repeat(k4, r, axis=1), np.repeat(v4, r, axis=1)
    scale = 1 / math.sqrt(q4.shape[-1]) if scale is None else scale
    logits = q4 @ np.swapaxes(k4, -1, -2) * scale
    if add is not None:
        logits = logits + add
    return np_softmax(logits) @ v4


def mha_oracle(q, k, v, w_q=None, w_k=None, w_v=None, w_o=None, *, mask=None, causal=False):
    q4, k4, v4 = as4(q), as4(k), as4(v)
    add = keep_mask(q4.shape[2], k4.shape[2], causal, mask)
    out = attend(project(q4, w_q), project(k4, w_k), project(v4, w_v), add=add)
    return project_out(out, w_o).reshape(np.shape(q)[:-1] + (np.shape(v)[-1],))


def rope_by_hand(x4, positions, base=10000.0):
    """RoPE as complex rotation: (x_2i + i·x_2i+1)·e^{i·p·base^(−2i/d)}."""
    d = x4.shape[-1]
    z = x4[..., 0::2] + 1j * x4[..., 1::2]
    theta = np.asarray(positions, np.float64)[:, None] * base ** (-np.arange(0, d, 2) / d)
    z = z * np.exp(1j * theta)
    out = np.empty_like(x4)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def near_identity(rng, *shape, noise=0.3):
    eye = np.eye(shape[-1])
    return (eye + noise * rng.standard_normal(shape)).astype(np.float32)


def mha_weights(rng, q_shape, k_shape, v_shape):
    h = q_shape[-3] if len(q_shape) >= 3 else 1
    h_kv = k_shape[-3] if len(k_shape) >= 3 else 1
    d, dv = q_shape[-1], v_shape[-1]
    return dict(w_q=near_identity(rng, h, d, d), w_k=near_identity(rng, h_kv, d, d),
                w_v=near_identity(rng, h_kv, dv, dv), w_o=near_identity(rng, h * dv, h * dv))


def inputs(rng, shapes, scale=1.0):
    return tuple(f32(rng, *s, scale=scale) for s in shapes)


def heads_of(shape):
    return shape[-3] if len(shape) >= 3 else 1


def supported(name, shapes):
    mech = registry.get(name)
    q, k, v = (np.zeros(s, np.float32) for s in shapes)
    return not mech.not_supported_reasons(q, k, v)


def differs(out, exact, at_least=0.05):
    """The mechanism's output is clearly not plain attention."""
    gap = np.abs(np.asarray(out, np.float64) - np.asarray(exact, np.float64)).max()
    assert gap > at_least, f"output is (almost) exact attention: max gap {gap:.3g}"


# --------------------------------------------------------------------------------------------
# registry, specs, contract

def test_registered_in_table_order_with_specs():
    specs = registry.by_category("multi-head")
    assert [s.name for s in specs] == NAMES
    assert [c.spec.name for c in multihead.MECHANISMS] == NAMES
    for spec, (name, complexity, use_case) in zip(specs, TABLE):
        assert (spec.complexity, spec.use_case) == (complexity, use_case)
        assert spec.compiled is True
        assert "arXiv:" in spec.paper and spec.notes
        assert type(registry.get(name)).__doc__.strip()


class KernelSpy:
    """Stands in for the extension module and records which kernels are used."""

    def __init__(self, real):
        self.real, self.used = real, []

    def __getattr__(self, name):
        self.used.append(name)
        return getattr(self.real, name)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_forward_runs_the_compiled_kernel(compiled, monkeypatch, rng, name):
    real = backend.compiled_kernels()
    spy = KernelSpy(real)
    monkeypatch.setattr(backend, "compiled_kernels", lambda: spy)
    q, k, v = inputs(rng, SHAPES[2])
    mech = registry.get(name)
    out = mech.forward(q, k, v, causal=True)
    assert "attention" in spy.used
    assert mech.backend == "compiled"
    monkeypatch.undo()
    with backend.use_backend("numpy"):
        assert_close(out, registry.get(name).forward(q, k, v, causal=True), TOL,
                     what=f"{name} compiled vs numpy")


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_finite_deterministic(backend_name, rng, name, shapes):
    if not supported(name, shapes):
        pytest.skip(f"{name} documents that it cannot serve {shapes[0]}")
    q, k, v = inputs(rng, shapes)
    mask = rng.random((shapes[0][-2], shapes[1][-2])) < 0.8
    out = registry.get(name).forward(q, k, v, mask=mask, causal=True)
    assert out.shape == shapes[0][:-1] + (shapes[2][-1],)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    again = registry.get(name).forward(q, k, v, mask=mask, causal=True)
    np.testing.assert_array_equal(out, again)
    # float64 and non-contiguous inputs are converted
    q64 = np.asfortranarray(q.astype(np.float64))
    assert_close(registry.get(name).forward(q64, k, v, mask=mask, causal=True), out, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(rng, name):
    mech = registry.get(name)
    q, k, v = inputs(rng, SHAPES[1])
    with pytest.raises(TypeError, match="q must be a floating-point"):
        mech.forward(q.astype(np.int32), k, v)
    bad = k.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="k contains NaN"):
        mech.forward(q, bad, v)
    with pytest.raises(ValueError, match="k's last dimension"):
        mech.forward(q, k[..., :6], v)
    with pytest.raises(ValueError, match="q must be"):
        mech.forward(q[0, 0], k, v)
    with pytest.raises(ValueError, match="mask"):
        mech.forward(q, k, v, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="scale"):
        mech.forward(q, k, v, scale=float("inf"))
    with pytest.raises(TypeError):
        mech.forward(q, k, v, no_such_parameter=1)


@pytest.mark.parametrize("cls", [StandardMHA, RotaryMHA, AlibiMHA, GroupedQueryAttention,
                                 DifferentialAttention, MixtureAttention])
def test_bad_projection_weights_raise(rng, cls):
    q, k, v = inputs(rng, SHAPES[1])                       # h = 4, d = 8, dv = 6
    with pytest.raises(ValueError, match="w_q must be square"):
        cls(w_q=np.ones((4, 8, 6), np.float32))
    with pytest.raises(ValueError, match="w_k contains NaN"):
        cls(w_k=np.full((8, 8), np.nan))
    with pytest.raises(TypeError, match="w_v must be a floating-point"):
        cls(w_v=np.eye(6, dtype=np.int64))
    with pytest.raises(ValueError, match=r"w_q must have shape \(8, 8\) or \(4, 8, 8\)"):
        cls(w_q=near_identity(rng, 3, 8, 8)).forward(q, k, v)
    with pytest.raises(ValueError, match=r"w_v must have shape"):
        cls(w_v=near_identity(rng, 8, 8)).forward(q, k, v)
    with pytest.raises(ValueError, match=r"w_o must have shape \(24, 24\)"):
        cls(w_o=near_identity(rng, 6, 6)).forward(q, k, v)


def test_not_supported_reasons_exactly_where_documented(rng):
    even = inputs(rng, SHAPES[1])
    odd = inputs(rng, ((4, 7, 7), (4, 11, 7), (4, 11, 6)))
    one_head = inputs(rng, ((1, 7, 8), (1, 11, 8), (1, 11, 8)))
    two_d = inputs(rng, SHAPES[0])
    mask = np.ones((7, 11), bool)
    for name in NAMES:
        mech = registry.get(name)
        assert mech.not_supported_reasons(*even, mask=mask, causal=True) == [], name
        assert bool(mech.not_supported_reasons(*odd)) == (name in ("rotary-mha",
                                                                    "differential-attention"))
        for x in (one_head, two_d):
            assert bool(mech.not_supported_reasons(*x)) == (name == "mixture-attention")
    with pytest.raises(ValueError, match="even"):
        registry.get("rotary-mha").forward(*odd)
    with pytest.raises(ValueError, match="even"):
        registry.get("differential-attention").forward(*odd)
    with pytest.raises(ValueError, match="at least 2 heads"):
        registry.get("mixture-attention").forward(*two_d)


# --------------------------------------------------------------------------------------------
# standard-mha

@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
def test_standard_mha_identity_is_exact_attention(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    mask = rng.random((shapes[0][-2], shapes[1][-2])) < 0.8
    for causal in (False, True):
        assert_close(StandardMHA().forward(q, k, v, mask=mask, causal=causal),
                     reference.attention(q, k, v, mask=mask, causal=causal))
    assert_close(StandardMHA().forward(q, k, v, scale=0.3), reference.attention(q, k, v, scale=0.3))


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
def test_standard_mha_projections_against_oracle(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    w = mha_weights(rng, *shapes)
    mask = rng.standard_normal((shapes[0][-2], shapes[1][-2])).astype(np.float32)
    out = StandardMHA(**w).forward(q, k, v, mask=mask, causal=True)
    assert_close(out, mha_oracle(q, k, v, **w, mask=mask, causal=True), TOL)
    differs(out, reference.attention(q, k, v, mask=mask, causal=True))
    # one (a, a) matrix is shared by every head
    shared = dict(w_q=w["w_q"][0], w_k=w["w_k"][0], w_v=w["w_v"][0])
    assert_close(StandardMHA(**shared).forward(q, k, v),
                 mha_oracle(q, k, v, **{n: per_head(x, heads_of(s)) for (n, x), s in
                                        zip(shared.items(), shapes)}), TOL)


@pytest.mark.parametrize("b,h,n,m,d", [(1, 4, 6, 6, 8), (3, 2, 5, 9, 4)])
def test_standard_mha_matches_torch_multihead_attention(backend_name, rng, b, h, n, m, d):
    q, k, v = f32(rng, b, h, n, d), f32(rng, b, h, m, d), f32(rng, b, h, m, d)
    w = mha_weights(rng, q.shape, k.shape, v.shape)
    mask = rng.standard_normal((n, m)).astype(np.float32)
    out = StandardMHA(**w).forward(q, k, v, mask=mask)

    def tokens(x):      # (b, h, t, d) → torch's (t, b, h·d): heads concatenated per token
        return torch.from_numpy(x.transpose(2, 0, 1, 3).reshape(x.shape[2], b, h * d)
                                .astype(np.float64))

    def block_diag(wh):  # x_h @ W[h] for each head = x @ blockdiag(W[h]); torch wants Wᵀ
        return torch.block_diag(*[torch.from_numpy(wi.T.astype(np.float64)) for wi in wh])

    e = h * d
    got, _ = F.multi_head_attention_forward(
        tokens(q), tokens(k), tokens(v), embed_dim_to_check=e, num_heads=h,
        in_proj_weight=None, in_proj_bias=torch.zeros(3 * e, dtype=torch.float64),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=torch.from_numpy(w["w_o"].T.astype(np.float64)), out_proj_bias=None,
        training=False, need_weights=False, attn_mask=torch.from_numpy(mask.astype(np.float64)),
        use_separate_proj_weight=True, q_proj_weight=block_diag(w["w_q"]),
        k_proj_weight=block_diag(w["w_k"]), v_proj_weight=block_diag(w["w_v"]))
    expected = got.numpy().reshape(n, b, h, d).transpose(1, 2, 0, 3)
    assert_close(out, expected, TOL)


# --------------------------------------------------------------------------------------------
# rotary-mha

@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
def test_rotary_equals_hand_formula(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    w = mha_weights(rng, *shapes)
    q4, k4 = as4(q), as4(k)
    n, m = q4.shape[2], k4.shape[2]
    for offset, weights in ((0, {}), (5, w)):
        queries = rope_by_hand(project(q4, weights.get("w_q")), np.arange(n) + m - n + offset)
        keys = rope_by_hand(project(k4, weights.get("w_k")), np.arange(m) + offset)
        values = project(as4(v), weights.get("w_v"))
        expected = project_out(attend(queries, keys, values, add=keep_mask(n, m, True)),
                               weights.get("w_o")).reshape(q.shape[:-1] + v.shape[-1:])
        out = RotaryMHA(**weights).forward(q, k, v, causal=True, offset=offset)
        assert_close(out, expected, TOL)
        differs(out, mha_oracle(q, k, v, **weights, causal=True))


def test_rotary_is_relative_shift_invariant(backend_name, rng):
    q, k, v = f32(rng, 2, 3, 10, 16), f32(rng, 2, 3, 14, 16), f32(rng, 2, 3, 14, 16)
    mech = RotaryMHA(**mha_weights(rng, q.shape, k.shape, v.shape))
    base = mech.forward(q, k, v, causal=True)
    for shift in (1, 37, 1000):
        assert_close(mech.forward(q, k, v, causal=True, offset=shift), base, TOL)
    # the rotation frequencies matter
    differs(RotaryMHA(base=100.0).forward(q, k, v), RotaryMHA().forward(q, k, v), 1e-3)


# --------------------------------------------------------------------------------------------
# alibi-mha

def alibi_by_hand(q, k, v, slopes, causal):
    """Every logit written out: q_i·k_j/√d − s_h·|i + m − n − j|, causal keys j ≤ i + m − n."""
    q4, k4, v4 = as4(q), as4(k), as4(v)
    b, h, n, d = q4.shape
    m, r = k4.shape[2], h // k4.shape[1]
    out = np.zeros((b, h, n, v4.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits = np.full(m, -np.inf)
                for j in range(m):
                    if causal and j > i + m - n:
                        continue
                    logits[j] = (q4[bi, hi, i] @ k4[bi, hi // r, j] / math.sqrt(d)
                                 - slopes[hi] * abs(i + m - n - j))
                out[bi, hi, i] = np_softmax(logits) @ v4[bi, hi // r]
    return out.reshape(np.shape(q)[:-1] + (v4.shape[-1],))


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("causal", [True, False])
def test_alibi_equals_per_element_formula(backend_name, rng, shapes, causal):
    q, k, v = inputs(rng, shapes)
    h = heads_of(shapes[0])
    slopes = [2.0 ** (-8.0 * (i + 1) / h) for i in range(h)]     # h is a power of two here
    out = AlibiMHA().forward(q, k, v, causal=causal)
    assert_close(out, alibi_by_hand(q, k, v, slopes, causal))
    if h > 1:                                   # one head's slope 2^-8 barely moves the output
        differs(out, reference.attention(q, k, v, causal=causal))
    custom = np.linspace(0.5, 2.0, h).astype(np.float32)
    out = AlibiMHA(slopes=custom).forward(q, k, v, causal=causal)
    assert_close(out, alibi_by_hand(q, k, v, custom, causal))
    differs(out, reference.attention(q, k, v, causal=causal))


def test_alibi_matches_torch_sdpa_with_bias_mask(backend_name, rng):
    b, h, n, m, d = 2, 8, 12, 20, 16
    q, k, v = f32(rng, b, h, n, d), f32(rng, b, h, m, d), f32(rng, b, h, m, d)
    slopes = 2.0 ** (-np.arange(1, h + 1))                  # 2^(−8i/8)
    dist = np.abs(np.arange(n)[:, None] + m - n - np.arange(m)[None, :])
    bias = -slopes[:, None, None] * dist + keep_mask(n, m, True)
    t = [torch.from_numpy(x.astype(np.float64)) for x in (q, k, v)]
    expected = F.scaled_dot_product_attention(*t, attn_mask=torch.from_numpy(bias)).numpy()
    user_mask = rng.random((n, m)) < 0.7
    user_mask[:, 0] = True                                  # every causal row keeps a key
    with_mask = F.scaled_dot_product_attention(
        *t, attn_mask=torch.from_numpy(bias + keep_mask(n, m, False, user_mask))).numpy()
    assert_close(AlibiMHA().forward(q, k, v, causal=True), expected)
    assert_close(AlibiMHA().forward(q, k, v, causal=True, mask=user_mask), with_mask)


def test_alibi_rejects_wrong_slopes(rng):
    q, k, v = inputs(rng, SHAPES[1])
    with pytest.raises(ValueError, match="one entry per query head"):
        AlibiMHA(slopes=[0.5, 0.25]).forward(q, k, v)
    with pytest.raises(ValueError, match="slopes must be"):
        AlibiMHA(slopes=np.ones((2, 2)))


# --------------------------------------------------------------------------------------------
# grouped-query / multi-query attention

def test_gqa_with_groups_equal_to_heads_is_standard_mha(backend_name, rng):
    shapes = SHAPES[3]                                       # h = h_kv = 4
    q, k, v = inputs(rng, shapes)
    w = mha_weights(rng, *shapes)
    expected = StandardMHA(**w).forward(q, k, v, causal=True)
    assert_close(GroupedQueryAttention(groups=4, **w).forward(q, k, v, causal=True), expected,
                 1e-6)
    assert_close(GroupedQueryAttention(**w).forward(q, k, v, causal=True), expected, 1e-6)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gqa_matches_torch_sdpa_with_repeated_pooled_kv(backend_name, rng, groups):
    b, h, n, m, d, dv = 2, 8, 9, 13, 8, 6
    q, k, v = f32(rng, b, h, n, d), f32(rng, b, h, m, d), f32(rng, b, h, m, dv)
    pooled_k = torch.from_numpy(k.astype(np.float64)).view(b, groups, h // groups, m, d).mean(2)
    pooled_v = torch.from_numpy(v.astype(np.float64)).view(b, groups, h // groups, m, dv).mean(2)
    expected = F.scaled_dot_product_attention(
        torch.from_numpy(q.astype(np.float64)),
        pooled_k.repeat_interleave(h // groups, dim=1),
        pooled_v.repeat_interleave(h // groups, dim=1),
        attn_mask=torch.from_numpy(keep_mask(n, m, True))).numpy()
    out = GroupedQueryAttention(groups=groups).forward(q, k, v, causal=True)
    assert_close(out, expected)
    differs(out, reference.attention(q, k, v, causal=True))
    # k/v that already have g heads are used as they are
    given = GroupedQueryAttention(groups=groups).forward(
        q, pooled_k.numpy().astype(np.float32), pooled_v.numpy().astype(np.float32), causal=True)
    assert_close(given, expected)


def test_gqa_pooling_formula(rng):
    x = f32(rng, 2, 6, 5, 4)
    pooled = GroupedQueryAttention(groups=3).pool(x, heads=6)
    assert pooled.shape == (2, 3, 5, 4)
    for g in range(3):
        assert_close(pooled[:, g], (x[:, 2 * g].astype(np.float64) + x[:, 2 * g + 1]) / 2, 1e-6)
    np.testing.assert_array_equal(GroupedQueryAttention(groups=6).pool(x, heads=6), x)
    # a query-head count that is a multiple of the kv heads leaves them alone
    np.testing.assert_array_equal(GroupedQueryAttention().pool(x, heads=12), x)


def test_gqa_invalid_groups(rng):
    q, k, v = f32(rng, 6, 5, 4), f32(rng, 6, 7, 4), f32(rng, 6, 7, 4)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        GroupedQueryAttention(groups=0)
    with pytest.raises(ValueError, match=r"groups \(4\) must divide"):
        GroupedQueryAttention(groups=4).forward(q, k, v)
    with pytest.raises(ValueError, match="k and v have 3 heads"):
        GroupedQueryAttention(groups=2).forward(q, k[:3], v[:3])
    with pytest.raises(ValueError, match=r"groups \(2\) must divide the number of query heads"):
        GroupedQueryAttention(groups=2).forward(q[0], k[0], v[0])


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
def test_mqa_shares_one_key_value_head(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    out = MultiQueryAttention().forward(q, k, v, causal=True)
    k_shared = as4(k).mean(axis=1, keepdims=True)
    v_shared = as4(v).mean(axis=1, keepdims=True)
    expected = attend(as4(q), k_shared, v_shared, add=keep_mask(q.shape[-2], k.shape[-2], True))
    assert_close(out, expected.reshape(out.shape))
    assert_close(out, GroupedQueryAttention(groups=1).forward(q, k, v, causal=True), 1e-6)
    if heads_of(k.shape) > 1:
        differs(out, reference.attention(q, k, v, causal=True))
        # every query head reads the same pooled keys/values: permuting kv heads changes nothing
        perm = np.roll(np.arange(heads_of(k.shape)), 1)
        assert_close(MultiQueryAttention().forward(q, k[..., perm, :, :], v[..., perm, :, :],
                                                   causal=True), out, 1e-6)
    w = mha_weights(rng, *shapes)
    assert_close(MultiQueryAttention(**w).forward(q, k, v),
                 GroupedQueryAttention(groups=1, **w).forward(q, k, v), 1e-6)


# --------------------------------------------------------------------------------------------
# differential-attention

def rms_norm(x, gain, eps=1e-5):
    return x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps) * gain


def differential_by_hand(q, k, v, lam, *, lambda_init, gain=None, head_norm=True, w=None,
                         mask=None, causal=False):
    w = w or {}
    q4, k4, v4 = (project(as4(x), w.get(n)) for x, n in ((q, "w_q"), (k, "w_k"), (v, "w_v")))
    half = q4.shape[-1] // 2
    r = q4.shape[1] // k4.shape[1]
    k4, v4 = np.repeat(k4, r, axis=1), np.repeat(v4, r, axis=1)
    add = keep_mask(q4.shape[2], k4.shape[2], causal, mask)
    a1 = np_softmax(q4[..., :half] @ np.swapaxes(k4[..., :half], -1, -2) / math.sqrt(half) + add)
    a2 = np_softmax(q4[..., half:] @ np.swapaxes(k4[..., half:], -1, -2) / math.sqrt(half) + add)
    out = (a1 - lam * a2) @ v4
    if head_norm:
        gain = np.ones(out.shape[-1]) if gain is None else gain
        out = rms_norm(out, gain) * (1 - lambda_init)
    return project_out(out, w.get("w_o")).reshape(np.shape(q)[:-1] + (np.shape(v)[-1],))


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
def test_differential_with_lambda_zero_is_first_half_attention(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    half = q.shape[-1] // 2
    out = DifferentialAttention(lam=0.0, head_norm=False).forward(q, k, v, causal=True)
    assert_close(out, reference.attention(q[..., :half], k[..., :half], v, causal=True,
                                          scale=1 / math.sqrt(half)))


@pytest.mark.parametrize("shapes", SHAPES, ids=SHAPE_IDS)
def test_differential_default_against_hand_reference(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    mask = rng.random((shapes[0][-2], shapes[1][-2])) < 0.8
    mech = DifferentialAttention()
    out = mech.forward(q, k, v, mask=mask, causal=True)
    q1, k1, q2, k2 = mech.lambda_vectors.astype(np.float64)
    assert mech.lambda_vectors.shape == (4, q.shape[-1] // 2)
    lam = np.exp(q1 @ k1) - np.exp(q2 @ k2) + 0.2
    assert mech.lambda_value(q.shape[-1] // 2) == pytest.approx(lam)
    assert abs(lam - 0.2) > 1e-4                  # the seeded vectors matter
    assert_close(out, differential_by_hand(q, k, v, lam, lambda_init=0.2, mask=mask,
                                           causal=True), TOL)
    differs(out, reference.attention(q, k, v, mask=mask, causal=True))


def test_differential_with_weights_gain_and_lambda(backend_name, rng):
    shapes = SHAPES[2]
    q, k, v = inputs(rng, shapes)
    w = mha_weights(rng, *shapes)
    gain = (1 + 0.5 * rng.standard_normal(shapes[2][-1])).astype(np.float32)
    vectors = f32(rng, 4, 4, scale=0.5)
    mech = DifferentialAttention(lambda_vectors=vectors, lambda_init=0.5, norm_weight=gain, **w)
    q1, k1, q2, k2 = vectors.astype(np.float64)
    lam = np.exp(q1 @ k1) - np.exp(q2 @ k2) + 0.5
    expected = differential_by_hand(q, k, v, lam, lambda_init=0.5, gain=gain, w=w, causal=True)
    assert_close(mech.forward(q, k, v, causal=True), expected, TOL)
    for lam_given, norm in ((0.7, True), (0.7, False), (-0.3, False)):
        out = DifferentialAttention(lam=lam_given, head_norm=norm, **w).forward(q, k, v)
        assert_close(out, differential_by_hand(q, k, v, lam_given, lambda_init=0.2,
                                               head_norm=norm, w=w), TOL)


def test_differential_is_causal(backend_name, rng):
    q, k, v = f32(rng, 3, 6, 8), f32(rng, 3, 10, 8), f32(rng, 3, 10, 5)
    mech = DifferentialAttention(lam=0.6)
    out = mech.forward(q, k, v, causal=True)
    # query i sees keys ≤ i + 4: changing the last key changes only the last query's row
    k2, v2 = k.copy(), v.copy()
    k2[:, -1] += 3.0
    v2[:, -1] -= 2.0
    changed = mech.forward(q, k2, v2, causal=True)
    assert_close(changed[:, :-1], out[:, :-1], 1e-6)
    assert np.abs(changed[:, -1] - out[:, -1]).max() > 1e-3
    differs(out, mech.forward(q, k, v))


def test_differential_seed_and_vector_validation(rng):
    q, k, v = inputs(rng, SHAPES[1])
    a, b = DifferentialAttention(seed=0), DifferentialAttention(seed=1)
    again = DifferentialAttention(seed=0).forward(q, k, v)
    np.testing.assert_array_equal(a.forward(q, k, v), again)
    assert not np.array_equal(a.lambda_vectors, b.vectors(4))
    assert multihead.LAMBDA_INIT == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"lambda_vectors must have shape \(4, d/2\)"):
        DifferentialAttention(lambda_vectors=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"lambda_vectors must have shape \(4, 4\)"):
        DifferentialAttention(lambda_vectors=np.zeros((4, 3))).forward(q, k, v)
    with pytest.raises(ValueError, match=r"norm_weight must have shape \(6,\)"):
        DifferentialAttention(norm_weight=np.ones(8)).forward(q, k, v)
    with pytest.raises(ValueError, match="lam must be a finite number"):
        DifferentialAttention(lam=float("nan"))
    with pytest.raises(ValueError, match="seed"):
        DifferentialAttention(seed=-1)


# --------------------------------------------------------------------------------------------
# mixture-attention

def head_outputs(q, k, v, w=None, *, causal=False):
    w = w or {}
    q4, k4, v4 = (project(as4(x), w.get(n)) for x, n in ((q, "w_q"), (k, "w_k"), (v, "w_v")))
    return attend(q4, k4, v4, add=keep_mask(q4.shape[2], k4.shape[2], causal))


def mixture_by_hand(q, k, v, w_gate, top_k=None, w=None, causal=False):
    heads = head_outputs(q, k, v, w, causal=causal)               # (b, h, n, dv)
    q4 = as4(q)
    b, h, n, _ = q4.shape
    out = np.zeros_like(heads)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits = q4[bi, hi, i] @ per_head(w_gate, h)[hi]
                if top_k is not None:
                    keep = np.argsort(-logits, kind="stable")[:top_k]
                    logits = np.where(np.isin(np.arange(h), keep), logits, -np.inf)
                pi = np_softmax(logits)
                out[bi, hi, i] = sum(pi[j] * heads[bi, j, i] for j in range(h))
    return project_out(out, (w or {}).get("w_o")).reshape(np.shape(q)[:-1] + (np.shape(v)[-1],))


@pytest.mark.parametrize("shapes", SHAPES[1:], ids=SHAPE_IDS[1:])
@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_mixture_against_hand_reference(backend_name, rng, shapes, top_k):
    q, k, v = inputs(rng, shapes)
    mech = MixtureAttention(top_k=top_k)
    out = mech.forward(q, k, v, causal=True)
    h, d = heads_of(shapes[0]), shapes[0][-1]
    assert mech.w_gate.shape == (h, d, h)
    assert mech.w_gate.std() > 0.1
    assert_close(out, mixture_by_hand(q, k, v, mech.w_gate, top_k, causal=True), TOL)
    differs(out, reference.attention(q, k, v, causal=True))


def test_mixture_with_projections(backend_name, rng):
    shapes = SHAPES[2]
    q, k, v = inputs(rng, shapes)
    w = mha_weights(rng, *shapes)
    gate = f32(rng, 8, 4)
    out = MixtureAttention(w_gate=gate, top_k=3, **w).forward(q, k, v)
    assert_close(out, mixture_by_hand(q, k, v, gate, 3, w), TOL)


def test_mixture_uniform_gate_is_mean_of_heads(backend_name, rng):
    q, k, v = f32(rng, 2, 4, 7, 8), f32(rng, 2, 2, 9, 8), f32(rng, 2, 2, 9, 6)
    out = MixtureAttention(w_gate=np.zeros((8, 4))).forward(q, k, v, causal=True)
    mean = reference.attention(q, k, v, causal=True).astype(np.float64).mean(axis=1)
    for h in range(4):
        assert_close(out[:, h], mean)


@pytest.mark.parametrize("top_k", [None, 1])
def test_mixture_gate_on_one_head_is_that_heads_attention(backend_name, rng, top_k):
    q, k, v = f32(rng, 2, 4, 7, 8), f32(rng, 2, 4, 9, 8), f32(rng, 2, 4, 9, 6)
    q[..., 0] = np.abs(q[..., 0]) + 1.0                     # logit of head 2 = 1000·q_0 ≥ 1000
    gate = np.zeros((4, 8, 4), np.float32)
    gate[:, 0, 2] = 1000.0
    out = MixtureAttention(w_gate=gate, top_k=top_k).forward(q, k, v)
    head2 = reference.attention(q[:, 2], k[:, 2], v[:, 2])
    for h in range(4):
        assert_close(out[:, h], head2)


def test_mixture_validation_and_seed(rng):
    q, k, v = inputs(rng, SHAPES[1])
    with pytest.raises(ValueError, match=r"top_k \(5\) must not exceed"):
        MixtureAttention(top_k=5).forward(q, k, v)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        MixtureAttention(top_k=0)
    with pytest.raises(ValueError, match=r"w_gate must have shape \(8, 4\) or \(4, 8, 4\)"):
        MixtureAttention(w_gate=np.zeros((8, 3))).forward(q, k, v)
    a = MixtureAttention(seed=3)
    out = a.forward(q, k, v)
    np.testing.assert_array_equal(out, MixtureAttention(seed=3).forward(q, k, v))
    assert not np.allclose(out, MixtureAttention(seed=4).forward(q, k, v))
