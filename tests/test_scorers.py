"""The three rerank scorers (rerank.scoring): compiled and numpy backends against the numpy oracle
(rerank.reference), an independent brute-force implementation, and invariants of the math."""
from __future__ import annotations

import math

import numpy as np
import pytest

import rerank
from rerank import reference, scoring

from conftest import assert_close, f32


# --------------------------------------------------------------------------------------------
# helpers

def ragged(rng, lengths, d, scale=1.0):
    """Token matrix (Σ lengths, d) and offsets (c+1,) for candidates of the given lengths."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return f32(rng, int(offsets[-1]), d, scale=scale), offsets


def pad_batch(rng, docs, d):
    """Stack per-query (tokens, offsets) into (m, T, d) with finite garbage padding rows."""
    rows = max(int(o[-1]) for _, o in docs) + 3
    tokens = f32(rng, len(docs), rows, d, scale=50.0)      # padding: large, finite, must be ignored
    for i, (tok, off) in enumerate(docs):
        tokens[i, : off[-1]] = tok
    return tokens, np.stack([o for _, o in docs])


def zscore(x):
    x = np.asarray(x, np.float64)
    s = x.std()
    return np.zeros_like(x) if s <= 1e-6 * max(np.abs(x).max(), 1e-30) else (x - x.mean()) / s


def unit(v):
    n = math.sqrt(sum(float(a) * float(a) for a in v))
    return [float(a) / n for a in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def brute_late(query_tokens, doc_tokens, offsets, tau=None, idf=None):
    """MaxSim (or soft MaxSim) and the pooled dense score with plain Python loops."""
    qs = [unit(r) for r in query_tokens]
    weights = [1.0] * len(qs) if idf is None else [float(w) for w in idf]
    sims, dense = [], []
    qbar = unit([sum(col) / len(qs) for col in zip(*qs)])
    for a, b in zip(offsets[:-1], offsets[1:]):
        ds = [unit(r) for r in doc_tokens[a:b]]
        total = 0.0
        for w, qv in zip(weights, qs):
            s = [dot(qv, dv) for dv in ds]
            if tau is None:
                pooled = max(s)
            else:
                top = max(s)
                e = [math.exp((x - top) / tau) for x in s]
                pooled = sum(ei * x for ei, x in zip(e, s)) / sum(e)
            total += w * pooled
        sims.append(total / sum(weights))
        dbar = unit([sum(col) / len(ds) for col in zip(*ds)])
        dense.append(dot(qbar, dbar))
    return np.array(sims), np.array(dense)


def brute_hier(query, chunks, offsets, tau):
    qv = unit(query)
    pooled, dense = [], []
    for a, b in zip(offsets[:-1], offsets[1:]):
        cs = [unit(r) for r in chunks[a:b]]
        s = [dot(qv, c) for c in cs]
        top = max(s)
        e = [math.exp((x - top) / tau) for x in s]
        pooled.append(sum(ei * x for ei, x in zip(e, s)) / sum(e))
        cbar = unit([sum(col) / len(cs) for col in zip(*cs)])
        dense.append(dot(qv, cbar))
    return np.array(pooled), np.array(dense)


def brute_memory(query, candidates, heads, tau):
    d = len(query)
    hd = d // heads
    qv = unit(query)
    ks = [unit(r) for r in candidates]
    scores = [0.0] * len(ks)
    for h in range(heads):
        logits = [dot(qv[h * hd:(h + 1) * hd], k[h * hd:(h + 1) * hd]) / tau for k in ks]
        top = max(logits)
        e = [math.exp(x - top) for x in logits]
        for i, ei in enumerate(e):
            scores[i] += ei / sum(e) / heads
    return np.array(scores)


# --------------------------------------------------------------------------------------------
# memory attention

@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("heads, d", [(1, 1), (1, 63), (3, 63), (1, 24), (3, 24), (8, 24),
                                      (8, 384)])
@pytest.mark.parametrize("c", [1, 2, 37])
def test_memory_matches_reference(backend_name, rng, c, heads, d, tau, alpha):
    q, cands = f32(rng, d), f32(rng, c, d)
    out = scoring.memory_attention(q, cands, heads=heads, tau=tau, alpha=alpha)
    expected, weights = reference.memory_attention_scores(q, cands, heads=heads, tau=tau,
                                                          alpha=alpha)
    assert out.shape == (c,) and out.dtype == np.float32
    assert_close(out, expected)
    assert weights.shape == (heads, c)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("heads", [1, 3, 8])
def test_memory_batch_equals_single(backend_name, rng, heads, alpha):
    m, c, d = 5, 40, 48
    q, cands = f32(rng, m, d), f32(rng, m, c, d)
    out = scoring.memory_attention(q, cands, heads=heads, alpha=alpha)
    assert out.shape == (m, c)
    for i in range(m):
        assert_close(out[i], scoring.memory_attention(q[i], cands[i], heads=heads, alpha=alpha))
        assert_close(out[i], reference.memory_attention_scores(q[i], cands[i], heads=heads,
                                                               alpha=alpha)[0])


@pytest.mark.parametrize("heads", [1, 3])
def test_memory_matches_brute_force(backend_name, rng, heads):
    q, cands = f32(rng, 9), f32(rng, 6, 9)
    assert_close(scoring.memory_attention(q, cands, heads=heads, tau=0.2),
                 brute_memory(q, cands, heads, 0.2))


@pytest.mark.parametrize("alpha", [0.0, 0.5, -0.3])
@pytest.mark.parametrize("heads", [1, 3, 8])
def test_memory_scores_sum_to_one(backend_name, rng, heads, alpha):
    q, cands = f32(rng, 3, 24), f32(rng, 3, 50, 24)
    out = scoring.memory_attention(q, cands, heads=heads, alpha=alpha)
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_memory_single_candidate_scores_one(backend_name, rng):
    np.testing.assert_allclose(scoring.memory_attention(f32(rng, 8), f32(rng, 1, 8), heads=2),
                               [1.0], atol=1e-6)


def test_memory_single_head_ranks_as_cosine(backend_name, rng):
    q, cands = f32(rng, 32), f32(rng, 60, 32)
    cos = reference.normalize(cands) @ reference.normalize(q)
    for tau in (0.05, 0.1, 1.0):
        out = scoring.memory_attention(q, cands, heads=1, tau=tau, alpha=0.0)
        order = np.argsort(-cos)
        np.testing.assert_array_equal(np.argsort(-out, kind="stable"), order)
        assert (np.diff(out[order]) < 0).all()       # strictly: no ties in the scores either


def test_memory_is_softmax_of_cosine(backend_name, rng):
    q, cands = f32(rng, 16), f32(rng, 30, 16)
    cos = reference.normalize(cands) @ reference.normalize(q)
    e = np.exp((cos - cos.max()) / 0.1)
    assert_close(scoring.memory_attention(q, cands, tau=0.1), e / e.sum())


def test_memory_alpha_refines_the_query(backend_name, rng):
    """α ≠ 0 must change the scores (and as the oracle says), else the option is ignored."""
    q, cands = f32(rng, 16), f32(rng, 30, 16)
    plain = scoring.memory_attention(q, cands, alpha=0.0)
    refined = scoring.memory_attention(q, cands, alpha=0.5)
    assert np.abs(plain - refined).max() > 1e-4
    assert_close(refined, reference.memory_attention_scores(q, cands, alpha=0.5)[0])


@pytest.mark.parametrize("heads", [1, 3])
def test_memory_heads_average_per_head_softmax(backend_name, rng, heads):
    q, cands = f32(rng, 12), f32(rng, 10, 12)
    out = scoring.memory_attention(q, cands, heads=heads)
    hd = 12 // heads
    qn = reference.normalize(q)
    kn = reference.normalize(cands)
    expected = np.zeros(10)
    for h in range(heads):
        logits = kn[:, h * hd:(h + 1) * hd] @ qn[h * hd:(h + 1) * hd] / 0.1
        expected += reference.softmax(logits) / heads
    assert_close(out, expected)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("heads", [1, 3, 8])
def test_memory_permutation_equivariant(backend_name, rng, heads, alpha):
    q, cands = f32(rng, 24), f32(rng, 33, 24)
    perm = rng.permutation(33)
    out = scoring.memory_attention(q, cands, heads=heads, alpha=alpha)
    assert_close(scoring.memory_attention(q, cands[perm], heads=heads, alpha=alpha), out[perm])


def test_memory_scale_invariant(backend_name, rng):
    """Vectors are L2-normalised: rescaling the query or any candidate changes nothing."""
    q, cands = f32(rng, 24), f32(rng, 20, 24)
    factors = rng.uniform(0.01, 100, size=(20, 1)).astype(np.float32)
    out = scoring.memory_attention(q, cands, heads=3)
    assert_close(scoring.memory_attention(q * 7.5, cands * factors, heads=3), out)


# --------------------------------------------------------------------------------------------
# late interaction (cross-attention scorer)

LATE_DOCS = {
    "ones": [1, 1, 1],
    "ragged": [1, 5, 2, 17, 1, 9],
    "single": [4],
    "single-token": [1],
    "two": [3, 8],
}


@pytest.mark.parametrize("lam", [1.0, 0.0, 2.5])
@pytest.mark.parametrize("use_idf", [False, True], ids=["no-idf", "idf"])
@pytest.mark.parametrize("tau", [None, 0.05, 1.0], ids=["maxsim", "tau0.05", "tau1"])
@pytest.mark.parametrize("t, d", [(1, 8), (5, 33), (8, 16), (9, 7), (32, 64)])
@pytest.mark.parametrize("docs", list(LATE_DOCS.values()), ids=list(LATE_DOCS))
def test_late_matches_reference(backend_name, rng, docs, t, d, tau, use_idf, lam):
    qt = f32(rng, t, d)
    tokens, offsets = ragged(rng, docs, d)
    idf = rng.uniform(0.1, 3.0, t).astype(np.float32) if use_idf else None
    out = scoring.late_interaction(qt, tokens, offsets, tau=tau, idf=idf, lam=lam, details=True)
    assert isinstance(out, scoring.ScoreDetails)
    final, maxsim, dense = reference.late_interaction_scores(qt, tokens, offsets, tau=tau, idf=idf,
                                                             lam=lam)
    assert_close(out.similarity, maxsim, what="similarity")
    assert_close(out.dense, dense, what="dense")
    assert_close(out.final, final, what="final")
    plain = scoring.late_interaction(qt, tokens, offsets, tau=tau, idf=idf, lam=lam)
    np.testing.assert_array_equal(plain, out.final)


@pytest.mark.parametrize("tau", [None, 0.1])
def test_late_given_dense(backend_name, rng, tau):
    qt = f32(rng, 6, 16)
    tokens, offsets = ragged(rng, [3, 1, 7, 2], 16)
    dense = np.array([0.3, -0.1, 0.9, 0.5], np.float32)
    out = scoring.late_interaction(qt, tokens, offsets, tau=tau, dense=dense, details=True)
    np.testing.assert_array_equal(out.dense, dense)
    final, maxsim, _ = reference.late_interaction_scores(qt, tokens, offsets, tau=tau, dense=dense)
    assert_close(out.similarity, maxsim)
    assert_close(out.final, final)
    assert_close(out.final, zscore(dense) + zscore(out.similarity))
    # float64 dense is accepted and gives the same answer
    assert_close(scoring.late_interaction(qt, tokens, offsets, tau=tau,
                                          dense=dense.astype(np.float64)), out.final)


@pytest.mark.parametrize("tau", [None, 0.1, 2.0])
def test_late_matches_brute_force(backend_name, rng, tau):
    qt = f32(rng, 3, 6)
    tokens, offsets = ragged(rng, [1, 4, 2, 5], 6)
    idf = np.array([0.5, 2.0, 1.0], np.float32)
    for weights in (None, idf):
        out = scoring.late_interaction(qt, tokens, offsets, tau=tau, idf=weights, details=True)
        sims, dense = brute_late(qt, tokens, offsets, tau=tau, idf=weights)
        assert_close(out.similarity, sims)
        assert_close(out.dense, dense)


@pytest.mark.parametrize("tau", [None, 0.1])
@pytest.mark.parametrize("lengths", [[1500, 3, 1, 700, 1100], [2100, 1], [1, 1024, 1023, 1025],
                                     [1024, 1024, 1], [512] * 5],
                         ids=["mixed", "three-tiles", "around-tile", "exact-tiles", "even"])
def test_late_docs_longer_than_the_tile(backend_name, rng, lengths, tau):
    assert scoring.BLOCK_TOKENS == 1024
    assert max(lengths) >= 1024 or sum(lengths) > 2048
    qt = f32(rng, 4, 16)
    tokens, offsets = ragged(rng, lengths, 16)
    # one planted token makes each candidate's MaxSim depend on tokens deep inside long docs
    tokens[offsets[0] + lengths[0] - 1] = qt[0] * 3
    out = scoring.late_interaction(qt, tokens, offsets, tau=tau, details=True)
    final, maxsim, dense = reference.late_interaction_scores(qt, tokens, offsets, tau=tau)
    assert_close(out.similarity, maxsim)
    assert_close(out.dense, dense)
    assert_close(out.final, final)


def test_late_batch_of_long_docs(backend_name, rng):
    d = 8
    docs = [ragged(rng, [1100, 5, 1], d), ragged(rng, [2, 2050, 3], d), ragged(rng, [1, 1, 1], d)]
    tokens, offsets = pad_batch(rng, docs, d)
    qt = f32(rng, 3, 2, d)
    out = scoring.late_interaction(qt, tokens, offsets, details=True)
    for i, (tok, off) in enumerate(docs):
        final, maxsim, dense = reference.late_interaction_scores(qt[i], tok, off)
        assert_close(out.similarity[i], maxsim)
        assert_close(out.dense[i], dense)
        assert_close(out.final[i], final)


def test_late_single_candidate_is_zero(backend_name, rng):
    qt = f32(rng, 4, 8)
    tokens, offsets = ragged(rng, [5], 8)
    out = scoring.late_interaction(qt, tokens, offsets, details=True)
    np.testing.assert_array_equal(out.final, [0.0])
    assert_close(out.similarity, reference.late_interaction_scores(qt, tokens, offsets)[1])


def test_late_tied_candidates_give_zero(backend_name, rng):
    """Identical candidates: no spread in dense or MaxSim, so every z-score is 0."""
    qt = f32(rng, 4, 8)
    doc = f32(rng, 3, 8)
    tokens = np.concatenate([doc, doc, doc])
    out = scoring.late_interaction(qt, tokens, np.array([0, 3, 6, 9]))
    np.testing.assert_array_equal(out, np.zeros(3, np.float32))


@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0, -1.0])
def test_late_final_is_z_mix(backend_name, rng, lam):
    qt = f32(rng, 5, 16)
    tokens, offsets = ragged(rng, [3, 1, 7, 2, 4], 16)
    out = scoring.late_interaction(qt, tokens, offsets, lam=lam, details=True)
    assert_close(out.final, zscore(out.dense) + lam * zscore(out.similarity))


def test_late_uniform_idf_equals_no_idf(backend_name, rng):
    qt = f32(rng, 5, 16)
    tokens, offsets = ragged(rng, [3, 1, 7, 2], 16)
    base = scoring.late_interaction(qt, tokens, offsets, details=True)
    same = scoring.late_interaction(qt, tokens, offsets, idf=np.full(5, 2.5, np.float32),
                                    details=True)
    assert_close(same.similarity, base.similarity)
    # and a non-uniform idf changes MaxSim
    skewed = scoring.late_interaction(qt, tokens, offsets, idf=np.array([5, 0, 0, 0, 1], np.float32),
                                      details=True)
    assert np.abs(skewed.similarity - base.similarity).max() > 1e-3


def test_late_idf_zero_weight_drops_a_token(backend_name, rng):
    qt = f32(rng, 3, 16)
    tokens, offsets = ragged(rng, [3, 1, 7, 2], 16)
    out = scoring.late_interaction(qt, tokens, offsets, idf=np.array([1, 0, 1], np.float32),
                                   details=True)
    only = scoring.late_interaction(qt[[0, 2]], tokens, offsets, details=True)
    assert_close(out.similarity, only.similarity)


def test_late_soft_maxsim_tends_to_maxsim(backend_name, rng):
    qt = f32(rng, 4, 16)
    tokens, offsets = ragged(rng, [3, 6, 2], 16)
    hard = scoring.late_interaction(qt, tokens, offsets, details=True).similarity
    soft = scoring.late_interaction(qt, tokens, offsets, tau=1e-4, details=True).similarity
    np.testing.assert_allclose(soft, hard, atol=1e-4)
    # a large τ averages: the soft score is then below MaxSim
    warm = scoring.late_interaction(qt, tokens, offsets, tau=10.0, details=True).similarity
    assert (warm < hard - 1e-3).all()


@pytest.mark.parametrize("tau", [None, 0.1])
def test_late_permutation_equivariant(backend_name, rng, tau):
    lengths = [3, 1, 7, 2, 5, 1]
    qt = f32(rng, 4, 12)
    tokens, offsets = ragged(rng, lengths, 12)
    dense = f32(rng, 6)
    perm = rng.permutation(6)
    ptokens = np.concatenate([tokens[offsets[i]:offsets[i + 1]] for i in perm])
    poffsets = np.concatenate([[0], np.cumsum([lengths[i] for i in perm])])
    for given in (None, dense):
        out = scoring.late_interaction(qt, tokens, offsets, tau=tau, dense=given)
        pout = scoring.late_interaction(qt, ptokens, poffsets, tau=tau,
                                        dense=None if given is None else given[perm])
        assert_close(pout, out[perm])


def test_late_token_order_within_a_doc_is_irrelevant(backend_name, rng):
    qt = f32(rng, 4, 12)
    tokens, offsets = ragged(rng, [5, 9], 12)
    shuffled = tokens.copy()
    shuffled[:5] = tokens[:5][rng.permutation(5)]
    shuffled[5:] = tokens[5:][rng.permutation(9)]
    for tau in (None, 0.1):
        assert_close(scoring.late_interaction(qt, shuffled, offsets, tau=tau, details=True).similarity,
                     scoring.late_interaction(qt, tokens, offsets, tau=tau, details=True).similarity)


def test_late_scale_invariant(backend_name, rng):
    qt = f32(rng, 4, 12)
    tokens, offsets = ragged(rng, [3, 1, 7], 12)
    out = scoring.late_interaction(qt, tokens, offsets, details=True)
    qs = qt * rng.uniform(0.01, 100, (4, 1)).astype(np.float32)
    ts = tokens * rng.uniform(0.01, 100, (11, 1)).astype(np.float32)
    scaled = scoring.late_interaction(qs, ts, offsets, details=True)
    assert_close(scaled.similarity, out.similarity)
    assert_close(scaled.dense, out.dense)


@pytest.mark.parametrize("tau", [None, 0.1])
@pytest.mark.parametrize("use_idf", [False, True])
@pytest.mark.parametrize("use_dense", [False, True])
def test_late_batch_with_padding_equals_single(backend_name, rng, tau, use_idf, use_dense):
    m, t, d = 4, 3, 16
    lengths = [[1, 4, 2], [7, 1, 1], [2, 2, 9], [1, 1, 1]]
    docs = [ragged(rng, ls, d) for ls in lengths]
    tokens, offsets = pad_batch(rng, docs, d)
    assert (offsets[:, -1] < tokens.shape[1]).all()          # every row has padding
    qt = f32(rng, m, t, d)
    idf = rng.uniform(0.1, 2, (m, t)).astype(np.float32) if use_idf else None
    dense = f32(rng, m, 3) if use_dense else None
    out = scoring.late_interaction(qt, tokens, offsets, tau=tau, idf=idf, dense=dense, details=True)
    assert out.final.shape == out.similarity.shape == out.dense.shape == (m, 3)
    for i, (tok, off) in enumerate(docs):
        single = scoring.late_interaction(qt[i], tok, off, tau=tau,
                                          idf=None if idf is None else idf[i],
                                          dense=None if dense is None else dense[i], details=True)
        for a, b in zip(out, single):
            assert_close(a[i], b)


def test_late_batch_padding_content_is_ignored(backend_name, rng):
    d = 8
    docs = [ragged(rng, [2, 3], d), ragged(rng, [1, 1], d)]
    tokens, offsets = pad_batch(rng, docs, d)
    qt = f32(rng, 2, 3, d)
    out = scoring.late_interaction(qt, tokens, offsets)
    tokens2 = tokens.copy()
    tokens2[0, 5:] = 0.0
    tokens2[1, 2:] = f32(rng, tokens.shape[1] - 2, d)
    np.testing.assert_array_equal(scoring.late_interaction(qt, tokens2, offsets), out)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("scorer", ["late", "hierarchical"])
def test_batch_with_nonfinite_padding_is_ignored(backend_name, rng, scorer, bad):
    """Padding rows past offsets[i, -1] are not part of the input; their content must not matter."""
    d = 8
    docs = [ragged(rng, [2, 3], d), ragged(rng, [1, 1], d)]
    tokens, offsets = pad_batch(rng, docs, d)
    if scorer == "late":
        qt = f32(rng, 2, 3, d)
        run = lambda toks: scoring.late_interaction(qt, toks, offsets, tau=0.1, details=True)
    else:
        q = f32(rng, 2, d)
        run = lambda toks: scoring.hierarchical(q, toks, offsets, details=True)
    out = run(tokens)
    tokens[1, 2:] = bad
    tokens[0, 5:] = bad
    for a, b in zip(run(tokens), out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("odd_d", [1, 7, 33])
def test_late_odd_dimension(backend_name, rng, odd_d):
    qt = f32(rng, 3, odd_d)
    tokens, offsets = ragged(rng, [2, 1, 4], odd_d)
    if odd_d == 1:
        tokens = np.abs(tokens)        # see test_hierarchical_matches_reference: no ±1 cancelling
    out = scoring.late_interaction(qt, tokens, offsets, tau=0.3, details=True)
    final, maxsim, dense = reference.late_interaction_scores(qt, tokens, offsets, tau=0.3)
    assert_close(out.similarity, maxsim)
    assert_close(out.final, final)


# --------------------------------------------------------------------------------------------
# hierarchical cross-attention

@pytest.mark.parametrize("lam", [1.0, 0.0, 2.5])
@pytest.mark.parametrize("use_dense", [False, True], ids=["dense-computed", "dense-given"])
@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("d", [1, 7, 64, 384])
@pytest.mark.parametrize("chunks", [[1], [1, 1, 1], [3, 1, 8, 2, 1], [40, 2]],
                         ids=["one", "ones", "ragged", "long"])
def test_hierarchical_matches_reference(backend_name, rng, chunks, d, tau, use_dense, lam):
    q = f32(rng, d)
    parts, offsets = ragged(rng, chunks, d)
    if d == 1:
        # in 1-D every unit chunk is ±1 and a document's mean can cancel to exactly 0, where the
        # dense cosine is ill-defined (0 in float64, ±1 after float32 rounding): keep one sign
        parts = np.abs(parts)
    dense = f32(rng, len(chunks)) if use_dense else None
    out = scoring.hierarchical(q, parts, offsets, tau=tau, dense=dense, lam=lam, details=True)
    final, pooled, dense_ref, weights = reference.hierarchical_scores(q, parts, offsets, tau=tau,
                                                                      dense=dense, lam=lam)
    assert weights.shape == (sum(chunks),)
    assert_close(out.similarity, pooled, what="pooled")
    assert_close(out.dense, dense_ref, what="dense")
    assert_close(out.final, final, what="final")


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_hierarchical_matches_brute_force(backend_name, rng, tau):
    q = f32(rng, 5)
    parts, offsets = ragged(rng, [1, 3, 2, 4], 5)
    out = scoring.hierarchical(q, parts, offsets, tau=tau, details=True)
    pooled, dense = brute_hier(q, parts, offsets, tau)
    assert_close(out.similarity, pooled)
    assert_close(out.dense, dense)
    assert_close(out.final, zscore(dense) + zscore(pooled))


def test_hierarchical_chunk_weights_sum_to_one_per_document(rng):
    q = f32(rng, 8)
    parts, offsets = ragged(rng, [1, 3, 2, 4], 8)
    weights = reference.hierarchical_scores(q, parts, offsets)[3]
    for a, b in zip(offsets[:-1], offsets[1:]):
        np.testing.assert_allclose(weights[a:b].sum(), 1.0, atol=1e-6)


def test_hierarchical_long_documents(backend_name, rng):
    """More chunks than the kernel's tile (scoring.BLOCK_TOKENS) in one and in total."""
    lengths = [1300, 1, 900, 1030]
    q = f32(rng, 16)
    parts, offsets = ragged(rng, lengths, 16)
    parts[1299] = q * 2                           # the best chunk sits past the first tile
    out = scoring.hierarchical(q, parts, offsets, tau=0.1, details=True)
    final, pooled, dense, _ = reference.hierarchical_scores(q, parts, offsets, tau=0.1)
    assert_close(out.similarity, pooled)
    assert_close(out.dense, dense)
    assert_close(out.final, final)


