"""How many sequences EAGer-init makes at θ, estimated from recorded entropies; θ for a target.

No model here: everything works on *traces*, the per-step top-K entropies of plainly sampled
sequences (decode.py records them). A trace ends where its sequence stopped; NaN marks a step whose
entropy the engine did not compute (after a reasoning model's end of thinking), which never
exceeds θ.

1. **Quantiles** of all recorded entropies (`quantiles`, Hyndman & Fan type 7, numpy's default);
   `--theta q99.5` uses one as θ.
2. **E[#S | θ]** (`estimate_sequences`): EAGer-init's branching process simulated on a prompt's
   traces, many times, and averaged. The rule is the engine's own (branching.py): a sequence
   branches where its entropy exceeds θ, while the prompt is under the cap M and its branch
   window is open.
3. **θ for a target #S** (`theta_for_target`): bisection on [0, ln K], since the estimate falls as
   θ rises.
4. **Real runs correct the estimate** (`measured_theta`, `corrected_theta`, `choose_theta`): a
   check (decode.py) runs EAGer-init for real and measures (θ, mean #S). Measured points that
   bracket the target give θ by interpolation; a single point that missed scales the estimated
   curve to its level.

Measured figures (how close the estimate and the checks land, per model and task) are in
docs/calibration.md.
"""

from __future__ import annotations

import heapq
import math
from typing import Iterable, Sequence

import numpy as np

from ..branching import under_cap, window_open
from ..config import default
from ..errors import EagerError

DEFAULT_REPLICATES = 200  # simulated EAGer-init runs per prompt and θ
DEFAULT_WINDOW = default("branch_window")
_NEVER = np.iinfo(np.int64).max  # "no step": a trace that never exceeds θ again


class CalibrationError(EagerError):
    """Bad calibration input, in one line: a bad count or quantile, no prompts, an unreadable prompts file."""


# --- quantiles -----------------------------------------------------------------------------------
def quantiles(values: Iterable[float], levels: Sequence[float]) -> list[float]:
    """Percentiles (levels in 0..100) by linear interpolation between order statistics.

    Hyndman & Fan type 7, numpy's default: the p-th percentile of n sorted values x is
    x[h] interpolated at h = (n - 1) p / 100. NaNs (entropies the engine did not compute) are dropped.
    """
    x = np.sort(np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64))
    if x.size == 0:
        raise CalibrationError("no entropies recorded")
    out = []
    for p in levels:
        if not 0 <= p <= 100:
            raise CalibrationError(f"quantile must be between 0 and 100, got {p}")
        h = (x.size - 1) * p / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, x.size - 1)
        out.append(float(x[lo] + (h - lo) * (x[hi] - x[lo])))
    return out


# --- the simulated branching process ----------------------------------------------------------------
def _next_exceedance(trace: np.ndarray, theta: float) -> np.ndarray:
    """a[t] = first step u >= t with trace[u] > θ, or _NEVER; length len(trace) + 1.

    Precomputed once per trace and θ, so a simulated sequence jumps straight to its next branch
    instead of walking every step.
    """
    n = trace.shape[0]
    idx = np.where(trace > theta, np.arange(n, dtype=np.int64), _NEVER)
    out = np.empty(n + 1, dtype=np.int64)
    out[n] = _NEVER
    out[:n] = np.minimum.accumulate(idx[::-1])[::-1]
    return out


def _simulate_prompt(nexts: list[np.ndarray], cap: int, window: int, rng: np.random.Generator) -> int:
    """One simulated EAGer-init run for one prompt; returns its number of sequences.

    A heap holds each live sequence's next branch step (ties: the order they were pushed), so
    branches happen in step order across sequences, as in the engine's lockstep loop, and the cap
    binds at the same branch.
    """
    n = len(nexts)
    count = 1
    order = 0
    root = int(rng.integers(n))
    heap: list[tuple[int, int, int]] = []
    first = nexts[root][0]
    if first != _NEVER:
        heap.append((int(first), order, root))
    last_branch = -1  # the start counts as a branch for the window
    while heap and under_cap(count, cap):
        t, _, j = heapq.heappop(heap)
        # Steps t' with last_branch < t' < t had no branch; if W of them passed, the engine had
        # closed branching for the prompt before step t.
        if not window_open(t - last_branch - 1, window):
            break
        count += 1
        last_branch = t
        # The child took top-2 at step t; from t+1 on it follows a trace of the prompt drawn at
        # random. The parent keeps its own trace (j).
        for trace_id in (int(rng.integers(n)), j):
            nxt = nexts[trace_id]
            if t + 1 < nxt.shape[0]:
                u = nxt[t + 1]
                if u != _NEVER:
                    order += 1
                    heapq.heappush(heap, (int(u), order, trace_id))
    return count


