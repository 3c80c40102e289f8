"""A whole calibration, and `--theta auto | qNN.N | number` turned into a θ.

`calibrate` records traces on some prompts, optionally checks one target with a real run, and
saves the entry in the model's profile. `resolve_theta` is what `run`, `chat` and `eval` call:
it looks up the profile entry for the run's settings (model, entropy options, prompt format,
task), calibrates first when there is none — on the first problems of the dataset the run uses
(eval: outside its evaluated selection), else of gsm8k — and returns the θ for the target number
of sequences, or the entropy quantile.

Which prompts a profile is for is its *task*: the dataset family (`gsm8k`, `arith` for every
`arith:N:SEED`, a user file by its path), or `default` for `run`/`chat` without a dataset.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Collection, Sequence

from ..config import GenerationConfig, parse_theta_spec
from ..errors import ConfigError
from ..eval.datasets import is_builtin, load_dataset, select
from .decode import DEFAULT_SAMPLES, MIN_PROMPTS, calibration_prompts, check_seed_count, record_traces, run_check
from .estimator import CalibrationError
from .profile import (RAW_TEMPLATE, Calibration, PromptFormat, load_entry, make_key, profile_path, save_entry,
                      short_sha)

DEFAULT_TASK = "default"  # `run`/`chat` without a dataset: calibrated on the first gsm8k problems
DEFAULT_DATASET = "gsm8k"


# --- prompts and tasks -------------------------------------------------------------------------------
def task_of_dataset(dataset: str | None) -> str:
    """The task a dataset spec calibrates: its family (gsm8k, arith for arith:N:SEED, a file's path)."""
    if not dataset:
        return DEFAULT_TASK
    text = str(dataset).strip()
    if is_builtin(text):
        return text.lower().split(":")[0]  # arith:N:SEED:LEVELS -> arith
    return "file:" + str(Path(text).expanduser().resolve())


def dataset_problems(dataset: str | None, *, limit: int = MIN_PROMPTS, offset: int = 0) -> list[str]:
    """Problem texts of a dataset spec (None: the default calibration set, gsm8k)."""
    problems = select(load_dataset(dataset or DEFAULT_DATASET), limit=limit, offset=offset)
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


def _source_prompts(source: dict, dataset_hint: str | None, default_limit: int) -> list[str]:
    """The prompts an entry was recorded on, read again from what its `source` says."""
    if source.get("problems"):
        return list(source["problems"])
    if source.get("prompts_file"):
        return read_prompts_file(source["prompts_file"])
    return dataset_problems(source.get("dataset") or dataset_hint, limit=source.get("limit") or default_limit,
                            offset=source.get("offset") or 0)


# --- the whole calibration -----------------------------------------------------------------------------
def calibrate(
    llm,
    prompts: list[str],
    *,
    config: GenerationConfig,
    fmt: PromptFormat,
    task: str,
    source: dict | None = None,
    samples: int = DEFAULT_SAMPLES,
    check_target: int | None = None,
    check_seeds: int = 1,
    save: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[Calibration, Path | None]:
    """Record traces on the prompts with the config's entropy settings, check θ for `check_target`
    at the config's M and W (None: no check), save the entry; (entry, profile path or None).

    `check_seeds` (runs per prompt in a check) is kept in the entry's source: later checks of the
    entry (another target) run the same way, so all its measured points are alike."""
    say = log or (lambda _m: None)
    if not prompts:
        raise CalibrationError("no prompts to calibrate on")
    if samples < 1:
        raise CalibrationError(f"samples must be >= 1, got {samples}")
    if check_seeds < 1:
        raise CalibrationError(f"check seeds must be >= 1, got {check_seeds}")
    config.validate()
    key = make_key(llm, config, fmt, task)
    tokens = fmt.tokens(llm, prompts)
    say(f"recording entropy traces: {len(prompts)} prompts x {samples} samples, up to {config.max_new_tokens} tokens …")
    start = time.perf_counter()
    traces, generated, seconds = record_traces(llm, tokens, config, samples=samples)
    entry = Calibration(
        key=key,
        traces=traces,
        source={**(source or {}), "prompts": len(prompts), "samples": samples, "check_seeds": check_seeds,
                "prompts_sha256": short_sha("\n\x00".join(prompts), 16)},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        timing={"record_tokens": generated, "record_seconds": round(seconds, 1)},
    )
    entry.timing["threads"] = llm.threads

    def saved() -> Path | None:
        entry.timing["total_seconds"] = round(time.perf_counter() - start, 1)
        return save_entry(entry) if save else None

    # Saved before the check too: the recording is the costly part, and a check that is
    # interrupted is redone from the saved traces (resolve_theta checks a target it lacks).
    path = saved()
    if check_target is not None and check_target >= 2 and config.max_sequences >= 2:
        check = run_check(entry, llm, tokens, config, min(check_target, config.max_sequences), log=log)
        entry.timing["check_tokens"] = sum(r["tokens"] for r in check["runs"])
        entry.timing["check_seconds"] = round(sum(r["seconds"] for r in check["runs"]), 1)
        path = saved()
    return entry, path


# --- --theta auto | qNN | number ---------------------------------------------------------------------
def _check_outside_prompts(prompts: Sequence[str] | None, wanted: int, task: str,
                           log: Callable[[str], None] | None) -> None:
    """Before calibrating on the problems outside an evaluated selection: refuse when there are
    none, warn when there are fewer than calibration wants (θ is then less precise)."""
    if not prompts:
        raise ConfigError(
            f"no problems of task {task!r} are left outside the evaluated selection to calibrate θ on: "
            "evaluate fewer (--limit, --offset, --ids), or give θ as a number "
            "(`eager-local calibrate --dataset` on other problems prints θ per target)")
    if len(prompts) < wanted and log:
        log(f"warning: only {len(prompts)} problem(s) outside the evaluated selection to calibrate θ on "
            f"(calibration wants {wanted})")


def resolve_theta(
    spec: str | float,
    llm,
    config: GenerationConfig,
    *,
    target_sequences: int | None = None,
    chat: bool = True,
    system: str | None = None,
    prompt_template: str = RAW_TEMPLATE,
    dataset_hint: str | None = None,
    calibration_problems: Sequence[str] | None = None,
    exclude: Collection[str] | None = None,
    calibrate_prompts: int | None = None,
    check_runs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[float, dict]:
    """θ for a `--theta` value: a number as is, `auto` for a target #S, `qNN.N` for an entropy quantile.

    `config` is the run's (its θ is ignored): its entropy settings select the profile entry, its M
    and W the check. auto/quantile use the model's profile entry for exactly these settings, prompt
    format and task (dataset_hint's family, else the default task); without one — or with a stale
    or mismatched one — calibration runs first (on the first `calibrate_prompts` problems of
    dataset_hint, else of gsm8k; None: calibration_prompts(max_new_tokens)) and is saved
    (`calibration_problems`, when given, are decoded instead: eval passes its problem texts, already
    read with the user's field names); its checks run each prompt with enough seeds to average
    `check_runs` runs (check_seed_count). For auto, a target not yet checked for this (M, W) is
    checked with a short real run and the check is saved too. Returns (θ, info) with info for the
    report: spec, target, predicted, achieved on the calibration prompts, the profile path and key.

    `exclude` (eval: the texts of the evaluated problems; calibration_problems are then the problems
    outside them) keeps θ from being tuned on what it is evaluated on. A profile entry recorded on
    any of them is not used: calibration runs again and replaces it. With none of
    calibration_problems left that is a ConfigError, with fewer than `calibrate_prompts` a warning,
    and info["calibrated_on"] lists the prompts the profile entry in use was recorded on.
    """
    kind, value = parse_theta_spec(spec)
    if kind == "number":
        return value, {"spec": str(spec), "mode": "fixed", "theta": value}
    config.validate()
    max_sequences, branch_window = config.max_sequences, config.branch_window
    fmt = PromptFormat(chat=chat, system=system, template=prompt_template)
    task = task_of_dataset(dataset_hint)
    key = make_key(llm, config, fmt, task)
    entry = load_entry(key)
    calibrated_now = False
    target = None
    if kind == "auto":
        target = target_sequences if target_sequences is not None else max(2, max_sequences // 2)
        if target < 1:
            raise ConfigError(f"target-sequences must be >= 1, got {target}")
        target = min(target, max_sequences)
    if calibrate_prompts is None:
        calibrate_prompts = calibration_prompts(config.max_new_tokens)
    prompts = None
    if calibration_problems is not None:
        prompts = list(calibration_problems)[:calibrate_prompts]
        source = {"problems": prompts}
    else:
        source = {"dataset": dataset_hint or DEFAULT_DATASET, "limit": calibrate_prompts, "offset": 0}
    reason = "no profile for this model and these settings yet"
    entry_prompts = None  # the prompts the entry in use was recorded on, read once when needed
    if entry is not None and exclude is not None:
        entry_prompts = _source_prompts(entry.source, dataset_hint, calibrate_prompts)
        seen = set(exclude).intersection(entry_prompts)
        if seen:
            reason = f"the saved profile was recorded on {len(seen)} of the evaluated problems and is replaced"
            entry, entry_prompts = None, None
    if entry is None and exclude is not None:
        _check_outside_prompts(prompts, calibrate_prompts, task, log)
    if entry is None:
        if log:
            log(f"calibrating θ for task {task!r}: {reason} (once; saved to {profile_path(key.model_sha256)})")
        if prompts is None:
            prompts = dataset_problems(dataset_hint, limit=calibrate_prompts)
        entry, _ = calibrate(
            llm, prompts, config=config, fmt=fmt, task=task,
            source=source, check_seeds=check_seed_count(len(prompts), check_runs),
            check_target=target if target and target >= 2 else None, log=log,
        )
        calibrated_now = True
        entry_prompts = prompts
        if log:
            log(f"calibration took {entry.timing['total_seconds']:.0f} s")
    path = profile_path(key.model_sha256)
    info = {"spec": str(spec), "mode": kind, "profile": str(path), "profile_key": key.id(), "task": task,
            "calibrated_now": calibrated_now, "profile_created": entry.created}
    if exclude is not None:
        info["calibrated_on"] = list(entry_prompts)
    if kind == "quantile":
        theta = entry.quantile(value)
        info.update(theta=round(theta, 4), quantile=value,
                    predicted=round(entry.estimate(theta, max_sequences, branch_window), 3))
        return theta, info
    if target <= 1 or max_sequences < 2:
        theta = math.log(config.top_k_entropy)  # never branch: the top-K entropy is at most ln K
        info.update(theta=theta, target=target, predicted=1.0)
        return theta, info
    if entry.find_check(target, max_sequences, branch_window) is None:
        # Checks run on the entry's own calibration prompts, so all its real runs are comparable.
        if entry_prompts is None:
            entry_prompts = _source_prompts(entry.source, dataset_hint, calibrate_prompts)
        run_check(entry, llm, fmt.tokens(llm, entry_prompts), config, target, log=log)
        save_entry(entry)
    theta, check = entry.theta_for(target, max_sequences, branch_window)
    info.update(theta=theta, target=target, max_sequences=max_sequences, predicted=check.get("predicted"),
                achieved_on_calibration=check.get("achieved"), refined=check.get("refined", False),
                interpolated=check.get("interpolated", False), corrected=check.get("corrected", False))
    if check.get("corrected"):
        info.update(measured_theta=check["measured_theta"], measured_on_calibration=check["measured"])
    return theta, info
