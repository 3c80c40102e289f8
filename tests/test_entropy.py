import math

import numpy as np
import pytest

from eager_local.entropy import top_k_entropy, top_two_tokens


def direct_entropy(row, k):
    top = sorted(row, reverse=True)[:k]
    z = sum(math.exp(v) for v in top)
    return -sum(math.exp(v) / z * math.log(math.exp(v) / z) for v in top)


def test_matches_direct_formula_on_known_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(5, 300)).astype(np.float32)
    got = top_k_entropy(logits, k=20)
    want = [direct_entropy(list(map(float, row)), 20) for row in logits]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_uniform_top_k_gives_ln_k_and_one_hot_gives_zero():
    flat = np.zeros((1, 100), dtype=np.float32)
    assert top_k_entropy(flat, k=20)[0] == pytest.approx(math.log(20))
    peaked = np.full((1, 100), -1e4, dtype=np.float32)
    peaked[0, 7] = 0
    assert top_k_entropy(peaked, k=20)[0] == pytest.approx(0.0, abs=1e-6)


def test_only_the_top_k_matter():
    row = np.array([[5.0, 4.0, 3.0, -50.0, -60.0]], dtype=np.float32)
    assert top_k_entropy(row, k=3)[0] == pytest.approx(direct_entropy([5, 4, 3], 3))
    changed = row.copy()
    changed[0, 3] = -1.0  # still outside the top 3
    assert top_k_entropy(changed, k=3)[0] == pytest.approx(top_k_entropy(row, k=3)[0])


def test_tempered_ablation_sharpens():
    row = np.array([[2.0, 1.0, 0.5, 0.0]], dtype=np.float32)
    raw = top_k_entropy(row, k=4)[0]
    tempered = top_k_entropy(row, k=4, temperature=0.5)[0]
    assert tempered == pytest.approx(direct_entropy([4.0, 2.0, 1.0, 0.0], 4))
    assert tempered < raw


def test_top_two_tokens():
    row = np.array([0.1, 3.0, -1.0, 2.5, 0.0], dtype=np.float32)
    assert top_two_tokens(row) == (1, 3)
