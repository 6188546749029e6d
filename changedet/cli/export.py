"""``changedet export qgis OUTDIR``: QGIS styles and project for a result folder."""

from __future__ import annotations

from pathlib import Path

import click

from changedet.cli._common import echo_json


@click.group("export")
def command() -> None:
    """Write deliverables for other tools from a result folder."""


def _bands(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if not value:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give three 1-based bands, e.g. 4,3,2") from None
    if len(out) != 3 or min(out) < 1:
        raise click.BadParameter(f"{value!r}: give three 1-based bands (red, green, blue), e.g. 4,3,2")
    return out  # type: ignore[return-value]


@command.command("qgis")
@click.argument("outdir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--before", type=click.Path(path_type=Path), default=None,
              help="BEFORE raster for the RGB composite (default: from OUTDIR/report.json).")
@click.option("--after", type=click.Path(path_type=Path), default=None,
              help="AFTER raster for the RGB composite (default: from OUTDIR/report.json).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Start of the probability colour ramp (default: report.json, else the raster's tag, else 0.5).")
@click.option("--band-mapping", callback=_bands, default=None,
              help="Three 1-based band numbers, red,green,blue, of BEFORE/AFTER, e.g. 4,3,2 (default: the bands a "
                   "true-colour model reads, found by name or colour, e.g. those named B04,B03,B02; else 1,2,3).")
@click.option("--project", default="project.qgs", show_default=True, help="Project file name inside OUTDIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the written files as JSON on stdout.")
def qgis(outdir: Path, before: Path | None, after: Path | None, threshold: float | None,
         band_mapping: tuple[int, int, int] | None, project: str, as_json: bool) -> None:
    """Write QGIS styles (.qml sidecars, the GeoPackage's default style) and a QGIS project into OUTDIR.

    The project shows BEFORE and AFTER as RGB composites, the change probability (transparent below the
    threshold), the change mask and the polygons, in the data's CRS and extent, with relative paths.
    """
    from changedet.export import export_qgis

    written = export_qgis(outdir, before=before, after=after, threshold=threshold, band_mapping=band_mapping,
                          project=project)
    if as_json:
        echo_json({k: str(v) for k, v in written.items()})
        return
    for key, path in written.items():
        click.echo(f"{key:<16} {path}")
