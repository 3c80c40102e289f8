"""Calibrate θ to the model and the task: θ for a target number of sequences per prompt.

A fixed θ does not transfer between models: a tiny model's top-K entropy is high almost
everywhere, a reasoning model's is low over long stretches. Calibration measures the model instead:

1. **Record** (decode.py): decode a handful of prompts a few times each, one plain sampled
   sequence per run, with the settings the real run will use; keep every per-step top-K entropy.
2. **Quantiles** of the recorded entropies (estimator.py): `--theta q99.5` picks one as θ.
3. **Estimate E[#S | θ]** (estimator.py) by simulating EAGer-init's branching process on the
   traces with the engine's own branch rule, and pick θ for a target #S by bisection.
4. **Check** (decode.py) that θ with a short real EAGer-init run on the same prompts; refine once
   if it misses, and keep every run as a measured point.

The results live in a per-model profile (profile.py), keyed by everything the entropies depend
on, so later runs reuse them; resolve.py ties it together for `--theta auto | qNN.N | number`.
How well it holds on unseen prompts and another model: docs/calibration.md.

Pure logic, no click: the command is eager_local/cli/calibrate.py.
"""

from .decode import (DEFAULT_SAMPLES, EVAL_CHECK_RUNS, EVAL_MAX_PROMPTS, MAX_CHECK_SEEDS, MAX_PROMPTS, MIN_PROMPTS,
                     PROMPTS_ENV, calibration_prompts, check_seed_count, check_theta, decode_config, record_traces,
                     run_check)
from .estimator import (CalibrationError, choose_theta, closest_run, corrected_theta, default_targets,
                        estimate_sequences, interpolate_theta, measured_theta, quantiles, theta_for_target)
from .profile import (PROFILE_VERSION, RAW_TEMPLATE, Calibration, CalibrationKey, PromptFormat, load_entry,
                      make_key, model_sha256, profile_path, save_entry)
from .resolve import (DEFAULT_TASK, calibrate, dataset_problems, read_prompts_file, resolve_theta,
                      task_of_dataset)

__all__ = [
    "CalibrationError",
    "PROFILE_VERSION", "RAW_TEMPLATE", "PromptFormat", "CalibrationKey", "Calibration", "make_key", "model_sha256",
    "profile_path", "load_entry", "save_entry",
    "quantiles", "estimate_sequences", "theta_for_target", "default_targets", "measured_theta", "interpolate_theta",
    "corrected_theta", "choose_theta", "closest_run",
    "DEFAULT_SAMPLES", "MIN_PROMPTS", "MAX_PROMPTS", "EVAL_MAX_PROMPTS", "EVAL_CHECK_RUNS", "MAX_CHECK_SEEDS",
    "PROMPTS_ENV", "calibration_prompts", "check_seed_count", "decode_config", "record_traces", "check_theta",
    "run_check",
    "DEFAULT_TASK", "task_of_dataset", "dataset_problems", "read_prompts_file", "calibrate", "resolve_theta",
]
