"""Retrieval quality metrics and the paired significance test (pure functions, numpy only).

Conventions (those of trec_eval / pytrec_eval, which BEIR reports):

- ``ranked_ids`` is one query's ranking, best first; only its first ``k`` entries count, and an
  id repeated in it counts once (at its first rank).
- ``qrels_for_query`` maps document id → graded relevance (an int). A document is *relevant*
  when its relevance is > 0; unjudged documents and negative grades count as 0.
- A query without relevant documents scores 0 on every metric.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["mrr_at_k", "ndcg_at_k", "paired_sign_flip_test", "recall_at_k", "two_fold_splits"]


def _top_k(ranked_ids: Iterable, k: int) -> list:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if isinstance(ranked_ids, str):
        raise TypeError("ranked_ids must be a sequence of ids, not one string")
    out, seen = [], set()
    for doc_id in ranked_ids:
        if doc_id in seen:
            continue
        seen.add(doc_id)
        out.append(doc_id)
        if len(out) == k:
            break
    return out


def _gain(qrels: Mapping, doc_id) -> float:
    return float(max(qrels.get(doc_id, 0), 0))


def ndcg_at_k(ranked_ids: Sequence, qrels_for_query: Mapping, k: int = 10) -> float:
    """Normalised discounted cumulative gain at ``k`` with graded (linear) gains:

        DCG@k  = Σ_{i=1..k} rel(d_i) / log2(i + 1)
        IDCG@k = the same sum over the judged relevances sorted in decreasing order (all judged
                 relevant documents, retrieved or not)
        nDCG@k = DCG@k / IDCG@k   (0 when IDCG@k = 0)

    gain = rel, as trec_eval's ``ndcg_cut`` (and so BEIR/pytrec_eval) computes it."""
    top = _top_k(ranked_ids, k)
    dcg = sum(_gain(qrels_for_query, d) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted((max(r, 0) for r in qrels_for_query.values()), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal) if r > 0)
    return float(dcg / idcg) if idcg > 0 else 0.0


def recall_at_k(ranked_ids: Sequence, qrels_for_query: Mapping, k: int = 10) -> float:
    """Recall at ``k``: |relevant ∩ top k| / |relevant| (relevant: relevance > 0; 0 when the
    query has no relevant document)."""
    top = _top_k(ranked_ids, k)
    relevant = sum(1 for r in qrels_for_query.values() if r > 0)
    if relevant == 0:
        return 0.0
    return sum(1 for d in top if qrels_for_query.get(d, 0) > 0) / relevant


def mrr_at_k(ranked_ids: Sequence, qrels_for_query: Mapping, k: int = 10) -> float:
    """Reciprocal rank at ``k``: 1 / (rank of the first relevant document among the top k),
    0 when none is there. Averaged over queries this is MRR@k."""
    for rank, doc_id in enumerate(_top_k(ranked_ids, k), start=1):
        if qrels_for_query.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


#: Up to this many nonzero differences the sign-flip test enumerates all 2^n sign vectors.
EXACT_MAX = 16


def paired_sign_flip_test(a, b, *, rounds: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired randomisation (sign-flip) test of "a and b have the same mean".

    With per-query differences dᵢ = aᵢ − bᵢ (n queries) and the observed statistic
    T = |mean(d)|, the null hypothesis makes every sign vector s ∈ {−1, +1}ⁿ equally likely, and

        p = #{s : |mean(s·d)| ≥ T} / 2ⁿ                       (exact)
        p = (1 + #{r : |mean(s_r·d)| ≥ T}) / (1 + rounds)      (Monte Carlo, random s_r)

    The exact form is used when at most 16 differences are nonzero (zeros do not change under a
    sign flip, so only the nonzero ones are enumerated); otherwise ``rounds`` random sign vectors
    from ``numpy.random.default_rng(seed)`` are drawn. Identical inputs give p = 1. Comparisons
    allow a relative slack of 1e-9 so that ties in exact arithmetic stay ties in floating point.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D with the same length; got shapes {a.shape} and "
                         f"{b.shape}")
    if a.size == 0:
        raise ValueError("a and b must not be empty")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer; got {rounds!r}")
    d = (a - b)[a != b]
    if d.size == 0:
        return 1.0
    # every statistic is a mean over the same n, so sums compare the same way
    observed = abs(d.sum())
    slack = 1e-9 * max(np.abs(d).sum(), 1e-300)
    threshold = observed - slack
    if d.size <= EXACT_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.count_nonzero(np.abs(signs @ d) >= threshold) / signs.shape[0])
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, min(rounds, 2_000_000 // d.size))
    done = 0
    while done < rounds:
        m = min(chunk, rounds - done)
        signs = rng.integers(0, 2, size=(m, d.size), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
        done += m
    return float((1 + hits) / (1 + rounds))


def _fold(query_id: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}\0{query_id}".encode(), digest_size=8).digest()
    return digest[-1] & 1


def two_fold_splits(query_ids: Iterable[str], seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Two-fold cross-validation splits: ``[(half_a, half_b), (half_b, half_a)]`` as
    ``(tune, test)`` pairs.

    Each query goes to half a or b by one bit of a BLAKE2b hash of ``(seed, id)``, so the split is
    deterministic, about even, and adding or removing queries never moves the others. Ids keep
    their input order within a half. ``ValueError`` for repeated ids, non-string ids, or when a
    half would be empty (too few queries)."""
    ids = list(query_ids)
    bad = [q for q in ids if not isinstance(q, str)]
    if bad:
        raise ValueError(f"query ids must be strings; got {bad[:3]!r}")
    if len(set(ids)) != len(ids):
        seen, repeats = set(), []
        for q in ids:
            if q in seen:
                repeats.append(q)
            seen.add(q)
        raise ValueError(f"query ids repeat: {repeats[:5]!r}")
    halves: tuple[list[str], list[str]] = ([], [])
    for q in ids:
        halves[_fold(q, seed)].append(q)
    if not halves[0] or not halves[1]:
        raise ValueError(f"{len(ids)} queries leave a half empty: two folds need more queries")
    return [(halves[0], halves[1]), (halves[1], halves[0])]
