"""DeepConf's confidences, threshold and vote, as pure functions (no model here).

Fu et al., "Deep Think with Confidence" (arXiv 2508.15260); reference facebookresearch/deepconf
(`deepconf-online.py` and `helper.py`, and the pip package's `utils.py` / `processors.py`).

- **Token confidence** C_i = − mean of the log-probabilities of the k = 20 most likely tokens of
  step i (the model's own distribution: log-softmax of the raw logits). Higher = more peaked. The
  reference rounds it to 3 decimals (`compute_confidence`); so do we, and keep it as an integer
  number of thousandths (`milli`), so window sums are exact integers and every window mean is
  the same number whoever computes it from the recorded confidences.
- **Group confidence**: the mean of C over a sliding window of the last w tokens. A trace's
  **lowest group confidence** is the least window mean over its full windows, or the plain mean of
  a trace shorter than w (`compute_least_grouped`).
- **Threshold** s: a percentile of the warm-up traces' lowest group confidences — DeepConf-low
  keeps the top 10 % (s = the 90th percentile), DeepConf-high the top 90 % (s = the 10th), numpy's
  default (linear) percentile as in the reference (`np.percentile(min_confs, CONFIDENCE_PERCENTILE)`).
- **Vote**: every trace whose lowest group confidence is ≥ s and that has an answer votes with
  that confidence as its weight (`_perform_basic_voting`: warm-up traces at or above s, final
  traces not stopped, where a final trace is marked stopped when its lowest group confidence is
  below s); equivalent answers (eager_local/answers.py) pool their weight; the heaviest answer wins,
  ties to the answer seen first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..answers import vote_key

TOP_K = 20  # k of the token confidence, the paper's (and the reference's `logprobs=20`)
KEEP_PERCENT = {"deepconf-low": 10, "deepconf-high": 90}  # η: the share of warm-up traces kept


def token_confidence_milli(top_logprobs: Sequence[float]) -> int:
    """C_i in thousandths: −1000 · mean(top-k log-probabilities), rounded to an integer."""
    return round(-1000.0 * sum(top_logprobs) / len(top_logprobs))


def window_mean(window_sum_milli: int, size: int) -> float:
    """The mean of `size` confidences whose sum (in thousandths) is `window_sum_milli`."""
    return window_sum_milli / (1000 * size)


def lowest_group_confidence(confs_milli: Sequence[int], window: int) -> float | None:
    """Least mean over every full window of `window` confidences; the plain mean when the trace is
    shorter than the window; None for a trace without tokens."""
    n = len(confs_milli)
    if n == 0:
        return None
    if n < window:
        return window_mean(sum(confs_milli), n)
    sums = np.cumsum(np.asarray(confs_milli, dtype=np.int64))
    windows = sums[window - 1:] - np.concatenate(([0], sums[:-window]))
    return window_mean(int(windows.min()), window)


def percentile_for(method: str) -> float:
    """The percentile of the warm-up's lowest group confidences that becomes the threshold: keeping
    the top η % means cutting at the (100 − η)th percentile."""
    return 100.0 - KEEP_PERCENT[method]


def threshold(lowest: Sequence[float | None], method: str) -> float | None:
    """s for `method` from the warm-up traces' lowest group confidences (None: no warm-up trace had
    a token, and nothing is stopped or filtered)."""
    values = [x for x in lowest if x is not None]
    if not values:
        return None
    return float(np.percentile(values, percentile_for(method)))


def vote_weights(lowest: Sequence[float | None], threshold_: float | None) -> list[float | None]:
    """Each trace's weight in the vote: its lowest group confidence if that is ≥ s, else None (it
    does not vote). Without a threshold every trace with tokens votes."""
    return [x if x is not None and (threshold_ is None or x >= threshold_) else None for x in lowest]


def weighted_majority(answers: Sequence[str | None], weights: Sequence[float | None]) -> str | None:
    """The answer with the largest total weight (first-seen spelling of its group of equivalent
    answers); a trace with no answer or weight None does not vote; ties to the group seen first.
    None if nobody voted."""
    if len(answers) != len(weights):
        raise ValueError(f"got {len(answers)} answers but {len(weights)} weights")
    totals: dict[object, list] = {}  # key -> [first spelling, total weight]; dicts keep first-seen order
    for answer, weight in zip(answers, weights):
        if answer is None or not answer.strip() or weight is None:
            continue
        entry = totals.setdefault(vote_key(answer), [answer, 0.0])
        entry[1] += float(weight)
    if not totals:
        return None
    best = max(totals.values(), key=lambda entry: entry[1])  # max keeps the first of equal weights
    return best[0]
