"""The ``changedet`` click group.

Sub-commands live in one module each (``changedet/cli/<name>.py`` exposing a click command named ``command``) and
are imported lazily, so ``changedet info`` never imports torch. Errors are turned into exit codes here, in one place:
0 success; 1 a :class:`~changedet.errors.ChangedetError` at run time (or ``check`` found problems); 2 usage errors
and unusable inputs; 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from changedet._version import __version__

# command name -> module under changedet.cli (each defines ``command``)
COMMANDS: dict[str, str] = {
    "info": "info",
    "check": "check",
    "stack": "stack",
    "detect": "detect",
    "vectorize": "vectorize",
    "export": "export",
    "models": "models",
    "train": "train",
    "evaluate": "evaluate",
    "batch": "batch",
    "calibrate": "calibrate",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        mod = importlib.import_module(f"changedet.cli.{module}")
        cmd: click.Command = mod.command
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        from changedet.cli._common import run_guarded

        return run_guarded(lambda: super(LazyGroup, self).invoke(ctx))


def _show_versions(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from changedet.cli._common import versions

    for name, version in versions().items():
        click.echo(f"{name:<16} {version}")
    ctx.exit(0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="changedet")
@click.option(
    "--show-versions",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_versions,
    help="Print the versions of changedet and its geospatial/ML stack, then exit.",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find what changed between a BEFORE and an AFTER raster."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    ctx.obj["verbose"] = verbose


def main() -> None:  # pragma: no cover - console entry point
    """Console entry point: a Ctrl-C before the command's own error handling starts still exits 130 quietly."""
    try:
        cli()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
