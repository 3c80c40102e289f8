"""`eager-local eval` and `eager-local report`: thin click wrappers over eval/runner.py and eval/report.py.

eval takes `run`'s generation options, except that --theta, -M and -S take comma lists: each value
(each pair) is one point of the sweep, with its own results file. A calibrated θ (auto, qNN.N) is
tuned on the dataset's problems outside the evaluated selection.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from ..config import default, parse_theta_spec
from ..errors import ConfigError
from .options import (check_auto_theta_cap, check_session_options, check_target_sequences, cli_settings,
                      config_from_options, generation_options, kv_memory_bytes, load_runner, resolve_theta_option,
                      rival_options, user_errors)

# The three options whose eval form is a comma list (a sweep); every other one is run's.
SWEEP_OPTIONS = {
    "theta": click.Option(["--theta", "theta"], default=f"{default('theta'):g}", show_default=True,
                          help="Branch when top-K entropy (nats) exceeds this; a comma list sweeps (1.8,2.0,2.4); "
                               "'auto' calibrates θ per --target-sequences, 'q99.5' takes an entropy quantile."),
    "target_sequences": click.Option(["--target-sequences", "-S", "target_sequences"], default=None,
                                     help="With --theta auto: mean sequences per prompt to aim for; a comma "
                                          "list gives one θ each (default: M/2)."),
    "max_sequences": click.Option(["--max-sequences", "-M", "max_sequences"], default=str(default("max_sequences")),
                                  show_default=True,
                                  help="Cap on sequences per prompt (parallel draws exactly M); a comma list "
                                       "sweeps (4,8). parallel also reports M = 1, 2, 4, … below the largest, "
                                       "derived from its samples without decoding again."),
}


def _eval_methods() -> str:
    from ..eval.store import DEFAULT_EVAL_METHODS

    return ",".join(DEFAULT_EVAL_METHODS)


@click.command("eval")
@click.option("--dataset", "-d", required=True,
              help="gsm8k, math500, aime2024, aime2025, arith[:N[:SEED[:LEVELS]]], or a .jsonl file.")
@click.option("--method", "methods", default=_eval_methods(), show_default=True,
              help="Comma list of parallel, eager-init, eager-adapt, eager, adaptive-consistency, esc, "
                   "deepconf-low, deepconf-high, eager-conf.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory (runs/NAME).")
@click.option("--limit", type=int, default=None, help="At most this many problems (after --offset).")
@click.option("--offset", type=int, default=0, show_default=True, help="Skip this many problems first.")
@click.option("--ids", default=None, help="Comma list of problem ids, or @FILE with one id per line.")
@click.option("--shuffle", is_flag=True, help="Shuffle (with --seed) before --offset/--limit.")
@click.option("--shard", default=None, help="i/n: keep every n-th problem starting at i (0-based).")
@click.option("--problem-field", default="problem", show_default=True, help="Problem field of a user JSONL.")
@click.option("--answer-field", default="answer", show_default=True, help="Answer field of a user JSONL.")
@click.option("--id-field", default="id", show_default=True, help="Id field of a user JSONL (else the line number).")
@click.option("--answer-kind", type=click.Choice(["auto", "numeric", "latex"]), default="auto", show_default=True,
              help="How a user JSONL's answers are compared.")
@click.option("--prompt-template", default=None,
              help="Text around the problem, with {problem}; or @FILE. Default: reason step by step, answer in \\boxed{}.")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bar on stderr.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on a Ray cluster (ADDRESS as ray.init takes it, e.g. 10.0.0.5:6379; none: this "
                   "machine's cluster, else a new local one): one actor per --threads CPUs of each node.")
@rival_options
@generation_options(overrides=SWEEP_OPTIONS)
@user_errors
def eval_command(dataset, methods, out, limit, offset, ids, shuffle, shard, problem_field, answer_field, id_field,
                 answer_kind, prompt_template, progress, ray_address, ac_criterion, ac_threshold, esc_window,
                 deepconf_warmup, deepconf_window, **opts):
    """Evaluate methods on a dataset; results are written as they arrive and a rerun resumes."""
    from .. import models
    from ..config import MAX_SEQUENCES
    from ..eval.datasets import load_dataset, parse_shard, select
    from ..eval.plan import PER_PROMPT_CAP
    from ..eval.prompting import load_template
    from ..eval.runner import Evaluation
    from ..eval.session import open_run_dir, session_info
    from ..eval.spec import EvalSpec
    from ..eval.waves import method_options

    method_list = parse_methods(methods)
    theta_specs = parse_theta_specs(opts["theta"])
    ms = parse_list(opts["max_sequences"], int, "max-sequences")
    targets = parse_list(opts["target_sequences"], int, "target-sequences") if opts["target_sequences"] else None
    fixed = [t for t in theta_specs if isinstance(t, float)]
    calibrated = [t for t in theta_specs if not isinstance(t, float)]
    if calibrated and len(ms) > 1:
        raise ConfigError("--theta auto/qNN.N needs a single -M (the calibrated θ depends on it)")
    if "auto" in calibrated:
        check_auto_theta_cap(min(ms))
    if targets is not None:
        check_target_sequences(targets, auto="auto" in calibrated)
    # Every point of the sweep is checked before anything loads (a calibrated θ is checked as config's default).
    for theta in fixed or [default("theta")]:
        for m in ms:
            config = config_from_options(opts, method="eager-init", theta=theta, max_sequences=m)
            if "eager-adapt" in method_list and PER_PROMPT_CAP["eager-adapt"] * m > MAX_SEQUENCES:
                raise ConfigError(f"eager-adapt gives a prompt up to 3M sequences: M={m} exceeds "
                                  f"{MAX_SEQUENCES // 3} (llama.cpp's limit is {MAX_SEQUENCES} sequences)")
    rivals = method_options(method_list, ac_criterion=ac_criterion, ac_threshold=ac_threshold, esc_window=esc_window,
                            deepconf_warmup=deepconf_warmup, deepconf_window=deepconf_window, max_sequences=ms,
                            max_new_tokens=opts["max_new_tokens"])
    # The options every point shares, as the manifest records them (a rerun must match them).
    generation = cli_settings(config, exclude=("method", "theta", "max_sequences"))
    check_session_options(opts)
    if ray_address is not None:
        check_ray_options(opts)
    if shard is not None:
        parse_shard(shard)
    template = load_template(prompt_template)
    id_list = read_ids(ids) if ids is not None else None

    everything = load_dataset(dataset, problem_field=problem_field, answer_field=answer_field,
                              id_field=id_field, kind=answer_kind)
    positions = {p.id: i for i, p in enumerate(everything)}
    # The evaluated selection (all shards of it), then this shard's part.
    evaluated = select(everything, limit=limit, offset=offset, ids=id_list, shuffle=shuffle, seed=opts["seed"])
    problems = select(evaluated, shard=shard)
    if not problems:
        raise ConfigError("no problems selected (check --limit, --offset, --ids and --shard)")

    resolved = models.resolve(opts["model"])
    sha = models.model_sha256(resolved.path, resolved.sha256)
    runner = None
    thetas = fixed
    calibration: list[dict] = []
    if calibrated:
        runner = load_runner({**opts, "model": str(resolved.path)})
        found, calibration = _calibrated_thetas(runner, calibrated, targets, ms[0], opts, template, dataset, everything,
                                                evaluated)
        thetas = dedupe(fixed + found)
    spec = EvalSpec(
        dataset=dataset,
        selection={"limit": limit, "offset": offset, "ids": id_list, "shuffle": shuffle, "seed": opts["seed"],
                   "shard": shard},
        fields={"problem": problem_field, "answer": answer_field, "id": id_field, "kind": answer_kind},
        methods=method_list,
        thetas=thetas,
        max_sequences=ms,
        prompt_template=template,
        system=opts["system"],
        chat=opts["chat"],
        budget=opts["budget"],
        generation=generation,
        model_sha256=sha,
        rivals=rivals,
    )
    info = session_info(resolved.path, resolved.name, sha, opts["threads"])
    open_run_dir(out, spec, problems, info, calibration=calibration)

    if ray_address is not None:
        runner = ray_runner(opts, resolved, sha, ray_address)
    runner = runner or load_runner({**opts, "model": str(resolved.path)})
    evaluation = Evaluation(spec, out, runner, problems, [positions[p.id] for p in problems], progress=progress)
    try:
        evaluation.run()
    finally:
        if ray_address is not None:
            runner.close()
    click.echo(f"results in {out}; summary: eager-local report {out}")


def check_ray_options(opts: dict) -> None:
    """What --ray cannot do, refused before anything loads; and Ray itself must be installed."""
    from ..cluster import import_ray

    if opts["budget"] is not None:
        raise ConfigError("--budget cannot be used with --ray: the actors do not share one token counter")
    import_ray()


def ray_runner(opts: dict, resolved, sha: str, address: str):
    """The RayRunner of the session options; the nodes resolve the model spec as the user gave it."""
    from ..cluster.runner import RayRunner

    return RayRunner(opts["model"], resolved, sha, address=address or None, threads=opts["threads"],
                     n_gpu_layers=opts["n_gpu_layers"], kv_memory=kv_memory_bytes(opts),
                     log=lambda line: click.echo(line, err=True))


def _calibrated_thetas(runner, specs, targets, max_sequences, opts, template, dataset, everything, evaluated):
    """Numbers for --theta auto (one per target) and qNN.N, with how each was found (for the report).

    θ is calibrated on the dataset's problems outside the evaluated selection (spec.calibration_pool),
    never on the problems it is then evaluated on, and a saved profile recorded on any of those is
    not used (resolve_theta's `exclude`). Which problems calibrated it goes into the manifest.
    The θs become plain numbers before the run is pinned in its manifest: a rerun that finds another
    profile (recalibrated after a change) gets another θ, and the manifest check refuses to mix them.
    """
    from ..calibration import EVAL_CHECK_RUNS, calibration_prompts
    from ..eval.spec import calibration_pool, calibration_problems

    pool = calibration_pool(everything, evaluated)
    # An eval is long and its #S is what it measures: calibrating (when no profile exists yet) on
    # more prompts, and checking each with several seeds, makes θ transfer (calibration_prompts,
    # check_seed_count). The check decodes about as many EAGer runs as the evaluation has prompts
    # (at least one per calibration prompt), so it never costs much more than the EAGer-init pass.
    prompts = calibration_prompts(opts["max_new_tokens"], for_eval=True)
    thetas, infos = [], []
    for spec in specs:
        for target in (targets or [None]) if spec == "auto" else [None]:
            theta, info = resolve_theta_option(
                {**opts, "theta": spec, "max_sequences": max_sequences, "target_sequences": target}, runner,
                prompt_template=template, dataset_hint=dataset,
                # texts as read with the user's field names (a user file), outside the evaluated selection
                calibration_problems=[p.problem for p in pool], exclude={p.problem for p in evaluated},
                calibrate_prompts=prompts, check_runs=min(EVAL_CHECK_RUNS, len(evaluated)))
            theta = round(theta, 3)
            thetas.append(theta)
            used = calibration_problems(info.pop("calibrated_on"), everything)
            infos.append({**info, "theta": theta, "calibration_problems": used})
    return thetas, infos


# --- the comma lists -------------------------------------------------------------------------------
def dedupe(values) -> list:
    """The values in order, each once."""
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def parse_methods(text: str) -> list[str]:
    """--method's comma list, checked against the evaluation methods."""
    from ..eval.store import EVAL_METHODS

    methods = dedupe(x.strip() for x in text.split(",") if x.strip())
    if not methods:
        raise ConfigError("no method given (choose from " + ", ".join(EVAL_METHODS) + ")")
    for m in methods:
        if m not in EVAL_METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(EVAL_METHODS)}")
    return methods


