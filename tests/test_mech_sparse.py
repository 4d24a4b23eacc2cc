"""The sparse family: each mechanism attends within its paper's pattern and nowhere else.

Every pattern mechanism is checked (a) pattern against a hand-drawn 0/1 matrix, (b) forward equal to
exact attention under that pattern (rerank.reference with mask=pattern) on both backends, shapes
with heads, GQA and n ≠ m, causal and user masks, and (c) clearly different from full attention.
"""
from __future__ import annotations

import numpy as np
import pytest

import rerank
from rerank import backend, masking, reference, registry
from rerank.mechanisms import sparse

from conftest import COMPILED_AVAILABLE, assert_close, f32

NAMES = ["bigbird-attention", "longformer-attention", "local-attention", "strided-attention",
         "sparse-transformer-attention", "star-attention", "blockwise-attention",
         "random-attention"]

#: Small parameters so that patterns are sparse at test sizes.
PARAMS = {
    "bigbird-attention": dict(block=4, window=1, global_blocks=(0, -1), random=1, seed=3),
    "longformer-attention": dict(window=3, dilation=2, global_tokens=(0, 7)),
    "local-attention": dict(window=3),
    "strided-attention": dict(stride=4),
    "sparse-transformer-attention": dict(block=8, summary=2),
    "random-attention": dict(num_keys=5, seed=1),
}
PATTERN_NAMES = list(PARAMS)

#: (q, k, v) shapes: 2-D, 3-D, 4-D with GQA, n < m with GQA.
SHAPES = [
    ((40, 16), (40, 16), (40, 12)),
    ((3, 33, 8), (3, 33, 8), (3, 33, 8)),
    ((2, 4, 30, 8), (2, 2, 30, 8), (2, 2, 30, 6)),
    ((2, 2, 20, 8), (2, 1, 50, 8), (2, 1, 50, 8)),
]


def inputs(rng, shapes, scale=1.0):
    return tuple(f32(rng, *shape, scale=scale) for shape in shapes)


def heads_of(q):
    return q.shape[-3] if q.ndim >= 3 else 1


def clearly_differs(a, b, margin=1e-2):
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() > margin


# ---------------------------------------------------------------------------------------------
# registry entries

def test_sparse_family_registered_in_order():
    specs = registry.by_category("sparse")
    assert [s.name for s in specs] == NAMES
    table = {
        "bigbird-attention": ("O(n)", "Long documents"),
        "longformer-attention": ("O(n)", "Long sequences"),
        "local-attention": ("O(n·w)", "Local context"),
        "strided-attention": ("O(n·s)", "Structured data"),
        "sparse-transformer-attention": ("O(n√n)", "Images/sequences"),
        "star-attention": ("O(n·h)", "Swarm coordination"),
        "blockwise-attention": ("O(n²) chunked", "Memory efficient"),
        "random-attention": ("O(n·k)", "Approximation"),
    }
    for spec in specs:
        assert (spec.complexity, spec.use_case) == table[spec.name]
        assert spec.compiled is True
        assert "arXiv:" in spec.paper
        assert spec.notes
        assert registry.get(spec.name).__doc__


class KernelSpy:
    """Stands in for the extension module and records which kernels a forward touched."""

    def __init__(self, real):
        self.real, self.used = real, []

    def __getattr__(self, name):
        self.used.append(name)
        return getattr(self.real, name)


@pytest.mark.parametrize("name", NAMES)
def test_forward_runs_a_compiled_kernel(compiled, monkeypatch, rng, name):
    spy = KernelSpy(backend.extension())
    monkeypatch.setattr(backend, "_kernels", spy)
    q, k, v = inputs(rng, SHAPES[1])
    registry.get(name, **PARAMS.get(name, {})).forward(q, k, v)
    kernel = "attention" if name == "blockwise-attention" else "sparse_attention"
    assert kernel in spy.used


# ---------------------------------------------------------------------------------------------
# patterns against hand-drawn matrices

def drawn(*rows):
    return np.array([[c == "1" for c in row] for row in rows])


def test_local_pattern():
    mech = registry.get("local-attention", window=1)
    np.testing.assert_array_equal(mech.pattern(6, 6), drawn(
        "110000", "111000", "011100", "001110", "000111", "000011"))
    np.testing.assert_array_equal(mech.pattern(6, 6, causal=True), drawn(
        "100000", "110000", "011000", "001100", "000110", "000011"))