def test_hierarchical_single_candidate_is_zero(backend_name, rng):
    out = scoring.hierarchical(f32(rng, 8), f32(rng, 4, 8), np.array([0, 4]))
    np.testing.assert_array_equal(out, [0.0])


def test_hierarchical_single_chunk_docs_pool_to_cosine(backend_name, rng):
    q, parts = f32(rng, 8), f32(rng, 5, 8)
    out = scoring.hierarchical(q, parts, np.arange(6), details=True)
    cos = reference.normalize(parts) @ reference.normalize(q)
    assert_close(out.similarity, cos)
    assert_close(out.dense, cos)


@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0])
def test_hierarchical_final_is_z_mix(backend_name, rng, lam):
    q = f32(rng, 8)
    parts, offsets = ragged(rng, [1, 3, 2, 4, 2], 8)
    out = scoring.hierarchical(q, parts, offsets, lam=lam, details=True)
    assert_close(out.final, zscore(out.dense) + lam * zscore(out.similarity))


def test_hierarchical_permutation_equivariant(backend_name, rng):
    lengths = [3, 1, 7, 2, 5, 1]
    q = f32(rng, 12)
    parts, offsets = ragged(rng, lengths, 12)
    perm = rng.permutation(6)
    pparts = np.concatenate([parts[offsets[i]:offsets[i + 1]] for i in perm])
    poffsets = np.concatenate([[0], np.cumsum([lengths[i] for i in perm])])
    out = scoring.hierarchical(q, parts, offsets, details=True)
    pout = scoring.hierarchical(q, pparts, poffsets, details=True)
    for a, b in zip(pout, out):
        assert_close(a, b[perm])


