"""The rivals' stopping rules (eager_local/eval/stopping.py) against values computed independently:
the Beta integral by exact rational integration of the polynomial, ESC's window by hand."""

from __future__ import annotations

import random
from fractions import Fraction
from math import comb

import pytest

from eager_local.errors import ConfigError
from eager_local.eval import stopping as S


def beta_integral(a: int, b: int) -> Fraction:
    """∫_{1/2}^1 x^a (1−x)^b dx / ∫_0^1 x^a (1−x)^b dx, exactly: expand (1−x)^b and integrate term by term."""

    def integral(lo: Fraction) -> Fraction:
        return sum(Fraction(comb(b, j) * (-1) ** j) * (1 - lo ** (a + j + 1)) / (a + j + 1) for j in range(b + 1))

    return integral(Fraction(1, 2)) / integral(Fraction(0))


def test_beta_probability_hand_values():
    # by hand: ∫_{.5}^1 x dx / ∫_0^1 x dx = (3/8) / (1/2); unanimous a gives 1 − 2^−(a+1)
    assert S.beta_probability(0, 0) == 0.5
    assert S.beta_probability(1, 0) == 0.75
    assert S.beta_probability(3, 0) == 15 / 16
    assert S.beta_probability(4, 0) == 31 / 32
    # a = 2, b = 1: [x³/3 − x⁴/4] from 1/2 to 1 = 11/192, over B(3, 2) = 1/12
    assert S.beta_probability(2, 1) == 11 / 16
    assert S.beta_probability(1, 1) == 0.5


@pytest.mark.parametrize("a,b", [(a, b) for a in range(0, 13) for b in range(0, a + 1)] + [(30, 9), (40, 39)])
def test_beta_probability_matches_the_integral(a, b):
    assert S.beta_probability(a, b) == pytest.approx(float(beta_integral(a, b)), rel=1e-12, abs=1e-15)


def test_beta_probability_by_quadrature():
    """A second, numeric check (midpoint rule), independent of the polynomial expansion."""
    n = 200_000
    for a, b in [(5, 2), (9, 4), (3, 3)]:
        xs = [(i + 0.5) / n for i in range(n)]
        f = [x**a * (1 - x) ** b for x in xs]
        assert S.beta_probability(a, b) == pytest.approx(sum(f[n // 2:]) / sum(f), abs=1e-6)


def test_ac_decision_uses_the_two_largest_answer_groups():
    # "4", "4.0" and "$4" are one answer (answers.tally); None does not vote
    d = S.ac_decision(["4", "4.0", None, "$4", "5", "4"], 0.95)
    assert d.counts == (4, 1) and d.value == pytest.approx(float(beta_integral(4, 1)))
    assert not d.stop  # 1 − 7/64 < 0.95
    d = S.ac_decision(["7"] * 4, 0.95)
    assert d.counts == (4, 0) and d.stop  # 31/32
    assert not S.ac_decision(["7"] * 3, 0.95).stop  # 15/16
    assert S.ac_decision(["7"] * 3, 0.9).stop
    assert S.ac_decision([None, None], 0.95).counts == (0, 0)
    assert not S.ac_decision([], 0.95).stop


def test_ac_wave_size():
    assert S.ac_wave_size([], 0.95, 8) == 4  # a ≤ 3 unanimous answers cannot stop at 0.95
    assert S.ac_wave_size([], 0.95, 3) == 3  # cannot fire before the cap: draw what is left
    assert S.ac_wave_size(["3", "3", "3", "5"], 0.95, 8) == 3  # P(5,1) = 15/16, P(6,1) = 247/256
    assert S.ac_wave_size(["3", "3", "3", "5"], 0.95, 6) == 2
    assert S.ac_wave_size(["3", "5"], 0.8, 10) == 2  # P(3,1) = 13/16
    assert S.ac_wave_size(["1"] * 8, 0.95, 8) == 0


def _one_at_a_time(answers, threshold, cap):
    """Adaptive-Consistency as the reference runs it: check the rule after every sample."""
    for n in range(1, cap + 1):
        if float(beta_integral(*_counts(answers[:n]))) >= threshold:
            return n
    return cap


def _counts(answers):
    sizes = sorted((answers.count(x) for x in set(answers) if x is not None), reverse=True) + [0, 0]
    return sizes[0], sizes[1]


@pytest.mark.parametrize("threshold", [0.8, 0.95, 0.99])
def test_waves_stop_where_one_at_a_time_stops(threshold):
    """Waves of ac_wave_size give the same number of samples as checking after every sample."""
    rng = random.Random(7)
    for _ in range(300):
        cap = rng.randint(1, 24)
        pool = ["1", "2", "3", None][: rng.randint(1, 4)]
        weights = [rng.random() for _ in pool]
        stream = rng.choices(pool, weights, k=cap)
        rule = S.WaveRule(S.AC, cap, threshold=threshold)
        drawn = []
        while (size := rule.next_wave(drawn)) > 0:
            drawn += stream[len(drawn): len(drawn) + size]
            if rule.decide(drawn, size).stop:
                break
        assert len(drawn) == _one_at_a_time(stream, threshold, cap), (stream, threshold)


def test_esc_window():
    assert S.window_agrees(["4", "4.0", "$4"])
    assert not S.window_agrees(["4", "4", None])
    assert not S.window_agrees(["4", "5", "4"])
    assert not S.window_agrees([])
    assert S.window_agrees(["x"])
    rule = S.WaveRule(S.ESC, 9, window=3)
    assert [rule.next_wave(["1"] * n) for n in (0, 3, 6, 9)] == [3, 3, 3, 0]
    # only the last window counts: an earlier unanimous run across windows does not
    assert not rule.decide(["1", "2", "3", "3", "3", "1"], 3).stop
    assert rule.decide(["1", "2", "3", "3", "3", "3"], 3).stop
    assert S.WaveRule(S.ESC, 16, window=5).next_wave(["1"] * 15) == 0  # 16 // 5 windows at most


def test_default_window():
    assert [S.default_window(m) for m in (1, 2, 4, 8, 9, 10, 16, 40)] == [1, 1, 2, 4, 4, 5, 5, 5]


def test_method_options():
    assert S.method_options(["parallel"], "beta", 0.95, "auto", [8]) is None
    opts = S.method_options(["adaptive-consistency", "esc"], "beta", 0.95, "auto", [8, 16])
    assert opts == {"adaptive-consistency": {"criterion": "beta", "threshold": 0.95}, "esc": {"window": "auto"}}
    assert S.make_rule("esc", 8, opts).window == 4 and S.make_rule("esc", 16, opts).window == 5
    assert S.make_rule("adaptive-consistency", 16, opts) == S.WaveRule("adaptive-consistency", 16, threshold=0.95)
    assert S.method_options(["esc"], "beta", 0.95, "3", [8])["esc"] == {"window": 3}
    for args, fragment in [((0.5, "auto"), "ac-threshold"), ((1.0, "auto"), "ac-threshold"),
                           ((0.95, "x"), "esc-window"), ((0.95, "9"), "esc-window"), ((0.95, "0"), "esc-window")]:
        with pytest.raises(ConfigError, match=fragment):
            S.method_options(["adaptive-consistency", "esc"], "beta", *args, [8, 16])
    with pytest.raises(ConfigError, match="criterion"):
        S.method_options(["adaptive-consistency"], "dirichlet", 0.95, "auto", [8])
