"""The model runs of a calibration: record entropy traces, and check a θ with a real EAGer-init run.

**Record** (`record_traces`). Each prompt is decoded `samples` times as one plainly sampled
sequence (method parallel with M = 1: no branching), with the engine asked to compute the top-K
entropy at every step (`record_entropies`), not only where a branch may happen. Every step's
entropy is kept: one *trace* per sequence, ending where the sequence stopped. Steps after a
reasoning model's end-of-thinking marker stay NaN: the engine never branches there.

**Check** (`check_theta`, `run_check`). The estimate (estimator.py) is only a model of EAGer-init;
a check runs the real thing at the chosen θ on the same prompts and measures the mean #S, with
its standard error. A check that misses the target by more than REFINE_TOLERANCE and by more than
its standard error is refined once; every run is kept as a measured point (θ, #S) that later
checks of the same entry interpolate between.

**How many runs.** Per-prompt #S is heavy-tailed (most prompts take 1–3 sequences, a few hit the
cap M) and mostly the luck of the sampled tokens, so a check's mean is only as precise as the
number of runs it averages. `calibration_prompts` decodes as many prompts as a token budget
allows (more when generations are short); `eval`, whose #S is what it measures, gets four times the
budget and runs each prompt with several seeds (`check_seed_count`). `run`/`chat` keep one seed
and a budget that bounds the first `--theta auto` to about two minutes on a small CPU.
Measurements behind these numbers: docs/calibration.md.

All runs of one recording or one check go to the engine in one call, so they decode in one batch.
The decoding settings are the key's (config.entropy_settings) and the run's seed, everything
else at its default: a profile entry depends on its key and nothing else.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np

from ..config import GenerationConfig, entropy_settings
from ..engine import Request
from .estimator import CalibrationError, choose_theta, measured_theta, theta_for_scaled_target, theta_for_target
from .profile import Calibration

DEFAULT_SAMPLES = 2  # sampled sequences recorded per prompt
# Prompts to decode: as many as RECORD_TOKENS allow (prompts x samples x max_new_tokens), between
# MIN_PROMPTS and MAX_PROMPTS: 8 prompts at 512 new tokens, more for shorter generations.
RECORD_TOKENS = 8192
MIN_PROMPTS = 8
MAX_PROMPTS = 64
# `eval --theta auto` calibrates on four times the tokens, up to 128 prompts (32 at 512 new tokens).
EVAL_RECORD_TOKENS = 4 * RECORD_TOKENS
EVAL_MAX_PROMPTS = 128
# eval's checks run each prompt with enough seeds to average at least EVAL_CHECK_RUNS runs, at
# most MAX_CHECK_SEEDS (2 seeds at 128 prompts, 3 at 102, 4 at 32).
EVAL_CHECK_RUNS = 256
MAX_CHECK_SEEDS = 4
PROMPTS_ENV = "EAGER_LOCAL_CALIBRATION_PROMPTS"  # overrides the count (tests, slow machines)
REFINE_TOLERANCE = 0.25  # refine when the check misses the target by more than this (relative)
# Recording runs use request indices far from any check's (0..prompts-1), so their random
# streams are not a check's.
RECORD_INDEX_OFFSET = 1_000_003


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


def decode_config(llm, config: GenerationConfig, **changes) -> GenerationConfig:
    """The config a calibration decodes with: `config`'s entropy settings and seed, the model's
    end-of-thinking marker (llm.config), every other option at its default, then `changes`."""
    decode = llm.config(**entropy_settings(config), seed=config.seed, **changes)
    decode.validate()
    return decode


def record_traces(llm, prompt_tokens: list[list[int]], config: GenerationConfig, *,
                  samples: int = DEFAULT_SAMPLES) -> tuple[list[list[list[float]]], int, float]:
    """Decode each prompt `samples` times (plain sampling); per prompt, its entropy traces.

    Returns (traces, generated tokens, seconds).
    """
    plain = decode_config(llm, config, method="parallel", max_sequences=1, record_entropies=True)
    requests = [
        Request(tokens=tokens, index=RECORD_INDEX_OFFSET + p * samples + s)
        for p, tokens in enumerate(prompt_tokens)
        for s in range(samples)
    ]
    start = time.perf_counter()
    trees = llm.generate_requests(requests, plain)
    seconds = time.perf_counter() - start
    traces: list[list[list[float]]] = [[] for _ in prompt_tokens]
    generated = 0
    for tree in trees:
        p = (tree.index - RECORD_INDEX_OFFSET) // samples
        traces[p].append([float(h) for h in tree.sequences[0].entropies])
        generated += tree.generated_tokens
    return traces, generated, seconds


def check_theta(llm, prompt_tokens: list[list[int]], config: GenerationConfig, theta: float, *,
                seeds: int = 1) -> dict:
    """A real EAGer-init run at θ on the prompts, with the config's M and W: the achieved mean #S.

    With seeds > 1 every prompt runs that many times, seed config.seed + r for the r-th (so the
    r-th is what `eval --seed` with that seed gives on these prompts), all in one batch. The mean
    and its standard error are over the prompts' mean #S: the prompts are the independent units
    (the runs of one prompt share it).
    """
    eager = decode_config(llm, config, method="eager-init", theta=theta, max_sequences=config.max_sequences,
                          branch_window=config.branch_window)
    n = len(prompt_tokens)
    requests = [Request(tokens=tokens, index=i, seed=config.seed + r)
                for r in range(seeds) for i, tokens in enumerate(prompt_tokens)]
    start = time.perf_counter()
    trees = llm.generate_requests(requests, eager)
    seconds = time.perf_counter() - start
    counts = np.zeros((seeds, n))
    for tree in trees:  # seeds share indices: the tree's seed says which run it is
        counts[tree.settings["seed"] - config.seed, tree.index] = len(tree.sequences)
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


def run_check(calibration: Calibration, llm, prompt_tokens: list[list[int]], config: GenerationConfig,
              target: int, *, refine: bool = True, tolerance: float = REFINE_TOLERANCE,
              log: Callable[[str], None] | None = None) -> dict:
    """Check θ for `target` at the config's M and W with a real run on the calibration prompts;
    refine once if it misses. The check is stored in `calibration.checks` and returned.

    Each real run decodes every prompt `calibration.source["check_seeds"]` times (default 1).
    Every real run of this calibration (same M and W, any target) is a measured point (θ, mean #S)
    on the calibration prompts. The first θ is interpolated between measured points when they
    bracket the target, else it is the estimator's. A run that misses the target by more than
    `tolerance` (relative) and by more than one standard error of its mean is refined once: a
    second run at θ interpolated between the measured points if they now bracket the target, else
    at the estimator's θ for target / r with r = achieved / predicted (as if the estimator were off
    by a constant factor near the target). The θ kept is chosen by `choose_theta`.
    """
    say = log or (lambda _m: None)
    m, w = config.max_sequences, config.branch_window
    k = calibration.top_k_entropy
    seeds = int(calibration.source.get("check_seeds", 1))
    runs_text = f"{len(prompt_tokens)} prompts" + (f" x {seeds} seeds" if seeds > 1 else "")
    theta_est, predicted_est = theta_for_target(calibration.traces, target, m, top_k_entropy=k, branch_window=w)
    measured = calibration.measured_points(m, w)
    theta = measured_theta(measured, target)
    if theta is None:
        theta, predicted, how = theta_est, predicted_est, "estimated"
    else:
        predicted, how = float(target), "interpolated between earlier runs"
    say(f"checking θ = {theta:.3f} (target {target}, {how}: {predicted:.2f}) with a real run on {runs_text} …")
    first = check_theta(llm, prompt_tokens, config, theta, seeds=seeds)
    first["predicted"] = round(predicted, 3)
    first["how"] = how
    runs = [first]
    miss = abs(first["achieved"] - target)
    if refine and first["achieved"] > 0 and miss > tolerance * target and miss > first["stderr"]:
        theta2 = measured_theta(measured + [(first["theta"], first["achieved"])], target)
        if theta2 is not None:
            predicted2, how2 = float(target), "interpolated between runs"
        else:
            ratio = first["achieved"] / max(predicted, 1e-9)
            theta2, est2, aim = theta_for_scaled_target(calibration.traces, target, ratio, m, top_k_entropy=k,
                                                        branch_window=w)
            predicted2, how2 = est2 * ratio, f"estimator aimed at {aim:.2f}"
        say(f"achieved {first['achieved']:.2f}: refining, θ = {theta2:.3f} ({how2}) …")
        second = check_theta(llm, prompt_tokens, config, theta2, seeds=seeds)
        second["predicted"] = round(predicted2, 3)
        second["how"] = how2
        runs.append(second)
    check = {"target": target, "max_sequences": m, "branch_window": w,
             "runs": runs, "refined": len(runs) > 1, "checked": True,
             "estimated_theta": round(theta_est, 4), "estimated": round(predicted_est, 3)}
    check.update(choose_theta(calibration.traces, runs, measured, target, m, top_k_entropy=k, branch_window=w))
    calibration.checks = [c for c in calibration.checks
                          if not (c["target"] == target and c["max_sequences"] == m and c["branch_window"] == w)]
    calibration.checks.append(check)
    return check