def test_hierarchical_scale_invariant(backend_name, rng):
    q = f32(rng, 12)
    parts, offsets = ragged(rng, [3, 1, 7], 12)
    out = scoring.hierarchical(q, parts, offsets, details=True)
    factors = rng.uniform(0.01, 100, (11, 1)).astype(np.float32)
    scaled = scoring.hierarchical(q * 40, parts * factors, offsets, details=True)
    assert_close(scaled.similarity, out.similarity)
    assert_close(scaled.dense, out.dense)


@pytest.mark.parametrize("use_dense", [False, True])
@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_hierarchical_batch_with_padding_equals_single(backend_name, rng, tau, use_dense):
    m, d = 4, 16
    lengths = [[1, 4, 2], [7, 1, 1], [2, 2, 9], [1, 1, 1]]
    docs = [ragged(rng, ls, d) for ls in lengths]
    parts, offsets = pad_batch(rng, docs, d)
    q = f32(rng, m, d)
    dense = f32(rng, m, 3) if use_dense else None
    out = scoring.hierarchical(q, parts, offsets, tau=tau, dense=dense, details=True)
    assert out.final.shape == (m, 3)
    for i, (tok, off) in enumerate(docs):
        single = scoring.hierarchical(q[i], tok, off, tau=tau,
                                      dense=None if dense is None else dense[i], details=True)
        for a, b in zip(out, single):
            assert_close(a[i], b)


