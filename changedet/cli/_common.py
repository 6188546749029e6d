"""Helpers shared by the CLI commands: error handling, exit codes, JSON output, warnings on stderr."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from changedet.errors import ChangedetError, ChangedetWarning, exit_code_for

T = TypeVar("T")
log = logging.getLogger("changedet")


def _format_warning(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> str:
    return f"warning: {message}\n"


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body, turning changedet errors into messages and exit codes.

    A :class:`ChangedetError` prints ``error: <message>`` on stderr and exits with its ``exit_code``
    (1 run-time, 2 unusable input). Ctrl-C exits 130. Any other exception is a bug and keeps its traceback.
    """
    warnings.formatwarning = _format_warning  # type: ignore[assignment]
    warnings.simplefilter("default", ChangedetWarning)
    try:
        return fn()
    except ChangedetError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        click.echo("interrupted: no partial output was left behind", err=True)
        sys.exit(exit_code_for(exc))


class RasterPath(click.ParamType):
    """A raster argument: a local path (``pathlib.Path``), or GDAL's virtual file systems and URLs kept as the text
    given (``click.Path`` turned ``/vsizip//abs/path.zip/x.tif`` into ``/vsizip/abs/...`` and ``/vsicurl/https://``
    into ``https:/``, which GDAL then could not open)."""

    name = "raster"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Path):
            return value
        text = os.fspath(value)
        return text if text.startswith("/vsi") or "://" in text else Path(text)


#: The type of every raster argument of the CLI.
RASTER = RasterPath()


def echo_json(obj: Any) -> None:
    """Print an object as indented JSON on stdout."""
    click.echo(json.dumps(obj, indent=2, default=str))


def quiet(ctx: click.Context | None = None) -> bool:
    """Whether ``-q`` was given on the group."""
    ctx = ctx or click.get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "quiet" in ctx.obj:
            return bool(ctx.obj["quiet"])
        ctx = ctx.parent
    return False


def versions() -> dict[str, str]:
    """Versions of changedet and its stack, for ``--show-versions`` and bug reports."""
    from changedet._version import __version__

    out: dict[str, str] = {"changedet": __version__, "python": platform.python_version()}

    def _try(name: str, getter: Callable[[], str]) -> None:
        try:
            out[name] = getter()
        except Exception as exc:  # noqa: BLE001 - a missing optional package is reported, not raised
            out[name] = f"not available ({exc.__class__.__name__})"

    import importlib

    _try("numpy", lambda: importlib.import_module("numpy").__version__)
    _try("torch", lambda: importlib.import_module("torch").__version__)
    _try("rasterio", lambda: importlib.import_module("rasterio").__version__)
    _try("GDAL", lambda: importlib.import_module("rasterio").__gdal_version__)
    _try("shapely", lambda: importlib.import_module("shapely").__version__)
    _try("GEOS", lambda: importlib.import_module("shapely").geos_version_string)
    _try("geopandas", lambda: importlib.import_module("geopandas").__version__)
    _try("pyogrio", lambda: importlib.import_module("pyogrio").__version__)
    _try("smp", lambda: importlib.import_module("segmentation_models_pytorch").__version__)
    return out
