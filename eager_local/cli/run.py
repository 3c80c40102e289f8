"""`eager-local run PROMPT`: generate for one prompt and show every branch, where it forked and why."""

from __future__ import annotations

import json
import time

import click

from .options import (check_session_options, check_theta_options, config_from_options, generation_options,
                      load_runner, method_option, resolve_theta_option, user_errors)


@click.command("run")
@click.argument("prompt")
@method_option
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@user_errors
def run_command(prompt, method, as_json, **opts):
    """Generate for PROMPT and show every branch, where it forked and why."""
    from ..budget import TokenBudget
    from ..engine import Request
    from ..render import render_run

    # Everything the user typed is checked before the model loads.
    check_prompt(prompt)
    check_theta_options(opts)
    check_session_options(opts)
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