# --------------------------------------------------------------------------------------------
# both backends agree on larger random problems

def test_scorers_backends_agree(compiled, rng):
    d = 48
    q, cands = f32(rng, 6, d), f32(rng, 6, 200, d)
    docs = [ragged(rng, rng.integers(1, 40, size=30), d) for _ in range(6)]
    tokens, offsets = pad_batch(rng, docs, d)
    qt = f32(rng, 6, 8, d)
    results = []
    for name in ("compiled", "numpy"):
        with rerank.use_backend(name):
            results.append((
                scoring.memory_attention(q, cands, heads=3, alpha=0.5),
                scoring.late_interaction(qt, tokens, offsets, details=True),
                scoring.late_interaction(qt, tokens, offsets, tau=0.1, details=True),
                scoring.hierarchical(q, tokens, offsets, details=True),
            ))
    (mem_c, late_c, soft_c, hier_c), (mem_n, late_n, soft_n, hier_n) = results
    assert_close(mem_c, mem_n)
    for a, b in zip((*late_c, *soft_c, *hier_c), (*late_n, *soft_n, *hier_n)):
        assert_close(a, b)


# --------------------------------------------------------------------------------------------
# late interaction on int8 document codes (rerank.quantization): both backends against the numpy
# oracle reference.late_interaction_int8_scores, which a brute-force loop checks in turn.

