"""``changedet detect BEFORE AFTER [MORE...] -o OUTDIR``: the main job (calls :func:`changedet.api.detect`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import click

from changedet.api.options import BATCH_SIZE_RANGE, TILE_SIZE_RANGE
from changedet.cli._common import RASTER, echo_json, quiet
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
from changedet.types import TTA


def _indexes(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> list[int] | tuple[list[int], ...] | None:
    """``--indexes``: ``4,3,2``, ranges ``1-3``, or one list per raster separated by ``:``: BEFORE:AFTER such as
    ``1,2,3:3,2,1`` (as ``changedet check``), ``4,3,2:3,2,1:4,3,2`` for three dates (checked against the rasters
    in the command)."""
    from changedet.cli.check import parse_indexes

    out = parse_indexes(value, most=None)
    if out is None:
        return None
    lists = out if isinstance(out, tuple) else (out,)
    if any(not part or min(part) < 1 for part in lists):
        raise click.BadParameter(f"{value!r}: band numbers are 1-based, e.g. 4,3,2 or 1,2,3:3,2,1")
    return out


@click.command("detect")
@click.argument("rasters", nargs=-1, required=True, type=RASTER)
@click.option("-o", "--output-dir", required=True, type=click.Path(path_type=Path), help="Folder for the outputs.")
@click.option("-m", "--model", default=None, help="Bundled model name, checkpoint path, or architecture (with --checkpoint). Default: chosen from band count and pixel size.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Checkpoint (.safetensors + .json) for an architecture named with --model.")
@click.option("--method", type=click.Choice(["model", "cva", "irmad", "dsfa"]), default="model", show_default=True, help="Supervised network, or an unsupervised baseline.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Probability threshold (default: the calibrated one).")
@click.option("--tile-size", type=click.IntRange(*TILE_SIZE_RANGE), default=DEFAULT_TILE_SIZE, show_default=True)
@click.option("--overlap", type=click.IntRange(0, 4096), default=DEFAULT_OVERLAP, show_default=True)
@click.option("--blend", type=click.Choice(["cosine", "mean", "center-crop"]), default="cosine", show_default=True)
@click.option("--batch-size", type=click.IntRange(*BATCH_SIZE_RANGE), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(1, 512), default=None, help="torch threads (default: torch's choice).")
@click.option("--precision", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True)
@click.option("--tta", type=click.Choice(get_args(TTA)), default="none", show_default=True, help="Test-time augmentation: mean probability over flipped/rotated (d4: 8 views) and/or date-swapped views of each tile; one forward pass per view.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--indexes", callback=_indexes, default=None, help="1-based bands to use, e.g. 4,3,2, or one list per raster separated by ':', in the order given: BEFORE:AFTER such as 1,2,3:3,2,1, or 4,3,2:3,2,1:4,3,2 for three dates (default: by band name, else all).")
@click.option("--coregister", is_flag=True, help="Estimate and correct a global sub-pixel shift of AFTER.")
@click.option("--match-histograms", is_flag=True, help="Match AFTER's histograms to BEFORE per band.")
@click.option("--min-area", type=click.FloatRange(0), default=0.0, show_default=True, help="Drop polygons smaller than this (m2, also in geographic CRSs).")
@click.option("--simplify", type=click.FloatRange(0), default=0.0, show_default=True, help="Topology-preserving simplification tolerance (m).")
@click.option("--fill-holes", type=click.FloatRange(0), default=0.0, show_default=True, help="Fill holes smaller than this (m2).")
@click.option("--no-vectorize", "vectorize", flag_value=False, default=True, help="Skip changes.gpkg / changes.geojson.")
@click.option("--geojson-crs", default="EPSG:4326", show_default=True, help="CRS of changes.geojson; 'input' keeps the raster CRS.")
@click.option("--qgis-project", is_flag=True, help="Also write project.qgs with every layer styled.")
@click.option("--no-quicklook", "quicklook", flag_value=False, default=True, help="Skip quicklook.png.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUTDIR from its journal.")
@click.option("--mode", type=click.Choice(["consecutive", "reference"]), default="consecutive", show_default=True, help="With more than two dates: compare each date with the previous one or with the first.")
@click.option("--keep-order", is_flag=True, help="With more than two dates: keep the order given instead of sorting by date.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def command(rasters: tuple[Path, ...], output_dir: Path, geojson_crs: str, as_json: bool, mode: str,
            keep_order: bool, **options: Any) -> None:
    """Detect change between BEFORE and AFTER (or a series of dates) and write the outputs into OUTDIR.

    Outputs: probability.tif (float32 COG, 0..1), change.tif (uint8 COG, 0/1, nodata 255), changes.gpkg and
    changes.geojson (polygons with area_m2, perimeter_m, mean_prob, max_prob, dates, model, threshold),
    report.json, quicklook.png and, with --qgis-project, project.qgs.
    """
    if len(rasters) < 2:
        raise click.UsageError("give at least two rasters: BEFORE AFTER [MORE...]")
    options["geojson_crs"] = geojson_crs  # 'input' (the raster CRS) is understood by detect and detect_series
    lists = options.get("indexes")
    if isinstance(lists, tuple) and len(lists) != len(rasters):
        example = ":".join(["1,2,3", "3,2,1", *["1,2,3"] * (len(rasters) - 2)])
        raise click.BadParameter(f"{len(lists)} band lists separated by ':' for {len(rasters)} rasters; give one "
                                 f"list for every date (4,3,2), or one per raster in the order given ({example})",
                                 param_hint="--indexes")
    from changedet.inference import TileProgress

    progress = TileProgress(enabled=not quiet())
    try:
        if len(rasters) == 2:
            from changedet.api import detect

            result = detect(rasters[0], rasters[1], output_dir=output_dir, progress=progress, **options)
            report = result.report
        else:
            from changedet.series import detect_series

            series = detect_series(list(rasters), output_dir=output_dir, mode=mode, keep_order=keep_order,
                                   progress=progress, **options)
            report = series.report
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (changedet.errors.Terminated)
        progress.close()
        partial = output_dir / ".changedet-partial"
        if partial.is_dir():  # (and not also run_guarded's "no partial output was left behind")
            from changedet.errors import exit_code_for

            click.echo(f"interrupted: no output was written; finished blocks are kept in {partial}: run the same "
                       "command with --resume to continue, or delete that folder", err=True)
            raise SystemExit(exit_code_for(exc)) from None
        raise
    finally:
        progress.close()
    if as_json:
        echo_json(report)
        return
    s = report.get("summary", {})
    click.echo(f"outputs in {output_dir}")
    m = report.get("model") or {}
    bands = ", ".join(str(b) for b in (report.get("grid") or {}).get("bands") or [])
    if m.get("method", "model") == "model":  # which network ran on which bands (the default depends on the input)
        click.echo(f"model: {m.get('name') or m.get('checkpoint')} ({m.get('architecture')}) on bands {bands}")
    else:
        click.echo(f"method: {m.get('method')} on bands {bands}")
    if "changed_percent" in s:
        area = s.get("changed_area_m2")
        area_txt = f", {area / 1e6:.4f} km2" if area else ""
        n_polygons = s.get("n_polygons")
        poly_txt = f"{n_polygons} polygons; " if n_polygons is not None else ""  # None with --no-vectorize
        click.echo(
            f"changed: {s['changed_percent']:.3f} % of the compared pixels{area_txt}; "
            f"{poly_txt}threshold {report.get('threshold'):.3f}"
        )
