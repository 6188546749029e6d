"""What a series run (:func:`~changedet.series.detect_series`) writes into its staging folder around the rasters of
:func:`~changedet.series.predict_series`: the GeoTIFF tags, each pair's :class:`SeriesPair` with its summary, the
QGIS styles and ``report.json``'s content."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changedet._version import __version__
from changedet.series.outputs import SERIES_OUTPUT_NAMES, SeriesPair, _iso
from changedet.series.palette import _count_entries, _index_entries, paletted_style_qml
from changedet.series.stack import pair_date_warnings

if TYPE_CHECKING:  # pragma: no cover
    from changedet.series.detect import _SeriesDates
    from changedet.series.engine import SeriesStats
    from changedet.series.stack import SeriesStack

_Areas = Callable[[Path, int, int], dict[str, float | None]]


def _raster_tags(stack: SeriesStack, series: _SeriesDates, thresholds: Sequence[float], model_name: str,
                 mode: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The tags of each pair's rasters and those of the index rasters (``first_change``, ...): ``PAIR_k`` and
    ``PAIR_k_DATE`` name each number's pair and date."""
    labels, dates, pairs_idx = series.labels, series.dates, series.pairs
    pair_labels = [f"{labels[i]}/{labels[j]}" for i, j in pairs_idx]
    base_tags = {"CHANGEDET_VERSION": __version__, "CHANGEDET_MODEL": model_name, "CHANGEDET_SERIES_MODE": mode}
    pair_tags = []
    for k, (i, j) in enumerate(pairs_idx):
        tags = dict(base_tags, CHANGEDET_THRESHOLD=f"{thresholds[k]:.6g}", CHANGEDET_PAIR=str(k + 1))
        if stack.dates[i]:
            tags["BEFORE_DATE"] = _iso(stack.dates[i]) or ""
        if stack.dates[j]:
            tags["AFTER_DATE"] = _iso(stack.dates[j]) or ""
        pair_tags.append(tags)
    index_tags = dict(base_tags, N_PAIRS=str(len(pairs_idx)), DATES=",".join(dates))
    for k, (_i, j) in enumerate(pairs_idx):
        index_tags[f"PAIR_{k + 1}"] = pair_labels[k]
        index_tags[f"PAIR_{k + 1}_DATE"] = dates[j]
    return pair_tags, index_tags


def _areas_on(stack: SeriesStack) -> _Areas:
    """``areas(path, valid, changed)``: the valid and changed area of a change raster on the grid of ``stack``."""
    from changedet.geodesy import area_summary

    px_area = stack.pixel_area_m2()

    def _areas(path: Path, valid: int, changed: int) -> dict[str, float | None]:
        """valid/changed area of a change raster (:func:`changedet.geodesy.area_summary`)."""
        v, c = area_summary(path, stack.crs, stack.transform, stack.width, stack.height, valid, changed, px_area)
        return {"valid_area_m2": v, "changed_area_m2": c}

    return _areas


def _pair_results(stack: SeriesStack, series: _SeriesDates, stats: SeriesStats, thresholds: Sequence[float],
                  methods: Sequence[dict[str, Any]], staging: Path, areas: _Areas) -> list[SeriesPair]:
    """One :class:`SeriesPair` per pair, with its rasters in the staging folder and its summary."""
    labels, dirs, source_names = series.labels, series.dirs, series.source_names
    pairs: list[SeriesPair] = []
    for k, (i, j) in enumerate(series.pairs):
        valid, changed = stats.pair_valid[k], stats.pair_changed[k]
        pairs.append(SeriesPair(
            index=k + 1, before=i, after=j, before_label=labels[i], after_label=labels[j],
            before_date=stack.dates[i], after_date=stack.dates[j], before_source=source_names[i],
            after_source=source_names[j],
            paths={"probability": staging / dirs[k] / "probability.tif", "change": staging / dirs[k] / "change.tif"},
            threshold=thresholds[k],
            summary={"valid_pixels": valid, "changed_pixels": changed,
                     "changed_percent": round(100.0 * changed / valid, 4) if valid else 0.0,
                     **areas(staging / dirs[k] / "change.tif", valid, changed)},
            method=methods[k],
        ))
    return pairs