from rerank.quantization import Int8Rows, quantize_int8, quantize_query  # noqa: E402


def int8_ragged(rng, lengths, d):
    tokens, offsets = ragged(rng, lengths, d)
    return quantize_int8(tokens).codes, offsets


INT8_SHAPES = [(1, 8), (3, 31), (24, 384), (33, 8), (3, 384), (24, 31)]


@pytest.mark.parametrize("use_idf", [False, True], ids=["no-idf", "idf"])
@pytest.mark.parametrize("tau", [None, 0.05], ids=["maxsim", "tau0.05"])
@pytest.mark.parametrize("t, d", INT8_SHAPES)
def test_int8_late_matches_oracle(backend_name, rng, t, d, tau, use_idf):
    lengths = rng.integers(1, 201, size=7)
    codes, offsets = int8_ragged(rng, lengths, d)
    qt = f32(rng, t, d)
    idf = rng.uniform(0.1, 3.0, t).astype(np.float32) if use_idf else None
    out = scoring.late_interaction(qt, codes, offsets, tau=tau, idf=idf, details=True)
    final, sims, dense = reference.late_interaction_int8_scores(qt, codes, offsets, tau=tau,
                                                                idf=idf)
    assert_close(out.similarity, sims, what="similarity")
    assert_close(out.dense, dense, what="dense")
    assert_close(out.final, final, what="final")