def test_strided_pattern_is_child_et_al_strided():
    mech = registry.get("strided-attention", stride=3)
    # causal: A1 = the previous 3 positions and itself, A2 = (i − j) mod 3 = 0
    np.testing.assert_array_equal(mech.pattern(8, 8, causal=True), drawn(
        "10000000",
        "11000000",
        "11100000",
        "11110000",
        "01111000",
        "00111100",
        "10011110",
        "01001111"))
    alternate = registry.get("strided-attention", stride=3, heads="alternate")
    heads = alternate.pattern(8, 8, heads=3, causal=True)
    assert heads.shape == (3, 8, 8)
    np.testing.assert_array_equal(heads[0], masking.sliding_window(8, 8, 3) & masking.causal(8, 8))
    np.testing.assert_array_equal(heads[1], masking.strided(8, 8, 3) & masking.causal(8, 8))
    np.testing.assert_array_equal(heads[2], heads[0])


def test_sparse_transformer_pattern_is_fixed_pattern():
    mech = registry.get("sparse-transformer-attention", block=4, summary=1)
    np.testing.assert_array_equal(mech.pattern(8, 8, causal=True), drawn(
        "10000000",
        "11000000",
        "11100000",
        "11110000",
        "00011000",
        "00011100",
        "00011110",
        "00011111"))
    np.testing.assert_array_equal(mech.pattern(8, 8), masking.fixed_pattern(8, 8, 4, 1))
    heads = registry.get("sparse-transformer-attention", block=4, summary=1,
                         heads="alternate").pattern(8, 8, heads=2)
    np.testing.assert_array_equal(heads[1][0], drawn("00010001")[0])      # A2 only: summaries


def test_bigbird_pattern():
    mech = registry.get("bigbird-attention", block=2, window=1, global_blocks=(0, -1), random=0)
    layout = drawn("11111", "11101", "11111", "10111", "11111")
    np.testing.assert_array_equal(mech.pattern(10, 10), np.kron(layout, np.ones((2, 2), bool)))
    # n < m: the queries are the last positions
    np.testing.assert_array_equal(mech.pattern(4, 10), mech.pattern(10, 10)[6:])


def test_bigbird_random_blocks_are_seeded():
    mech = registry.get("bigbird-attention", block=2, window=0, global_blocks=(0,), random=2,
                        seed=5)
    base = registry.get("bigbird-attention", block=2, window=0, global_blocks=(0,), random=0)
    extra = mech.pattern(16, 16) & ~base.pattern(16, 16)
    np.testing.assert_array_equal(extra[2:].sum(axis=1), 4)     # 2 blocks of 2 keys per query
    np.testing.assert_array_equal(
        mech.pattern(16, 16),
        registry.get("bigbird-attention", block=2, window=0, global_blocks=(0,), random=2,
                     seed=5).pattern(16, 16))
    other = registry.get("bigbird-attention", block=2, window=0, global_blocks=(0,), random=2,
                         seed=6)
    assert not np.array_equal(other.pattern(16, 16), mech.pattern(16, 16))


def test_longformer_pattern():
    mech = registry.get("longformer-attention", window=1, dilation=2, global_tokens=(0,))
    np.testing.assert_array_equal(mech.pattern(8, 8), drawn(
        "11111111",
        "11010000",
        "10101000",
        "11010100",
        "10101010",
        "10010101",
        "10001010",
        "10000101"))


@pytest.mark.parametrize("causal", [False, True])
def test_random_pattern(causal):
    mech = registry.get("random-attention", num_keys=3, seed=2)
    pattern = mech.pattern(12, 12, causal=causal)
    allowed = masking.causal(12, 12) if causal else np.ones((12, 12), bool)
    assert not (pattern & ~allowed).any()
    assert pattern.diagonal().all()                               # include_self
    expected = np.minimum(3, allowed.sum(axis=1) - 1) + 1         # k others + itself
    np.testing.assert_array_equal(pattern.sum(axis=1), expected)
    np.testing.assert_array_equal(pattern, registry.get("random-attention", num_keys=3,
                                                        seed=2).pattern(12, 12, causal=causal))
    assert not np.array_equal(pattern, registry.get("random-attention", num_keys=3,
                                                    seed=3).pattern(12, 12, causal=causal))
    no_self = registry.get("random-attention", num_keys=3, include_self=False).pattern(12, 12)
    np.testing.assert_array_equal(no_self.sum(axis=1), 3)


