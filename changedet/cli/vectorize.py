"""``changedet vectorize RASTER OUT``: change mask (or probability + threshold) -> GeoPackage / GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from changedet.cli._common import echo_json

_FORMATS = {".gpkg": "gpkg", ".geojson": "geojson", ".json": "geojson"}


def _nodata(value: str | None) -> float | str | None:
    """``--nodata``: not given -> "auto" (the raster's declared nodata), 'none' -> None, else a number."""
    if value is None:
        return "auto"
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'none'", param_hint="--nodata") from None


def _sibling_report(raster: Path) -> dict[str, Any]:
    """report.json of the `changedet detect` folder RASTER sits in, if any (threshold, model, dates)."""
    import json

    p = raster.parent / "report.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _report_defaults(report: dict[str, Any]) -> dict[str, Any]:
    """``model``, ``before_date``, ``after_date`` and ``threshold`` from a detect ``report.json``, None where it
    gives none. A pair's report has ``inputs: {"before": {...}, "after": {...}}``; a series' has a list of the
    dates' inputs: its first and last dates then, as in the series' ``changes.gpkg``, and its threshold when every
    pair used the same one."""

    def date(item: Any) -> Any:
        return item.get("date") if isinstance(item, dict) else None

    model = report.get("model")
    inputs = report.get("inputs")
    if isinstance(inputs, dict):  # a pair
        before, after = date(inputs.get("before")), date(inputs.get("after"))
    elif isinstance(inputs, list) and len(inputs) > 1:  # a series, in date order
        before, after = date(inputs[0]), date(inputs[-1])
    else:
        before = after = None
    dates = report.get("dates")
    if isinstance(dates, list) and len(dates) > 1:
        before, after = before or dates[0], after or dates[-1]
    threshold = report.get("threshold")
    per_pair = report.get("thresholds")
    if isinstance(per_pair, list) and len({str(t) for t in per_pair}) > 1:
        threshold = None  # the pairs of a series thresholded differently: no one threshold for the polygons
    return {
        "model": model.get("name") if isinstance(model, dict) else None,
        "before_date": before,
        "after_date": after,
        "threshold": float(threshold) if isinstance(threshold, (int, float)) and 0 <= threshold <= 1 else None,
    }


def _iso_date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A --before-date/--after-date value: an ISO date (YYYY-MM-DD), or a usage error (it was stored as given)."""
    if value is None:
        return None
    import datetime as _dt

    try:
        return _dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date written YYYY-MM-DD (e.g. 2020-05-01)") from None


@click.command("vectorize")
@click.argument("raster", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Change where probability >= THRESHOLD. Needed when RASTER is a probability (float) raster "
                   "without a 'threshold' tag; with a mask it is only recorded in the attributes.")
@click.option("--probability", "probability", type=click.Path(path_type=Path), default=None,
              help="Probability raster on RASTER's grid, for the mean_prob/max_prob attributes.")
@click.option("--min-area", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Drop polygons smaller than this (m2, also in geographic CRSs).")
@click.option("--simplify", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Topology-preserving simplification tolerance (m).")
@click.option("--fill-holes", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Fill holes smaller than this (m2).")
@click.option("--nodata", default=None, metavar="VALUE",
              help="Mask value that means no data (not change); 'none' for none. Default: the value RASTER "
                   "declares (255 in a changedet change.tif), none when it declares none, so a 0/255 mask "
                   "gives polygons of its 255 pixels; but a mask declaring none that holds only 0, 1 and 255 "
                   "(a change.tif that lost its nodata tag) has 255 as nodata, with a warning.")
@click.option("--geojson-crs", default="EPSG:4326", show_default=True,
              help="CRS of a GeoJSON OUT (RFC 7946 WGS84 by default); 'input' keeps the raster's CRS, named in "
                   "the GeoJSON's 'crs' member. A CRS that cannot be transformed to WGS84 is kept, with a warning, "
                   "when it has an authority code (EPSG, IAU...); a CRS without one (a local/engineering or custom "
                   "CRS) cannot be named in a GeoJSON: write a .gpkg OUT (an error otherwise).")
@click.option("--window-size", type=click.IntRange(2), default=4096, show_default=True,
              help="Pixels per side of the windows read at a time (bounds the memory).")
@click.option("--model", default=None, help="Model name recorded in the 'model' attribute.")
@click.option("--before-date", default=None, callback=_iso_date,
              help="BEFORE date recorded in the attributes (YYYY-MM-DD).")
@click.option("--after-date", default=None, callback=_iso_date,
              help="AFTER date recorded in the attributes (YYYY-MM-DD).")
@click.option("--no-style", "style", flag_value=False, default=True,
              help="Do not embed the QGIS style in a GeoPackage nor write its .qml sidecar.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def command(raster: Path, out: Path, threshold: float | None, probability: Path | None, geojson_crs: str,
            nodata: str | None, style: bool, overwrite: bool, as_json: bool, **options: Any) -> None:
    """Vectorise a change mask RASTER (non-zero = change, except RASTER's declared nodata or --nodata) into
    polygons written to OUT. A series' change_count.tif, first_change.tif or last_change.tif gives the polygons
    of the pixels that changed at least once (those of its changes.gpkg, without the per-pair attributes).

    OUT is a GeoPackage (.gpkg, keeps the raster's CRS, QGIS style embedded) or GeoJSON (.geojson, WGS84 per
    RFC 7946 unless --geojson-crs input). A float RASTER is read as a change probability: change is
    probability >= --threshold (default: the raster's 'threshold' tag). Attributes: id, area_m2, perimeter_m,
    pixel_count, mean_prob, max_prob, before_date, after_date, model, threshold.
    """
    from changedet.export import write_vectors
    from changedet.export.vector import geojson_crs_option, resolve_geojson_crs
    from changedet.io.raster import open_raster
    from changedet.vectorize import vectorize

    kind = _FORMATS.get(out.suffix.lower())
    if kind is None:
        raise click.BadParameter(f"{out}: give a .gpkg or .geojson file name", param_hint="OUT")
    options["nodata"] = _nodata(nodata)
    import warnings

    from changedet.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():  # vectorize() says it (once) when it opens the raster
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(raster) as ds:
            tagged = {str(k).upper() for k in ds.tags()} & {"THRESHOLD", "CHANGEDET_THRESHOLD"}
            raster_crs, bounds = ds.crs, tuple(ds.bounds)
    crs = geojson_crs_option(geojson_crs)
    if kind == "geojson":  # before the work: a CRS the GeoJSON cannot be written in is refused here
        crs = resolve_geojson_crs(raster_crs, crs, bounds=bounds, source=str(raster))
    defaults = _report_defaults(_sibling_report(raster))
    for key in ("model", "before_date", "after_date"):
        if options[key] is None:
            options[key] = defaults[key]
    if threshold is None and not tagged:
        # the threshold of report.json beside the raster: a float (probability) RASTER is thresholded at it, a
        # mask without its own tag (a series' count) gets it in its threshold column
        threshold = defaults["threshold"]
    # vectorize() reads a float RASTER as a probability (change = probability >= threshold), as in Python
    gdf = vectorize(raster, probability, threshold=threshold, **options)
    paths = write_vectors(
        gdf,
        gpkg_path=out if kind == "gpkg" else None,
        geojson_path=out if kind == "geojson" else None,
        geojson_crs=crs,
        overwrite=overwrite,
        style=style,
    )
    total = float(gdf["area_m2"].sum()) if len(gdf) else 0.0
    summary = {
        "polygons": len(gdf),
        "area_m2": total if gdf.crs is not None else None,
        "pixels": int(gdf["pixel_count"].sum()) if len(gdf) else 0,
        "crs": gdf.crs.to_string() if gdf.crs is not None else None,
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    if as_json:
        echo_json(summary)
        return
    area = f", {total / 1e6:.4f} km2" if summary["area_m2"] is not None else ""
    click.echo(f"{len(gdf)} polygons{area} -> {out}")
