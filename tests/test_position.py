"""Position encodings: sinusoidal and RoPE against their formulas, RoPE's relative property,
ALiBi slopes from the paper, T5 buckets against transformers' own implementation."""
import math

import numpy as np
import pytest

from rerank import position


def test_sinusoidal_formula():
    pe = position.sinusoidal(5, 7)
    for p in range(5):
        for i in range(7):
            angle = p / 10000 ** (2 * (i // 2) / 7)
            assert pe[p, i] == pytest.approx(math.sin(angle) if i % 2 == 0 else math.cos(angle),
                                             abs=1e-6)


def test_rope_rotates_pairs_and_keeps_only_relative_positions(rng):
    x = rng.standard_normal((6, 8)).astype(np.float32)
    out = position.apply_rope(x, positions=np.arange(3, 9))
    p, i = 4, 1                                    # row 1 sits at position 4, pair i = 1
    theta = p * 10000 ** (-2 * i / 8)
    a, b = x[1, 2 * i], x[1, 2 * i + 1]
    assert out[1, 2 * i] == pytest.approx(a * math.cos(theta) - b * math.sin(theta), abs=1e-5)
    assert out[1, 2 * i + 1] == pytest.approx(a * math.sin(theta) + b * math.cos(theta), abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    q, k = rng.standard_normal((2, 4, 8))
    dots = position.apply_rope(q, np.arange(4)) @ position.apply_rope(k, np.arange(4)).T
    shifted = position.apply_rope(q, np.arange(4) + 37) @ position.apply_rope(k, np.arange(4) + 37).T
    np.testing.assert_allclose(dots, shifted, atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        position.apply_rope(np.ones((2, 3)))


def test_alibi_slopes_are_the_papers():
    np.testing.assert_allclose(position.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads
    sixteen = [2.0 ** (-(i + 1) / 2) for i in range(16)]
    np.testing.assert_allclose(position.alibi_slopes(12),
                               [2.0 ** -(i + 1) for i in range(8)] + sixteen[0::2][:4])
    bias = position.alibi_bias(2, 3, 5)          # queries at key positions 2, 3, 4
    assert bias.shape == (2, 3, 5)
    # 2 heads: slopes 2^-4, 2^-8; query 0 sits at key position 2
    assert bias[0, 0].tolist() == pytest.approx([-2 / 16, -1 / 16, 0.0, -1 / 16, -2 / 16])
    assert bias[1, 2].tolist() == pytest.approx([-4 / 256, -3 / 256, -2 / 256, -1 / 256, 0.0])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_t5(bidirectional):
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(300)[None, :] - torch.arange(260)[:, None]
    expected = t5.T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=32, max_distance=128).numpy()
    got = position.relative_buckets(260, 300, bidirectional=bidirectional)
    np.testing.assert_array_equal(got, expected)