def parse_list(text: str, kind: type, name: str) -> list:
    """A comma list of ints or floats (-M 4,8), each once, in order."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = kind(part)
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{name}: {part!r} is not a finite number")
        values.append(value)
    if not values:
        raise ConfigError(f"{name}: no value given")
    return dedupe(values)


def parse_theta_specs(text: str) -> list:
    """--theta's comma list: numbers as floats; 'auto' and 'qNN.N' kept as strings (resolved later)."""
    specs = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        kind, value = parse_theta_spec(part)
        specs.append(value if kind == "number" else part.lower())
    if not specs:
        raise ConfigError("theta: no value given")
    return dedupe(specs)


def read_ids(text: str) -> list[str]:
    """--ids: a comma list, or @FILE with one id per line."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
            raise ConfigError(f"cannot read ids file {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read ids file {path}: not UTF-8 text") from None
        ids = [line.strip() for line in lines if line.strip()]
    else:
        ids = [x.strip() for x in text.split(",") if x.strip()]
    if not ids:
        raise ConfigError("--ids: no id given")
    return ids


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json", "csv"]), default="table",
              show_default=True)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Draw pass@k against tokens per prompt into this PNG.")
@user_errors
def report_command(run_dirs, fmt, plot_path):
    """Summarise run directories (shards of one run are merged): p@1, pass@k, cons@k, PR, #T, #S, time, memory."""
    from ..eval.report import RENDERERS, build_report, plot

    groups = build_report(list(run_dirs))
    click.echo(RENDERERS[fmt](groups), nl=False)
    if plot_path is not None:
        plot(groups, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
    sys.stdout.flush()
