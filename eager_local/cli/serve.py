"""`eager-local serve`: an OpenAI-compatible server (eager_local/serve/) on uvicorn.

The generation options are the server's defaults and caps: a request may ask for fewer sequences
(`n` ≤ -M) and fewer tokens (`max_tokens` ≤ -n), and set its own θ, method, temperature, top-p
and seed. The context is sized once, at startup, for --slots prompts of up to --max-prompt-tokens
within --kv-memory (the startup line says how many prompts fit at once).
"""

from __future__ import annotations

import ipaddress
import re

import click

from ..engine.sizing import DEFAULT_BATCH_ROWS
from ..errors import ConfigError
from .options import (check_session_options, check_theta_options, config_from_options, generation_options, load_runner,
                      method_option, resolve_theta_option, user_errors)

API_KEY_ENV = "EAGER_LOCAL_API_KEY"
ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False


def check_origin(origin: str) -> str:
    """A --cors-origin value: `*`, or an origin as browsers send it (scheme://host[:port], no path),
    since anything else would match no request and leave the option silently without effect."""
    if origin != "*" and not ORIGIN.fullmatch(origin):
        raise ConfigError(f"--cors-origin expects '*' or an origin such as http://localhost:3000 "
                          f"(scheme://host[:port], no path), got {origin!r}")
    return origin


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server others can reach and use without a key (None: nothing to warn of)."""
    if api_key or is_loopback(host):
        return None
    return (f"Warning: serving on {host} without an API key: anyone who can reach this port can use the model "
            f"(set --api-key or ${API_KEY_ENV}).")


@click.command("serve")
@method_option
@generation_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
@click.option("--api-key", envvar=API_KEY_ENV, default=None,
              help=f"Require `Authorization: Bearer KEY` (default: ${API_KEY_ENV}; none: no check).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let browser pages from ORIGIN (e.g. http://localhost:3000; '*': any) call the server "
                   "(CORS); repeatable. Default: none.")
@click.option("--slots", type=int, default=16, show_default=True,
              help="Prompts decoded together at most (fewer when the KV memory is short).")
@click.option("--max-prompt-tokens", type=int, default=1024, show_default=True,
              help="Longest prompt the server accepts (the context is sized for it).")
@click.option("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, show_default=True,
              help="Rows (sequences) the admitted prompts may hold, or are expected to, in one decode.")
@user_errors
def serve_command(method, host, port, api_key, cors_origins, slots, max_prompt_tokens, batch_rows, **opts):
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    import uvicorn

    from ..serve import Limits, Scheduler, create_app

    check_theta_options(opts)
    check_session_options(opts)
    if opts["budget"] is not None:
        raise ConfigError("--budget caps one session's tokens; a server's requests give their own `budget`")
    if not opts["chat"]:
        raise ConfigError("--raw has no meaning for serve: /v1/chat/completions applies the chat template, "
                          "/v1/completions does not")
    if min(slots, max_prompt_tokens, batch_rows) < 1:
        raise ConfigError("--slots, --max-prompt-tokens and --batch-rows must be >= 1")
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {port}")
    cors_origins = [check_origin(origin) for origin in cors_origins]
    config = config_from_options(opts, method=method)
    runner = load_runner(opts)
    theta, _ = resolve_theta_option(opts, runner)
    config = config.with_options(theta=theta, end_of_thinking=runner.end_of_thinking)
    # A request without a seed gets a random one, as OpenAI's do, unless --seed was given.
    seed_given = click.get_current_context().get_parameter_source("seed") != click.core.ParameterSource.DEFAULT
    limits = Limits(model=runner.resolved.name, config=config, prompt_tokens=max_prompt_tokens,
                    system=opts["system"], seed=config.seed if seed_given else None)
    scheduler = Scheduler(runner, config, prompt_tokens=max_prompt_tokens, slots=slots, max_batch_rows=batch_rows)
    warning = exposure_warning(host, api_key)
    if warning:
        click.echo(warning, err=True)
    click.echo(f"Serving {limits.model} at http://{host}:{port}/v1 — {scheduler.concurrent} prompts at once, "
               f"up to {config.max_sequences} sequences each, θ = {theta:g}", err=True)
    app = create_app(scheduler, limits, api_key=api_key or None, cors_origins=cors_origins)
    uvicorn.run(app, host=host, port=port, log_level="warning")
