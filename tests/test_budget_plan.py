"""Reallocation of EAGer-init's saved sequences (eager-method.md §3) against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from eager_local.budget import (
    ADAPT,
    FULL,
    reallocation_candidates,
    retry_theta,
    saved_sequences,
    split_budget,
)
from eager_local.eval import plan as P


def test_saved_sequences():
    assert saved_sequences([1, 4, 2, 4], 4) == 16 - 11
    assert saved_sequences([8, 8], 8) == 0
    assert saved_sequences([0, 0, 0], 2) == 6  # prompts the token budget never started
    assert saved_sequences([], 8) == 0


def test_candidates_adapt_are_capped_prompts_in_dataset_order():
    assert reallocation_candidates([1, 4, 2, 4, 4], 4, ADAPT) == [1, 3, 4]
    assert reallocation_candidates([1, 2, 3], 4, ADAPT) == []


def test_candidates_full_unsolved_capped_first_then_others():
    n = [4, 1, 4, 2, 3, 4]
    solved = [False, False, True, False, True, False]
    # capped & unsolved: 0, 5; then not capped & unsolved: 1, 3
    assert reallocation_candidates(n, 4, FULL, solved) == [0, 5, 1, 3]
    assert reallocation_candidates(n, 4, FULL, [True] * 6) == []
    with pytest.raises(ValueError):
        reallocation_candidates(n, 4, FULL)  # labels needed
    with pytest.raises(ValueError):
        reallocation_candidates(n, 4, FULL, [False] * 5)  # one flag per prompt


def test_split_even_with_remainder_to_the_first():
    assert split_budget(10, [0, 1, 2], 100) == {0: 4, 1: 3, 2: 3}
    assert split_budget(7, [3, 1], 12) == {3: 4, 1: 3}  # service order, not index order
    assert split_budget(9, [5, 6, 7], 100) == {5: 3, 6: 3, 7: 3}


def test_split_fewer_sequences_than_candidates_goes_one_each_to_the_first():
    assert split_budget(2, [5, 6, 7], 4) == {5: 1, 6: 1}
    assert split_budget(1, [9, 2], 4) == {9: 1}


def test_split_caps_and_never_exceeds_budget():
    assert split_budget(20, [0, 1], 3) == {0: 3, 1: 3}  # 10 each capped at 3: 14 stay unspent
    assert split_budget(0, [1], 4) == {}
    assert split_budget(5, [], 4) == {}
    for budget in range(0, 40):
        for k in range(1, 7):
            shares = split_budget(budget, list(range(k)), 5)
            assert sum(shares.values()) <= budget
            assert all(1 <= s <= 5 for s in shares.values())
            assert sum(shares.values()) == min(budget, 5 * k)


def test_retry_theta():
    # not capped: -20% per retry, compounding; from the third retry on, a further -10% per retry
    assert math.isclose(retry_theta(2.5, 1, hit_cap=False), 2.0)
    assert math.isclose(retry_theta(2.5, 2, hit_cap=False), 1.6)
    assert math.isclose(retry_theta(2.5, 3, hit_cap=False), 2.5 * 0.512 * 0.9)
    # capped: unchanged for the first two retries, then -10% per retry
    assert retry_theta(2.5, 1, hit_cap=True) == 2.5
    assert retry_theta(2.5, 2, hit_cap=True) == 2.5
    assert math.isclose(retry_theta(2.5, 3, hit_cap=True), 2.25)
    assert math.isclose(retry_theta(2.5, 4, hit_cap=True), 2.025)


def test_plan_round_adapt():
    n = [1, 4, 2, 4]  # M = 4: B = 5, candidates 1 and 3
    runs = P.plan_round(ADAPT, 1, n, 4, 2.4, P.initial_budget(n, 4))
    assert [(r.slot, r.cap, r.theta, r.hit_cap) for r in runs] == [(1, 3, 2.4, True), (3, 2, 2.4, True)]
    assert P.plan_round(ADAPT, 2, n, 4, 2.4, 5) == []  # one round only
    # per-prompt cap 3M: 2 candidates, B = 100 -> 12 each
    assert [r.cap for r in P.plan_round(ADAPT, 1, [4, 4], 4, 2.4, 100)] == [12, 12]


def test_plan_round_full():
    n = [4, 1, 4, 2]
    solved = [False, False, False, True]
    B = P.initial_budget(n, 4)
    assert B == 5
    runs = P.plan_round(FULL, 1, n, 4, 2.5, B, solved=solved)
    # candidates 0, 2 (capped) then 1; 5 over 3: 2, 2, 1
    assert [(r.slot, r.cap) for r in runs] == [(0, 2), (2, 2), (1, 1)]
    assert [r.theta for r in runs] == [2.5, 2.5, pytest.approx(2.0)]
    # per-prompt cap M per round
    assert [r.cap for r in P.plan_round(FULL, 1, n, 4, 2.5, 40, solved=solved)] == [4, 4, 4]
    # θ follows each prompt's own retry count
    runs = P.plan_round(FULL, 3, n, 4, 2.5, 3, solved=solved, retries=[2, 0, 0, 0])
    assert [(r.slot, r.retry) for r in runs] == [(0, 3), (2, 1), (1, 1)]
    assert runs[0].theta == pytest.approx(2.25)


def test_reallocate_full_rounds_until_solved_or_spent():
    n = [4, 1, 2]  # M = 4: B = 12 - 7 = 5
    log = []

    def execute(runs):
        log.append([(r.round, r.slot, r.cap, round(r.theta, 4)) for r in runs])
        # slot 1 gets solved in its first extra run; others never; each run draws its whole cap
        return [P.Outcome(sequences=r.cap, solved=r.slot == 1) for r in runs]

    result = P.reallocate(FULL, n, 4, 2.5, [False, False, False], execute)
    assert log == [
        [(1, 0, 2, 2.5), (1, 1, 2, 2.0), (1, 2, 1, 2.0)],  # 5 over 3 candidates
    ]
    assert result.saved == 5 and result.remaining == 0 and result.rounds == 1

    log.clear()
    # runs that branch less than their cap leave budget for later rounds
    def execute_one(runs):
        log.append([(r.round, r.slot, r.cap, round(r.theta, 4)) for r in runs])
        return [P.Outcome(sequences=1, solved=False) for r in runs]

    result = P.reallocate(FULL, [4, 3], 4, 2.5, [False, False], execute_one)
    # B = 1: one run to the capped prompt first
    assert log == [[(1, 0, 1, 2.5)]] and result.remaining == 0

    log.clear()
    result = P.reallocate(FULL, [4, 1, 1], 4, 2.5, [False, False, False], execute_one)
    # B = 6. round 1: 2,2,2 -> draws 3 -> 3 left; round 2: 1,1,1 (θ of slots 1-2: 2.5·0.8² = 1.6)
    assert log == [
        [(1, 0, 2, 2.5), (1, 1, 2, 2.0), (1, 2, 2, 2.0)],
        [(2, 0, 1, 2.5), (2, 1, 1, 1.6), (2, 2, 1, 1.6)],
    ]
    assert result.rounds == 2 and result.remaining == 0


def test_reallocate_stops_when_nothing_starts():
    calls = []

    def starved(runs):  # the token budget is gone: runs come back empty
        calls.append(runs)
        return [P.Outcome(sequences=0, solved=False) for _ in runs]

    result = P.reallocate(FULL, [1, 1], 4, 2.4, [False, False], starved)
    assert len(calls) == 1 and result.remaining == 6


def test_reallocate_adapt_single_round_and_total_within_budget():
    def full_draw(runs):
        return [P.Outcome(sequences=r.cap, solved=False) for r in runs]

    result = P.reallocate(ADAPT, [1, 4, 2, 4], 4, 2.4, [False] * 4, full_draw)
    assert [(r.slot, r.cap) for r, _ in result.runs] == [(1, 3), (3, 2)]
    assert result.rounds == 1 and result.saved - result.remaining == 5
    # nothing capped: adapt has no candidates, B stays unspent
    result = P.reallocate(ADAPT, [1, 2], 4, 2.4, [False] * 2, full_draw)
    assert result.runs == [] and result.remaining == 5


def test_stream_indices_are_distinct():
    seen = set()
    for mode in (ADAPT, FULL):
        for round_ in range(1, 6):
            for position in (0, 1, 1318):
                seen.add(P.stream_index(mode, round_, position))
    assert len(seen) == 2 * 5 * 3
    assert all(i >= P.STREAM_STRIDE for i in seen)  # never an EAGer-init / parallel stream