def dense_pattern(name, params, n, m, heads):
    """The mechanism's pattern composed from rerank.masking's dense masks (tested separately)."""
    if name == "local-attention":
        return masking.sliding_window(n, m, params["window"])
    if name == "longformer-attention":
        return masking.combine(masking.dilated(n, m, params["window"], params["dilation"]),
                               masking.global_tokens(n, m, params["global_tokens"]), op="or")
    if name == "strided-attention":
        parts = masking.sliding_window(n, m, params["stride"]), masking.strided(n, m, params["stride"])
    elif name == "sparse-transformer-attention":
        l, c = params["block"], params["summary"]
        pos = np.arange(n) + m - n
        parts = ((pos[:, None] // l) == (np.arange(m)[None, :] // l),
                 np.broadcast_to(np.arange(m) % l >= l - c, (n, m)))
        if params.get("heads") != "alternate":
            np.testing.assert_array_equal(parts[0] | parts[1], masking.fixed_pattern(n, m, l, c))
    else:
        raise KeyError(name)
    if params.get("heads") == "alternate":
        return np.stack([parts[h % 2] for h in range(heads)])
    return parts[0] | parts[1]


CROSS_CHECK = [
    ("local-attention", dict(window=0)),
    ("local-attention", dict(window=5)),
    ("longformer-attention", dict(window=2, dilation=3, global_tokens=(1, -1))),
    ("longformer-attention", dict(window=4, dilation=1, global_tokens=())),
    ("strided-attention", dict(stride=1)),
    ("strided-attention", dict(stride=5, heads="alternate")),
    ("sparse-transformer-attention", dict(block=6, summary=2)),
    ("sparse-transformer-attention", dict(block=40, summary=3, heads="alternate")),
]


@pytest.mark.parametrize("name, params", CROSS_CHECK)
@pytest.mark.parametrize("n, m", [(23, 23), (9, 31), (31, 9), (1, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_key_lists_equal_the_dense_masks(name, params, n, m, causal):
    """The O(nnz) key-list builders against the dense masks of rerank.masking."""
    mech = registry.get(name, **params)
    expected = dense_pattern(name, params, n, m, 3)
    if causal:
        expected = expected & masking.causal(n, m)
    np.testing.assert_array_equal(mech.pattern(n, m, heads=3, causal=causal), expected)


@pytest.mark.parametrize("n, m", [(40, 40), (13, 50), (50, 50)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block, window, globals_, random", [
    (4, 1, (0, -1), 0), (4, 0, (), 2), (7, 2, (1,), 1), (64, 1, (0,), 3)])
def test_bigbird_key_lists_equal_the_expanded_layout(n, m, causal, block, window, globals_,
                                                      random):
    mech = registry.get("bigbird-attention", block=block, window=window, global_blocks=globals_,
                        random=random, seed=4)
    expected = masking.block_sparse(mech.layout(m, causal=causal), block)[m - n:m, :m]
    if causal:
        expected = expected & masking.causal(n, m)
    np.testing.assert_array_equal(mech.pattern(n, m, causal=causal), expected)


def test_random_keys_are_uniform():
    """Floyd's sampling: k of the m keys, each with probability k / m; with the query itself
    included, each other key with probability k / (m − 1)."""
    k = 4
    # 3000 queries before the first key position (n > m): no self, k of 20 keys each
    far = registry.get("random-attention", num_keys=k, seed=9).pattern(3020, 20)[:3000]
    np.testing.assert_array_equal(far.sum(axis=1), k)
    assert np.abs(far.mean(axis=0) - k / 20).max() < 0.03                 # σ ≈ 0.007
    # n = m: 150 seeds × 20 queries; frequency per offset from the query
    offsets = (np.arange(20)[None, :] - np.arange(20)[:, None]) % 20
    hits = np.zeros(20)
    for seed in range(150):
        pattern = registry.get("random-attention", num_keys=k, seed=seed).pattern(20, 20)
        assert pattern.diagonal().all()
        hits += np.bincount(offsets[pattern], minlength=20)
    assert np.abs(hits[1:] / 3000 - k / 19).max() < 0.03                   # σ ≈ 0.007


# ---------------------------------------------------------------------------------------------
# forward == exact attention under the pattern, and ≠ full attention

@pytest.mark.parametrize("name", PATTERN_NAMES)
@pytest.mark.parametrize("shapes", SHAPES, ids=["2d", "3d", "4d-gqa", "n<m-gqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_is_exact_attention_under_pattern(backend_name, rng, name, shapes, causal):
    q, k, v = inputs(rng, shapes)
    mech = registry.get(name, **PARAMS[name])
    n, m = q.shape[-2], k.shape[-2]
    pattern = mech.pattern(n, m, heads=heads_of(q), causal=causal)
    expected = reference.attention(q, k, v, mask=pattern)
    out = mech.forward(q, k, v, causal=causal)
    assert out.shape == q.shape[:-1] + (v.shape[-1],) and out.dtype == np.float32
    assert_close(out, expected, what=name)
    assert clearly_differs(out, reference.attention(q, k, v, causal=causal))
    np.testing.assert_array_equal(mech(q, k, v, causal=causal), out)         # deterministic
    assert mech.not_supported_reasons(q, k, v, causal=causal) == []


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_user_masks_combine_with_the_pattern(backend_name, rng, name):
    q, k, v = inputs(rng, SHAPES[2])
    mech = registry.get(name, **PARAMS[name])
    pattern = mech.pattern(30, 30, heads=4, causal=True)
    # a boolean mask varying over batch (padding-like), then an additive float mask
    keep = rng.random((2, 1, 30, 30)) < 0.8
    assert_close(mech.forward(q, k, v, mask=keep, causal=True),
                 reference.attention(q, k, v, mask=keep & pattern))
    bias = (rng.standard_normal((30, 30)) * 2).astype(np.float32)
    bias[rng.random((30, 30)) < 0.2] = -np.inf
    expected = reference.attention(q, k, v, mask=np.where(pattern, bias, -np.inf))
    assert_close(mech.forward(q, k, v, mask=bias, causal=True), expected)


@pytest.mark.parametrize("name", NAMES)
def test_backends_agree(rng, name):
    if not COMPILED_AVAILABLE:
        pytest.skip("compiled extension not built")
    q, k, v = inputs(rng, ((2, 2, 70, 16), (2, 1, 90, 16), (2, 1, 90, 8)))
    if name == "star-attention":
        k, v = k[:, :, :70], v[:, :, :70]
    mech = registry.get(name, **PARAMS.get(name, {}))
    with rerank.use_backend("compiled"):
        fast = mech.forward(q, k, v)
        rerank.set_num_threads(1)
        one_thread = mech.forward(q, k, v)
    with rerank.use_backend("numpy"):
        slow = mech.forward(q, k, v)
    assert_close(fast, slow, what=name)
    np.testing.assert_array_equal(fast, one_thread)            # bit-identical whatever threads


def test_local_attention_matches_torch(rng):
    torch = pytest.importorskip("torch")
    q, k, v = inputs(rng, ((2, 3, 25, 8), (2, 3, 25, 8), (2, 3, 25, 8)))
    window = np.abs(np.arange(25)[:, None] - np.arange(25)[None, :]) <= 2
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
        attn_mask=torch.from_numpy(window)).numpy()
    for name in ("compiled", "numpy") if COMPILED_AVAILABLE else ("numpy",):
        with rerank.use_backend(name):
            assert_close(registry.get("local-attention", window=2).forward(q, k, v), expected)


def test_local_attention_hand_worked():
    # one query, window 1 over 3 keys with scores 0, ln 2, ln 3 (scale 1): weights 1/6, 2/6, 3/6
    q = np.array([[0.0], [1.0], [0.0]], np.float32)
    k = np.array([[0.0], [np.log(2)], [np.log(3)]], np.float32)
    v = np.array([[6.0], [12.0], [18.0]], np.float32)
    out = registry.get("local-attention", window=1).forward(q, k, v, scale=1.0)
    assert_close(out[1], [(6 + 24 + 54) / 6])
    assert_close(out[0], [(6 + 12) / 2])                 # q = 0: uniform over keys 0, 1


# ---------------------------------------------------------------------------------------------
# the sparse kernel itself

def test_sparse_attention_function(backend_name, rng):
    q, k, v = inputs(rng, ((2, 3, 17, 8), (2, 3, 23, 8), (2, 3, 23, 5)))
    pattern = rng.random((3, 17, 23)) < 0.3
    pattern[1, 4] = False                                       # a query with no key
    out = sparse.sparse_attention(q, k, v, pattern)
    assert_close(out, reference.attention(q, k, v, mask=pattern))
    np.testing.assert_array_equal(out[:, 1, 4], 0.0)
    per_item = rng.random((2, 3, 17, 23)) < 0.3                 # P = b·h patterns
    assert_close(sparse.sparse_attention(q, k, v, per_item, causal=True),
                 reference.attention(q, k, v, mask=per_item, causal=True))
    with pytest.raises(ValueError, match="does not broadcast"):
        sparse.sparse_attention(q, k, v, pattern[:2])
    with pytest.raises(TypeError, match="boolean"):
        sparse.sparse_attention(q, k, v, pattern.astype(np.float32))


def test_csr_validation(rng):
    q, k, v = (x.reshape(1, 1, 4, 2) for x in inputs(rng, ((4, 2), (4, 2), (4, 2))))
    row_ptr, cols = masking.to_csr(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="cols must lie"):
        sparse.csr_attention(q, k, v, row_ptr, cols + 1, None, 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        sparse.csr_attention(q, k, v, row_ptr[::-1], cols, None, 1.0)
    with pytest.raises(ValueError, match="row_ptr must have shape"):
        sparse.csr_attention(q, k, v, row_ptr[:3], cols, None, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(backend_name, rng, name):
    mech = registry.get(name, **PARAMS.get(name, {}))
    q, k, v = inputs(rng, SHAPES[1])
    with pytest.raises(TypeError, match="q must be a floating-point"):
        mech.forward(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k's last dimension"):
        mech.forward(q, k[..., :4], v)
    bad = q.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="q contains NaN"):
        mech.forward(bad, k, v)
    bad = v.copy()
    bad[1, 5, 0] = np.inf
    with pytest.raises(ValueError, match="v contains NaN"):
        mech.forward(q, k, bad)
    with pytest.raises(ValueError, match="overflow"):
        mech.forward(q * 1e20, k * 1e20, v)


@pytest.mark.parametrize("causal", [False, True])
def test_many_work_items_and_key_chunks(backend_name, rng, causal):
    # 700 queries: several row blocks per head; up to 161 keys per row: several key chunks of
    # the online softmax, whose running max must rescale what is accumulated
    q, k, v = inputs(rng, ((1, 2, 700, 32), (1, 2, 700, 32), (1, 2, 700, 32)), scale=1.5)
    mech = registry.get("local-attention", window=80)
    out = mech.forward(q, k, v, causal=causal)
    assert_close(out, reference.attention(q, k, v, mask=mech.pattern(700, 700, causal=causal)))
    dense = rng.random((2, 50, 400)) < 0.6                      # ~240 keys a row, scattered
    q, k, v = inputs(rng, ((2, 50, 16), (2, 400, 16), (2, 400, 8)), scale=1.5)
    assert_close(sparse.sparse_attention(q, k, v, dense),
                 reference.attention(q, k, v, mask=dense))


# ---------------------------------------------------------------------------------------------
# what each mechanism cannot serve

def test_not_supported_reasons(rng):
    q, k, v = inputs(rng, ((3, 10, 8), (3, 12, 8), (3, 12, 8)))
    star = registry.get("star-attention")
    assert star.not_supported_reasons(q, k, v)                       # n ≠ m
    sq, sk, sv = inputs(rng, ((3, 10, 8),) * 3)
    assert star.not_supported_reasons(sq, sk, sv) == []
    assert star.not_supported_reasons(sq, sk, sv, causal=True)
    assert star.not_supported_reasons(sq, sk, sv, mask=np.ones((10, 10), bool))
    for call in (lambda: star.forward(q, k, v), lambda: star.forward(sq, sk, sv, causal=True)):
        with pytest.raises(ValueError, match="star-attention"):
            call()
    bigbird = registry.get("bigbird-attention", block=4)
    assert bigbird.not_supported_reasons(k, q, q) and "n ≤ m" in \
        bigbird.not_supported_reasons(k, q, q)[0]
    with pytest.raises(ValueError, match="n ≤ m"):
        bigbird.forward(k, q, q)
    for name in set(NAMES) - {"star-attention"}:
        mech = registry.get(name, **PARAMS.get(name, {}))
        assert mech.not_supported_reasons(q, k, v, mask=np.ones((10, 12), bool),
                                          causal=True) == []


def test_n_greater_than_m_for_position_patterns(backend_name, rng):
    q, k, v = inputs(rng, ((2, 30, 8), (2, 12, 8), (2, 12, 8)))
    for name in ("local-attention", "strided-attention", "sparse-transformer-attention",
                 "random-attention", "longformer-attention"):
        mech = registry.get(name, **PARAMS[name])
        pattern = mech.pattern(30, 12, causal=True)
        assert_close(mech.forward(q, k, v, causal=True),
                     reference.attention(q, k, v, mask=pattern), what=name)


@pytest.mark.parametrize("build, match", [
    (lambda: registry.get("local-attention", window=-1), "window"),
    (lambda: registry.get("strided-attention", heads="mixed"), "heads"),
    (lambda: registry.get("sparse-transformer-attention", block=4, summary=5), "summary"),
    (lambda: registry.get("bigbird-attention", block=0), "block"),
    (lambda: registry.get("random-attention", num_keys=-2), "num_keys"),
    (lambda: registry.get("blockwise-attention", key_chunk=0), "key_chunk"),
    (lambda: registry.get("star-attention", cycles=0), "cycles"),
    (lambda: registry.get("longformer-attention", global_weights=(np.eye(2),)), "triple"),
])
def test_bad_parameters(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------------------------
# longformer's global projections

@pytest.mark.parametrize("causal", [False, True])
def test_longformer_global_projections(backend_name, rng, causal):
    q, k, v = inputs(rng, ((2, 24, 8), (2, 24, 8), (2, 24, 6)))
    wq, wk = f32(rng, 8, 8, scale=0.5), f32(rng, 8, 8, scale=0.5)
    wv = f32(rng, 6, 6, scale=0.5)
    mech = registry.get("longformer-attention", window=2, global_tokens=(0, 9),
                        global_weights=(wq, wk, wv))
    out = mech.forward(q, k, v, causal=causal)
    pattern = mech.pattern(24, 24, causal=causal)
    expected = reference.attention(q, k, v, mask=pattern)
    keep = masking.causal(24, 24) if causal else np.ones((24, 24), bool)
    for row in (0, 9):
        expected[:, row] = reference.attention(q[:, row:row + 1] @ wq, k @ wk, v @ wv,
                                               mask=keep[row:row + 1])[:, 0]
    assert_close(out, expected)
    plain = registry.get("longformer-attention", window=2, global_tokens=(0, 9)).forward(
        q, k, v, causal=causal)
    assert clearly_differs(out[:, 9], plain[:, 9])
    np.testing.assert_array_equal(out[:, 5], plain[:, 5])         # local rows unchanged
    with pytest.raises(ValueError, match="W_V"):
        registry.get("longformer-attention", global_weights=(wq, wk, wq)).forward(q, k, v)


# ---------------------------------------------------------------------------------------------
# star-attention

def star_keys(k, v):
    """Round-1 keys of the satellites: [states; embeddings; relay = mean]."""
    return (np.concatenate([k, k, k.mean(axis=-2, keepdims=True)], axis=-2),
            np.concatenate([v, v, v.mean(axis=-2, keepdims=True)], axis=-2))


def test_star_pattern():
    star = registry.get("star-attention")
    #                      states  emb    relay
    np.testing.assert_array_equal(star.pattern(4, 4), drawn(
        "1100" "1000" "1",
        "1110" "0100" "1",
        "0111" "0010" "1",
        "0011" "0001" "1"))
    wrap = registry.get("star-attention", wrap=True)
    np.testing.assert_array_equal(wrap.pattern(4, 4)[0], drawn("1101" "1000" "1")[0])


@pytest.mark.parametrize("shapes", [((9, 8), (9, 8), (9, 5)), ((2, 4, 11, 8), (2, 2, 11, 8),
                                                                 (2, 2, 11, 8))])
def test_star_one_cycle_is_masked_attention_over_ring_and_relay(backend_name, rng, shapes):
    q, k, v = inputs(rng, shapes)
    star = registry.get("star-attention")
    n = q.shape[-2]
    out = star.forward(q, k, v)
    full_k, full_v = (np.repeat(x, 2, axis=1) for x in (k, v)) if q.ndim == 4 else (k, v)
    keys, values = star_keys(full_k, full_v)
    assert_close(out, reference.attention(q, keys, values, mask=star.pattern(n, n)))
    assert clearly_differs(out, reference.attention(q, k, v))


def test_star_closed_forms():
    rng = np.random.default_rng(0)
    # zero queries: uniform over [v_{i−1}, v_i, v_{i+1}, v_i (embedding), mean v]
    v = f32(rng, 5, 3)
    k = f32(rng, 5, 4)
    out = registry.get("star-attention").forward(np.zeros((5, 4), np.float32), k, v)
    mean = v.mean(axis=0)
    assert_close(out[2], (v[1] + 2 * v[2] + v[3] + mean) / 5)
    assert_close(out[0], (2 * v[0] + v[1] + mean) / 4)              # no wrap: 4 keys
    # one satellite: its state, its embedding and the relay are the same token, so out = v
    q1, k1, v1 = f32(rng, 1, 4), f32(rng, 1, 4), f32(rng, 1, 3)
    assert_close(registry.get("star-attention").forward(q1, k1, v1), v1)


def star_reference(q, k, v, cycles, wq, wk, wv):
    """Guo et al.'s recurrence written out per node (one head)."""
    n, d = q.shape
    scale = 1 / np.sqrt(d)

    def attend(query, keys, values):
        w = reference.softmax(np.array([query @ key for key in keys]) * scale)
        return w @ np.array(values)

    def ln_relu(x):
        x = np.maximum(x, 0)
        return (x - x.mean()) / np.sqrt(x.var() + 1e-6)

    hq, hk, hv = list(q.astype(np.float64)), list(k.astype(np.float64)), list(v.astype(np.float64))
    sq, sk, sv = q.mean(0), k.mean(0), v.mean(0)
    for cycle in range(cycles):
        att = []
        for i in range(n):
            near = [j for j in (i - 1, i, i + 1) if 0 <= j < n]
            keys = [hk[j] for j in near] + [k[i], sk]
            values = [hv[j] for j in near] + [v[i], sv]
            att.append(attend(hq[i], keys, values))
        if cycle == cycles - 1:
            return np.array(att)
        states = [ln_relu(a) for a in att]
        hq, hk, hv = [s @ wq for s in states], [s @ wk for s in states], [s @ wv for s in states]
        relay = ln_relu(attend(sq, [sk] + hk, [sv] + hv))
        sq, sk, sv = relay @ wq, relay @ wk, relay @ wv


@pytest.mark.parametrize("cycles", [1, 2, 3])
def test_star_cycles_follow_the_paper(backend_name, rng, cycles):
    q, k, v = inputs(rng, ((7, 6), (7, 6), (7, 6)))
    wq, wk, wv = (f32(rng, 6, 6, scale=0.6) for _ in range(3))
    star = registry.get("star-attention", cycles=cycles, wq=wq, wk=wk, wv=wv)
    out = star.forward(q, k, v)
    assert_close(out, star_reference(q, k, v, cycles, wq, wk, wv), tol=1e-4)
    if cycles > 1:
        one = registry.get("star-attention").forward(q, k, v)
        assert clearly_differs(out, one)
        with pytest.raises(ValueError, match="d = dv"):
            registry.get("star-attention", cycles=2).forward(q, k, v[:, :4])
        with pytest.raises(ValueError, match="wq must have shape"):
            registry.get("star-attention", cycles=2, wq=wq[:4]).forward(q, k, v)


# ---------------------------------------------------------------------------------------------
# blockwise-attention: exact, chunked

@pytest.mark.parametrize("chunks", [(1024, 4096), (7, 5), (1, 64)])
@pytest.mark.parametrize("shapes", SHAPES, ids=["2d", "3d", "4d-gqa", "n<m-gqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_is_exact_attention(backend_name, rng, chunks, shapes, causal):
    q, k, v = inputs(rng, shapes)
    mech = registry.get("blockwise-attention", query_chunk=chunks[0], key_chunk=chunks[1])
    mask = rng.random((q.shape[-2], k.shape[-2])) < 0.85
    assert_close(mech.forward(q, k, v, mask=mask, causal=causal),
                 reference.attention(q, k, v, mask=mask, causal=causal))
    assert_close(mech.forward(q, k, v, scale=0.3), reference.attention(q, k, v, scale=0.3))


def test_blockwise_matches_torch(backend_name, rng):
    torch = pytest.importorskip("torch")
    q, k, v = inputs(rng, ((2, 3, 40, 16), (2, 3, 40, 16), (2, 3, 40, 16)))
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), is_causal=True).numpy()
    mech = registry.get("blockwise-attention", query_chunk=16, key_chunk=8)
    assert_close(mech.forward(q, k, v, causal=True), expected)
