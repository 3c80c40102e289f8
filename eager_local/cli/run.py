"""`eager-local run PROMPT`: generate for one prompt and show every branch, where it forked and why."""

from __future__ import annotations

import json
import time

import click

from ..waves_run import METHODS as WAVE_METHODS
from .options import (check_session_options, check_theta_options, config_from_options, generation_options,
                      load_runner, method_option, resolve_theta_option, rival_options, user_errors)


@click.command("run")
@click.argument("prompt")
@method_option(extra=WAVE_METHODS,
               extra_help="Or one of eval's methods that sample in waves: " + ", ".join(WAVE_METHODS)
                          + " (shows every wave, the method's vote and why it stopped).")
@generation_options
@rival_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@user_errors
def run_command(prompt, method, as_json, ac_criterion, ac_threshold, esc_window, deepconf_warmup, deepconf_window,
                **opts):
    """Generate for PROMPT and show every branch, where it forked and why."""
    from ..budget import TokenBudget
    from ..engine import Request
    from ..render import render_run

    # Everything the user typed is checked before the model loads.
    check_prompt(prompt)
    check_theta_options(opts)
    check_session_options(opts)
    if method in WAVE_METHODS:
        rivals = dict(ac_criterion=ac_criterion, ac_threshold=ac_threshold, esc_window=esc_window,
                      deepconf_warmup=deepconf_warmup, deepconf_window=deepconf_window)
        run_in_waves(prompt, method, rivals, opts, as_json)
        return
    config = config_from_options(opts, method=method)
    runner = load_runner(opts)
    theta, theta_info = resolve_theta_option(opts, runner)
    config = config.with_options(theta=theta, end_of_thinking=runner.end_of_thinking)
    budget = TokenBudget(opts["budget"])
    tokens = runner.prompt_tokens(prompt, chat=opts["chat"], system=opts["system"])

    start = time.perf_counter()
    (tree,) = runner.generate_requests([Request(tokens=tokens, text=prompt)], config, budget=budget)
    wall = time.perf_counter() - start
    if as_json:
        doc = tree.to_dict()
        doc["summary"] = summary(tree, wall, budget)
        doc["model"] = {"path": str(runner.resolved.path), "name": runner.resolved.name}
        doc["theta"] = theta_info
        click.echo(json.dumps(doc, ensure_ascii=False, indent=1))
    else:
        click.echo(render_run(tree, wall=wall, budget=budget))


def run_in_waves(prompt: str, method: str, rivals: dict, opts: dict, as_json: bool) -> None:
    """`run --method` with one of eval's wave methods: its waves, vote and stop (waves_run.py)."""
    from .. import waves_run
    from ..budget import TokenBudget
    from ..config import default
    from ..render import render_waves

    m, n = opts["max_sequences"], opts["max_new_tokens"]
    options = waves_run.method_options(method, **rivals, max_sequences=m, max_new_tokens=n)
    rule = waves_run.make_rule(method, options, m, n, default("theta"))
    config = config_from_options(opts, method=rule.engine_method)
    runner = load_runner(opts)
    theta_info = None  # the methods that sample in parallel have no θ
    if waves_run.branches(method):
        theta, theta_info = resolve_theta_option(opts, runner)
        rule = waves_run.make_rule(method, options, m, n, theta)
        config = config.with_options(theta=theta)
    config = config.with_options(end_of_thinking=runner.end_of_thinking)
    budget = TokenBudget(opts["budget"])
    tokens = runner.prompt_tokens(prompt, chat=opts["chat"], system=opts["system"])
    result = waves_run.run_waves(runner, tokens, prompt, method, rule, waves_run.describe(method, options, rule, n),
                                 config, budget)
    if as_json:
        doc = {"prompt": prompt, **result.to_dict(budget), "options": options[method],
               "model": {"path": str(runner.resolved.path), "name": runner.resolved.name}, "theta": theta_info}
        click.echo(json.dumps(doc, ensure_ascii=False, indent=1))
    else:
        click.echo(render_waves(result, vocab=runner.model, budget=budget))


def check_prompt(prompt: str) -> None:
    """A prompt with text in it, in UTF-8 (a shell passes other bytes as unencodable surrogates)."""
    from ..errors import ConfigError

    if not prompt.strip():
        raise ConfigError("empty prompt: give the text to answer")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("the prompt is not valid UTF-8 text") from None


def summary(tree, wall: float, budget) -> dict:
    """The numbers under `run --json`'s "summary" key."""
    return {
        "sequences": len(tree.sequences),
        "generated_tokens": tree.generated_tokens,
        "tokens_per_second": round(tree.generated_tokens / wall, 2) if wall > 0 else None,
        "wall_time": round(wall, 3),
        "budget_left": None if budget.limit is None else budget.remaining,
        "finish_reasons": tree.finish_counts(),
    }
