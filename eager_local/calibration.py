"""Adaptive threshold: calibrate θ to the model and the task (issue 6).

A fixed θ does not transfer between models: a tiny model's top-K entropy is high almost everywhere,
a reasoning model's is low over long stretches. Calibration measures it instead:

1. **Record.** Decode a handful of prompts a few times each, one plain sampled sequence per run
   (EAGer-init with θ above ln K, so it never branches), with the settings the real run will use
   (model, K, temperature, prompt format, max_new_tokens). Keep every per-step top-K entropy: one
   *trace* per sampled sequence, the trace's length is where it stopped.
2. **Quantiles** of all recorded entropies (linear interpolation, numpy's default); `--theta q99.5`
   picks one as θ.
3. **Estimate E[#S | θ]** under EAGer-init by simulating its branching process on the traces
   (`estimate_sequences`, assumptions in its docstring), and pick θ for targets S = 2, 4, 8, … M by
   bisection on the estimate.
4. **Check** the θ of the requested target with a short real EAGer-init run on the same prompts;
   when the achieved mean #S misses the target, refine once (`run_check`): every real run is a
   measured point (θ, #S), and θ is interpolated between measured points that bracket the target;
   otherwise the closest run, if it missed by more than its standard error, scales the
   estimator's curve to its level (`corrected_theta`).
   Predictions, achieved means and their standard errors are kept and reported.

How many prompts: `calibration_prompts` (8 at 512 new tokens, more for shorter generations, up to
64; four times the tokens, up to 128, when `eval` calibrates): the check's mean #S is only as
precise as the number of runs it averages, so eval's checks also run each prompt with several
seeds (`check_seed_count`).

Profiles live next to the model in the cache, `home_dir()/profiles/<model-sha256[:16]>.json`, one
entry per (model sha256, K, temperature, sampling, tempered, prompt format, max_new_tokens, task);
the file and its entries carry a format version. An entry whose key does not match exactly is never
used: a lookup misses and calibration runs again. Writes are atomic (temp file + rename, under a
lock file so two processes do not lose each other's entries).

Pure logic: no click. The command is calibration_cli.py.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import heapq
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import models
from .config import parse_theta_spec  # noqa: F401 (re-exported)
from .engine import ConfigError, GenerationConfig, Request

__all__ = [
    "PROFILE_VERSION",
    "PromptFormat",
    "CalibrationKey",
    "Calibration",
    "quantiles",
    "estimate_sequences",
    "theta_for_target",
    "corrected_theta",
    "choose_theta",
    "closest_run",
    "calibration_prompts",
    "check_seed_count",
    "default_targets",
    "record_traces",
    "check_theta",
    "calibrate",
    "profile_path",
    "load_entry",
    "save_entry",
    "resolve_theta",
    "parse_theta_spec",
    "task_of_dataset",
    "theta_from_options",
]

PROFILE_VERSION = 1
PROFILE_FORMAT = "eager_local.calibration"
QUANTILE_LEVELS = (50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9)
DEFAULT_SAMPLES = 2  # sampled sequences per prompt
# How many prompts to decode: as many as RECORD_TOKENS allow (prompts x samples x max_new_tokens),
# between MIN_PROMPTS and MAX_PROMPTS. At the defaults (512 new tokens) that is 8 prompts, which
# keeps calibration under two minutes; shorter generations get more prompts for the same cost, and
# the check needs them: per-prompt #S is heavy-tailed (most prompts 1-3 sequences, a few at the cap
# M), so the check's mean is only as precise as the number of prompts it averages
# (docs/calibration.md).
RECORD_TOKENS = 8192
MIN_PROMPTS = 8
MAX_PROMPTS = 64
# `eval --theta auto` is a long measured job whose #S is the point, so it calibrates on four times
# the tokens (128 prompts at 96 new tokens, 102 at 160, 32 at 512): on held-out arithmetic, 42
# prompts left SmolLM2 at -44 % of S = 4 and 128 at -20 % (docs/calibration.md, sessions 5-6).
EVAL_RECORD_TOKENS = 4 * RECORD_TOKENS
EVAL_MAX_PROMPTS = 128
# A check's precision is the number of runs it averages, prompts or seeds alike: per prompt, #S is
# mostly the luck of the sampled tokens (two seeds of one prompt correlate at 0.13 on SmolLM2,
# arithmetic, M = 8), so eval's checks run each prompt with several seeds until they average at
# least EVAL_CHECK_RUNS runs (2 seeds at 128 prompts, 3 at 102, 4 at 32). `run`/`chat` keep one
# seed and the two-minute bound (docs/calibration.md, session 7).
EVAL_CHECK_RUNS = 256
MAX_CHECK_SEEDS = 4
PROMPTS_ENV = "EAGER_LOCAL_CALIBRATION_PROMPTS"  # overrides the count (tests, slow machines)
DEFAULT_REPLICATES = 200  # simulated EAGer-init runs per prompt and θ
REFINE_TOLERANCE = 0.25  # refine when the check misses the target by more than this (relative)
DEFAULT_TASK = "default"  # `run`/`chat` without a dataset: calibrated on the first gsm8k problems
RAW_TEMPLATE = "{problem}"  # the prompt as typed (run, chat)
_NEVER = np.iinfo(np.int64).max


class CalibrationError(ValueError):
    """One line for a user: bad spec, no prompts, an unreadable prompts file."""


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def _sha(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True)
class PromptFormat:
    """How a problem becomes tokens: the text template around it, the chat template, the system message."""

    chat: bool = True
    system: str | None = None
    template: str = RAW_TEMPLATE  # with {problem}; eval's default asks for \\boxed{}

    def render(self, problem: str) -> str:
        return self.template.replace("{problem}", problem)

    def key(self, chat_template: str | None) -> str:
        """`chat:<hash>` or `raw:<hash>` over everything that changes the tokens."""
        payload = json.dumps(
            {"chat_template": chat_template if self.chat else None, "system": self.system if self.chat else None,
             "template": self.template},
            sort_keys=True,
        )
        return f"{'chat' if self.chat else 'raw'}:{_sha(payload, 12)}"


@dataclass(frozen=True)
class CalibrationKey:
    """Everything the recorded entropies depend on. A profile entry is used only on an exact match."""

    model_sha256: str
    top_k_entropy: int
    temperature: float
    max_new_tokens: int
    prompt_format: str  # PromptFormat.key()
    task: str  # dataset family the prompts came from ("gsm8k", "arith", "prompts:<hash>", "default")
    tempered_entropy: bool = False
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    version: int = PROFILE_VERSION

    def id(self) -> str:
        return _sha(json.dumps(asdict(self), sort_keys=True), 16)


# --------------------------------------------------------------------------------------------
# Maths: quantiles, the estimator, bisection
# --------------------------------------------------------------------------------------------


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


def _next_exceedance(trace: np.ndarray, theta: float) -> np.ndarray:
    """a[t] = first step u >= t with trace[u] > θ, or _NEVER; length len(trace) + 1."""
    n = trace.shape[0]
    idx = np.where(trace > theta, np.arange(n, dtype=np.int64), _NEVER)
    out = np.empty(n + 1, dtype=np.int64)
    out[n] = _NEVER
    out[:n] = np.minimum.accumulate(idx[::-1])[::-1]
    return out


def _simulate_prompt(nexts: list[np.ndarray], cap: int, window: int, rng: np.random.Generator,
                     resample_parent: bool) -> int:
    """One simulated EAGer-init run for one prompt; returns its number of sequences."""
    n = len(nexts)
    count = 1
    order = 0
    root = int(rng.integers(n))
    heap: list[tuple[int, int, int]] = []
    first = nexts[root][0]
    if first != _NEVER:
        heap.append((int(first), order, root))
    last_branch = -1
    while heap and count < cap:
        t, _, j = heapq.heappop(heap)
        if t - last_branch > window:  # W steps without a branch: branching closed for good
            break
        count += 1
        last_branch = t
        # The child took top-2 at step t; from t+1 on it follows a resampled trace of the prompt.
        for trace_id in (int(rng.integers(n)), int(rng.integers(n)) if resample_parent else j):
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
    branch_window: int = 1000,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    resample_parent: bool = False,
    per_prompt: bool = False,
):
    """Expected number of sequences per prompt under EAGer-init at θ, from recorded entropy traces.

    `traces[p]` holds prompt p's recorded traces (per-step top-K entropies of plain sampled
    sequences; a trace ends where its sequence stopped). For each prompt, `replicates` runs of this
    branching process are simulated and averaged; the result is the mean over prompts.

    - The root sequence follows one of the prompt's traces, drawn at random.
    - A live sequence branches at every step t where its trace exceeds θ, while the prompt has fewer
      than M sequences and branching is open (a branch at most W steps after the previous one, or
      after the start); branches are processed in step order, so the cap binds as in the lockstep
      engine.
    - The new branch follows, from step t+1 on, a trace of the same prompt drawn at random (the
      parent's own among them), and ends where that trace ends; the parent keeps its own trace
      (`resample_parent` draws a new one for it too).

    Assumptions: entropies at step t depend on the prompt and the position, not on the particular
    tokens chosen before (resampling a whole trace from step t+1 treats the continuations after a
    fork like fresh samples); the parent taking its top-1 token and the child its top-2 token at a
    branch do not change the distribution of later entropies; max_new_tokens counts from the
    prompt's first step for every branch, which position-aligned traces respect. Replicates use
    fixed random streams per (seed, prompt, replicate), so estimates at different θ are comparable.
    Returns the mean (float), or the per-prompt means (numpy array) with per_prompt=True.
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
            total += _simulate_prompt(nexts, max_sequences, branch_window, rng, resample_parent)
        means.append(total / replicates)
    result = np.asarray(means, dtype=np.float64)
    if per_prompt:
        return result
    return float(result.mean()) if result.size else 1.0


def theta_for_target(
    traces, target: float, max_sequences: int, *, top_k_entropy: int, branch_window: int = 1000,
    replicates: int = DEFAULT_REPLICATES, seed: int = 0, iterations: int = 18, resample_parent: bool = False,
) -> tuple[float, float]:
    """θ whose estimated mean #S is closest to `target`, by bisection on [0, ln K]; (θ, estimate).

    The estimate falls (weakly) as θ rises. Bisection keeps lo with estimate >= target and hi with
    estimate < target, so for S = M it finds the highest θ at which every simulated run hits the cap.
    If even θ = 0 does not reach the target, θ = 0 is returned with its (smaller) estimate; a target
    of 1 or less gives ln K (never branch).
    """
    ln_k = math.log(top_k_entropy)

    def est(theta: float) -> float:
        return estimate_sequences(traces, theta, max_sequences, branch_window=branch_window,
                                  replicates=replicates, seed=seed, resample_parent=resample_parent)

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
    """2, 4, 8, … up to M, and M itself."""
    targets, s = [], 2
    while s < max_sequences:
        targets.append(s)
        s *= 2
    if max_sequences >= 2:
        targets.append(max_sequences)
    return targets


# --------------------------------------------------------------------------------------------
# Decoding: record traces, check a θ
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """The generation settings calibration decodes with (those of the run it calibrates for)."""

    temperature: float = 0.6
    top_k_entropy: int = 20
    max_new_tokens: int = 512
    tempered_entropy: bool = False
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 55

    def config(self, llm, **changes) -> GenerationConfig:
        config = llm.config(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            top_k_entropy=self.top_k_entropy, tempered_entropy=self.tempered_entropy,
            max_new_tokens=self.max_new_tokens, seed=self.seed, **changes,
        )
        config.validate()
        return config


def record_traces(llm, prompt_tokens: list[list[int]], settings: Settings, *, samples: int = DEFAULT_SAMPLES,
                  seed_offset: int = 1_000_003) -> tuple[list[list[list[float]]], int, float]:
    """Decode each prompt `samples` times (plain sampling); per prompt, its entropy traces.

    EAGer-init with θ above ln K never branches (top-K entropy is at most ln K), and with room for a
    second sequence and a window longer than the generation, the engine computes the entropy at
    every step (except after a reasoning model's end-of-thinking marker, where the engine never
    branches either: those steps are NaN, which never exceeds θ). All runs go to one engine call,
    so they decode in one batch.
    Returns (traces, generated tokens, seconds).
    """
    config = settings.config(
        llm, method="eager-init", theta=math.log(settings.top_k_entropy) + 1.0, max_sequences=2,
        branch_window=settings.max_new_tokens + 1,
    )
    requests = [
        Request(tokens=tokens, index=seed_offset + p * samples + s)
        for p, tokens in enumerate(prompt_tokens)
        for s in range(samples)
    ]
    start = time.perf_counter()
    trees = llm.engine.generate(requests, config)
    seconds = time.perf_counter() - start
    traces: list[list[list[float]]] = [[] for _ in prompt_tokens]
    generated = 0
    for tree in trees:
        p = (tree.index - seed_offset) // samples
        seq = tree.sequences[0]
        traces[p].append([float(h) for h in seq.entropies])
        generated += tree.generated_tokens
    return traces, generated, seconds


def check_theta(llm, prompt_tokens: list[list[int]], settings: Settings, theta: float, max_sequences: int,
                branch_window: int = 1000, *, seeds: int = 1) -> dict:
    """A real EAGer-init run at θ on the prompts: the achieved mean #S (and per prompt).

    With seeds > 1 every prompt runs that many times, seed settings.seed + r for the r-th (so the
    r-th is what `eval --seed` with that seed gives on these prompts), all in one batch. The mean
    and its standard error are over the prompts' mean #S: the prompts are the independent units
    (the runs of one prompt share it).
    """
    config = settings.config(llm, method="eager-init", theta=theta, max_sequences=max_sequences,
                             branch_window=branch_window)
    n = len(prompt_tokens)
    requests = [Request(tokens=tokens, index=i, seed=settings.seed + r)
                for r in range(seeds) for i, tokens in enumerate(prompt_tokens)]
    start = time.perf_counter()
    trees = llm.engine.generate(requests, config)
    seconds = time.perf_counter() - start
    counts = np.zeros((seeds, n))
    for tree in trees:  # seeds share indices: the tree's seed says which run it is
        counts[tree.settings["seed"] - settings.seed, tree.index] = len(tree.sequences)
    per_prompt = counts.mean(axis=0)
    stderr = float(np.std(per_prompt, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    run = {
        "theta": round(theta, 4),
        "achieved": round(float(per_prompt.mean()), 3),
        "stderr": round(stderr, 3),
        "per_prompt": [int(c) for c in counts[0]] if seeds == 1 else [round(float(c), 3) for c in per_prompt],
        "tokens": sum(t.generated_tokens for t in trees),
        "seconds": round(seconds, 1),
    }
    if seeds > 1:
        run["seeds"] = seeds
        run["per_seed"] = [round(float(c), 3) for c in counts.mean(axis=1)]
    return run


# --------------------------------------------------------------------------------------------
# A calibration (one profile entry)
# --------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    key: CalibrationKey
    traces: list[list[list[float]]]
    source: dict  # what was decoded: dataset/prompts, ids, samples
    created: str = ""
    timing: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)  # real runs: target, M, W, θ, predicted, achieved

    # derived ------------------------------------------------------------------------------------
    def entropies(self) -> list[float]:
        return [h for prompt in self.traces for trace in prompt for h in trace if not math.isnan(h)]

    def quantile_table(self, levels: Sequence[float] = QUANTILE_LEVELS) -> dict[str, float]:
        return {_level_name(p): round(v, 4) for p, v in zip(levels, quantiles(self.entropies(), levels))}

    def quantile(self, level: float) -> float:
        return quantiles(self.entropies(), [level])[0]

    def estimate(self, theta: float, max_sequences: int, branch_window: int = 1000) -> float:
        return estimate_sequences(self.traces, theta, max_sequences, branch_window=branch_window)

    def target_table(self, max_sequences: int, branch_window: int = 1000,
                     targets: Sequence[int] | None = None) -> list[dict]:
        rows = []
        for s in targets or default_targets(max_sequences):
            theta, predicted = theta_for_target(self.traces, s, max_sequences, top_k_entropy=self.key.top_k_entropy,
                                                branch_window=branch_window)
            rows.append({"target": s, "theta": round(theta, 4), "predicted": round(predicted, 3)})
        return rows

    def measured_points(self, max_sequences: int, branch_window: int = 1000) -> list[tuple[float, float]]:
        """(θ, achieved mean #S) of every real run on the calibration prompts at this M and W."""
        return [(r["theta"], r["achieved"]) for c in self.checks
                if c["max_sequences"] == max_sequences and c["branch_window"] == branch_window
                for r in c.get("runs", [])]

    def find_check(self, target: float, max_sequences: int, branch_window: int) -> dict | None:
        for c in self.checks:
            if c["target"] == target and c["max_sequences"] == max_sequences and c["branch_window"] == branch_window:
                return c
        return None

    def theta_for(self, target: float, max_sequences: int, branch_window: int = 1000) -> tuple[float, dict]:
        """The θ to use for a target: the checked (refined) one if there is a check, else the estimate."""
        check = self.find_check(target, max_sequences, branch_window)
        if check:
            return check["theta"], check
        theta, predicted = theta_for_target(self.traces, target, max_sequences,
                                            top_k_entropy=self.key.top_k_entropy, branch_window=branch_window)
        return theta, {"target": target, "theta": round(theta, 4), "predicted": round(predicted, 3), "checked": False}

    # JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "key": asdict(self.key),
            "created": self.created,
            "source": self.source,
            "timing": self.timing,
            "quantiles": self.quantile_table(),
            "checks": self.checks,
            # 4 decimals of a nat is far below any θ that matters; keeps the file small.
            "traces": [[[None if math.isnan(h) else round(h, 4) for h in t] for t in p] for p in self.traces],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(
            key=CalibrationKey(**data["key"]),
            traces=[[[math.nan if h is None else float(h) for h in t] for t in p] for p in data["traces"]],
            source=data.get("source", {}),
            created=data.get("created", ""),
            timing=data.get("timing", {}),
            checks=list(data.get("checks", [])),
        )


def _level_name(p: float) -> str:
    return f"q{p:g}"


def run_check(calibration: Calibration, llm, prompt_tokens: list[list[int]], settings: Settings, target: int,
              max_sequences: int, branch_window: int = 1000, *, refine: bool = True,
              tolerance: float = REFINE_TOLERANCE, log: Callable[[str], None] | None = None) -> dict:
    """Check θ for `target` with a real run on the calibration prompts; refine once if it misses.

    Each real run decodes every prompt `calibration.source["check_seeds"]` times (default 1).
    Every real run of this calibration (same M and W, any target) is a measured point (θ, mean #S)
    on the calibration prompts. The first θ is interpolated between measured points when they
    bracket the target, else it is the estimator's. A run that misses the target by more than
    `tolerance` (relative) and by more than one standard error of its mean (the check is noisy:
    #S varies a lot between prompts) is refined once: a second run at θ interpolated between the
    measured points if they now bracket the target, else at the estimator's θ for target / r with
    r = achieved / predicted (as if the estimator were off by a constant factor near the target).
    The θ kept is chosen by `choose_theta`: interpolated between the measured points if they
    bracket the target after a refinement; else the closest run's level corrects the estimate if
    that run missed by more than its standard error; else that run's θ. Interpolation is linear in
    log #S after making the points non-increasing in θ (pool-adjacent-violators): the #S-vs-θ
    curve is close to exponential near the top of the entropy range. The check is stored in
    `calibration.checks` and returned.
    """
    say = log or (lambda _m: None)
    seeds = int(calibration.source.get("check_seeds", 1))
    runs_text = f"{len(prompt_tokens)} prompts" + (f" x {seeds} seeds" if seeds > 1 else "")
    theta_est, predicted_est = theta_for_target(calibration.traces, target, max_sequences,
                                                top_k_entropy=calibration.key.top_k_entropy,
                                                branch_window=branch_window)
    measured = calibration.measured_points(max_sequences, branch_window)
    theta = measured_theta(measured, target)
    if theta is None:
        theta, predicted, how = theta_est, predicted_est, "estimated"
    else:
        predicted, how = float(target), "interpolated between earlier runs"
    say(f"checking θ = {theta:.3f} (target {target}, {how}: {predicted:.2f}) with a real run on {runs_text} …")
    first = check_theta(llm, prompt_tokens, settings, theta, max_sequences, branch_window, seeds=seeds)
    first["predicted"] = round(predicted, 3)
    first["how"] = how
    runs = [first]
    miss = abs(first["achieved"] - target)
    if refine and first["achieved"] > 0 and miss > tolerance * target and miss > first["stderr"]:
        points = measured + [(first["theta"], first["achieved"])]
        theta2 = measured_theta(points, target)
        if theta2 is not None:
            predicted2, how2 = float(target), "interpolated between runs"
        else:
            ratio = first["achieved"] / max(predicted, 1e-9)
            theta2, est2, aim = _theta_for_scaled_target(calibration.traces, target, ratio, max_sequences,
                                                         top_k_entropy=calibration.key.top_k_entropy,
                                                         branch_window=branch_window)
            predicted2, how2 = est2 * ratio, f"estimator aimed at {aim:.2f}"
        say(f"achieved {first['achieved']:.2f}: refining, θ = {theta2:.3f} ({how2}) …")
        second = check_theta(llm, prompt_tokens, settings, theta2, max_sequences, branch_window, seeds=seeds)
        second["predicted"] = round(predicted2, 3)
        second["how"] = how2
        runs.append(second)
    check = {"target": target, "max_sequences": max_sequences, "branch_window": branch_window,
             "runs": runs, "refined": len(runs) > 1, "checked": True,
             "estimated_theta": round(theta_est, 4), "estimated": round(predicted_est, 3)}
    check.update(choose_theta(calibration.traces, runs, measured, target, max_sequences,
                              top_k_entropy=calibration.key.top_k_entropy, branch_window=branch_window))
    calibration.checks = [c for c in calibration.checks
                          if not (c["target"] == target and c["max_sequences"] == max_sequences
                                  and c["branch_window"] == branch_window)] + [check]
    return check


def choose_theta(traces, runs: list[dict], measured: Sequence[tuple[float, float]], target: float,
                 max_sequences: int, *, top_k_entropy: int, branch_window: int = 1000) -> dict:
    """The θ a check keeps, from its real runs (and earlier measured points): the check's fields.

    After a refinement, θ interpolated between measured points that bracket the target. Else the
    run closest to the target: if it missed by more than its standard error, its level corrects
    the estimate (`corrected_theta`); a miss within one standard error is no evidence against the
    estimate (at the defaults, 8 prompts, the error is large, and on GSM8K the estimated curve is
    too flat, so a correction along it would move θ far on noise), so the run's θ is kept.
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
                    top_k_entropy: int, branch_window: int = 1000) -> tuple[float, float] | None:
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
    corrected, _, _ = _theta_for_scaled_target(traces, target, ratio, max_sequences,
                                               top_k_entropy=top_k_entropy, branch_window=branch_window)
    return corrected, ratio


def _theta_for_scaled_target(traces, target: float, ratio: float, max_sequences: int, *, top_k_entropy: int,
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
    bracket the target.
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


# --------------------------------------------------------------------------------------------
# Where profiles live
# --------------------------------------------------------------------------------------------


def profile_path(model_sha256: str) -> Path:
    return models.home_dir() / "profiles" / f"{model_sha256[:16]}.json"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - Windows: best effort
            pass
        yield


def _read_profile(path: Path, model_sha256: str) -> dict:
    """The profile document, or a fresh one when it is missing, unreadable, stale or another model's."""
    fresh = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "model_sha256": model_sha256, "entries": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return fresh
    if (not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT or doc.get("version") != PROFILE_VERSION
            or doc.get("model_sha256") != model_sha256 or not isinstance(doc.get("entries"), dict)):
        return fresh  # stale format or another model: never used, replaced on the next save
    return doc


def _write_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_entry(key: CalibrationKey) -> Calibration | None:
    """The profile entry for exactly this key, or None (missing, stale or mismatched)."""
    doc = _read_profile(profile_path(key.model_sha256), key.model_sha256)
    data = doc["entries"].get(key.id())
    if not data:
        return None
    try:
        entry = Calibration.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None
    if entry.key != key:  # an id collision or a hand-edited file: do not trust it
        return None
    return entry


def save_entry(entry: Calibration) -> Path:
    path = profile_path(entry.key.model_sha256)
    with _locked(path):
        doc = _read_profile(path, entry.key.model_sha256)
        doc["entries"][entry.key.id()] = entry.to_dict()
        _write_atomic(path, doc)
    return path


# --------------------------------------------------------------------------------------------
# Prompts and tasks
# --------------------------------------------------------------------------------------------


def task_of_dataset(dataset: str | None) -> str:
    """The task a dataset spec calibrates: its family (gsm8k, arith for arith:N:SEED, a file's path)."""
    if not dataset:
        return DEFAULT_TASK
    from .eval.datasets import is_builtin

    text = str(dataset).strip()
    if is_builtin(text):
        return text.lower().split(":")[0]  # arith:N:SEED:LEVELS -> arith
    return "file:" + str(Path(text).expanduser().resolve())


def calibration_prompts(max_new_tokens: int, samples: int = DEFAULT_SAMPLES, *, for_eval: bool = False) -> int:
    """Prompts calibration decodes by default: RECORD_TOKENS / (samples x max_new_tokens), clamped
    to MIN_PROMPTS..MAX_PROMPTS; for_eval: EVAL_RECORD_TOKENS, up to EVAL_MAX_PROMPTS.

    $EAGER_LOCAL_CALIBRATION_PROMPTS, when set, is used instead.
    """
    override = os.environ.get(PROMPTS_ENV, "").strip()
    if override:
        try:
            count = int(override)
        except ValueError:
            raise CalibrationError(f"{PROMPTS_ENV} must be a whole number, got {override!r}") from None
        if count < 1:
            raise CalibrationError(f"{PROMPTS_ENV} must be >= 1, got {count}")
        return count
    per_prompt = max(1, samples) * max(1, max_new_tokens)
    budget, most = (EVAL_RECORD_TOKENS, EVAL_MAX_PROMPTS) if for_eval else (RECORD_TOKENS, MAX_PROMPTS)
    return min(most, max(MIN_PROMPTS, budget // per_prompt))


def check_seed_count(prompts: int, runs: int | None = None) -> int:
    """Seeds per prompt for a check to average at least `runs` runs (None: one seed), at most
    MAX_CHECK_SEEDS. Eval asks for EVAL_CHECK_RUNS."""
    if not runs or prompts < 1:
        return 1
    return min(MAX_CHECK_SEEDS, max(1, math.ceil(runs / prompts)))


def dataset_problems(dataset: str | None, *, limit: int = MIN_PROMPTS, offset: int = 0) -> list[str]:
    """Problem texts of a dataset spec (None: the default calibration set, gsm8k)."""
    from .eval.datasets import load_dataset, select

    problems = select(load_dataset(dataset or "gsm8k"), limit=limit, offset=offset)
    if not problems:
        raise CalibrationError("no prompts to calibrate on (check --limit and --offset)")
    return [p.problem for p in problems]


def read_prompts_file(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: one per line, or JSONL objects with a "prompt" or "problem" field."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CalibrationError(f"prompts file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"cannot read prompts file {p}: {getattr(e, 'strerror', None) or e}") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                raise CalibrationError(f"{p} line {number}: invalid JSON") from None
            text = record.get("prompt", record.get("problem")) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise CalibrationError(f"{p} line {number}: no \"prompt\" or \"problem\" text")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        raise CalibrationError(f"{p}: no prompts (the file is empty)")
    return prompts


# --------------------------------------------------------------------------------------------
# Model identity
# --------------------------------------------------------------------------------------------


def model_sha256(llm) -> str:
    return models.model_sha256(llm.resolved.path, llm.resolved.sha256)


def make_key(llm, settings: Settings, fmt: PromptFormat, task: str) -> CalibrationKey:
    return CalibrationKey(
        model_sha256=model_sha256(llm),
        top_k_entropy=settings.top_k_entropy,
        temperature=float(settings.temperature),
        max_new_tokens=settings.max_new_tokens,
        prompt_format=fmt.key(llm.model.chat_template() if fmt.chat else None),
        task=task,
        tempered_entropy=settings.tempered_entropy,
        top_k=settings.top_k,
        top_p=float(settings.top_p),
        min_p=float(settings.min_p),
    )


# --------------------------------------------------------------------------------------------
# The whole calibration
# --------------------------------------------------------------------------------------------


def calibrate(
    llm,
    prompts: list[str],
    *,
    settings: Settings,
    fmt: PromptFormat,
    task: str,
    source: dict | None = None,
    samples: int = DEFAULT_SAMPLES,
    check_target: int | None = None,
    check_seeds: int = 1,
    max_sequences: int = 8,
    branch_window: int = 1000,
    save: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[Calibration, Path | None]:
    """Record traces on the prompts, check θ for `check_target` (None: no check), save the entry.

    `check_seeds` (runs per prompt in a check) is kept in the entry's source: later checks of the
    entry (another target) run the same way, so all its measured points are alike."""
    say = log or (lambda _m: None)
    if not prompts:
        raise CalibrationError("no prompts to calibrate on")
    if samples < 1:
        raise CalibrationError(f"samples must be >= 1, got {samples}")
    if check_seeds < 1:
        raise CalibrationError(f"check seeds must be >= 1, got {check_seeds}")
    if not 1 <= max_sequences:
        raise CalibrationError(f"max-sequences must be >= 1, got {max_sequences}")
    key = make_key(llm, settings, fmt, task)
    tokens = [llm.prompt_tokens(fmt.render(p), chat=fmt.chat, system=fmt.system) for p in prompts]
    say(f"recording entropy traces: {len(prompts)} prompts x {samples} samples, up to {settings.max_new_tokens} tokens …")
    start = time.perf_counter()
    traces, generated, seconds = record_traces(llm, tokens, settings, samples=samples)
    entry = Calibration(
        key=key,
        traces=traces,
        source={**(source or {}), "prompts": len(prompts), "samples": samples, "check_seeds": check_seeds,
                "prompts_sha256": _sha("\n\x00".join(prompts), 16)},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        timing={"record_tokens": generated, "record_seconds": round(seconds, 1)},
    )
    if check_target is not None and check_target >= 2 and max_sequences >= 2:
        check = run_check(entry, llm, tokens, settings, min(check_target, max_sequences), max_sequences,
                          branch_window, log=log)
        entry.timing["check_tokens"] = sum(r["tokens"] for r in check["runs"])
        entry.timing["check_seconds"] = round(sum(r["seconds"] for r in check["runs"]), 1)
    entry.timing["total_seconds"] = round(time.perf_counter() - start, 1)
    entry.timing["threads"] = llm.engine.n_threads
    path = save_entry(entry) if save else None
    return entry, path


# --------------------------------------------------------------------------------------------
# --theta auto | qNN | number
# --------------------------------------------------------------------------------------------

def resolve_theta(
    spec: str | float,
    llm,
    *,
    target_sequences: int | None = None,
    max_sequences: int = 8,
    temperature: float = 0.6,
    top_k_entropy: int = 20,
    max_new_tokens: int = 512,
    tempered_entropy: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    branch_window: int = 1000,
    chat: bool = True,
    system: str | None = None,
    prompt_template: str = RAW_TEMPLATE,
    dataset_hint: str | None = None,
    seed: int = 55,
    calibrate_prompts: int | None = None,
    check_runs: int | None = None,
    calibration_problems: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[float, dict]:
    """θ for a `--theta` value: a number as is, `auto` for a target #S, `qNN.N` for an entropy quantile.

    auto/quantile use the model's profile for exactly these settings and task (dataset_hint's
    family, else the default task); without one — or with a stale or mismatched one — calibration
    runs first (on the first `calibrate_prompts` problems of dataset_hint, else of gsm8k; None:
    calibration_prompts(max_new_tokens)) and is saved (`calibration_problems`, when given, are
    decoded instead: eval passes its problem texts, already read with the user's field names); its
    checks run each prompt with enough seeds to average `check_runs` runs (check_seed_count). For
    auto, a target not yet checked for this (M, W) is checked with a short real run and the check
    is saved too. Returns (θ, info) with info for the report: spec, target, predicted, achieved on
    the calibration prompts, the profile path and key.
    """
    kind, value = parse_theta_spec(spec)
    if kind == "number":
        return value, {"spec": str(spec), "mode": "fixed", "theta": value}
    if max_sequences < 1:
        raise ConfigError(f"max-sequences must be >= 1, got {max_sequences}")
    settings = Settings(temperature=temperature, top_k_entropy=top_k_entropy, max_new_tokens=max_new_tokens,
                        tempered_entropy=tempered_entropy, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    fmt = PromptFormat(chat=chat, system=system, template=prompt_template)
    task = task_of_dataset(dataset_hint)
    key = make_key(llm, settings, fmt, task)
    entry = load_entry(key)
    calibrated_now = False
    target = None
    if kind == "auto":
        target = target_sequences if target_sequences is not None else max(2, max_sequences // 2)
        if target < 1:
            raise ConfigError(f"target-sequences must be >= 1, got {target}")
        target = min(target, max_sequences)
    if calibrate_prompts is None:
        calibrate_prompts = calibration_prompts(max_new_tokens)
    prompts = None
    if calibration_problems is not None:
        prompts = list(calibration_problems)[:calibrate_prompts]
        source = {"problems": prompts}
    else:
        source = {"dataset": dataset_hint or "gsm8k", "limit": calibrate_prompts, "offset": 0}
    if entry is None:
        if log:
            log(f"calibrating θ for task {task!r}: no profile for this model and these settings yet "
                f"(once; saved to {profile_path(key.model_sha256)})")
        if prompts is None:
            prompts = dataset_problems(dataset_hint, limit=calibrate_prompts)
        entry, _ = calibrate(
            llm, prompts, settings=settings, fmt=fmt, task=task,
            source=source, check_seeds=check_seed_count(len(prompts), check_runs),
            check_target=target if target and target >= 2 else None, max_sequences=max_sequences,
            branch_window=branch_window, log=log,
        )
        calibrated_now = True
        if log:
            log(f"calibration took {entry.timing['total_seconds']:.0f} s")
    path = profile_path(key.model_sha256)
    info = {"spec": str(spec), "mode": kind, "profile": str(path), "profile_key": key.id(), "task": task,
            "calibrated_now": calibrated_now, "profile_created": entry.created}
    if kind == "quantile":
        theta = entry.quantile(value)
        info.update(theta=round(theta, 4), quantile=value,
                    predicted=round(entry.estimate(theta, max_sequences, branch_window), 3))
        return theta, info
    if target <= 1 or max_sequences < 2:
        theta = math.log(top_k_entropy)
        info.update(theta=theta, target=target, predicted=1.0)
        return theta, info
    if entry.find_check(target, max_sequences, branch_window) is None:
        # Checks run on the entry's own calibration prompts, so all its real runs are comparable.
        if not calibrated_now:
            prompts = _source_prompts(entry.source, dataset_hint, calibrate_prompts)
        tokens = [llm.prompt_tokens(fmt.render(p), chat=fmt.chat, system=fmt.system) for p in prompts]
        run_check(entry, llm, tokens, settings, target, max_sequences, branch_window, log=log)
        save_entry(entry)
    theta, check = entry.theta_for(target, max_sequences, branch_window)
    info.update(theta=theta, target=target, max_sequences=max_sequences, predicted=check.get("predicted"),
                achieved_on_calibration=check.get("achieved"), refined=check.get("refined", False),
                interpolated=check.get("interpolated", False), corrected=check.get("corrected", False))
    if check.get("corrected"):
        info.update(measured_theta=check["measured_theta"], measured_on_calibration=check["measured"])
    return theta, info


def _source_prompts(source: dict, dataset_hint: str | None, default_limit: int) -> list[str]:
    if source.get("problems"):
        return list(source["problems"])
    if source.get("prompts_file"):
        return read_prompts_file(source["prompts_file"])
    return dataset_problems(source.get("dataset") or dataset_hint, limit=source.get("limit") or default_limit,
                            offset=source.get("offset") or 0)


def theta_from_options(opts: dict, llm, *, prompt_template: str = RAW_TEMPLATE, dataset_hint: str | None = None,
                       calibration_problems: Sequence[str] | None = None, calibrate_prompts: int | None = None,
                       check_runs: int | None = None,
                       log: Callable[[str], None] | None = None) -> tuple[float, dict]:
    """resolve_theta() fed from the CLI's generation options (the dict `run`, `chat` and `eval` get).

    Expects opts["theta"] as the user typed it (a number, `auto` or `qNN.N`) and an optional
    opts["target_sequences"]; every other key is one of generation_options()'s.
    """
    return resolve_theta(
        opts["theta"], llm,
        target_sequences=opts.get("target_sequences"),
        max_sequences=int(opts["max_sequences"]),
        temperature=opts["temperature"],
        top_k_entropy=opts["top_k_entropy"],
        max_new_tokens=opts["max_new_tokens"],
        tempered_entropy=opts.get("tempered_entropy", False),
        top_k=opts.get("top_k", 0),
        top_p=opts.get("top_p", 1.0),
        min_p=opts.get("min_p", 0.0),
        branch_window=opts.get("branch_window", 1000),
        chat=opts.get("chat", True),
        system=opts.get("system"),
        prompt_template=prompt_template,
        dataset_hint=dataset_hint,
        calibration_problems=calibration_problems,
        calibrate_prompts=calibrate_prompts,
        check_runs=check_runs,
        seed=opts.get("seed", 55),
        log=log,
    )