def _write_styles(staging: Path, dirs: Sequence[str], pairs: Sequence[SeriesPair]) -> None:
    """The QGIS styles: each pair's probability and change rasters, the paletted index and count rasters."""
    from changedet.export import change_style_qml, probability_style_qml

    for k, p in enumerate(pairs):
        _write_text(staging / dirs[k] / "probability.qml", probability_style_qml(p.threshold))
        _write_text(staging / dirs[k] / "change.qml", change_style_qml())
    entries = _index_entries(pairs)
    _write_text(staging / "first_change.qml", paletted_style_qml(entries))
    _write_text(staging / "last_change.qml", paletted_style_qml(entries))
    _write_text(staging / "change_count.qml", paletted_style_qml(_count_entries(len(pairs))))


def _series_report(
    stack: SeriesStack, series: _SeriesDates, stats: SeriesStats, pairs: Sequence[SeriesPair], *, mode: str,
    keep_order: bool, model_report: dict[str, Any], thresholds: Sequence[float], tiling: dict[str, Any],
    vectorize: bool, min_area: float, simplify: float, fill_holes: float, geojson_crs: str | None,
    write_geojson: bool, polygons: Any, areas: _Areas, staging: Path, timings: dict[str, float], names: Sequence[str],
) -> dict[str, Any]:
    """The content of ``report.json`` (its ``timings`` are the dict ``timings`` until they are rounded)."""
    from changedet.api import _in_memory

    labels, dates, infos, source_names = series.labels, series.dates, series.infos, series.source_names
    valid, changed = stats.valid_pixels, stats.changed_pixels
    first_counts = {pairs[k].after_label: stats.first_change_pixels[k] for k in range(len(pairs))}
    report: dict[str, Any] = {
        "changedet_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": "series",
        "mode": mode,
        "order": "given" if keep_order else "date",
        "inputs": [
            {"index": k, "label": labels[k],
             "source": "xarray.DataArray (in memory)" if _in_memory(source_names[k]) else source_names[k],
             "date": _iso(infos[k].date),
             "date_source": getattr(infos[k], "date_source", None),
             **{key: v for key, v in infos[k].to_dict().items()
                if key in ("driver", "crs", "width", "height", "count", "dtypes", "nodata", "res")}}
            for k in range(len(infos))
        ],
        "dates": dates,
        "grid": {"crs": stack.crs.to_string() if stack.crs else None, "transform": list(stack.transform)[:6],
                 "width": stack.width, "height": stack.height, "bands": stack.band_names},
        "alignment": [r.to_dict() for r in stack.pair_reports],
        "date_warnings": pair_date_warnings(infos, mode),  # per compared pair (the alignment compares with the first)
        "model": model_report,
        "threshold": thresholds[0],
        "thresholds": thresholds,
        "tiling": tiling,
        "vectorize": {"min_area_m2": min_area, "simplify_m": simplify, "fill_holes_m2": fill_holes,
                      "geojson_crs": geojson_crs if write_geojson else None, "geojson_written": write_geojson,
                      "attributes": "first_change/first_change_date/last_change_date/n_changes: majority "
                                    "(mode) over the polygon's changed pixels (ties: the earlier pair); "
                                    "earliest_change_date: minimum; max_changes: maximum"} if vectorize else None,
        "pairs": [p.to_dict() for p in pairs],
        "index_legend": {str(p.index): {"pair": p.label, "date": dates[p.after]} for p in pairs},
        "summary": {
            "n_dates": len(labels), "n_pairs": len(pairs), "mode": mode,
            "valid_pixels": valid, "changed_pixels": changed,
            "changed_percent": round(100.0 * changed / valid, 4) if valid else 0.0,
            **areas(staging / SERIES_OUTPUT_NAMES["change_count"], valid, changed),
            "first_change_pixels": first_counts,
            "n_polygons": len(polygons) if polygons is not None else None,
            "nothing_to_compare": valid == 0,
        },
        "stats": stats.to_dict(),
        "timings": timings,
        "outputs": sorted(names),
    }
    report["stats"]["paths"] = sorted(report["stats"]["paths"])
    return report


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
