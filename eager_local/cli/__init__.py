"""The `eager-local` command: the root group and its subcommands, one module each.

Each command is a thin click wrapper: it reads options (`options.py`, shared by all), builds one
GenerationConfig and calls the Python API (`api.py`); no generation logic lives here.
"""

from __future__ import annotations

import sys

import click

from .calibrate import calibrate_command
from .chat import chat_command
from .eval import eval_command, report_command
from .models import models_group
from .options import describe_theta
from .run import run_command
from .serve import serve_command

__all__ = ["cli", "main", "describe_theta"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eager-local")
def cli():
    """EAGer on llama.cpp: branch only where the model is unsure."""


cli.add_command(run_command, "run")
cli.add_command(chat_command, "chat")
cli.add_command(eval_command, "eval")
cli.add_command(report_command, "report")
cli.add_command(calibrate_command, "calibrate")
cli.add_command(models_group, "models")
cli.add_command(serve_command, "serve")


def main(argv=None):
    """Entry point: click's usage errors become one line too; exit 2 for bad input, 130 for Ctrl-C."""
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