def estimate_sequences(
    traces: Sequence[Sequence[Sequence[float]]],
    theta: float,
    max_sequences: int,
    *,
    branch_window: int = DEFAULT_WINDOW,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> float:
    """Expected number of sequences per prompt under EAGer-init at θ, from recorded entropy traces.

    `traces[p]` holds prompt p's traces. For each prompt, `replicates` runs of this branching
    process are simulated and averaged; the result is the mean over prompts.

    - The root sequence follows one of the prompt's traces, drawn at random.
    - A live sequence branches at every step t where its trace exceeds θ, while the prompt has
      fewer than M sequences and its branch window is open (fewer than W steps in a row without a
      branch, counted from the start); branches are processed in step order, so the cap binds as
      in the lockstep engine.
    - The new branch follows, from step t+1 on, a trace of the same prompt drawn at random (the
      parent's own among them), and ends where that trace ends; the parent keeps its own trace.

    Assumptions: entropies at step t depend on the prompt and the position, not on the particular
    tokens chosen before (resampling a whole trace from step t+1 treats the continuations after a
    fork like fresh samples); the parent taking its top-1 token and the child its top-2 token at a
    branch do not change the distribution of later entropies; max_new_tokens counts from the
    prompt's first step for every branch, which position-aligned traces respect. Replicates use
    fixed random streams per (seed, prompt, replicate), so estimates at different θ are comparable
    (common random numbers: the bisection below sees a smooth, monotone curve, not noise).
    """
    if max_sequences < 1:
        raise CalibrationError(f"max-sequences must be >= 1, got {max_sequences}")
    means = []
    for p, prompt_traces in enumerate(traces):
        arrays = [np.asarray(t, dtype=np.float64) for t in prompt_traces if len(t)]
        if not arrays:
            means.append(1.0)
            continue
        # NaN (not computed) never exceeds θ.
        nexts = [_next_exceedance(np.nan_to_num(a, nan=-np.inf), theta) for a in arrays]
        total = 0
        for r in range(replicates):
            rng = np.random.default_rng([seed, p, r])
            total += _simulate_prompt(nexts, max_sequences, branch_window, rng)
        means.append(total / replicates)
    return float(np.mean(means)) if means else 1.0


def theta_for_target(
    traces, target: float, max_sequences: int, *, top_k_entropy: int, branch_window: int = DEFAULT_WINDOW,
    replicates: int = DEFAULT_REPLICATES, seed: int = 0, iterations: int = 18,
) -> tuple[float, float]:
    """θ whose estimated mean #S is closest to `target`, by bisection on [0, ln K]; (θ, estimate).

    The estimate falls (weakly) as θ rises. Bisection keeps lo with estimate >= target and hi with
    estimate < target, so for S = M it finds the highest θ at which every simulated run hits the cap.
    If even θ = 0 does not reach the target, θ = 0 is returned with its (smaller) estimate; a target
    of 1 or less gives ln K (never branch: the top-K entropy is at most ln K).
    """
    ln_k = math.log(top_k_entropy)

    def est(theta: float) -> float:
        return estimate_sequences(traces, theta, max_sequences, branch_window=branch_window,
                                  replicates=replicates, seed=seed)

    if target <= 1:
        return ln_k, est(ln_k)
    lo, hi = 0.0, ln_k
    e_lo, e_hi = est(lo), est(hi)
    if e_lo < target:
        return lo, e_lo
    if e_hi >= target:
        return hi, e_hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        e_mid = est(mid)
        if e_mid >= target:
            lo, e_lo = mid, e_mid
        else:
            hi, e_hi = mid, e_mid
    return (lo, e_lo) if abs(e_lo - target) <= abs(e_hi - target) else (hi, e_hi)


def default_targets(max_sequences: int) -> list[int]:
    """2, 4, 8, … up to M, and M itself: the rows of the profile's θ table."""
    targets, s = [], 2
    while s < max_sequences:
        targets.append(s)
        s *= 2
    if max_sequences >= 2:
        targets.append(max_sequences)
    return targets


# --- real runs: interpolate between them, or scale the estimate to one ----------------------------
def choose_theta(traces, runs: list[dict], measured: Sequence[tuple[float, float]], target: float,
                 max_sequences: int, *, top_k_entropy: int, branch_window: int = DEFAULT_WINDOW) -> dict:
    """The θ a check keeps, from its real runs (and earlier measured points): the check's fields.

    After a refinement, θ interpolated between measured points that bracket the target. Else the
    run closest to the target: if it missed by more than its standard error, its level corrects
    the estimate (`corrected_theta`); a miss within one standard error is no evidence against the
    estimate (with few prompts the error is large, and where the estimated curve is too flat a
    correction along it would move θ far on noise), so the run's θ is kept.
    """
    if len(runs) > 1:
        chosen = measured_theta(list(measured) + [(r["theta"], r["achieved"]) for r in runs], target)
        if chosen is not None:
            return {"theta": round(chosen, 4), "predicted": float(target), "achieved": None, "interpolated": True}
    best = closest_run(runs, target)
    if abs(best["achieved"] - target) > best.get("stderr", 0.0):
        corrected = corrected_theta(traces, best["theta"], best["achieved"], target, max_sequences,
                                    top_k_entropy=top_k_entropy, branch_window=branch_window)
        if corrected is not None:
            theta, ratio = corrected
            return {"theta": round(theta, 4), "predicted": float(target), "achieved": None, "corrected": True,
                    "ratio": round(ratio, 3), "measured_theta": best["theta"], "measured": best["achieved"]}
    return {"theta": best["theta"], "predicted": best["predicted"], "achieved": best["achieved"]}


def closest_run(runs: list[dict], target: float) -> dict:
    """The check run whose mean #S came closest to the target: the one a check's θ stands on."""
    return min(runs, key=lambda r: abs(r["achieved"] - target))


def corrected_theta(traces, theta: float, achieved: float, target: float, max_sequences: int, *,
                    top_k_entropy: int, branch_window: int = DEFAULT_WINDOW) -> tuple[float, float] | None:
    """θ for `target` once the estimator is scaled to a real run at θ; (θ, ratio) or None.

    The estimator reads the shape of #S(θ) from the traces but can miss its level (it treats the
    continuations after a fork like fresh samples), and a real run measures the level at one θ
    only. With r = achieved / estimate(θ), the θ returned is the estimator's θ for target / r: a
    run that missed the target is corrected along the estimated curve instead of being kept as is.
    None when the run says nothing about the level: no branching at all (#S = 1) or every prompt at
    the cap; or when the estimate at θ is 1.
    """
    if not 1.0 < achieved < max_sequences:
        return None
    estimate = estimate_sequences(traces, theta, max_sequences, branch_window=branch_window)
    if estimate <= 1.0:
        return None
    ratio = achieved / estimate
    corrected, _, _ = theta_for_scaled_target(traces, target, ratio, max_sequences,
                                              top_k_entropy=top_k_entropy, branch_window=branch_window)
    return corrected, ratio


def theta_for_scaled_target(traces, target: float, ratio: float, max_sequences: int, *, top_k_entropy: int,
                            branch_window: int) -> tuple[float, float, float]:
    """The estimator's θ for target / ratio (clamped to 1..M), as if it were off by that constant
    factor near the target; (θ, its estimate, the aim)."""
    aim = min(max(target / ratio, 1.0), float(max_sequences))
    theta, estimate = theta_for_target(traces, aim, max_sequences, top_k_entropy=top_k_entropy,
                                       branch_window=branch_window)
    return theta, estimate, aim


def _non_increasing(values: list[float]) -> list[float]:
    """Least-squares non-increasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out.extend([mean] * int(weight))
    return out


def measured_theta(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """θ where measured (θ, mean #S) points reach the target, or None unless they bracket it.

    Points are sorted by θ and made non-increasing (pool-adjacent-violators, so noise cannot make
    #S rise with θ); the θ is interpolated linearly in log #S between the two neighbours that
    bracket the target: near the top of the entropy range #S falls roughly exponentially in θ.
    """
    merged: dict[float, list[float]] = {}
    for theta, achieved in points:
        if achieved is not None and achieved > 0:
            merged.setdefault(round(float(theta), 4), []).append(float(achieved))
    if len(merged) < 2:
        return None
    thetas = sorted(merged)
    fitted = _non_increasing([sum(merged[t]) / len(merged[t]) for t in thetas])
    for i in range(len(thetas) - 1):
        hit = interpolate_theta(thetas[i], fitted[i], thetas[i + 1], fitted[i + 1], target)
        if hit is not None:
            return hit
        if fitted[i] == target:
            return thetas[i]
    if fitted[-1] == target:
        return thetas[-1]
    return None


def interpolate_theta(theta1: float, achieved1: float, theta2: float, achieved2: float,
                      target: float) -> float | None:
    """θ between two real runs where log #S reaches log target; None unless they bracket it."""
    if theta1 == theta2 or achieved1 <= 0 or achieved2 <= 0 or (achieved1 - target) * (achieved2 - target) > 0:
        return None
    if achieved1 == achieved2:
        return None
    f = (math.log(achieved1) - math.log(target)) / (math.log(achieved1) - math.log(achieved2))
    return theta1 + f * (theta2 - theta1)
