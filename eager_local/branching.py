"""The branch rule, the budget cut and the branch window: pure functions, no model.

The engine applies them to every live row each step; calibration's estimator applies the same rule
to simulated runs. The rule (eager-method.md §2): a row branches when its top-K entropy exceeds its
prompt's threshold θ, while the prompt has fewer than M sequences and its branch window is open.
A branch adds exactly one sequence (the parent keeps the top-1 token, the child takes the top-2), so
the cap counts this step's earlier branches of the same prompt. Then the budget: every row needs one
token, a branching row two; rows are served in order, a branching row that gets only one token just
samples, a row that gets none is cut (finish reason `budget`).
"""

from __future__ import annotations

import numpy as np


def under_cap(sequences: int, cap: int) -> bool:
    """Room for one more sequence under the cap M."""
    return sequences < cap


def window_open(steps_without_branch: int, window: int) -> bool:
    """Branching stays open until W steps in a row passed without a branch (counted from the start)."""
    return steps_without_branch < window


def threshold(theta: float, history: list[float], dynamic: bool) -> float:
    """θ in force for a prompt: θ, or with the dynamic threshold max(θ, p99 of its entropies so far)."""
    if dynamic and len(history) >= 2:
        return max(theta, float(np.percentile(history, 99)))
    return theta


def decide(
    entropies: np.ndarray,
    thresholds: np.ndarray,
    prompt_of_row: np.ndarray,
    sequences: dict[int, int],
    caps: dict[int, int],
    budget_left: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows branch this step and which the budget cuts.

    entropies: per row, NaN where no branch may happen (window closed, past the end of thinking);
    thresholds: per row, its prompt's θ in force; prompt_of_row: a prompt key per row;
    sequences / caps: per prompt key, its sequences so far and its cap M; budget_left: tokens.
    Returns (branching, cut), boolean per row. Rows are served in order, for the cap and the budget.
    """
    n = len(entropies)
    with np.errstate(invalid="ignore"):
        over = entropies > thresholds  # NaN compares False
    branching = np.zeros(n, dtype=bool)
    planned: dict[int, int] = {}
    for i in np.flatnonzero(over):
        prompt = int(prompt_of_row[i])
        extra = planned.get(prompt, 0)
        if under_cap(sequences[prompt] + extra, caps[prompt]):
            branching[i] = True
            planned[prompt] = extra + 1

    cut = np.zeros(n, dtype=bool)
    remaining = budget_left
    for i in range(n):
        need = 2 if branching[i] else 1
        if need <= remaining:
            remaining -= need
        elif branching[i] and remaining >= 1:
            branching[i] = False  # not enough for the child: the row just samples
            remaining -= 1
        else:
            cut[i] = True
            branching[i] = False
    return branching, cut
