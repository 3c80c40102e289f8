"""`eager-local models list|pull|path`: the registry's models and the local cache."""

from __future__ import annotations

import click

from .options import user_errors


@click.group(name="models")
def models_group():
    """Known models: list, pull (download + sha256 check), path."""


@models_group.command(name="list")
@user_errors
def models_list():
    """The registry's models; * marks the downloaded ones."""
    from .. import models

    import os

    from ..models.resolve import MODEL_ENV

    default = models.load_registry().get("default")
    chosen = os.environ.get(MODEL_ENV, "").strip().lower()
    entries = models.list_models()
    width = max(len(e.name) for e in entries)
    for entry in entries:
        mark = "*" if entry.is_downloaded else " "
        tag = " (default)" if entry.name == default else ""
        if chosen and entry.name.lower() == chosen:
            tag += f" (${MODEL_ENV}: used without --model)"
        click.echo(f"{mark} {entry.name:<{width}}  {entry.file}{tag}")
        if entry.description:
            click.echo(f"    {entry.description}")
    click.echo(f"(* = downloaded, in {models.home_dir() / 'models'})")


@models_group.command(name="pull")
@click.argument("name")
@user_errors
def models_pull(name):
    """Download NAME, check its sha256, print its path (a no-op when it is already here)."""
    from .. import models

    click.echo(str(models.pull(name)))


@models_group.command(name="path")
@click.argument("name", required=False)
@user_errors
def models_path(name):
    """The local path of NAME (the default model without NAME), downloading it if needed."""
    from .. import models

    click.echo(str(models.resolve(name).path))
