"""rerank.masking: every pattern against a hand-drawn 0/1 matrix, plus CSR and argument checks."""
from __future__ import annotations

import numpy as np
import pytest

from rerank import masking


def drawn(*rows: str) -> np.ndarray:
    """A boolean matrix from rows of '0'/'1' characters."""
    return np.array([[c == "1" for c in row.replace(" ", "")] for row in rows])


def check(mask, *rows):
    expected = drawn(*rows)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask.astype(int), expected.astype(int))


# ---------------------------------------------------------------------------------------------
# element-wise patterns

def test_causal_square_and_bottom_right():
    check(masking.causal(4, 4),
          "1000",
          "1100",
          "1110",
          "1111")
    check(masking.causal(3, 5),          # query i sees keys j ≤ i + 2
          "11100",
          "11110",
          "11111")
    check(masking.causal(4, 2),          # more queries than keys: the first two see nothing
          "00",
          "00",
          "10",
          "11")


def test_padding():
    check(masking.padding(3, 2, 5),
          "11100",
          "11100")
    batch = masking.padding([2, 4], 2, 4)
    assert batch.shape == (2, 1, 2, 4)
    check(batch[0, 0], "1100", "1100")
    check(batch[1, 0], "1111", "1111")


def test_sliding_window():
    check(masking.sliding_window(8, 8, 1),
          "11000000",
          "11100000",
          "01110000",
          "00111000",
          "00011100",
          "00001110",
          "00000111",
          "00000011")
    check(masking.sliding_window(3, 6, 1),    # queries at positions 3, 4, 5
          "001110",
          "000111",
          "000011")
    check(masking.sliding_window(3, 3, 0), "100", "010", "001")


def test_dilated():
    check(masking.dilated(8, 8, 1, 2),
          "10100000",
          "01010000",
          "10101000",
          "01010100",
          "00101010",
          "00010101",
          "00001010",
          "00000101")
    np.testing.assert_array_equal(masking.dilated(8, 8, 2, 1), masking.sliding_window(8, 8, 2))


def test_strided():
    check(masking.strided(8, 8, 3),
          "10010010",
          "01001001",
          "00100100",
          "10010010",
          "01001001",
          "00100100",
          "10010010",
          "01001001")


def test_global_tokens():
    check(masking.global_tokens(8, 8, [0, 5]),
          "11111111",
          "10000100",
          "10000100",
          "10000100",
          "10000100",
          "11111111",
          "10000100",
          "10000100")
    check(masking.global_tokens(4, 8, [0, -3]),     # −3 is position 5 = query 1 (p = i + 4)
          "10000100",
          "11111111",
          "10000100",
          "10000100")
    assert not masking.global_tokens(3, 3, []).any()


def test_fixed_pattern_and_its_causal_form():
    fixed = masking.fixed_pattern(8, 8, 4, 1)
    check(fixed,
          "11110001",
          "11110001",
          "11110001",
          "11110001",
          "00011111",
          "00011111",
          "00011111",
          "00011111")
    # with causal: Child et al.'s autoregressive "fixed" pattern, A1 ∪ A2 with j ≤ i
    check(masking.combine(fixed, masking.causal(8, 8)),
          "10000000",
          "11000000",
          "11100000",
          "11110000",
          "00011000",
          "00011100",
          "00011110",
          "00011111")


# ---------------------------------------------------------------------------------------------
# block patterns

def test_block_sparse():
    layout = np.array([[1, 0], [1, 1]], dtype=bool)
    check(masking.block_sparse(layout, 2),
          "1100",
          "1100",
          "1111",
          "1111")
    check(masking.block_sparse(layout, (1, 3)),
          "111000",
          "111111")
    check(masking.block_sparse(layout, 2, 3, 3),
          "110",
          "110",
          "111")


def test_bigbird_layout_window_and_globals():
    check(masking.bigbird_layout(5, window=1, global_blocks=(0, -1)),
          "11111",
          "11101",
          "11111",
          "10111",
          "11111")
    check(masking.bigbird_layout(4, window=0, global_blocks=(0,)),
          "1111",
          "1100",
          "1010",
          "1001")


