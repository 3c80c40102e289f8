"""The branch rule, cap, window and budget cut as pure functions (eager_local/branching.py): no model.

Every expectation below is worked out by hand from the rule in eager-method.md §2: a row branches
when its entropy exceeds its prompt's θ, while the prompt has fewer than M sequences (counting the
branches earlier rows of this step already took); then the budget serves rows in order, a branching
row needing 2 tokens, any other row 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eager_local.branching import decide, threshold, under_cap, window_open

INF = float("inf")


def run_decide(entropies, thresholds, prompts, sequences, caps, budget=INF):
    branching, cut = decide(np.array(entropies, dtype=np.float64), np.array(thresholds, dtype=np.float64),
                            np.array(prompts, dtype=np.int64), sequences, caps, budget)
    return branching.tolist(), cut.tolist()


# --- the cap and the window -----------------------------------------------------------------------
def test_under_cap_means_room_for_one_more_sequence():
    assert under_cap(0, 1) and under_cap(3, 4)
    assert not under_cap(4, 4) and not under_cap(5, 4)


def test_window_closes_after_w_steps_without_a_branch():
    assert window_open(0, 1) and not window_open(1, 1)
    assert window_open(999, 1000) and not window_open(1000, 1000)


# --- the threshold --------------------------------------------------------------------------------
def test_fixed_threshold_ignores_the_history():
    assert threshold(2.4, [0.1, 5.0, 9.0], dynamic=False) == 2.4


def test_dynamic_threshold_is_theta_or_the_99th_percentile_whichever_is_higher():
    assert threshold(2.4, [], dynamic=True) == 2.4
    assert threshold(2.4, [9.0], dynamic=True) == 2.4  # one value is no percentile yet
    # p99 of [1, 3] interpolates linearly: 1 + 0.99 * (3 - 1) = 2.98
    assert threshold(2.4, [1.0, 3.0], dynamic=True) == pytest.approx(2.98)
    assert threshold(3.5, [1.0, 3.0], dynamic=True) == 3.5
    # p99 of 0, 1, ..., 100 is 99
    assert threshold(2.4, [float(i) for i in range(101)], dynamic=True) == pytest.approx(99.0)


# --- which rows branch ----------------------------------------------------------------------------
def test_a_row_branches_only_strictly_above_its_threshold():
    branching, cut = run_decide([2.0, 2.0001, 1.9], [2.0, 2.0, 2.0], [0, 0, 0], {0: 1}, {0: 8})
    assert branching == [False, True, False] and cut == [False, False, False]


def test_nan_never_branches_even_at_threshold_zero():
    branching, _ = run_decide([math.nan, 0.5, math.nan], [0.0, 0.0, -1.0], [0, 0, 0], {0: 1}, {0: 8})
    assert branching == [False, True, False]


def test_each_row_is_held_to_its_own_prompts_threshold():
    # prompt 0: θ = 1.0, prompt 1: θ = 2.0; both rows at 1.5
    branching, _ = run_decide([1.5, 1.5], [1.0, 2.0], [0, 1], {0: 1, 1: 1}, {0: 8, 1: 8})
    assert branching == [True, False]


def test_the_cap_counts_this_steps_earlier_branches_of_the_same_prompt():
    # 2 sequences, cap 4: room for two more; three rows want to branch, the first two do
    branching, _ = run_decide([3.0, 3.0, 3.0], [1.0] * 3, [0, 0, 0], {0: 2}, {0: 4})
    assert branching == [True, True, False]


def test_the_cap_is_counted_per_prompt():
    # rows of prompts 0 and 1 interleaved; prompt 0 has 3 of 4 sequences (room for one),
    # prompt 1 has 1 of 4 (room for three)
    branching, _ = run_decide([3.0] * 5, [1.0] * 5, [0, 1, 0, 1, 0], {0: 3, 1: 1}, {0: 4, 1: 4})
    assert branching == [True, True, False, True, False]


def test_a_prompt_at_its_cap_does_not_branch():
    branching, _ = run_decide([3.0, 3.0], [1.0, 1.0], [0, 1], {0: 4, 1: 1}, {0: 4, 1: 2})
    assert branching == [False, True]


# --- the budget -----------------------------------------------------------------------------------
def test_without_a_budget_nothing_is_cut():
    branching, cut = run_decide([3.0, 0.1, 3.0], [1.0] * 3, [0, 0, 0], {0: 1}, {0: 8})
    assert branching == [True, False, True] and cut == [False, False, False]


def test_a_branching_row_needs_two_tokens_and_rows_are_served_in_order():
    rows = dict(entropies=[3.0, 3.0, 0.1], thresholds=[1.0] * 3, prompts=[0, 0, 0], sequences={0: 1},
                caps={0: 8})
    # 5 = 2 + 2 + 1: everyone served
    assert run_decide(**rows, budget=5) == ([True, True, False], [False, False, False])
    # 4 = 2 + 2: the sampling row, last in order, is cut
    assert run_decide(**rows, budget=4) == ([True, True, False], [False, False, True])
    # 3 = 2 + 1: the second branching row gets one token and just samples; the last is cut
    assert run_decide(**rows, budget=3) == ([True, False, False], [False, False, True])
    # 1: the first row is demoted to sampling, the others are cut
    assert run_decide(**rows, budget=1) == ([False, False, False], [False, True, True])
    # 0: every row is cut, none branches
    assert run_decide(**rows, budget=0) == ([False, False, False], [True, True, True])


def test_an_earlier_sampling_row_is_served_before_a_later_branching_row():
    # budget 1: the first row (sampling) takes it; the branching row after it gets nothing and is cut
    assert run_decide([0.1, 3.0], [1.0, 1.0], [0, 0], {0: 1}, {0: 8}, budget=1) == ([False, False], [False, True])
    # budget 2: the sampling row takes 1, the branching row gets 1 and is demoted to sampling
    assert run_decide([0.1, 3.0], [1.0, 1.0], [0, 0], {0: 1}, {0: 8}, budget=2) == ([False, False], [False, False])


def test_a_demoted_branch_does_not_hand_its_cap_slot_to_a_later_row():
    # cap 3 with 1 sequence: rows 0 and 1 take the two slots, row 2 is over the cap;
    # budget 3: row 0 branches (2), row 1 is demoted (1), row 2 is cut
    assert run_decide([3.0] * 3, [1.0] * 3, [0, 0, 0], {0: 1}, {0: 3}, budget=3) == (
        [True, False, False], [False, False, True])
