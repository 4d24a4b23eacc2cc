"""The self-attention family: causal, bidirectional, relative-position (T5 and Shaw), disentangled
(DeBERTa), talking-heads and synthesizer attention.

Each mechanism is checked against an independent oracle (torch, or a loop written straight from its
paper's equations), on every input rank, n ≠ m (queries aligned to the end of the keys) and GQA,
on both backends where its forward runs compiled code; each has a case where exact attention gives
a clearly different answer, so returning plain attention fails.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rerank import backend, reference, registry
from rerank.mechanisms.self_attention import (
    BidirectionalSelfAttention, CausalSelfAttention, DisentangledAttention,
    RelativePositionAttention, SynthesizerAttention, TalkingHeadsAttention)

from conftest import assert_close, f32

torch.set_num_threads(1)

#: Loops in float64 against float32 kernels with a float32 bias.
TOL = 2e-5

# (q shape, k shape, v shape)
SHAPES = [
    ((7, 8), (7, 8), (7, 8)),                           # (n, d)
    ((1, 5), (1, 5), (1, 3)),                           # n = m = 1
    ((3, 9, 8), (3, 9, 8), (3, 9, 5)),                  # (h, n, d), dv ≠ d
    ((4, 5, 6), (2, 12, 6), (2, 12, 6)),                # GQA, n < m, 3-D
    ((2, 4, 6, 8), (2, 2, 11, 8), (2, 2, 11, 7)),       # (b, h, n, d), GQA, n < m
    ((2, 2, 11, 4), (2, 1, 6, 4), (2, 1, 6, 3)),        # MQA, n > m
]
SQUARE = [s for s in SHAPES if s[0][-2] == s[1][-2]]


def shape_id(s):
    return "q{}-k{}-v{}".format(*("x".join(map(str, x)) for x in s))


def make(rng, shapes, scale=1.0):
    return tuple(f32(rng, *s, scale=scale) for s in shapes)


def some_mask(rng, n, m):
    """(n, m) boolean, True = keep, with at least one key per row."""
    keep = rng.random((n, m)) < 0.75
    keep[np.arange(n), rng.integers(0, m, n)] = True
    return keep


def keep_matrix(n, m, mask, causal):
    keep = np.ones((n, m), bool) if mask is None else np.asarray(mask, bool).copy()
    if causal:
        keep &= np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
    return keep


def softmax_rows(logits, keep):
    """Row softmax over the kept entries; a row with nothing kept is zeros."""
    out = np.zeros_like(logits)
    for i in range(logits.shape[0]):
        if keep[i].any():
            row = np.where(keep[i], logits[i], -np.inf)
            e = np.exp(row - row[keep[i]].max())
            out[i] = e / e.sum()
    return out


def per_head(fn, q, k, v):
    """fn(q_bh (n, d), k (m, d), v (m, dv), head) → (n, dv) for every batch item and query head,
    with GQA's key/value head h // (h / h_kv); float64 out in q's shape with v's last dim."""
    q4, k4, v4 = (x.reshape((1,) * (4 - x.ndim) + x.shape).astype(np.float64) for x in (q, k, v))
    b, h = q4.shape[:2]
    group = h // k4.shape[1]
    out = np.zeros(q4.shape[:3] + (v4.shape[-1],))
    for bi in range(b):
        for hi in range(h):
            out[bi, hi] = fn(q4[bi, hi], k4[bi, hi // group], v4[bi, hi // group], hi)
    return out.reshape(q.shape[:-1] + (v.shape[-1],))


def torch_sdpa(q, k, v, *, attn_mask=None, is_causal=False):
    """torch's SDPA in float64, k/v heads repeated for GQA as torch's enable_gqa does."""
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        k, v = (np.repeat(x, q.shape[-3] // x.shape[-3], axis=-3) for x in (k, v))
    t = [torch.from_numpy(x.astype(np.float64)) for x in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*t, attn_mask=attn_mask,
                                                           is_causal=is_causal)
    return out.numpy()


def differs(a, b, at_least=0.05):
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() > at_least


# --------------------------------------------------------------------------------------------
# specs and registry

TABLE = {  # ADR-029: name → (complexity, use case, compiled)
    "causal-self-attention": ("O(n²)", "Autoregressive", True),
    "bidirectional-self-attention": ("O(n²)", "Understanding", True),
    "relative-position-attention": ("O(n²)", "Sequence modeling", True),
    "disentangled-attention": ("O(n²)", "NLU (DeBERTa)", True),
    "talking-heads-attention": ("O(n²)", "Complex reasoning", False),
    "synthesizer-attention": ("O(n)", "Fast inference", True),
}


def test_registry_lists_the_family_in_order():
    assert [s.name for s in registry.by_category("self-attention")] == list(TABLE)
    for name, (complexity, use_case, compiled) in TABLE.items():
        spec = registry.spec(name)
        assert (spec.complexity, spec.use_case, spec.compiled) == (complexity, use_case, compiled)
        assert "arXiv:" in spec.paper or "20" in spec.paper
        mech = registry.get(name)
        assert mech.__doc__ and name in repr(mech)


@pytest.mark.parametrize("name", list(TABLE))
def test_compiled_flag_is_honest(monkeypatch, rng, name):
    """A mechanism marked compiled asks for the compiled kernels during forward; one that is not
    never does."""
    if backend.extension() is None:
        pytest.skip("compiled extension not built")
    calls = []
    real = backend.compiled_kernels
    monkeypatch.setattr(backend, "compiled_kernels", lambda: calls.append(1) or real())
    q, k, v = make(rng, ((2, 6, 8), (2, 6, 8), (2, 6, 8)))
    with backend.use_backend("compiled"):
        registry.get(name).forward(q, k, v)
    assert bool(calls) == TABLE[name][2]


def test_shaw_mode_runs_in_numpy(monkeypatch, rng):
    calls = []
    monkeypatch.setattr(backend, "compiled_kernels", lambda: calls.append(1))
    mech = RelativePositionAttention(mode="shaw")
    mech.forward(*make(rng, ((6, 4), (6, 4), (6, 4))))
    assert not calls and mech.backend == "numpy"


# --------------------------------------------------------------------------------------------
# causal-self-attention

@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_causal_matches_torch(backend_name, rng, shapes):
    q, k, v = make(rng, shapes)
    n, m = q.shape[-2], k.shape[-2]
    out = CausalSelfAttention().forward(q, k, v)
    if n == m:
        expected = torch_sdpa(q, k, v, is_causal=True)
    elif n < m:  # torch's bottom-right causal bias, as when decoding with a cache
        from torch.nn.attention.bias import causal_lower_right
        expected = torch_sdpa(q, k, v, attn_mask=causal_lower_right(n, m))
    else:        # the first n − m queries see no key: zeros (torch would give NaN)
        expected = reference.attention(q, k, v, causal=True)
        assert not out[..., : n - m, :].any()
    assert_close(out, expected, TOL)
    # always causal, whatever `causal` says; and not the non-causal answer
    np.testing.assert_array_equal(CausalSelfAttention().forward(q, k, v, causal=True), out)
    if m > 1:
        assert differs(out, reference.attention(q, k, v))


@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_causal_combines_with_a_mask(backend_name, rng, shapes):
    q, k, v = make(rng, shapes)
    n, m = q.shape[-2], k.shape[-2]
    keep = some_mask(rng, n, m)
    out = CausalSelfAttention().forward(q, k, v, mask=keep)
    assert_close(out, reference.attention(q, k, v, mask=keep, causal=True), TOL)
    if n <= m:
        both = torch.from_numpy(keep_matrix(n, m, keep, causal=True))
        assert_close(out, torch_sdpa(q, k, v, attn_mask=both), TOL)


def test_causal_output_ignores_future_keys(backend_name, rng):
    q, k, v = make(rng, ((2, 10, 8), (2, 10, 8), (2, 10, 8)))
    out = CausalSelfAttention().forward(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[:, 6:], v2[:, 6:] = f32(rng, 2, 4, 8), f32(rng, 2, 4, 8)
    changed = CausalSelfAttention().forward(q, k2, v2)
    assert_close(changed[:, :6], out[:, :6], TOL)
    assert differs(changed[:, 6:], out[:, 6:])


# --------------------------------------------------------------------------------------------
# bidirectional-self-attention

@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_bidirectional_is_full_attention(backend_name, rng, shapes):
    q, k, v = make(rng, shapes)
    keep = some_mask(rng, q.shape[-2], k.shape[-2])
    mech = BidirectionalSelfAttention()
    assert_close(mech.forward(q, k, v), torch_sdpa(q, k, v), TOL)
    assert_close(mech.forward(q, k, v, mask=keep), reference.attention(q, k, v, mask=keep), TOL)
    assert mech.not_supported_reasons(q, k, v, mask=keep) == []


def test_bidirectional_lengths_match_torch_key_padding(backend_name, rng):
    """torch's MultiheadAttention (identity projections) with key_padding_mask gives the same
    rows for real tokens; our padded query rows are zeros."""
    b, h, n, d = 3, 2, 7, 4
    q, k, v = make(rng, ((b, h, n, d),) * 3)
    lengths = np.array([7, 3, 1])
    out = BidirectionalSelfAttention().forward(q, k, v, lengths=lengths)

    e = h * d
    mha = torch.nn.MultiheadAttention(e, h, bias=False, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.eye(e).repeat(3, 1))
        mha.out_proj.weight.copy_(torch.eye(e))
    tokens = [torch.from_numpy(x.transpose(0, 2, 1, 3).reshape(b, n, e).astype(np.float64))
              for x in (q, k, v)]
    padded = torch.from_numpy(np.arange(n)[None, :] >= lengths[:, None])   # True = ignore
    expected, _ = mha(*tokens, key_padding_mask=padded, need_weights=False)
    expected = expected.detach().numpy().reshape(b, n, h, d).transpose(0, 2, 1, 3)

    real = ~padded.numpy()
    for bi in range(b):
        assert_close(out[bi][:, real[bi]], expected[bi][:, real[bi]], TOL)
        assert not out[bi][:, ~real[bi]].any()
    # keys beyond the length do not matter; the answer is not plain attention
    k2 = k.copy()
    k2[1, :, 3:] = 100.0
    assert_close(BidirectionalSelfAttention().forward(q, k2, v, lengths=lengths), out, TOL)
    assert differs(out[1, :, :3], reference.attention(q, k, v)[1, :, :3])


def test_bidirectional_lengths_combine_with_mask(backend_name, rng):
    q, k, v = make(rng, ((2, 3, 9, 5), (2, 1, 9, 5), (2, 1, 9, 6)))
    keep = some_mask(rng, 9, 9)
    lengths = np.array([9, 5])
    out = BidirectionalSelfAttention().forward(q, k, v, mask=keep, lengths=lengths)
    key_ok = np.arange(9)[None, :] < lengths[:, None]
    full = keep[None, None] & key_ok[:, None, None, :]
    expected = reference.attention(q, k, v, mask=full)
    expected[1, :, 5:] = 0.0
    assert_close(out, expected, TOL)
    # unbatched: a scalar length; zero length gives zeros
    q2, k2, v2 = q[0, 0], k[0, 0], v[0, 0]
    assert_close(BidirectionalSelfAttention().forward(q2, k2, v2, lengths=4),
                 np.concatenate([reference.attention(q2[:4], k2[:4], v2[:4]),
                                 np.zeros((5, 6))]), TOL)
    assert not BidirectionalSelfAttention().forward(q2, k2, v2, lengths=0).any()


def test_bidirectional_refuses_causal_and_bad_lengths(rng):
    mech = BidirectionalSelfAttention()
    q, k, v = make(rng, ((2, 6, 4),) * 3)
    reasons = mech.not_supported_reasons(q, k, v, causal=True)
    assert len(reasons) == 1 and "causal" in reasons[0]
    with pytest.raises(ValueError, match="does not support causal"):
        mech.forward(q, k, v, causal=True)
    with pytest.raises(TypeError, match="lengths must be integers"):
        mech.forward(q, k, v, lengths=3.0)
    with pytest.raises(ValueError, match="one entry per batch item"):
        mech.forward(q, k, v, lengths=[3, 4])
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        mech.forward(q, k, v, lengths=7)
    with pytest.raises(ValueError, match="n == m"):
        mech.forward(q[:, :4], k, v, lengths=4)


# --------------------------------------------------------------------------------------------
# relative-position-attention: T5 buckets

def t5_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """T5's _relative_position_bucket for one relative position (memory − context)."""
    ret, n = 0, -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


def t5_loop(q, k, v, table, *, num_buckets, max_distance, mask=None, causal=False):
    def head(qh, kh, vh, h):
        n, m, d = qh.shape[0], kh.shape[0], qh.shape[1]
        logits = np.zeros((n, m))
        for i in range(n):
            for j in range(m):
                rel = j - (i + m - n)
                bucket = t5_bucket(rel, not causal, num_buckets, max_distance)
                logits[i, j] = qh[i] @ kh[j] / math.sqrt(d) + table[h, bucket]
        return softmax_rows(logits, keep_matrix(n, m, mask, causal)) @ vh
    return per_head(head, q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_t5_matches_loop(backend_name, rng, shapes, causal):
    q, k, v = make(rng, shapes)
    h = q.shape[-3] if q.ndim >= 3 else 1
    # few buckets and a short max_distance so the logarithmic buckets are used
    table = f32(rng, h, 8, scale=2.0)
    keep = some_mask(rng, q.shape[-2], k.shape[-2])
    mech = RelativePositionAttention(num_buckets=8, max_distance=6, bias_table=table)
    out = mech.forward(q, k, v, mask=keep, causal=causal)
    assert_close(out, t5_loop(q, k, v, table, num_buckets=8, max_distance=6, mask=keep,
                              causal=causal), TOL)
    # the seeded default table, with T5's default buckets
    default = RelativePositionAttention()
    out = default.forward(q, k, v, causal=causal)
    assert_close(out, t5_loop(q, k, v, default.table_for(h), num_buckets=32, max_distance=128,
                              causal=causal), TOL)
    if k.shape[-2] > 1:
        assert differs(out, reference.attention(q, k, v, causal=causal))


@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_t5_zero_table_is_plain_attention(backend_name, rng, shapes):
    q, k, v = make(rng, shapes)
    h = q.shape[-3] if q.ndim >= 3 else 1
    mech = RelativePositionAttention(bias_table=np.zeros((h, 32), np.float32))
    for causal in (False, True):
        assert_close(mech.forward(q, k, v, causal=causal),
                     reference.attention(q, k, v, causal=causal), TOL)


def test_t5_table_favouring_nearby_keys_changes_the_answer(backend_name, rng):
    q, k, v = make(rng, ((2, 12, 8),) * 3)
    table = np.zeros((2, 32), np.float32)
    table[:, 0] = 30.0                      # bucket 0: the key at the query's own position
    out = RelativePositionAttention(bias_table=table).forward(q, k, v)
    assert_close(out, v, 1e-4)
    assert differs(out, reference.attention(q, k, v), 0.3)


# --------------------------------------------------------------------------------------------
# relative-position-attention: Shaw et al.

def shaw_loop(q, k, v, a_k, a_v, K, *, mask=None, causal=False):
    def head(qh, kh, vh, h):
        n, m, d = qh.shape[0], kh.shape[0], qh.shape[1]
        r = [[min(max(j - (i + m - n), -K), K) + K for j in range(m)] for i in range(n)]
        e = np.array([[qh[i] @ (kh[j] + a_k[r[i][j]]) / math.sqrt(d) for j in range(m)]
                      for i in range(n)])
        alpha = softmax_rows(e, keep_matrix(n, m, mask, causal))
        return np.array([sum(alpha[i, j] * (vh[j] + a_v[r[i][j]]) for j in range(m))
                         for i in range(n)])
    return per_head(head, q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_shaw_matches_loop(rng, shapes, causal):
    q, k, v = make(rng, shapes)
    d, dv, K = q.shape[-1], v.shape[-1], 2
    a_k, a_v = f32(rng, 2 * K + 1, d), f32(rng, 2 * K + 1, dv)
    keep = some_mask(rng, q.shape[-2], k.shape[-2])
    mech = RelativePositionAttention(mode="shaw", max_relative_position=K, rel_keys=a_k,
                                     rel_values=a_v)
    out = mech.forward(q, k, v, mask=keep, causal=causal)
    assert_close(out, shaw_loop(q, k, v, a_k, a_v, K, mask=keep, causal=causal), TOL)
    default = RelativePositionAttention(mode="shaw")
    a_k, a_v = default.shaw_tables(d, dv)
    out = default.forward(q, k, v, causal=causal)
    assert_close(out, shaw_loop(q, k, v, a_k, a_v, 16, causal=causal), TOL)
    assert differs(out, reference.attention(q, k, v, causal=causal))


def test_shaw_zero_tables_are_plain_attention(rng):
    q, k, v = make(rng, ((2, 3, 7, 4), (2, 1, 9, 4), (2, 1, 9, 5)))
    mech = RelativePositionAttention(mode="shaw", max_relative_position=3,
                                     rel_keys=np.zeros((7, 4)), rel_values=np.zeros((7, 5)))
    assert_close(mech.forward(q, k, v, causal=True), reference.attention(q, k, v, causal=True),
                 TOL)


# --------------------------------------------------------------------------------------------
# disentangled-attention (DeBERTa)

def delta(i, j, k):
    """DeBERTa's relative distance δ(i, j) (He et al. 2021, eq. 2)."""
    if i - j <= -k:
        return 0
    if i - j >= k:
        return 2 * k - 1
    return i - j + k


def deberta_loop(q, k, v, P, w_q_r, w_k_r, span, *, terms=("c2p", "p2c"), mask=None,
                 causal=False):
    Q_r, K_r = P @ w_q_r, P @ w_k_r

    def head(Q_c, K_c, V_c, h):
        n, m, d = Q_c.shape[0], K_c.shape[0], Q_c.shape[1]
        A = np.zeros((n, m))
        for i in range(n):
            pos_i = i + m - n
            for j in range(m):
                A[i, j] = Q_c[i] @ K_c[j]
                if "c2p" in terms:
                    A[i, j] += Q_c[i] @ K_r[delta(pos_i, j, span)]
                if "p2c" in terms:
                    A[i, j] += K_c[j] @ Q_r[delta(j, pos_i, span)]
        return softmax_rows(A / math.sqrt(3 * d), keep_matrix(n, m, mask, causal)) @ V_c
    return per_head(head, q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_disentangled_matches_paper_loop(backend_name, rng, shapes, causal):
    q, k, v = make(rng, shapes)
    d, span = q.shape[-1], 3                 # span 3 < n: distances are clipped
    P = f32(rng, 2 * span, 5)                # position width 5 ≠ d: W_r map it to d
    w_q_r, w_k_r = f32(rng, 5, d), f32(rng, 5, d)
    keep = some_mask(rng, q.shape[-2], k.shape[-2])
    mech = DisentangledAttention(span=span, positions=P, w_q_r=w_q_r, w_k_r=w_k_r)
    out = mech.forward(q, k, v, mask=keep, causal=causal)
    assert_close(out, deberta_loop(q, k, v, P, w_q_r, w_k_r, span, mask=keep, causal=causal),
                 TOL)
    if k.shape[-2] > 1:                      # one key: every softmax is 1
        assert differs(out, reference.attention(q, k, v, mask=keep, causal=causal,
                                                scale=1 / math.sqrt(3 * d)))
    # seeded P with identity W_r (the defaults)
    default = DisentangledAttention()
    P = default.position_embeddings(d)
    eye = np.eye(d)
    assert_close(default.forward(q, k, v, causal=causal),
                 deberta_loop(q, k, v, P, eye, eye, 16, causal=causal), TOL)


@pytest.mark.parametrize("terms", [("c2p",), ("p2c",)])
def test_disentangled_single_terms(backend_name, rng, terms):
    q, k, v = make(rng, ((2, 4, 9, 6), (2, 2, 9, 6), (2, 2, 9, 6)))
    mech = DisentangledAttention(span=4, terms=terms)
    P, eye = mech.position_embeddings(6), np.eye(6)
    assert_close(mech.forward(q, k, v), deberta_loop(q, k, v, P, eye, eye, 4, terms=terms), TOL)


@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_disentangled_without_position_terms_is_scaled_attention(backend_name, rng, shapes):
    q, k, v = make(rng, shapes)
    scale = 1 / math.sqrt(3 * q.shape[-1])
    out = DisentangledAttention(terms=()).forward(q, k, v, causal=True)
    assert_close(out, reference.attention(q, k, v, causal=True, scale=scale), TOL)


# --------------------------------------------------------------------------------------------
# talking-heads-attention

def talking_heads_reference(q, k, v, p_l, p_w, *, mask=None, causal=False):
    """The paper's einsums on (b, h, n, d) float64 arrays."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    k, v = (np.repeat(x, q.shape[1] // x.shape[1], axis=1) for x in (k, v))
    logits = np.einsum("bhnd,bhmd->bnmh", q, k) / math.sqrt(q.shape[-1])
    logits = np.einsum("bnmh,hg->bnmg", logits, p_l)
    (b, h, n, _), m = q.shape, k.shape[2]
    mask = np.ones((h, n, m), bool) if mask is None else np.broadcast_to(mask, (h, n, m))
    keep = [keep_matrix(n, m, mask[g], causal) for g in range(h)]     # the mask of mixed head g
    weights = np.stack([[softmax_rows(logits[bi, :, :, g], keep[g]) for g in range(h)]
                        for bi in range(b)])                                  # (b, h, n, m)
    weights = np.einsum("bhnm,hg->bgnm", weights, p_w)
    return np.einsum("bhnm,bhmv->bhnv", weights, v)


@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_talking_heads_identity_is_multi_head_attention(rng, shapes):
    q, k, v = make(rng, shapes)
    keep = some_mask(rng, q.shape[-2], k.shape[-2])
    out = TalkingHeadsAttention().forward(q, k, v, mask=keep, causal=True)
    assert_close(out, reference.attention(q, k, v, mask=keep, causal=True), TOL)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shapes", [s for s in SHAPES if len(s[0]) == 4], ids=shape_id)
def test_talking_heads_matches_einsum_reference(rng, shapes, causal):
    q, k, v = make(rng, shapes)
    h = q.shape[1]
    p_l, p_w = f32(rng, h, h), f32(rng, h, h)
    keep = some_mask(rng, q.shape[-2], k.shape[-2])
    out = TalkingHeadsAttention(p_logits=p_l, p_weights=p_w).forward(q, k, v, mask=keep,
                                                                     causal=causal)
    assert_close(out, talking_heads_reference(q, k, v, p_l, p_w, mask=keep, causal=causal), TOL)
    assert differs(out, reference.attention(q, k, v, mask=keep, causal=causal))
    # a per-head mask applies to the mixed logits of that head
    per_head_keep = np.stack([some_mask(rng, q.shape[-2], k.shape[-2]) for _ in range(h)])
    out = TalkingHeadsAttention(p_logits=p_l, p_weights=p_w).forward(q, k, v, mask=per_head_keep,
                                                                     causal=causal)
    assert_close(out, talking_heads_reference(q, k, v, p_l, p_w, mask=per_head_keep,
                                              causal=causal), TOL)


def test_talking_heads_hand_example():
    """Two heads, one query, two keys: the logit mixing swaps the heads, so head 0's weights are
    softmax of head 1's logits; P_w then averages the two heads' weights."""
    q = np.array([[[1.0, 0.0]], [[0.0, 2.0]]], np.float32)                  # (2, 1, 2)
    k = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]], np.float32)
    v = np.array([[[1.0], [0.0]], [[0.0], [1.0]]], np.float32)
    swap, mean = np.array([[0, 1], [1, 0]], np.float32), np.full((2, 2), 0.5, np.float32)
    out = TalkingHeadsAttention(p_logits=swap, p_weights=mean).forward(q, k, v)
    # logits/√2: head 0 (1/√2, 0), head 1 (0, 2/√2); after the swap head 0 has (0, √2)
    s0 = 1 / (1 + math.exp(math.sqrt(2)))       # head 0 weight on key 0: softmax(0, √2)[0]
    s1 = 1 / (1 + math.exp(-1 / math.sqrt(2)))  # head 1 weight on key 0: softmax(1/√2, 0)[0]
    w_key0 = (s0 + s1) / 2                      # both heads' weights after averaging
    expected = np.array([[[w_key0 * 1 + (1 - w_key0) * 0]], [[w_key0 * 0 + (1 - w_key0) * 1]]])
    assert_close(out, expected, 1e-6)


# --------------------------------------------------------------------------------------------
# synthesizer-attention

def dense_logits(q, w1, b1, w2, b2, m):
    hidden = np.maximum(q.astype(np.float64) @ w1.T + b1, 0)
    return hidden @ w2[:m].T + b2[:m]


def synthesizer_reference(logits, v, *, mask=None, causal=False):
    """softmax(B + mask)·v for (b, h, n, m) logits; v of any rank, its heads shared (GQA)."""
    b, h, n, m = logits.shape
    v4 = v.reshape((1,) * (4 - v.ndim) + v.shape).astype(np.float64)
    v4 = np.repeat(v4, h // v4.shape[1], axis=1)
    keep = keep_matrix(n, m, mask, causal)
    return np.array([[softmax_rows(logits[bi, hi], keep) @ v4[bi, hi] for hi in range(h)]
                     for bi in range(b)])


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("shapes", SHAPES, ids=shape_id)
def test_synthesizer_dense_matches_hand_reference(backend_name, rng, shapes, causal):
    q, k, v = make(rng, shapes)
    d, m = q.shape[-1], k.shape[-2]
    w1, b1, w2, b2 = f32(rng, 5, d), f32(rng, 5), f32(rng, 16, 5), f32(rng, 16)
    keep = some_mask(rng, q.shape[-2], m)
    mech = SynthesizerAttention(dense_weights=(w1, b1, w2, b2))
    out = mech.forward(q, k, v, mask=keep, causal=causal)
    q4 = q.reshape((1,) * (4 - q.ndim) + q.shape)
    expected = synthesizer_reference(dense_logits(q4, w1, b1, w2, b2, m), v, mask=keep,
                                     causal=causal)
    assert_close(out, expected.reshape(out.shape), TOL)
    if m > 1:
        assert differs(out, reference.attention(q, k, v, mask=keep, causal=causal))


@pytest.mark.parametrize("variant", ["dense", "random", "mixed"])
def test_synthesizer_ignores_keys(backend_name, rng, variant):
    q, k, v = make(rng, ((2, 4, 10, 8), (2, 2, 10, 8), (2, 2, 10, 8)))
    mech = SynthesizerAttention(variant=variant)
    out = mech.forward(q, k, v, causal=True)
    other_k = f32(rng, *k.shape, scale=5.0)
    np.testing.assert_array_equal(mech.forward(q, other_k, v, causal=True), out)
    # unlike attention
    assert differs(reference.attention(q, other_k, v), reference.attention(q, k, v))
    assert differs(out, reference.attention(q, k, v, causal=True))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_synthesizer_random_with_attention_logits_is_attention(backend_name, rng, causal):
    q, k, v = make(rng, ((6, 8), (9, 8), (9, 5)))
    scores = q.astype(np.float64) @ k.T.astype(np.float64) / math.sqrt(8)
    out = SynthesizerAttention(variant="random", random_logits=scores).forward(q, k, v,
                                                                              causal=causal)
    assert_close(out, reference.attention(q, k, v, causal=causal), TOL)
    # per-head R, (h, n, m)
    q, k, v = make(rng, ((3, 7, 4), (3, 7, 4), (3, 7, 4)))
    scores = np.einsum("hnd,hmd->hnm", q, k) / 2.0
    out = SynthesizerAttention(variant="random", random_logits=scores).forward(q, k, v,
                                                                              causal=causal)
    assert_close(out, reference.attention(q, k, v, causal=causal), TOL)


def test_synthesizer_mixed_averages_dense_and_random(backend_name, rng):
    q, k, v = make(rng, ((2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 3)))
    weights = f32(rng, 7, 4), f32(rng, 7), f32(rng, 8, 7), f32(rng, 8)
    r = f32(rng, 3, 5, 8, scale=2.0)
    mech = SynthesizerAttention(variant="mixed", dense_weights=weights, random_logits=r)
    logits = (dense_logits(q, *weights, 6) + r[None, :, :5, :6]) / 2
    assert_close(mech.forward(q, k, v), synthesizer_reference(logits, v), TOL)
    # the random variant takes R[:n, :m]
    random = SynthesizerAttention(variant="random", random_logits=r)
    assert_close(random.forward(q, k, v),
                 synthesizer_reference(np.broadcast_to(r[None, :, :5, :6], (2, 3, 5, 6)), v), TOL)


def test_synthesizer_limits_are_reasons(rng):
    mech = SynthesizerAttention(max_len=8)
    q, k, v = make(rng, ((4, 4), (9, 4), (9, 4)))
    reasons = mech.not_supported_reasons(q, k, v)
    assert reasons and "at most 8 keys" in reasons[0]
    with pytest.raises(ValueError, match="at most 8 keys"):
        mech.forward(q, k, v)
    q, k, v = make(rng, ((9, 4), (8, 4), (8, 4)))
    assert mech.not_supported_reasons(q, k, v) == []                 # dense: any n
    assert "rows" in SynthesizerAttention(variant="random", max_len=8).not_supported_reasons(
        q, k, v)[0]


# --------------------------------------------------------------------------------------------
# every mechanism: deterministic, finite, clear errors, reasons exactly where documented

CONFIGS = {
    "causal-self-attention": {},
    "bidirectional-self-attention": {},
    "relative-position-attention": {},
    "relative-position-attention-shaw": {"mode": "shaw"},
    "disentangled-attention": {},
    "talking-heads-attention": {"p_logits": np.array([[0.5, 0.5], [1.0, -1.0]]),
                                "p_weights": np.array([[1.0, 0.2], [0.0, 1.0]])},
    "synthesizer-attention": {},
    "synthesizer-attention-random": {"variant": "random"},
    "synthesizer-attention-mixed": {"variant": "mixed"},
}
SEEDED = ["relative-position-attention", "relative-position-attention-shaw",
          "disentangled-attention", "synthesizer-attention", "synthesizer-attention-random",
          "synthesizer-attention-mixed"]


def build(config, **extra):
    name = next(n for n in TABLE if config.startswith(n))
    return registry.get(name, **CONFIGS[config], **extra)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_finite_deterministic_and_seeded(backend_name, rng, config):
    q, k, v = make(rng, ((2, 2, 12, 8), (2, 1, 12, 8), (2, 1, 12, 6)), scale=3.0)
    out = build(config).forward(q, k, v)
    assert out.dtype == np.float32 and out.shape == (2, 2, 12, 6) and np.isfinite(out).all()
    np.testing.assert_array_equal(build(config).forward(q, k, v), out)
    if config in SEEDED:
        assert differs(build(config, seed=1).forward(q, k, v), out, 1e-3)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_bad_inputs_raise_clear_errors(rng, config):
    mech = build(config)
    q, k, v = make(rng, ((2, 6, 4), (2, 6, 4), (2, 6, 4)))
    with pytest.raises(TypeError, match="q must be a floating-point"):
        mech.forward(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k's last dimension"):
        mech.forward(q, k[..., :3], v)
    with pytest.raises(ValueError, match="v must match k"):
        mech.forward(q, k, v[:, :5])
    with pytest.raises(ValueError, match="q must be 2-D or 3-D or 4-D"):
        mech.forward(q[0, 0], k, v)
    with pytest.raises(ValueError, match="multiple of k's and v's heads"):
        mech.forward(np.concatenate([q, q[:1]]), k, v)
    for name, arrays in (("q", (q, k, v)), ("k", (q, k, v)), ("v", (q, k, v))):
        bad = [a.copy() for a in arrays]
        bad["qkv".index(name)][1, 2, 3] = np.nan
        with backend.use_backend("numpy"), pytest.raises(ValueError, match=f"{name} contains"):
            mech.forward(*bad)
    with pytest.raises(ValueError, match="mask of shape"):
        mech.forward(q, k, v, mask=np.ones((5, 5), bool))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_not_supported_reasons_exactly_where_documented(rng, config):
    mech = build(config)
    q, k, v = make(rng, ((2, 6, 4), (2, 6, 4), (2, 6, 4)))
    keep = some_mask(rng, 6, 6)
    assert mech.not_supported_reasons(q, k, v) == []
    assert mech.not_supported_reasons(q, k, v, mask=keep) == []
    refuses_causal = config == "bidirectional-self-attention"
    assert bool(mech.not_supported_reasons(q, k, v, mask=keep, causal=True)) == refuses_causal


def test_given_weights_are_validated():
    with pytest.raises(ValueError, match="mode must be one of"):
        RelativePositionAttention(mode="rotary")
    with pytest.raises(ValueError, match=r"bias_table must have shape \(·, 32\)"):
        RelativePositionAttention(bias_table=np.zeros((2, 31)))
    with pytest.raises(ValueError, match="bias_table has 2 heads; q has 3"):
        RelativePositionAttention(bias_table=np.zeros((2, 32))).forward(
            np.ones((3, 4, 4)), np.ones((3, 4, 4)), np.ones((3, 4, 4)))
    with pytest.raises(ValueError, match=r"rel_keys must have shape \(5, ·\)"):
        RelativePositionAttention(max_relative_position=2, rel_keys=np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"rel_values must have shape \(5, 3\)"):
        RelativePositionAttention(mode="shaw", max_relative_position=2,
                                  rel_values=np.zeros((5, 4))).forward(
            np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="bias_table contains NaN"):
        RelativePositionAttention(bias_table=np.full((1, 32), np.nan))
    with pytest.raises(ValueError, match=r"positions must have shape \(8, ·\)"):
        DisentangledAttention(span=4, positions=np.zeros((7, 4)))
    with pytest.raises(ValueError, match="w_q_r is needed"):
        DisentangledAttention(span=2, positions=np.zeros((4, 3))).forward(
            np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="terms must be among"):
        DisentangledAttention(terms=("p2p",))
    with pytest.raises(ValueError, match="square"):
        TalkingHeadsAttention(p_logits=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"p_weights must have shape \(3, 3\)"):
        TalkingHeadsAttention(p_weights=np.eye(2)).forward(
            np.ones((3, 4, 4)), np.ones((3, 4, 4)), np.ones((3, 4, 4)))
    with pytest.raises(ValueError, match="variant must be one of"):
        SynthesizerAttention(variant="factorized")
    with pytest.raises(ValueError, match="dense_weights must be"):
        SynthesizerAttention(dense_weights=(np.zeros((4, 4)),))
    with pytest.raises(ValueError, match=r"W2 must have shape \(·, 5\)"):
        SynthesizerAttention(dense_weights=(np.zeros((5, 4)), np.zeros(5), np.zeros((8, 4)),
                                            np.zeros(8)))
    with pytest.raises(ValueError, match="random_logits must be"):
        SynthesizerAttention(random_logits=np.zeros(8))
    with pytest.raises(ValueError, match="seed must be"):
        SynthesizerAttention(seed=-1)
    with pytest.raises(TypeError, match="floating-point"):
        TalkingHeadsAttention(p_logits=np.eye(2, dtype=int))