@pytest.mark.parametrize("tau", [None, 0.1])
@pytest.mark.parametrize("lengths", [[300, 1, 257, 255], [256, 256, 1], [1, 1, 1], [1000]],
                         ids=["around-tile", "exact-tiles", "ones", "one-long"])
def test_int8_late_across_tiles(backend_name, rng, lengths, tau):
    assert scoring.BLOCK_TOKENS_INT8 == 256
    codes, offsets = int8_ragged(rng, lengths, 40)
    qt = f32(rng, 5, 40)
    codes[offsets[1] - 1] = quantize_int8(qt[:1] * 3).codes[0]   # a planted match deep inside
    out = scoring.late_interaction(qt, codes, offsets, tau=tau, details=True)
    for a, b in zip(out, reference.late_interaction_int8_scores(qt, codes, offsets, tau=tau)):
        assert_close(a, b)


def test_int8_oracle_matches_brute_force(rng):
    """The oracle is cos(a_t, b_j) with a_t = quantize_query(q_t): check it with plain loops."""
    qt = f32(rng, 3, 6)
    codes, offsets = int8_ragged(rng, [1, 4, 2, 5], 6)
    a = quantize_query(qt).codes
    for tau in (None, 0.1):
        for idf in (None, np.array([0.5, 2.0, 1.0], np.float32)):
            sims, dense = brute_late(a.astype(float), codes.astype(float), offsets, tau=tau,
                                     idf=idf)
            _, s, e = reference.late_interaction_int8_scores(qt, codes, offsets, tau=tau, idf=idf)
            assert_close(s, sims)
            assert_close(e, dense)


def test_int8_full_code_range(backend_name, rng):
    """Every int8 code, −128 included, and the operands at their extremes: document codes 127/−128
    against query codes ±64 (kernel operands a + 64 = 128 or 0) reach vpmaddubsw's extreme pair
    sums 2·128·127 and 2·128·(−128) = −32768 (the int16 minimum) without saturating."""
    d = 64
    codes = rng.integers(-128, 128, size=(40, d)).astype(np.int8)
    codes[0] = 127
    codes[1] = -128
    codes[2, ::2], codes[2, 1::2] = -128, 127
    offsets = np.array([0, 1, 2, 3, 17, 40])
    qt = np.ones((4, d), np.float32)
    qt[1] = -1.0
    qt[2, ::2] = -1.0
    qt[3] = f32(rng, d)
    assert np.abs(quantize_query(qt).codes[:3]).min() == 64
    out = scoring.late_interaction(qt, codes, offsets, details=True)
    final, sims, dense = reference.late_interaction_int8_scores(qt, codes, offsets)
    assert_close(out.similarity, sims)
    assert_close(out.dense, dense)
    assert_close(out.final, final)
    a3 = quantize_query(qt[3:]).codes[0].astype(float)
    per_token = np.array([1.0, -1.0, 0.0, a3.sum() / (np.linalg.norm(a3) * np.sqrt(d))])
    assert_close(out.similarity[:2], [per_token.mean(), -per_token.mean()])   # one token each


@pytest.mark.parametrize("use_dense", [False, True])
@pytest.mark.parametrize("tau", [None, 0.1])
def test_int8_batch_with_padding_equals_single(backend_name, rng, tau, use_dense):
    m, t, d = 3, 4, 33
    docs = [int8_ragged(rng, ls, d) for ls in ([1, 40, 2], [7, 1, 300], [2, 2, 9])]
    rows = max(int(o[-1]) for _, o in docs) + 3
    codes = rng.integers(-128, 128, size=(m, rows, d)).astype(np.int8)   # padding: anything
    for i, (c, off) in enumerate(docs):
        codes[i, :off[-1]] = c
    offsets = np.stack([o for _, o in docs])
    qt = f32(rng, m, t, d)
    idf = rng.uniform(0.1, 2, (m, t)).astype(np.float32)
    dense = f32(rng, m, 3) if use_dense else None
    out = scoring.late_interaction(qt, codes, offsets, tau=tau, idf=idf, dense=dense, details=True)
    assert out.final.shape == (m, 3)
    for i, (c, off) in enumerate(docs):
        single = scoring.late_interaction(qt[i], c, off, tau=tau, idf=idf[i],
                                          dense=None if dense is None else dense[i], details=True)
        for a, b in zip(out, single):
            assert_close(a[i], b)


