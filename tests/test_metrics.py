"""nDCG / recall / MRR on hand-computed examples; the paired sign-flip test; two-fold splits."""
import itertools
import math

import numpy as np
import pytest

from rerank.metrics import (mrr_at_k, ndcg_at_k, paired_sign_flip_test, recall_at_k,
                            two_fold_splits)


# ------------------------------------------------------------------------------------ nDCG
def test_ndcg_binary_relevant_at_ranks_1_and_3():
    qrels = {"a": 1, "b": 1}
    # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5 ; IDCG = 1/log2(2) + 1/log2(3) = 1.6309297536
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert expected == pytest.approx(0.9197207891)
    assert ndcg_at_k(["a", "x", "b", "y"], qrels, k=10) == pytest.approx(expected)


def test_ndcg_graded_gains():
    qrels = {"a": 3, "b": 1, "c": 2}
    # DCG  = 1/log2(2) + 0/log2(3) + 3/log2(4)              = 1 + 0 + 1.5          = 2.5
    # IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4) (3, 2, 1)    = 3 + 1.2618595 + 0.5 = 4.7618595
    expected = 2.5 / (3 + 2 / math.log2(3) + 0.5)
    assert expected == pytest.approx(0.5250051)
    assert ndcg_at_k(["b", "x", "a"], qrels) == pytest.approx(expected)
    # the perfect order scores 1
    assert ndcg_at_k(["a", "c", "b"], qrels) == pytest.approx(1.0)


def test_ndcg_cutoff_unretrieved_relevant_duplicates_and_no_relevant():
    # k = 1 keeps only "x": DCG = 0 ; k = 2: DCG = 1/log2(3), IDCG = 1
    assert ndcg_at_k(["x", "a"], {"a": 1}, k=1) == 0.0
    assert ndcg_at_k(["x", "a"], {"a": 1}, k=2) == pytest.approx(1 / math.log2(3))
    # the ideal counts every judged relevant document, retrieved or not:
    # DCG = 1 ; IDCG = 1 + 1/log2(3) = 1.6309297536 → 0.6131471928
    assert ndcg_at_k(["a"], {"a": 1, "b": 1}) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # a repeated id counts once: "b" is at rank 2 (the second "a" is dropped)
    assert ndcg_at_k(["a", "a", "b"], {"b": 1}) == pytest.approx(1 / math.log2(3))
    # judged non-relevant (0) and negative grades give no gain; nothing relevant → 0
    assert ndcg_at_k(["a", "b"], {"a": 0, "b": -1}) == 0.0
    assert ndcg_at_k([], {"a": 1}) == 0.0


def test_metric_argument_errors():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ndcg_at_k(["a"], {"a": 1}, k=0)
    with pytest.raises(TypeError, match="not one string"):
        recall_at_k("abc", {"a": 1})


# ---------------------------------------------------------------------------- recall, MRR
def test_recall_at_k():
    qrels = {"a": 1, "b": 1, "c": 0, "d": 2}          # relevant: a, b, d (3 documents)
    ranking = ["c", "a", "x", "d"]
    assert recall_at_k(ranking, qrels, k=2) == pytest.approx(1 / 3)     # a
    assert recall_at_k(ranking, qrels, k=10) == pytest.approx(2 / 3)    # a, d
    assert recall_at_k(ranking, {"c": 0}, k=10) == 0.0                  # nothing relevant


def test_mrr_at_k():
    qrels = {"b": 1, "c": 0}
    assert mrr_at_k(["x", "c", "b"], qrels, k=10) == pytest.approx(1 / 3)   # first relevant: 3
    assert mrr_at_k(["x", "c", "b"], qrels, k=2) == 0.0
    assert mrr_at_k(["b", "x"], qrels) == 1.0


# ------------------------------------------------------------------------ sign-flip test
def test_sign_flip_identical_inputs_give_p_one():
    a = [0.5, 0.2, 0.9]
    assert paired_sign_flip_test(a, a) == 1.0
    assert paired_sign_flip_test(np.ones(100), np.ones(100)) == 1.0


