"""`eager-local calibrate`: record the model's entropies on a task and pick θ for target #S.

The generation options it takes are the shared ones (options.py) that a profile depends on: the
config fields marked `entropy=True` (they form the profile's key), plus the cap M, the branch
window and the seed its check runs with. An entropy option added to config.py appears here too.
"""

from __future__ import annotations

import json
import math

import click

from ..config import check_max_sequences, option_fields
from ..errors import ConfigError
from .options import check_session_options, config_from_options, load_runner, option_list, user_errors

# What a calibration decodes with besides the entropy options, and the session's options.
_ALSO_SHARED = ("max_sequences", "branch_window", "seed", "model", "target_sequences", "threads", "n_gpu_layers",
                "kv_memory", "chat", "system")
_TARGET_OPTION = click.Option(["--target-sequences", "-S", "target_sequences"], type=int, default=None,
                              help="Target mean #S checked with a real run (default: M/2, at least 2).")


def calibration_options(func):
    """Decorator: the shared options calibrate takes (see the module docstring), as run/chat/eval spell them."""
    wanted = {f.name for f in option_fields() if f.metadata["entropy"]} | set(_ALSO_SHARED)
    params = [p for p in option_list({"target_sequences": _TARGET_OPTION}) if p.name in wanted]
    # click lists decorator-added params bottom-up: the first shown goes last.
    func.__click_params__ = getattr(func, "__click_params__", []) + list(reversed(params))
    return func


@click.command("calibrate")
@click.option("--dataset", "-d", default=None,
              help="Calibrate on this dataset (gsm8k, math500, aime2024, aime2025, arith[:N[:SEED[:LEVELS]]], a .jsonl); "
                   "`eval -d` on the same family uses the profile.")
@click.option("--limit", type=int, default=None,
              help="Problems to decode (default: as many as 8,192 recorded tokens allow, 8 to 64 — 8 at -n 512; "
                   "with --dataset, whose profile is eval's, as many as eval calibrates on: 4 x the tokens, "
                   "up to 128).")
@click.option("--offset", type=int, default=0, show_default=True, help="Skip this many problems of --dataset first.")
@click.option("--prompts", "prompts_file", default=None,
              help="File of prompts (one per line, or JSONL with \"prompt\"): the profile `run`/`chat` use.")
@click.option("--samples", type=int, default=2, show_default=True, help="Sampled sequences recorded per prompt.")
@click.option("--no-check", is_flag=True, help="Skip the real run that checks the θ of the target.")
@click.option("--check-seeds", type=int, default=None,
              help="Run each prompt this many times (seeds) in the check (default: 1; with --dataset, as eval "
                   "does: enough to average 256 runs, at most 4; --reuse keeps the profile's).")
@click.option("--prompt-template", default=None,
              help="Text around each problem, with {problem}, or @FILE. Default: eval's template with "
                   "--dataset, the prompt as is otherwise.")
@click.option("--reuse", is_flag=True,
              help="Use the saved profile for these exact settings if there is one (check the target if it "
                   "was not checked yet) instead of recording again.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile entry (without traces) as JSON.")
