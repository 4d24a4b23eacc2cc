"""Bad inputs at the public boundary: each raises the documented error, naming the argument, on
both backends — never a crash, a NaN result or a silently wrong answer."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import rerank
from rerank import registry, scoring

from conftest import assert_close, f32

NONFINITE = "NaN or Inf"


def qkv(rng, n=6, m=9, d=8, lead=()):
    return f32(rng, *lead, n, d), f32(rng, *lead, m, d), f32(rng, *lead, m, d)


def late_inputs(rng, d=8):
    return f32(rng, 3, d), f32(rng, 7, d), np.array([0, 2, 3, 7])


def hier_inputs(rng, d=8):
    return f32(rng, d), f32(rng, 7, d), np.array([0, 2, 3, 7])


# --------------------------------------------------------------------------------------------
# shapes

@pytest.mark.parametrize("q_shape, k_shape, v_shape, match", [
    ((8,), (4, 8), (4, 8), r"\bq must be 2-D or 3-D or 4-D"),
    ((1, 1, 1, 4, 8), (1, 1, 1, 4, 8), (1, 1, 1, 4, 8), r"\bq must be"),
    ((4, 8), (1, 4, 8), (1, 4, 8), r"\bk must be 2-D"),
    ((4, 8), (4, 8), (1, 4, 8), r"\bv must be 2-D"),
    ((2, 4, 8), (4, 8), (4, 8), r"\bk must be 3-D"),
    ((4, 8), (5, 7), (5, 8), r"\bk's last dimension must equal q's"),
    ((2, 4, 8), (2, 5, 9), (2, 5, 9), r"\bk's last dimension"),
    ((4, 8), (5, 8), (6, 8), r"\bv must match k"),
    ((2, 4, 8), (2, 5, 8), (1, 5, 8), r"\bv must match k"),
    ((8, 4, 8), (3, 5, 8), (3, 5, 8), r"heads \(8\) must be a multiple of k's and v's heads \(3\)"),
    ((2, 4, 4, 8), (2, 3, 5, 8), (2, 3, 5, 8), r"multiple of k's and v's heads"),
    ((2, 4, 4, 8), (3, 4, 5, 8), (3, 4, 5, 8), r"same batch size"),
    ((2, 2, 4, 8), (2, 4, 5, 8), (2, 4, 5, 8), r"multiple of k's"),
])
def test_attention_bad_shapes(backend_name, rng, q_shape, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        rerank.attention(f32(rng, *q_shape), f32(rng, *k_shape), f32(rng, *v_shape))


@pytest.mark.parametrize("which, shape", [("q", (0, 8)), ("q", (4, 0)), ("k", (0, 8)),
                                          ("v", (0, 8)), ("q", (2, 0, 8))])
def test_attention_empty(backend_name, rng, which, shape):
    args = dict(zip("qkv", qkv(rng, n=4, m=5)))
    if which == "q" and len(shape) == 3:
        args = {name: a[None].repeat(2, 0) for name, a in args.items()}
    args[which] = np.zeros(shape, np.float32)
    if which == "k":
        args["v"] = np.zeros((0, 8), np.float32)
    with pytest.raises(ValueError, match=rf"\b{which} must not be empty"):
        rerank.attention(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("q_shape, c_shape, kw, match", [
    ((8, 1), (5, 8), {}, r"query must be 1-D"),
    ((8,), (8,), {}, r"candidates must be 2-D or 3-D"),
    ((8,), (2, 2, 5, 8), {}, r"candidates must be"),
    ((2, 8), (3, 5, 8), {}, r"batch sizes differ"),
    ((7,), (5, 8), {}, r"query has dimension 7 but candidates have 8"),
    ((8,), (5, 8), {"heads": 3}, r"heads \(3\) must divide"),
    ((9,), (5, 9), {"heads": 2}, r"heads \(2\) must divide"),
    ((8,), (5, 8), {"heads": 0}, r"heads must be a positive integer"),
    ((8,), (5, 8), {"heads": -2}, r"heads must be a positive integer"),
    ((8,), (5, 8), {"heads": 2.0}, r"heads must be a positive integer"),
    ((0,), (5, 0), {}, r"must not be empty"),
    ((8,), (0, 8), {}, r"candidates must not be empty"),
])
def test_memory_bad_shapes(backend_name, rng, q_shape, c_shape, kw, match):
    with pytest.raises(ValueError, match=match):
        scoring.memory_attention(f32(rng, *q_shape), f32(rng, *c_shape), **kw)


@pytest.mark.parametrize("case, match", [
    ("query-1d", r"query_tokens must be 2-D or 3-D"),
    ("docs-rank", r"doc_tokens must be 2-D"),
    ("d-mismatch", r"query_tokens \(8\) and doc_tokens \(9\) must match"),
    ("empty-docs", r"doc_tokens must not be empty"),
    ("empty-query", r"query_tokens must not be empty"),
    ("batch-m", r"batch sizes differ"),
    ("batch-offsets-1d", r"doc_offsets must have shape \(m, c\+1\)"),
    ("batch-offsets-m", r"doc_offsets must have shape \(m, c\+1\)"),
    ("single-offsets-2d", r"doc_offsets must be 1-D"),
])
def test_late_bad_shapes(backend_name, rng, case, match):
    qt, tokens, offsets = late_inputs(rng)
    if case == "query-1d":
        qt = qt[0]
    elif case == "docs-rank":
        tokens = tokens[None]
    elif case == "d-mismatch":
        tokens = f32(rng, 7, 9)
    elif case == "empty-docs":
        tokens = np.zeros((0, 8), np.float32)
    elif case == "empty-query":
        qt = np.zeros((0, 8), np.float32)
    elif case == "batch-m":
        qt, tokens, offsets = f32(rng, 2, 3, 8), f32(rng, 3, 7, 8), np.stack([offsets] * 3)
    elif case == "batch-offsets-1d":
        qt, tokens = f32(rng, 2, 3, 8), f32(rng, 2, 7, 8)
    elif case == "batch-offsets-m":
        qt, tokens, offsets = f32(rng, 2, 3, 8), f32(rng, 2, 7, 8), np.stack([offsets] * 3)
    elif case == "single-offsets-2d":
        offsets = offsets[None]
    with pytest.raises(ValueError, match=match):
        scoring.late_interaction(qt, tokens, offsets)


@pytest.mark.parametrize("case, match", [
    ("query-2d", r"query must be 1-D"),
    ("chunks-1d", r"chunks must be 2-D or 3-D"),
    ("d-mismatch", r"query \(9\) and chunks \(8\) must match"),
    ("batch-m", r"batch sizes differ"),
    ("empty", r"chunks must not be empty"),
])
def test_hierarchical_bad_shapes(backend_name, rng, case, match):
    q, chunks, offsets = hier_inputs(rng)
    if case == "query-2d":
        q = q[None]
    elif case == "chunks-1d":
        chunks = chunks[0]
    elif case == "d-mismatch":
        q = f32(rng, 9)
    elif case == "batch-m":
        q, chunks, offsets = f32(rng, 2, 8), f32(rng, 3, 7, 8), np.stack([offsets] * 3)
    elif case == "empty":
        chunks = np.zeros((0, 8), np.float32)
    with pytest.raises(ValueError, match=match):
        scoring.hierarchical(q, chunks, offsets)


# --------------------------------------------------------------------------------------------
# non-finite inputs

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("lead", [(), (2, 3)], ids=["2d", "4d"])
def test_attention_nonfinite(backend_name, rng, which, bad, lead):
    args = dict(zip("qkv", qkv(rng, n=70, m=600, lead=lead)))
    args[which][(..., 37, 5)] = bad
    with pytest.raises(ValueError, match=NONFINITE):
        rerank.attention(args["q"], args["k"], args["v"], causal=True)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_attention_nonfinite_under_a_mask(backend_name, rng, which):
    """A NaN at a masked position is still a NaN in the input."""
    args = dict(zip("qkv", qkv(rng, n=6, m=9)))
    mask = np.ones((6, 9), bool)
    mask[:, 4] = False
    args[which][4 if which != "q" else 0, 0] = np.nan
    with pytest.raises(ValueError, match=NONFINITE):
        rerank.attention(args["q"], args["k"], args["v"], mask=mask)


def test_attention_nan_values_with_every_key_masked(backend_name, rng):
    q, k, v = qkv(rng)
    v[2, 3] = np.nan
    with pytest.raises(ValueError, match=NONFINITE):
        rerank.attention(q, k, v, mask=np.zeros((6, 9), bool))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["query", "candidates"])
@pytest.mark.parametrize("batch", [False, True])
def test_memory_nonfinite(backend_name, rng, which, bad, batch):
    q, cands = (f32(rng, 3, 8), f32(rng, 3, 5, 8)) if batch else (f32(rng, 8), f32(rng, 5, 8))
    (q if which == "query" else cands)[(..., 1)] = bad
    with pytest.raises(ValueError, match=NONFINITE):
        scoring.memory_attention(q, cands)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["query_tokens", "doc_tokens"])
@pytest.mark.parametrize("tau", [None, 0.1])
def test_late_nonfinite(backend_name, rng, which, bad, tau):
    qt, tokens, offsets = late_inputs(rng)
    (qt if which == "query_tokens" else tokens)[1, 2] = bad
    with pytest.raises(ValueError, match=NONFINITE):
        scoring.late_interaction(qt, tokens, offsets, tau=tau)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["query", "chunks"])
def test_hierarchical_nonfinite(backend_name, rng, which, bad):
    q, chunks, offsets = hier_inputs(rng)
    (q if which == "query" else chunks)[(..., 2)] = bad
    with pytest.raises(ValueError, match=NONFINITE):
        scoring.hierarchical(q, chunks, offsets)


@pytest.mark.parametrize("scorer", ["late", "hierarchical"])
def test_dense_nonfinite(backend_name, rng, scorer):
    dense = np.array([0.1, np.nan, 0.3], np.float32)
    with pytest.raises(ValueError, match=r"dense contains NaN"):
        if scorer == "late":
            scoring.late_interaction(*late_inputs(rng), dense=dense)
        else:
            scoring.hierarchical(*hier_inputs(rng), dense=dense)


# huge finite values: float32 products overflow; the answer must be a clear ValueError or correct

def test_attention_overflowing_logits_raise_on_compiled(compiled, rng):
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="overflow"):
        rerank.attention(q * np.float32(1e30), k * np.float32(1e30), v)


def test_attention_overflowing_logits_never_return_nonfinite(backend_name, rng):
    q, k, v = qkv(rng)
    try:
        out = rerank.attention(q * np.float32(1e30), k * np.float32(1e30), v)
    except ValueError:
        return
    assert np.isfinite(out).all()
    # logits of ±1e60: the softmax is one-hot on the largest logit
    top = np.argmax(q.astype(np.float64) @ k.T.astype(np.float64), axis=1)
    assert_close(out, v[top])


@pytest.mark.parametrize("which", ["query", "candidates"])
@pytest.mark.parametrize("big", [1e19, 1e30])
def test_memory_huge_values(backend_name, rng, which, big):
    """Scores depend on directions only, so 1e30-scaled input must give the same scores, or a
    ValueError if the kernel cannot represent it — never a silently different ranking."""
    for q, cands in ((f32(rng, 8), f32(rng, 5, 8)), (f32(rng, 3, 8), f32(rng, 3, 5, 8))):
        expected = scoring.memory_attention(q, cands, heads=2)
        big = np.float32(big)
        try:
            out = scoring.memory_attention(q * big if which == "query" else q,
                                           cands * big if which == "candidates" else cands,
                                           heads=2)
        except ValueError:
            continue
        assert_close(out, expected)


@pytest.mark.parametrize("which", ["query_tokens", "doc_tokens"])
@pytest.mark.parametrize("big", [1e19, 1e30])
def test_late_huge_values(backend_name, rng, which, big):
    qt, tokens, offsets = late_inputs(rng)
    expected = scoring.late_interaction(qt, tokens, offsets, details=True)
    big = np.float32(big)
    try:
        out = scoring.late_interaction(qt * big if which == "query_tokens" else qt,
                                       tokens * big if which == "doc_tokens" else tokens, offsets,
                                       details=True)
    except ValueError:
        return
    for a, b in zip(out, expected):
        assert_close(a, b)


@pytest.mark.parametrize("which", ["query", "chunks"])
@pytest.mark.parametrize("big", [1e19, 1e30])
def test_hierarchical_huge_values(backend_name, rng, which, big):
    q, chunks, offsets = hier_inputs(rng)
    expected = scoring.hierarchical(q, chunks, offsets, details=True)
    big = np.float32(big)
    try:
        out = scoring.hierarchical(q * big if which == "query" else q,
                                   chunks * big if which == "chunks" else chunks, offsets,
                                   details=True)
    except ValueError:
        return
    for a, b in zip(out, expected):
        assert_close(a, b)


# --------------------------------------------------------------------------------------------
# dtypes and layouts

BAD_DTYPES = {
    "int": lambda a: a.astype(np.int32),
    "int64": lambda a: a.astype(np.int64),
    "bool": lambda a: a > 0,
    "complex": lambda a: a.astype(np.complex64),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
}


@pytest.mark.parametrize("dtype", list(BAD_DTYPES))
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_attention_bad_dtype(backend_name, rng, which, dtype):
    args = dict(zip("qkv", qkv(rng)))
    args[which] = BAD_DTYPES[dtype](args[which])
    with pytest.raises(TypeError, match=rf"\b{which} must be a floating-point array"):
        rerank.attention(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("dtype", list(BAD_DTYPES))
@pytest.mark.parametrize("which", ["query", "candidates"])
def test_memory_bad_dtype(backend_name, rng, which, dtype):
    args = {"query": f32(rng, 8), "candidates": f32(rng, 5, 8)}
    args[which] = BAD_DTYPES[dtype](args[which])
    with pytest.raises(TypeError, match=rf"\b{which} must be a floating-point array"):
        scoring.memory_attention(args["query"], args["candidates"])


@pytest.mark.parametrize("dtype", ["int", "bool", "complex", "object"])
@pytest.mark.parametrize("which", ["query_tokens", "doc_tokens", "idf", "dense"])
def test_late_bad_dtype(backend_name, rng, which, dtype):
    qt, tokens, offsets = late_inputs(rng)
    args = {"query_tokens": qt, "doc_tokens": tokens, "idf": np.array([1.0, 2.0, 3.0]),
            "dense": np.array([0.5, -0.5, 1.0])}
    args[which] = BAD_DTYPES[dtype](args[which])
    with pytest.raises(TypeError, match=rf"\b{which} must be a floating-point array"):
        scoring.late_interaction(args["query_tokens"], args["doc_tokens"], offsets,
                                 idf=args["idf"], dense=args["dense"])


@pytest.mark.parametrize("dtype", ["int", "bool", "complex", "object"])
@pytest.mark.parametrize("which", ["query", "chunks"])
def test_hierarchical_bad_dtype(backend_name, rng, which, dtype):
    q, chunks, offsets = hier_inputs(rng)
    args = {"query": q, "chunks": chunks}
    args[which] = BAD_DTYPES[dtype](args[which])
    with pytest.raises(TypeError, match=rf"\b{which} must be a floating-point array"):
        scoring.hierarchical(args["query"], args["chunks"], offsets)


LAYOUTS = {
    "float64": lambda a: a.astype(np.float64),
    "float16-exact": lambda a: a.astype(np.float16),
    "fortran": np.asfortranarray,
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
    "reversed": lambda a: a[..., ::-1, :][..., ::-1, :] if a.ndim > 1 else a[::-1][::-1],
    "list": lambda a: a.tolist(),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_attention_accepts_float64_and_noncontiguous(backend_name, rng, layout):
    q, k, v = (x.astype(np.float16).astype(np.float32) for x in qkv(rng, lead=(2,)))
    mask = rng.random((6, 9)) < 0.8
    expected = rerank.attention(q, k, v, mask=mask, causal=True)
    convert = LAYOUTS[layout]
    out = rerank.attention(convert(q), convert(k), convert(v), mask=mask, causal=True)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_attention_accepts_noncontiguous_and_float64_mask(backend_name, rng):
    q, k, v = qkv(rng, n=6, m=9)
    mask = f32(rng, 9, 6).T                           # a transposed (non-contiguous) float mask
    expected = rerank.attention(q, k, v, mask=np.ascontiguousarray(mask))
    np.testing.assert_array_equal(rerank.attention(q, k, v, mask=mask), expected)
    np.testing.assert_array_equal(rerank.attention(q, k, v, mask=mask.astype(np.float64)), expected)


@pytest.mark.parametrize("layout", ["float64", "fortran", "strided", "list"])
def test_scorers_accept_float64_and_noncontiguous(backend_name, rng, layout):
    convert = LAYOUTS[layout]
    q, cands = f32(rng, 3, 8), f32(rng, 3, 5, 8)
    np.testing.assert_array_equal(scoring.memory_attention(convert(q), convert(cands), heads=2),
                                  scoring.memory_attention(q, cands, heads=2))
    qt, tokens, offsets = late_inputs(rng)
    idf = np.array([1.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(
        scoring.late_interaction(convert(qt), convert(tokens), offsets, idf=idf.astype(np.float64)),
        scoring.late_interaction(qt, tokens, offsets, idf=idf))
    hq, chunks, hoff = hier_inputs(rng)
    np.testing.assert_array_equal(scoring.hierarchical(convert(hq), convert(chunks), hoff),
                                  scoring.hierarchical(hq, chunks, hoff))


def test_offsets_may_be_any_integer_dtype_or_a_list(backend_name, rng):
    qt, tokens, offsets = late_inputs(rng)
    expected = scoring.late_interaction(qt, tokens, offsets)
    for off in (offsets.astype(np.int32), offsets.astype(np.uint16), offsets.tolist(),
                offsets.astype(np.int64)[::-1][::-1]):
        np.testing.assert_array_equal(scoring.late_interaction(qt, tokens, off), expected)


# --------------------------------------------------------------------------------------------
# offsets

BAD_OFFSETS = [
    ([1, 2, 3, 7], ValueError, r"doc_offsets must start at 0"),
    ([0, 2, 2, 7], ValueError, r"doc_offsets must be strictly increasing"),
    ([0, 4, 3, 7], ValueError, r"doc_offsets must be strictly increasing"),
    ([0, 2, 3, 8], ValueError, r"doc_offsets must end at 7"),
    ([0, 2, 3, 6], ValueError, r"doc_offsets must end at 7"),
    ([0], ValueError, r"doc_offsets must have shape \(c\+1,\)"),
    ([], ValueError, r"doc_offsets must have shape"),
    ([0.0, 2.0, 3.0, 7.0], TypeError, r"doc_offsets must be an integer array"),
    ([False, True], TypeError, r"doc_offsets must be an integer array"),
    (np.array([[[0, 7]]]), ValueError, r"doc_offsets must have shape"),
]


@pytest.mark.parametrize("offsets, error, match", BAD_OFFSETS,
                         ids=[f"case{i}" for i in range(len(BAD_OFFSETS))])
def test_late_bad_offsets(backend_name, rng, offsets, error, match):
    qt, tokens, _ = late_inputs(rng)
    with pytest.raises(error, match=match):
        scoring.late_interaction(qt, tokens, np.asarray(offsets) if len(offsets) else
                                 np.array([], np.int64))


@pytest.mark.parametrize("offsets, error, match", BAD_OFFSETS[:5] + BAD_OFFSETS[7:8],
                         ids=[f"case{i}" for i in range(6)])
def test_hierarchical_bad_offsets(backend_name, rng, offsets, error, match):
    q, chunks, _ = hier_inputs(rng)
    with pytest.raises(error, match=match.replace("doc_offsets", "chunk_offsets")):
        scoring.hierarchical(q, chunks, np.asarray(offsets))


@pytest.mark.parametrize("row, match", [
    ([0, 2, 10], r"point past the end of the token matrix \(9 rows\)"),
    ([1, 2, 5], r"must start at 0"),
    ([0, 3, 3], r"must be strictly increasing"),
], ids=["past-end", "start", "increasing"])
def test_batch_bad_offsets(backend_name, rng, row, match):
    qt, tokens = f32(rng, 2, 3, 8), f32(rng, 2, 9, 8)
    offsets = np.array([[0, 4, 9], row])
    with pytest.raises(ValueError, match=rf"doc_offsets {match}"):
        scoring.late_interaction(qt, tokens, offsets)
    with pytest.raises(ValueError, match=rf"chunk_offsets {match}"):
        scoring.hierarchical(f32(rng, 2, 8), tokens, offsets)


# --------------------------------------------------------------------------------------------
# scalar and auxiliary arguments

@pytest.mark.parametrize("idf, match", [
    (np.array([1.0, -0.5, 1.0]), r"idf weights must be ≥ 0"),
    (np.zeros(3), r"positive sum"),
    (np.ones(4), r"idf must have shape \(3,\)"),
    (np.ones((1, 3)), r"idf must be 1-D"),
    (np.array([1.0, np.nan, 1.0]), r"idf contains NaN"),
    (np.array([1.0, np.inf, 1.0]), r"idf contains NaN or Inf"),
])
def test_bad_idf(backend_name, rng, idf, match):
    with pytest.raises(ValueError, match=match):
        scoring.late_interaction(*late_inputs(rng), idf=idf)


def test_bad_batch_idf(backend_name, rng):
    qt, tokens = f32(rng, 2, 3, 8), f32(rng, 2, 9, 8)
    offsets = np.array([[0, 4, 9], [0, 1, 2]])
    with pytest.raises(ValueError, match=r"idf must have shape \(2, 3\)"):
        scoring.late_interaction(qt, tokens, offsets, idf=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"positive sum per query"):
        scoring.late_interaction(qt, tokens, offsets, idf=np.array([[1.0, 1, 1], [0, 0, 0]]))


@pytest.mark.parametrize("dense, match", [
    (np.ones(4), r"dense must have shape \(3,\)"),
    (np.ones((1, 3)), r"dense must be 1-D"),
])
def test_bad_dense(backend_name, rng, dense, match):
    with pytest.raises(ValueError, match=match):
        scoring.late_interaction(*late_inputs(rng), dense=dense)
    with pytest.raises(ValueError, match=match):
        scoring.hierarchical(*hier_inputs(rng), dense=dense)


BAD_POSITIVE = [0, 0.0, -0.1, float("nan"), float("inf"), "0.1", True]


@pytest.mark.parametrize("tau", BAD_POSITIVE, ids=repr)
def test_bad_tau(backend_name, rng, tau):
    with pytest.raises(ValueError, match=r"tau must be a positive finite number"):
        scoring.late_interaction(*late_inputs(rng), tau=tau)
    with pytest.raises(ValueError, match=r"tau must be a positive finite number"):
        scoring.hierarchical(*hier_inputs(rng), tau=tau)
    with pytest.raises(ValueError, match=r"tau must be a positive finite number"):
        scoring.memory_attention(f32(rng, 8), f32(rng, 5, 8), tau=tau)


def test_hierarchical_tau_none_rejected(backend_name, rng):
    with pytest.raises(ValueError, match=r"tau"):
        scoring.hierarchical(*hier_inputs(rng), tau=None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1", None], ids=repr)
def test_bad_lam_alpha_scale(backend_name, rng, value):
    with pytest.raises(ValueError, match=r"lam must be a finite number"):
        scoring.late_interaction(*late_inputs(rng), lam=value)
    with pytest.raises(ValueError, match=r"lam must be a finite number"):
        scoring.hierarchical(*hier_inputs(rng), lam=value)
    if value is not None:
        with pytest.raises(ValueError, match=r"alpha must be a finite number"):
            scoring.memory_attention(f32(rng, 8), f32(rng, 5, 8), alpha=value)
        with pytest.raises(ValueError, match=r"scale must be a finite number"):
            rerank.attention(*qkv(rng), scale=value)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "+inf"])
def test_mask_nan_or_posinf(backend_name, rng, bad):
    mask = np.zeros((6, 9), np.float32)
    mask[2, 3] = bad
    with pytest.raises(ValueError, match=r"mask must not contain NaN or \+inf"):
        rerank.attention(*qkv(rng), mask=mask)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.complex64, object])
def test_mask_bad_dtype(backend_name, rng, dtype):
    with pytest.raises(TypeError, match=r"mask must be boolean"):
        rerank.attention(*qkv(rng), mask=np.ones((6, 9), dtype=dtype))


@pytest.mark.parametrize("shape", [(9, 6), (6,), (5, 9), (2, 6, 9), (1, 1, 1, 6, 9)])
def test_mask_not_broadcastable(backend_name, rng, shape):
    with pytest.raises(ValueError, match=r"mask of shape .* does not broadcast"):
        rerank.attention(*qkv(rng), mask=np.ones(shape, bool))


def test_mask_not_broadcastable_4d(backend_name, rng):
    q, k, v = qkv(rng, lead=(2, 4))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4, 6, 9\) does not broadcast"):
        rerank.attention(q, k, v, mask=np.ones((3, 4, 6, 9), bool))


# --------------------------------------------------------------------------------------------
# registry and backend configuration

@pytest.mark.parametrize("name, suggestion", [("flash-attention", "flash-attention-v2"),
                                              ("cross-atention", "cross-attention"),
                                              ("memory_attention", "memory-attention")])
def test_unknown_mechanism_suggests_close_names(name, suggestion):
    with pytest.raises(ValueError, match=rf"unknown mechanism '{name}'.*did you mean.*{suggestion}"):
        registry.get(name)
    with pytest.raises(ValueError, match=r"unknown mechanism"):
        registry.spec(name)


@pytest.mark.parametrize("name", ["zzzz", "", None, ["list"]], ids=repr)
def test_unknown_mechanism_without_suggestion(name):
    with pytest.raises(ValueError, match=r"unknown mechanism"):
        registry.get(name)


def test_set_backend_bogus():
    before = rerank.backend.requested()
    with pytest.raises(ValueError, match=r"backend must be one of auto, compiled, numpy; got 'bogus'"):
        rerank.set_backend("bogus")
    assert rerank.backend.requested() == before
    with pytest.raises(ValueError, match=r"backend must be one of"):
        with rerank.use_backend("bogus"):
            pass
    assert rerank.backend.requested() == before


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True, None], ids=repr)
def test_set_num_threads_bad(n):
    before = rerank.get_num_threads()
    with pytest.raises(ValueError, match=r"num_threads must be a positive integer"):
        rerank.set_num_threads(n)
    assert rerank.get_num_threads() == before


def _import_rerank(env_updates):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env.update(env_updates)
    return subprocess.run([sys.executable, "-c", "import rerank; print(rerank.get_num_threads())"],
                          env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_rerank_num_threads_invalid(value):
    proc = _import_rerank({"RERANK_NUM_THREADS": value})
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr
    assert f"RERANK_NUM_THREADS must be a positive integer; got {value!r}" in proc.stderr


def test_rerank_backend_invalid():
    proc = _import_rerank({"RERANK_BACKEND": "gpu"})
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "backend must be one of" in proc.stderr


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_attention_nonfinite_error_names_the_argument(backend_name, rng, which):
    q, k, v = f32(rng, 2, 20, 8), f32(rng, 2, 30, 8), f32(rng, 2, 30, 8)
    {"q": q, "k": k, "v": v}[which][1, 3, 2] = np.nan
    with pytest.raises(ValueError, match=rf"^{which} contains NaN or Inf"):
        rerank.attention(q, k, v)


@pytest.mark.parametrize("which", ["query", "candidates"])
@pytest.mark.parametrize("batch", [False, True])
def test_memory_nonfinite_error_names_the_argument(backend_name, rng, which, batch):
    q, cands = (f32(rng, 3, 8), f32(rng, 3, 5, 8)) if batch else (f32(rng, 8), f32(rng, 5, 8))
    (q if which == "query" else cands)[..., 1] = np.inf
    with pytest.raises(ValueError, match=rf"^{which} contains NaN or Inf"):
        scoring.memory_attention(q, cands)


@pytest.mark.parametrize("which", ["query_tokens", "doc_tokens"])
def test_late_nonfinite_error_names_the_argument(backend_name, rng, which):
    qt = f32(rng, 3, 8)
    tokens, offsets = f32(rng, 5, 8), np.array([0, 2, 5])
    (qt if which == "query_tokens" else tokens)[1, 1] = np.nan
    with pytest.raises(ValueError, match=rf"^{which} contains NaN or Inf"):
        scoring.late_interaction(qt, tokens, offsets)


def test_overflow_error_says_overflow(backend_name, rng):
    q = f32(rng, 4, 8) * np.float32(1e30)
    if backend_name == "numpy":
        pytest.skip("the numpy backend computes in float64, where 1e30 does not overflow")
    with pytest.raises(ValueError, match="overflow"):
        rerank.attention(q, q, q)