def test_sign_flip_exact_small_cases_by_hand():
    # d = a - b = [2, 1, 0]: the zero never changes; the nonzero part [2, 1] has sign sums
    # (+,+) = 3, (+,-) = 1, (-,+) = -1, (-,-) = -3 ; |sum| >= 3 in 2 of 4 → p = 0.5
    assert paired_sign_flip_test([3, 2, 5], [1, 1, 5]) == pytest.approx(0.5)
    # d = [3, 1, 1]: sums ±5, ±3, ±3, ±1 over the 8 sign vectors; |sum| >= 5 in 2 → p = 0.25
    assert paired_sign_flip_test([3, 1, 1], [0, 0, 0]) == pytest.approx(0.25)
    # d = [1, 1, 1, 1]: only all-plus and all-minus reach |sum| = 4 → p = 2/16 = 0.125
    assert paired_sign_flip_test([1, 1, 1, 1], [0, 0, 0, 0]) == pytest.approx(0.125)
    # d = [0.1, 0.2, 0.3]: sign sums ±0.6, ±0.4, ±0.2, ±0 (two vectors each); |sum| >= 0.6 in
    # 2 of 8 → p = 0.25 ; swapping a and b gives the same p (two-sided)
    assert paired_sign_flip_test([0.1, 0.2, 0.3], [0, 0, 0]) == pytest.approx(0.25)
    assert paired_sign_flip_test([0, 0, 0], [0.1, 0.2, 0.3]) == pytest.approx(0.25)


def test_sign_flip_monte_carlo_matches_exact_enumeration():
    rng = np.random.default_rng(1)
    d = rng.normal(0.15, 1.0, 17)                    # 17 nonzero differences: Monte Carlo
    signs = np.array(list(itertools.product((1, -1), repeat=17)), dtype=np.float64)
    exact = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    p = paired_sign_flip_test(d, np.zeros(17), rounds=50_000, seed=3)
    assert abs(p - exact) < 0.01
    assert p == paired_sign_flip_test(d, np.zeros(17), rounds=50_000, seed=3)  # deterministic


def test_sign_flip_strong_consistent_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.2, 0.6, 50)
    a = b + 0.1 + rng.normal(0, 0.02, 50)            # a beats b on every query
    p = paired_sign_flip_test(a, b, rounds=20_000)
    assert p < 0.01 and p >= 1 / (1 + 20_000)       # (1 + 0) / (1 + rounds) at the least


def test_sign_flip_errors():
    with pytest.raises(ValueError, match="same length"):
        paired_sign_flip_test([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        paired_sign_flip_test([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_sign_flip_test([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="rounds"):
        paired_sign_flip_test([1, 2], [2, 1], rounds=0)


# ----------------------------------------------------------------------------- two folds
def test_two_fold_splits_are_stable_and_cover_every_query():
    ids = [f"q{i}" for i in range(1000)]
    (tune, test), (tune2, test2) = two_fold_splits(ids)
    assert tune == test2 and test == tune2
    assert sorted(tune + test, key=ids.index) == ids and not set(tune) & set(test)
    assert 400 < len(tune) < 600                       # about even
    assert [q for q in ids if q in set(tune)] == tune  # input order kept
    # adding queries moves none of the others; the same call gives the same split
    (more_a, more_b), _ = two_fold_splits(ids + [f"new{i}" for i in range(100)])
    assert [q for q in more_a if q in set(ids)] == tune
    assert [q for q in more_b if q in set(ids)] == test
    assert two_fold_splits(ids) == two_fold_splits(ids)
    assert two_fold_splits(ids, seed=1)[0][0] != tune


def test_two_fold_split_errors():
    with pytest.raises(ValueError, match="repeat"):
        two_fold_splits(["a", "b", "a"])
    with pytest.raises(ValueError, match="strings"):
        two_fold_splits([1, 2])
    with pytest.raises(ValueError, match="half empty"):
        two_fold_splits(["only"])
