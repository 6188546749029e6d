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
        _add_log_options(cmd)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        from changedet.cli._common import run_guarded

        return run_guarded(lambda: super(LazyGroup, self).invoke(ctx))


_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


def _root_obj(ctx: click.Context) -> dict[str, Any]:
    root = ctx.find_root()
    root.ensure_object(dict)
    obj: dict[str, Any] = root.obj
    return obj


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        _root_obj(ctx)["quiet"] = True
        logging.getLogger().setLevel(logging.ERROR)


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value and not ctx.resilient_parsing:
        obj = _root_obj(ctx)
        obj["verbose"] = int(obj.get("verbose") or 0) + value
        if not obj.get("quiet"):
            logging.getLogger().setLevel(_LEVELS[min(obj["verbose"], 2)])


def _add_log_options(cmd: click.Command) -> None:
    """Accept the group's ``-q``/``-v`` after the sub-command too (``changedet detect a.tif b.tif -o out -q``), also
    after the leaf commands of a sub-group (``changedet export qgis OUTDIR -q``)."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _add_log_options(sub)
    if any(p.name == "quiet" for p in cmd.params):
        return
    cmd.params += [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_set_verbose,
                     help="More log output on stderr (-vv for debug); same as 'changedet -v'."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_set_quiet,
                     help="No progress bars or log messages on stderr (warnings about the inputs and errors still); same as 'changedet -q'."),
    ]


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
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bars or log messages on stderr (warnings about the inputs and errors still).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find what changed between a BEFORE and an AFTER raster."""
    level = logging.ERROR if quiet else _LEVELS[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    ctx.obj["verbose"] = verbose


def _terminate(_signum: int, _frame: Any) -> None:
    from changedet.errors import Terminated

    raise Terminated


def main() -> None:  # pragma: no cover - console entry point
    """Console entry point: a Ctrl-C before the command's own error handling starts still exits 130 quietly; SIGTERM
    (a batch scheduler's stop, ``kill``) stops the run as Ctrl-C does, cleaning up, and exits 143."""
    import signal

    from changedet.errors import exit_code_for

    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli()
    except KeyboardInterrupt as exc:
        click.echo("interrupted", err=True)
        sys.exit(exit_code_for(exc))