def test_bigbird_layout_random_blocks():
    base = masking.bigbird_layout(10, window=1, global_blocks=(0,))
    layout = masking.bigbird_layout(10, window=1, global_blocks=(0,), random=2, seed=7)
    extra = layout & ~base
    # every non-global query block gets exactly 2 random blocks outside its window and globals
    np.testing.assert_array_equal(extra[1:].sum(axis=1), 2)
    assert not extra[0].any()
    np.testing.assert_array_equal(
        layout, masking.bigbird_layout(10, window=1, global_blocks=(0,), random=2, seed=7))
    assert not np.array_equal(
        layout, masking.bigbird_layout(10, window=1, global_blocks=(0,), random=2, seed=8))
    # causal: random blocks only in the past, beyond the window
    causal = masking.bigbird_layout(10, window=1, global_blocks=(0,), random=1, seed=0,
                                    causal=True)
    extra = causal & ~base
    rows, cols = np.nonzero(extra)
    assert (cols < rows - 1).all()
    np.testing.assert_array_equal(extra[3:].sum(axis=1), 1)    # block 3 on has a free past block
    assert not extra[:3].any()


def test_random_blocks():
    exclude = np.eye(6, dtype=bool)
    layout = masking.random_blocks(6, 6, 2, seed=3, exclude=exclude)
    np.testing.assert_array_equal(layout.sum(axis=1), 2)
    assert not (layout & exclude).any()
    np.testing.assert_array_equal(layout, masking.random_blocks(6, 6, 2, seed=3, exclude=exclude))
    full = masking.random_blocks(3, 4, 10, seed=0)          # fewer free blocks than r: all
    assert full.all()


# ---------------------------------------------------------------------------------------------
# combine and CSR

def test_combine():
    a = drawn("110", "011")
    b = drawn("100", "111")
    check(masking.combine(a, b), "100", "011")
    check(masking.combine(a, b, op="or"), "110", "111")
    check(masking.combine(a, np.array([True, False, True])), "100", "001")
    stacked = masking.combine(a, np.stack([b, ~b]))
    assert stacked.shape == (2, 2, 3)


def test_to_csr_and_back():
    mask = masking.sliding_window(8, 8, 1)
    row_ptr, cols = masking.to_csr(mask)
    np.testing.assert_array_equal(row_ptr, [0, 2, 5, 8, 11, 14, 17, 20, 22])
    np.testing.assert_array_equal(cols[:8], [0, 1, 0, 1, 2, 1, 2, 3])
    assert row_ptr.dtype == np.int64 and cols.dtype == np.int64
    np.testing.assert_array_equal(masking.from_csr(row_ptr, cols, 8), mask)


def test_to_csr_stack_and_empty_rows():
    first = drawn("0110", "0000", "1001")
    second = drawn("1000", "1111", "0000")
    row_ptr, cols = masking.to_csr(np.stack([first, second]))
    np.testing.assert_array_equal(row_ptr, [[0, 2, 2, 4], [4, 5, 9, 9]])
    np.testing.assert_array_equal(cols, [1, 2, 0, 3, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(masking.from_csr(row_ptr, cols, 4), np.stack([first, second]))


# ---------------------------------------------------------------------------------------------
# argument checks

@pytest.mark.parametrize("call, match", [
    (lambda: masking.causal(0, 4), "n must be"),
    (lambda: masking.causal(3, 2.5), "m must be"),
    (lambda: masking.sliding_window(4, 4, -1), "w must be"),
    (lambda: masking.dilated(4, 4, 1, 0), "dilation must be"),
    (lambda: masking.strided(4, 4, 0), "stride must be"),
    (lambda: masking.global_tokens(4, 4, [4]), "indices must lie"),
    (lambda: masking.fixed_pattern(4, 4, 2, 3), "summary"),
    (lambda: masking.padding([5], 2, 4), "lengths must lie"),
    (lambda: masking.block_sparse(np.ones((2, 2, 2), bool), 2), "layout must be"),
    (lambda: masking.block_sparse(np.ones((2, 2), bool), 2, 5, 4), "exceeds"),
    (lambda: masking.block_sparse(np.ones((2, 2), bool), (2, 2, 2)), "block must be"),
    (lambda: masking.random_blocks(2, 2, 1, exclude=np.ones((3, 3), bool)), "exclude"),
    (lambda: masking.bigbird_layout(3, global_blocks=(5,)), "global_blocks"),
    (lambda: masking.combine(np.ones((2, 3), bool), np.ones((4,), bool)), "broadcast"),
    (lambda: masking.combine(np.ones((2, 2), bool), op="xor"), "op must be"),
    (lambda: masking.combine(), "at least one"),
    (lambda: masking.to_csr(np.ones(4, bool)), "2-D"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: masking.combine(np.ones((2, 2)), np.ones((2, 2), bool)),
    lambda: masking.to_csr(np.ones((2, 2))),
    lambda: masking.block_sparse(np.full((2, 2), 0.5), 2),
    lambda: masking.global_tokens(4, 4, [0.5]),
])
def test_bad_types_raise_type_error(call):
    with pytest.raises(TypeError):
        call()