def test_int8_given_dense_and_scales(backend_name, rng):
    x, offsets = ragged(rng, [3, 1, 7, 2], 16)
    stored = quantize_int8(x)
    qt = f32(rng, 6, 16)
    dense = np.array([0.3, -0.1, 0.9, 0.5], np.float32)
    out = scoring.late_interaction(qt, stored.codes, offsets, dense=dense, details=True)
    np.testing.assert_array_equal(out.dense, dense)
    assert_close(out.final, zscore(dense) + zscore(out.similarity))
    # the scales cancel in the cosine: an Int8Rows, explicit scales, or none give one answer
    for kwargs in ({}, {"doc_scales": stored.scales}, {"doc_scales": stored.scales * 7}):
        np.testing.assert_array_equal(
            scoring.late_interaction(qt, stored.codes, offsets, dense=dense, **kwargs), out.final)
    np.testing.assert_array_equal(scoring.late_interaction(qt, stored, offsets, dense=dense),
                                  out.final)


def test_int8_ranks_like_float32(backend_name, rng):
    """Quantisation moves MaxSim by ~1e-3 here: well-separated candidates keep their order."""
    d = 384
    qt = f32(rng, 24, d)
    x, offsets = ragged(rng, [80, 90, 100, 110], d)
    for i, strength in enumerate([0.0, 0.5, 1.0, 2.0]):     # plant stronger and stronger matches
        x[offsets[i]:offsets[i] + 24] += strength * qt
    f = scoring.late_interaction(qt, x, offsets, details=True).similarity
    q = scoring.late_interaction(qt, quantize_int8(x).codes, offsets, details=True).similarity
    assert np.argsort(f).tolist() == np.argsort(q).tolist() == [0, 1, 2, 3]
    assert np.abs(f - q).max() < 5e-3


def test_int8_reranker_candidates(backend_name, rng):
    from rerank.reranker import Candidates, Reranker

    qt = f32(rng, 5, 24)
    x, offsets = ragged(rng, [4, 9, 2], 24)
    stored = quantize_int8(x)
    dense = np.array([0.1, 0.4, 0.2], np.float32)
    want = scoring.late_interaction(qt, stored.codes, offsets, dense=dense)
    for tokens in (stored.codes, stored):
        cands = Candidates(tokens=tokens, token_offsets=offsets, dense=dense, ids=["a", "b", "c"])
        ranked = Reranker().rank(qt, cands)
        assert ranked.mechanism == "cross-attention"
        assert [r["corpus_id"] for r in ranked] == [["a", "b", "c"][i] for i in np.argsort(-want)]
        assert_close([r["score"] for r in ranked], np.sort(want)[::-1])


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.bool_])
def test_int8_other_integer_dtypes_raise(backend_name, rng, dtype):
    qt = f32(rng, 2, 8)
    with pytest.raises(TypeError, match="int8"):
        scoring.late_interaction(qt, np.ones((4, 8), dtype), np.array([0, 1, 4]))


def test_int8_bad_inputs_raise(backend_name, rng):
    qt = f32(rng, 2, 8)
    codes, offsets = int8_ragged(rng, [1, 3], 8)
    scales = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="last dimension"):
        scoring.late_interaction(f32(rng, 2, 9), codes, offsets)
    with pytest.raises(ValueError, match="must end at 4"):
        scoring.late_interaction(qt, codes, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        scoring.late_interaction(qt, codes, np.array([0, 2, 2, 4]))
    with pytest.raises(ValueError, match="2-D"):
        scoring.late_interaction(qt, codes[None], offsets)
    with pytest.raises(ValueError, match="empty"):
        scoring.late_interaction(qt, codes[:0], np.array([0, 0]))
    with pytest.raises(ValueError, match="doc_scales must have shape"):
        scoring.late_interaction(qt, codes, offsets, doc_scales=scales[:3])
    with pytest.raises(ValueError, match="doc_scales"):
        scoring.late_interaction(qt, codes, offsets, doc_scales=-scales)
    with pytest.raises(ValueError, match="doc_scales"):
        scoring.late_interaction(qt, codes, offsets, doc_scales=scales * np.nan)
    with pytest.raises(ValueError, match="doc_scales go with int8"):
        scoring.late_interaction(qt, codes.astype(np.float32), offsets, doc_scales=scales)
    with pytest.raises(ValueError, match="given twice"):
        scoring.late_interaction(qt, Int8Rows(codes, scales), offsets, doc_scales=scales)
    with pytest.raises(ValueError, match="d ≤ 65536"):
        scoring.late_interaction(np.ones((1, 65537), np.float32), np.ones((1, 65537), np.int8),
                                 np.array([0, 1]))
    bad = qt.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="query_tokens"):
        scoring.late_interaction(bad, codes, offsets)


