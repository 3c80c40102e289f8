"""The `eager-local` command: thin click wrappers over the API; no generation logic lives here."""

from __future__ import annotations

import functools
import json
import sys

import click

from . import models
from .budget import TokenBudget
from .engine import METHODS, ConfigError
from .llama import LlamaError

USER_ERRORS = (models.ModelError, LlamaError, ConfigError, ValueError, OSError)


def user_errors(func):
    """Turn expected failures into one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    return wrapper


click.ClickException.exit_code = 2  # bad input exits 2, like click's own usage errors


def generation_options(func):
    """The options shared by run, eval and chat (same names, same meaning everywhere)."""
    options = [
        click.option("--model", "-m", "model", default=None, help="Registry name, .gguf path or http(s) URL (default: smollm2-135m)."),
        click.option("--theta", default="2.4", show_default=True,
                     help="Branch when top-K entropy (nats) exceeds this; 'auto' calibrates θ for --target-sequences, "
                          "'q99.5' takes that quantile of the model's entropies (profile cached per model)."),
        click.option("--target-sequences", "-S", "target_sequences", type=int, default=None,
                     help="With --theta auto: mean sequences per prompt to aim for (default: M/2)."),
        click.option("--max-sequences", "-M", type=int, default=8, show_default=True, help="Cap on sequences per prompt (parallel draws exactly M)."),
        click.option("--temperature", "-t", type=float, default=0.6, show_default=True),
        click.option("--top-k", type=int, default=0, help="Sampling top-k (0 = off)."),
        click.option("--top-p", type=float, default=1.0, help="Sampling top-p (1 = off)."),
        click.option("--min-p", type=float, default=0.0, help="Sampling min-p (0 = off)."),
        click.option("--top-k-entropy", type=int, default=20, show_default=True, help="K of the top-K entropy."),
        click.option("--tempered-entropy", is_flag=True, help="Ablation: entropy of the tempered distribution."),
        click.option("--max-new-tokens", "-n", type=int, default=512, show_default=True),
        click.option("--branch-window", type=int, default=1000, show_default=True, help="Steps without a branch before branching closes."),
        click.option("--dynamic-threshold", is_flag=True, help="θ_t = max(θ, p99 of entropies so far)."),
        click.option("--budget", type=int, default=None, help="Cap on generated tokens for the session."),
        click.option("--seed", type=int, default=55, show_default=True),
        click.option("--threads", type=int, default=None, help="CPU threads (default: physical cores)."),
        click.option("--n-gpu-layers", type=int, default=0, help="Layers to offload (Metal/CUDA builds)."),
        click.option("--chat/--raw", default=True, help="Apply the GGUF's chat template (default) or not."),
        click.option("--system", default=None, help="System message (with --chat)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_options(opts: dict) -> dict:
    """The GenerationConfig keywords among the CLI options."""
    keys = (
        "theta max_sequences temperature top_k top_p min_p top_k_entropy max_new_tokens "
        "branch_window dynamic_threshold seed"
    ).split()
    config = {k: opts[k] for k in keys}
    config["tempered_entropy"] = opts["tempered_entropy"]
    return config


def check_theta_options(opts: dict) -> None:
    """--theta and -S are checked before any model loads (one-line errors)."""
    from .calibration import parse_theta_spec

    kind, _ = parse_theta_spec(opts["theta"])
    if opts.get("target_sequences") is not None:
        check_target_sequences([opts["target_sequences"]], auto=kind == "auto")


def check_target_sequences(targets: list[int], *, auto: bool) -> None:
    """-S values (run/chat: one, eval: a list): at least 1, and only with --theta auto."""
    if min(targets) < 1:
        raise ConfigError(f"target-sequences must be >= 1, got {min(targets)}")
    if not auto:
        raise ConfigError("--target-sequences goes with --theta auto")


def resolve_theta_option(opts: dict, runner, **hints) -> tuple[float, dict]:
    """θ from --theta: a number as is; auto / qNN.N from the model's calibration profile (calibrated
    first, on stderr, when there is none for these settings). Returns (θ, info for the output)."""
    from .calibration import theta_from_options

    theta, info = theta_from_options(opts, runner, log=lambda line: click.echo(line, err=True), **hints)
    if info["mode"] != "fixed":
        click.echo(f"θ = {theta:.3f} ({describe_theta(info)})", err=True)
    return theta, info


def describe_theta(info: dict) -> str:
    """'auto: target 4 of M=8 sequences, 3.9 on the calibration prompts' and the like."""
    if info["mode"] == "fixed":
        return "fixed"
    if info["mode"] == "quantile":
        return f"q{info['quantile']:g} of the model's top-K entropies"
    text = f"auto: target {info['target']} sequences per prompt"
    if info.get("achieved_on_calibration") is not None:
        text += f", {info['achieved_on_calibration']:.2f} on the calibration prompts"
    elif info.get("corrected"):
        text += (f", corrected from {info['measured_on_calibration']:.2f} on the calibration prompts"
                 f" at θ {info['measured_theta']:.3f}")
    return text


def load_runner(opts: dict):
    from .api import EagerLocal

    if opts["threads"] is not None and opts["threads"] < 1:
        raise ConfigError(f"threads must be >= 1, got {opts['threads']}")
    if opts["budget"] is not None and opts["budget"] < 0:
        raise ConfigError(f"budget must be >= 0 tokens, got {opts['budget']}")
    return EagerLocal(opts["model"], threads=opts["threads"], n_gpu_layers=opts["n_gpu_layers"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eager-local")
def cli():
    """EAGer on llama.cpp: branch only where the model is unsure."""


@cli.command()
@click.argument("prompt")
@click.option("--method", type=click.Choice(METHODS), default="eager-init", show_default=True)
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@user_errors
def run(prompt, method, as_json, **opts):
    """Generate for PROMPT and show every branch, where it forked and why."""
    import time

    from .render import render_run

    check_theta_options(opts)
    runner = load_runner(opts)
    theta, theta_info = resolve_theta_option(opts, runner)
    config = runner.config(method=method, **dict(config_options(opts), theta=theta))
    config.validate()
    budget = TokenBudget(opts["budget"])
    tokens = runner.prompt_tokens(prompt, chat=opts["chat"], system=opts["system"])
    from .engine import Request

    start = time.perf_counter()
    (tree,) = runner.engine.generate([Request(tokens=tokens, text=prompt)], config, budget=budget)
    wall = time.perf_counter() - start
    if as_json:
        doc = tree.to_dict()
        doc["summary"] = _summary(tree, wall, budget)
        doc["model"] = {"path": str(runner.resolved.path), "name": runner.resolved.name}
        doc["theta"] = theta_info
        click.echo(json.dumps(doc, ensure_ascii=False, indent=1))
    else:
        click.echo(render_run(tree, wall=wall, budget=budget))


def _summary(tree, wall: float, budget: TokenBudget) -> dict:
    return {
        "sequences": len(tree.sequences),
        "generated_tokens": tree.generated_tokens,
        "tokens_per_second": round(tree.generated_tokens / wall, 2) if wall > 0 else None,
        "wall_time": round(wall, 3),
        "budget_left": None if budget.limit is None else budget.remaining,
        "finish_reasons": tree.finish_counts(),
    }


# --- models ----------------------------------------------------------------------------------------
@cli.group(name="models")
def models_group():
    """Known models: list, pull (download + sha256 check), path."""


@models_group.command(name="list")
@user_errors
def models_list():
    for entry in models.list_models():
        mark = "*" if entry.is_downloaded else " "
        default = " (default)" if entry.name == models.load_registry().get("default") else ""
        click.echo(f"{mark} {entry.name:<16} {entry.file}{default}")
        if entry.description:
            click.echo(f"    {entry.description}")
    click.echo(f"(* = downloaded, in {models.home_dir() / 'models'})")


@models_group.command(name="pull")
@click.argument("name")
@user_errors
def models_pull(name):
    click.echo(str(models.pull(name)))


@models_group.command(name="path")
@click.argument("name", required=False)
@user_errors
def models_path(name):
    click.echo(str(models.resolve(name).path))


from .eval.commands import eval_command, report_command  # noqa: E402

cli.add_command(eval_command, "eval")
cli.add_command(report_command, "report")

from .chat import chat_command  # noqa: E402

cli.add_command(chat_command, "chat")


from .calibration_cli import calibrate_command  # noqa: E402

cli.add_command(calibrate_command, "calibrate")


def main(argv=None):
    """Entry point: click's usage errors become one line too."""
    try:
        cli.main(args=argv, prog_name="eager-local", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
