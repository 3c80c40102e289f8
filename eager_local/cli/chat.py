"""`eager-local chat`: the command that starts a chat session at the terminal (eager_local/chat.py)."""

from __future__ import annotations

import os
import sys

import click

from .options import (check_session_options, check_theta_options, cli_settings, config_from_options,
                      generation_options, load_runner, method_option, resolve_theta_option, user_errors)


@click.command(name="chat")
@method_option
@generation_options
@click.option("--once", is_flag=True, help="Answer one message, then exit.")
@click.option("--load", "load_file", default=None, metavar="FILE", help="Start from a saved conversation.")
@user_errors
def chat_command(method, once, load_file, **opts):
    """Chat with a local model; every turn keeps its branches (/help inside)."""
    from .. import render
    from ..budget import TokenBudget
    from ..chat import ChatUI, listen_to_ctrl_c, setup_readline
    from ..chat_session import ChatSession
    from ..errors import ConfigError

    if not opts["chat"]:
        raise ConfigError("chat needs the model's chat template; --raw is for `eager-local run`")
    check_theta_options(opts)
    check_session_options(opts)
    config = config_from_options(opts, method=method)
    runner = load_runner(opts)
    if not runner.model.chat_template():
        raise ConfigError(f"{runner.resolved.path.name} has no chat template in its metadata; chat needs one")
    theta, _ = resolve_theta_option(opts, runner)
    session = ChatSession(runner, cli_settings(config.with_options(theta=theta)),
                          budget=TokenBudget(opts["budget"]))
    session.conversation.system = opts["system"]
    interactive = sys.stdin.isatty()
    colour = interactive and render.use_colour(sys.stdout)
    ui = ChatUI(session, interactive=interactive, colour=colour, once=once)
    if load_file:
        ui.cmd_load(load_file)  # a bad file is a ChatError: one line, exit 2
    save_history = setup_readline() if interactive else (lambda: None)
    if interactive:
        listen_to_ctrl_c()
    try:
        ui.run()
    except BrokenPipeError:  # `... | head`: the reader left; nothing more to say
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    finally:
        save_history()
        session.close()
