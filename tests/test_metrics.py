"""pass@k, per-prompt metrics and their aggregation (eager_local.eval.metrics)."""

import math
from fractions import Fraction

import pytest

from eager_local.eval.metrics import aggregate, paired_bootstrap, pass_at_k_unbiased, prompt_metrics


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 1, 0.4),  # pass@1 = c/n
        (10, 0, 1, 0.0),
        (10, 0, 10, 0.0),
        (10, 10, 1, 1.0),
        (10, 10, 5, 1.0),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 4, 1 - 35 / 210),  # C(7,4)=35, C(10,4)=210
        (6, 5, 2, 1.0),  # n - c < k: every pair holds a correct one
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k_unbiased(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k_unbiased(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(3000, 50) is about 1e109 and C(3000, 1500) overflows a float; the product form copes.
    exact = 1 - Fraction(math.comb(2000, 50), math.comb(3000, 50))
    assert pass_at_k_unbiased(3000, 1000, 50) == pytest.approx(float(exact), abs=1e-12)
    assert pass_at_k_unbiased(3000, 1, 1500) == pytest.approx(0.5, abs=1e-12)


def test_pass_at_k_clamps_k_to_n():
    assert pass_at_k_unbiased(3, 1, 32) == 1.0
    assert pass_at_k_unbiased(3, 0, 32) == 0.0
    assert pass_at_k_unbiased(3, 1, 32) == pass_at_k_unbiased(3, 1, 3)


def test_pass_at_k_with_no_samples_is_zero():
    assert pass_at_k_unbiased(0, 0, 1) == 0.0


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (-1, 0, 1), (5, -1, 1), (5, 2, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k_unbiased(n, c, k)


def test_prompt_metrics_exact_values():
    metrics = prompt_metrics(
        correct=[False, True, False, True],
        answers=["17", "18", "17", "$18"],
        reference="18",
        kind="numeric",
        tokens=1234,
    )
    # "17" and "18" tie 2-2; "17" came first, so the vote is wrong.
    assert metrics == {
        "n": 4,
        "c": 2,
        "p@1": 0.5,
        "pass@k": 1.0,
        "cons@k": 0.0,
        "PR": 0.5,
        "#T": 1234,
        "#S": 4,
        "majority": "17",
    }


def test_prompt_metrics_majority_ignores_missing_answers():
    metrics = prompt_metrics([False, False, True], [None, None, "\\frac{1}{2}"], "0.5", "latex", 10)
    assert (metrics["cons@k"], metrics["pass@k"], metrics["majority"]) == (1.0, 1.0, "\\frac{1}{2}")
    assert metrics["p@1"] == pytest.approx(1 / 3)


def test_prompt_metrics_all_wrong():
    metrics = prompt_metrics([False], [None], "7", "numeric", 99)
    assert metrics == {
        "n": 1, "c": 0, "p@1": 0.0, "pass@k": 0.0, "cons@k": 0.0, "PR": 0.0, "#T": 99, "#S": 1, "majority": None,
    }


def test_prompt_metrics_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 grades but 1 answers"):
        prompt_metrics([True, False], ["1"], "1", "numeric", 5)


def test_aggregate_means_and_fixed_k():
    first = prompt_metrics([True, False, False, False, False], ["1", "2", "2", "3", "4"], "1", "numeric", 100)
    second = prompt_metrics([True, True], ["5", "5"], "5", "numeric", 300)
    summary = aggregate([first, second], ks=[1, 2])
    assert summary["prompts"] == 2
    assert summary["p@1"] == pytest.approx((0.2 + 1.0) / 2)
    assert summary["pass@k"] == 1.0
    assert summary["cons@k"] == 0.5  # first prompt votes "2", second "5"
    assert summary["PR"] == pytest.approx(0.6)
    assert summary["#T"] == 200.0
    assert summary["#S"] == 3.5
    assert summary["pass@1"] == pytest.approx(0.6)
    assert summary["pass@2"] == pytest.approx(((1 - 6 / 10) + 1.0) / 2)  # C(4,2)/C(5,2) = 6/10
    assert "majority" not in summary


def test_aggregate_of_nothing():
    assert aggregate([], ks=[1]) == {"prompts": 0}


def test_paired_bootstrap_interval():
    assert paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0]) == (0.0, 0.0)  # same outcomes: no difference
    assert paired_bootstrap([1.0] * 5, [0.0] * 5) == (1.0, 1.0)
    a = [1.0] * 12 + [0.0] * 28  # 30 % vs 10 %: the interval holds +0.2 and is inside [-1, 1]
    b = [1.0] * 4 + [0.0] * 36
    low, high = paired_bootstrap(a, b)
    assert -1.0 <= low < 0.2 < high <= 1.0
    assert paired_bootstrap(a, b) == (low, high)  # fixed seed: reproducible