@calibration_options
@user_errors
def calibrate_command(dataset, limit, offset, prompts_file, samples, no_check, check_seeds, prompt_template, reuse,
                      as_json, **opts):
    """Decode a few prompts, record top-K entropies, and write θ for target #S to the model's profile."""
    from .. import calibration as C
    from ..eval.prompting import DEFAULT_TEMPLATE, load_template

    if dataset and prompts_file:
        raise ConfigError("give --dataset or --prompts, not both")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    if check_seeds is not None and check_seeds < 1:
        raise ConfigError(f"check-seeds must be >= 1, got {check_seeds}")
    check_session_options(opts)
    config = config_from_options(opts)
    check_max_sequences(config.max_sequences, at_least=2)
    max_sequences = config.max_sequences
    target = opts["target_sequences"] if opts["target_sequences"] is not None else max(2, max_sequences // 2)
    if not 2 <= target <= max_sequences:
        raise ConfigError(f"target-sequences must be between 2 and max-sequences ({max_sequences}), got {target}")
    if limit is None:
        # a --dataset profile is the one `eval --theta auto` looks up: calibrate as eval would
        limit = C.calibration_prompts(config.max_new_tokens, samples, for_eval=bool(dataset))

    if prompts_file:
        prompts = C.read_prompts_file(prompts_file)
        task, source, default_template = C.DEFAULT_TASK, {"prompts_file": str(prompts_file)}, C.RAW_TEMPLATE
    elif dataset:
        prompts = C.dataset_problems(dataset, limit=limit, offset=offset)
        task, source = C.task_of_dataset(dataset), {"dataset": dataset, "limit": limit, "offset": offset}
        default_template = DEFAULT_TEMPLATE
    else:
        prompts = C.dataset_problems(None, limit=limit, offset=offset)
        task, source = C.DEFAULT_TASK, {"dataset": "gsm8k", "limit": limit, "offset": offset}
        default_template = C.RAW_TEMPLATE
    template = load_template(prompt_template) if prompt_template is not None else default_template

    llm = load_runner(opts)
    fmt = C.PromptFormat(chat=opts["chat"], system=opts["system"], template=template)
    log = (lambda m: click.echo(m, err=True))
    entry = C.load_entry(C.make_key(llm, config, fmt, task)) if reuse else None
    if entry is None:
        if check_seeds is None:
            check_seeds = C.check_seed_count(len(prompts), C.EVAL_CHECK_RUNS if dataset else None)
        entry, path = C.calibrate(llm, prompts, config=config, fmt=fmt, task=task, source=source, samples=samples,
                                  check_target=None if no_check else target, check_seeds=check_seeds, log=log)
    else:
        log(f"reusing the profile recorded {entry.created} on {entry.source}")
        if not no_check and entry.find_check(target, max_sequences, config.branch_window) is None:
            C.run_check(entry, llm, fmt.tokens(llm, prompts), config, target, log=log)
        path = C.save_entry(entry)
    table = entry.target_table(max_sequences, config.branch_window)
    check = entry.find_check(target, max_sequences, config.branch_window)
    if as_json:
        doc = entry.to_dict()
        doc.pop("traces")
        doc["targets"] = table
        doc["max_sequences"] = max_sequences
        doc["profile"] = str(path)
        click.echo(json.dumps(doc, ensure_ascii=False, indent=1))
        return
    click.echo(render_profile(entry, table, check, max_sequences, path))


def precision_line(check: dict) -> str:
    """How far the check's mean #S can be from the task's: its standard error, and the prompts for ±12.5 %.

    Per-prompt #S is heavy-tailed (most prompts 1-3 sequences, a few at the cap), so a mean over a
    few dozen prompts is loose; on other prompts of the task expect the target within about two
    of these errors.
    """
    from ..calibration import closest_run

    run = closest_run(check["runs"], check["target"])
    prompts = len(run.get("per_prompt", [])) or 1
    if prompts < 2:
        return "  precision: one prompt, no standard error"
    seeds = run.get("seeds", 1)
    over = f"{prompts} prompts" + (f" x {seeds} seeds" if seeds > 1 else "")
    relative = run.get("stderr", 0.0) / run["achieved"]
    wanted = 0.125
    needed = math.ceil(prompts * (relative / wanted) ** 2) if relative > 0 else prompts
    advice = (f"about {needed} prompts (--limit) would make it ±{wanted * 100:g} %" if needed > prompts
              else f"enough prompts for ±{wanted * 100:g} %")
    return f"  precision: ±{relative * 100:.0f} % (standard error of the mean #S over {over}); {advice}"


def render_profile(entry, table, check, max_sequences, path) -> str:
    key = entry.key
    k = key.setting("top_k_entropy")
    n_traces = sum(len(p) for p in entry.traces)
    lines = [
        f"model {key.model_sha256[:16]}  task {key.task}  format {key.prompt_format}  K={k}  "
        f"T={key.setting('temperature'):g}  max-new-tokens={key.setting('max_new_tokens')}",
        f"recorded {n_traces} traces on {len(entry.traces)} prompts, {len(entry.entropies())} entropies "
        f"(ln K = {math.log(k):.3f})",
        "",
        "entropy quantiles (nats)",
    ]
    for name, value in entry.quantile_table().items():
        lines.append(f"  {name:>6}  {value:.3f}")
    lines += ["", f"θ for a target mean #S (EAGer-init, M={max_sequences}; estimated from the traces)",
              f"  {'target':>6}  {'θ':>6}  {'predicted #S':>12}"]
    for row in table:
        lines.append(f"  {row['target']:>6}  {row['theta']:>6.3f}  {row['predicted']:>12.2f}")
    checks = [c for c in entry.checks if c["max_sequences"] == max_sequences]
    checks.sort(key=lambda c: c["target"])
    for c in checks:
        lines += ["", f"checked target {c['target']} with a real run on the calibration prompts:"]
        for i, run in enumerate(c["runs"]):
            label = "first" if i == 0 else "refined"
            how = f"{run['how']}: " if run.get("how") else "predicted "
            lines.append(f"  {label:<8} θ = {run['theta']:.3f}  {how}{run['predicted']:.2f}  "
                         f"achieved {run['achieved']:.2f} ± {run.get('stderr', 0):.2f}  "
                         f"({run['tokens']} tokens, {run['seconds']:.1f} s)")
            if run.get("per_seed"):
                seeds = ", ".join(f"{m:.2f}" for m in run["per_seed"])
                lines.append(f"  {'':<8} {run['seeds']} seeds per prompt; each seed's mean #S: {seeds}")
        how = ""
        if c.get("interpolated"):
            how = " (interpolated between the real runs, linear in log #S)"
        elif c.get("corrected"):
            how = (f" (the estimate scaled by {c['ratio']:.2f}, the run at θ {c['measured_theta']:.3f}: "
                   f"{c['measured']:.2f} / estimated)")
        lines.append(f"  use θ = {c['theta']:.3f}{how} for --theta auto --target-sequences {c['target']}")
        lines.append(precision_line(c))
    t = entry.timing
    lines += ["", f"calibration took {t.get('total_seconds', 0):.1f} s "
                  f"({t.get('record_tokens', 0) + t.get('check_tokens', 0)} tokens generated)",
              f"profile written to {path}"]
    return "\n".join(lines)
