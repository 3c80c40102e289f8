"""The rows of one step, grouped by what their prompts set differently (prompts of one server
step each bring their own config and budget); a call with one config forms one group.

Entropy and sampling work row by row, so computing them group by group gives every row the result
it would get alone. The branch rule (branching.py) serves rows in order against one token budget;
a prompt with a budget of its own (`Request.budget`) has its rows decided apart, within that budget.
"""

from __future__ import annotations

import numpy as np

from .. import branching as branching_rule
from ..config import GenerationConfig, SamplingParams
from .state import Row


def entropy_key(config: GenerationConfig) -> tuple[int, float]:
    """What a row's entropy depends on: K, and the temperature when the entropy is tempered."""
    return config.top_k_entropy, (config.sampling.temperature if config.tempered_entropy else 1.0)


def sampling_key(config: GenerationConfig) -> SamplingParams:
    return config.sampling


def by_config(rows: list[Row], idx: np.ndarray, key) -> list[tuple[object, np.ndarray]]:
    """The row indices `idx` split by `key(their prompt's config)`: one group when every prompt
    shares the setting, else one group per value."""
    keys = [key(rows[i].run.config) for i in idx]
    first = keys[0]
    if all(k is first or k == first for k in keys):
        return [(first, idx)]
    groups: dict[object, list[int]] = {}
    for i, k in zip(idx, keys):
        groups.setdefault(k, []).append(int(i))
    return [(k, np.array(members)) for k, members in groups.items()]


def decide(entropies: np.ndarray, thresholds: np.ndarray, prompt_of_row: np.ndarray, sequences: dict[int, int],
           caps: dict[int, int], budget_left: float,
           prompt_budgets: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """`branching.decide`, where the prompts in `prompt_budgets` (prompt key → tokens it has left)
    also have a budget of their own: each one's rows are decided apart, within the smaller of its
    budget and what the call's budget has left, then the other rows within what is left of the
    call's. Without such prompts this is `branching.decide` itself."""
    if not prompt_budgets:
        return branching_rule.decide(entropies, thresholds, prompt_of_row, sequences, caps, budget_left)
    branching = np.zeros(len(entropies), dtype=bool)
    cut = np.zeros(len(entropies), dtype=bool)
    rest = np.ones(len(entropies), dtype=bool)
    groups = [(np.flatnonzero(prompt_of_row == prompt), own) for prompt, own in prompt_budgets.items()]
    for members, own in groups + [(None, None)]:
        if members is None:
            members = np.flatnonzero(rest)
        rest[members] = False
        if not len(members):
            continue
        limit = budget_left if own is None else min(own, budget_left)
        b, c = branching_rule.decide(entropies[members], thresholds[members], prompt_of_row[members], sequences,
                                     caps, limit)
        branching[members], cut[members] = b, c
        budget_left -= int(np.count_nonzero(~c) + np.count_nonzero(b))
    return branching, cut