@pytest.mark.parametrize("tau", [None, 0.1])
@pytest.mark.parametrize("use_dense", [False, True])
def test_int8_single_query_fast_path_equals_general_path(compiled, rng, tau, use_dense):
    """One query with int64 offsets and no idf is validated inside the kernel call; int32 offsets
    or an all-ones idf take the general path: same kernel, same answer, bit for bit."""
    codes, offsets = int8_ragged(rng, rng.integers(1, 300, size=9), 31)
    qt = f32(rng, 5, 31)
    dense = f32(rng, 9) if use_dense else None
    fast = scoring.late_interaction(qt, codes, offsets, tau=tau, dense=dense, details=True)
    for kwargs in ({"doc_offsets": offsets.astype(np.int32)},
                   {"doc_offsets": offsets, "idf": np.ones(5, np.float32)}):
        general = scoring.late_interaction(qt, codes, tau=tau, dense=dense, details=True, **kwargs)
        for a, b in zip(fast, general):
            np.testing.assert_array_equal(a, b)
    bad = np.array(dense if use_dense else np.ones(9), np.float32)
    bad[4] = np.nan
    with pytest.raises(ValueError, match="dense"):
        scoring.late_interaction(qt, codes, offsets, tau=tau, dense=bad)
    with pytest.raises(ValueError, match="tau"):
        scoring.late_interaction(qt, codes, offsets, tau=-1.0)
    with pytest.raises(ValueError, match="lam"):
        scoring.late_interaction(qt, codes, offsets, lam=float("nan"))


def test_int8_backends_agree_on_a_large_batch(compiled, rng):
    d = 384
    docs = [int8_ragged(rng, rng.integers(80, 121, size=30), d) for _ in range(3)]
    rows = max(int(o[-1]) for _, o in docs)
    codes = np.zeros((3, rows, d), np.int8)
    for i, (c, off) in enumerate(docs):
        codes[i, :off[-1]] = c
    offsets = np.stack([o for _, o in docs])
    qt = f32(rng, 3, 24, d)
    results = []
    for name in ("compiled", "numpy"):
        with rerank.use_backend(name):
            results.append((*scoring.late_interaction(qt, codes, offsets, details=True),
                            *scoring.late_interaction(qt, codes, offsets, tau=0.1, details=True)))
    for a, b in zip(*results):
        assert_close(a, b)


def test_int8_threads_give_the_same_answer(compiled, rng):
    codes, offsets = int8_ragged(rng, rng.integers(80, 121, size=30), 384)
    qt = f32(rng, 24, 384)
    rerank.set_num_threads(1)
    one = scoring.late_interaction(qt, codes, offsets, details=True)
    rerank.set_num_threads(2)
    two = scoring.late_interaction(qt, codes, offsets, details=True)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def exact_int8_maxsim(qt, codes, offsets, idf=None):
    """MaxSim as the compiled int8 kernel computes it, bit for bit: exact int64 dot products of
    the query codes with the document codes, then float32 cosines (dot·(1/√‖a‖²))·(1/√‖b‖²),
    maxima per candidate, and the kernel's weighted sum (rounded to float32 at each step)."""
    a = quantize_query(qt).codes.astype(np.int64)
    b = codes.astype(np.int64)
    dots = a @ b.T

    def inv_norms(x):
        n2 = (x * x).sum(axis=1).astype(np.float32)
        with np.errstate(divide="ignore"):
            return np.where(n2 > 0, np.float32(1) / np.sqrt(n2), np.float32(0)).astype(np.float32)

    s = (dots.astype(np.float32) * inv_norms(a)[:, None]) * inv_norms(b)[None, :]
    w = np.ones(len(a), np.float32) if idf is None else np.asarray(idf, np.float32)
    wsum = np.float32(0)
    for x in w:
        wsum = np.float32(np.float64(wsum) + np.float64(x))
    out = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        val = np.float32(0)
        for x, m in zip(w, s[:, lo:hi].max(axis=1)):
            val = np.float32(np.float64(val) + np.float64(x) * np.float64(m))
        out.append(np.float32(val / wsum))
    return np.array(out, np.float32)


@pytest.mark.parametrize("t", [1, 3, 5, 6, 8, 9, 16, 24, 25, 33])
@pytest.mark.parametrize("d", [5, 40, 64, 384])
def test_int8_maxsim_is_exactly_the_integer_dot_reference(compiled, rng, t, d):
    """Every kernel path (dot products along the rows for t ≤ 5, the packed kernel with 1, 2 or 3
    groups of 8 query rows, rows read in place or padded) gives the integer-dot MaxSim exactly,
    −128 codes and idf weights included."""
    lengths = rng.integers(1, 120, size=6)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    codes = rng.integers(-128, 128, size=(int(offsets[-1]), d)).astype(np.int8)
    codes[0] = -128
    qt = f32(rng, t, d)
    idf = rng.uniform(0.1, 3.0, t).astype(np.float32)
    for w in (None, idf):
        got = scoring.late_interaction(qt, codes, offsets, idf=w, details=True).similarity
        np.testing.assert_array_equal(got, exact_int8_maxsim(qt, codes, offsets, idf=w))


@pytest.mark.parametrize("tau", [None, 0.1])
@pytest.mark.parametrize("t", [4, 12, 24])
def test_int8_zero_idf_tokens_are_skipped_with_the_same_result(backend_name, rng, t, tau):
    """Query tokens of idf weight 0 (e.g. punctuation a word filter drops) are left out of the
    similarities: the same answer, bit for bit, as without those tokens (dense given: the default
    dense score averages all query tokens)."""
    codes, offsets = int8_ragged(rng, rng.integers(1, 300, size=8), 40)
    qt = f32(rng, t, 40)
    idf = rng.uniform(0.1, 3.0, t).astype(np.float32)
    idf[::3] = 0.0
    keep = idf > 0
    dense = f32(rng, 8)
    out = scoring.late_interaction(qt, codes, offsets, tau=tau, idf=idf, dense=dense, details=True)
    kept = scoring.late_interaction(qt[keep], codes, offsets, tau=tau, idf=idf[keep], dense=dense,
                                    details=True)
    for a, b in zip(out, kept):
        if backend_name == "compiled":
            np.testing.assert_array_equal(a, b)
        else:
            assert_close(a, b)
    _, sims, _ = reference.late_interaction_int8_scores(qt, codes, offsets, tau=tau, idf=idf,
                                                        dense=dense)
    assert_close(out.similarity, sims)
