"""Per-prompt and dataset-level metrics (docs/eager-method.md, section 6).

Per prompt: p@1, pass@k (any), cons@k, PR, #T, #S; over a dataset: their means, plus unbiased
pass@k at fixed k values (Chen et al., 2021) for comparisons across methods that draw a
different number of sequences per prompt.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

from .confidence import weighted_majority
from .grading import is_correct, majority_answer

__all__ = ["pass_at_k_unbiased", "prompt_metrics", "aggregate", "MEAN_KEYS"]

# Keys of prompt_metrics() that aggregate() averages over prompts.
MEAN_KEYS = ("p@1", "pass@k", "cons@k", "PR", "#T", "#S")


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n samples of
    which c are correct, is correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i): no huge binomials, no overflow.
    k > n: k is clamped to n (the estimate becomes pass@n, i.e. 1 if any sample is correct).
    EAGer draws a variable number of sequences per prompt, so a prompt with fewer than k of
    them must still count; clamping uses all it has instead of dropping or failing the run.
    n == 0 (nothing generated, e.g. budget exhausted) gives 0.0.
    """
    if n < 0 or c < 0 or c > n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if n == 0:
        return 0.0
    k = min(k, n)
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    probability_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        probability_all_wrong *= 1.0 - k / i
    return 1.0 - probability_all_wrong


def prompt_metrics(
    correct: Sequence[bool],
    answers: Sequence[str | None],
    reference: str,
    kind: str,
    tokens: int,
    weights: Sequence[float | None] | None = None,
) -> dict:
    """Metrics of one prompt from its sequences' grades and extracted answers.

    Returns n and c (kept so aggregate() can compute unbiased pass@k at any k), p@1 (= c/n,
    the unbiased pass@1), pass@k (1.0 if any sequence is correct, k = the n actually drawn),
    cons@k (1.0 if the majority answer is correct), PR (c/n), #T (generated tokens, given by
    the caller) and #S (= n), plus the majority answer itself for reports.

    With `weights` (DeepConf: each sequence's vote weight, None where it does not vote) cons@k is
    the weighted vote instead (confidence.weighted_majority).
    """
    if len(correct) != len(answers):
        raise ValueError(f"got {len(correct)} grades but {len(answers)} answers")
    n = len(correct)
    c = sum(1 for flag in correct if flag)
    majority = majority_answer(list(answers), kind) if weights is None else weighted_majority(answers, weights)
    pass_rate = c / n if n else 0.0
    return {
        "n": n,
        "c": c,
        "p@1": pass_at_k_unbiased(n, c, 1),
        "pass@k": 1.0 if c > 0 else 0.0,
        "cons@k": 1.0 if is_correct(majority, reference, kind) else 0.0,
        "PR": pass_rate,
        "#T": int(tokens),
        "#S": n,
        "majority": majority,
    }


def aggregate(per_prompt: Sequence[dict], ks: Iterable[int] | None = None) -> dict:
    """Mean of each metric over prompts, "prompts" (how many), and for each k in ks the mean
    unbiased pass@k as "pass@<k>" (e.g. "pass@1", "pass@8"), from each prompt's n and c.

    An empty list gives prompts = 0 and no means (there is nothing to average).
    """
    summary: dict = {"prompts": len(per_prompt)}
    if not per_prompt:
        return summary
    for key in MEAN_KEYS:
        summary[key] = _mean(metrics[key] for metrics in per_prompt)
    for k in ks or ():
        summary[f"pass@{k}"] = _mean(pass_at_k_unbiased(m["n"], m["c"], k) for m in per_prompt)
    return summary


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def paired_bootstrap(a: list[float], b: list[float], rounds: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) − mean(b) resampling prompts (pairs kept together)."""
    rng = random.Random(seed)  # fixed: the same data always gives the same interval
    n = len(a)
    diffs = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(a[i] - b[i] for i in idx) / n)
    diffs.sort()
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]
