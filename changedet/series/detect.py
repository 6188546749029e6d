"""``detect_series()``: the series entry point shared by ``changedet detect d1 d2 d3 ...`` and notebooks."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from changedet._version import __version__
from changedet.errors import InputError, NothingToCompareWarning
from changedet.series.engine import predict_series
from changedet.series.outputs import (
    SERIES_OUTPUT_NAMES,
    SeriesPair,
    SeriesResult,
    _iso,
    _polygon_attributes,
    _remove_outputs_not_written,
    _source_name,
    _write_series_project,
    pair_dir_name,
)
from changedet.series.palette import _count_entries, _index_entries, _save_quicklook, paletted_style_qml
from changedet.series.stack import (
    MODES,
    _given_positions,
    _label,
    open_series,
    order_by_date,
    per_date_lists,
    series_pairs,
)
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

log = logging.getLogger(__name__)

__all__ = ["detect_series"]


# ---------------------------------------------------------------------------------------------------------------
# detect_series
# ---------------------------------------------------------------------------------------------------------------
def detect_series(
    rasters: Sequence[Any],
    model: str | os.PathLike[str] | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    mode: str = "consecutive",
    keep_order: bool = False,
    method: str = "model",
    checkpoint: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    blend: str = "cosine",
    batch_size: int = 1,
    threads: int | None = None,
    precision: str = "float32",
    tta: str = "none",
    device: str = "cpu",
    indexes: Sequence[int] | Sequence[Sequence[int]] | None = None,
    coregister: bool = False,
    match_histograms: bool = False,
    min_area: float = 0.0,
    simplify: float = 0.0,
    fill_holes: float = 0.0,
    vectorize: bool = True,
    geojson_crs: str | None = "EPSG:4326",
    qgis_project: bool = False,
    quicklook: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    progress: Callable[[int, int, int], None] | bool | None = None,
) -> SeriesResult:
    """Detect what changed, and when, in a series of N >= 2 rasters of one site.

    The options are those of :func:`changedet.api.detect` (same names, same meaning, applied to every pair); the
    outputs are described in :mod:`changedet.series`.

    Parameters
    ----------
    rasters
        Paths (any GDAL raster), open rasterio datasets or ``xarray.DataArray`` objects of (band, y, x) with a
        CRS (rioxarray; written to temporary GeoTIFFs that live as long as the result) of the dates, in any order.
    model, method, checkpoint, threshold
        As in :func:`changedet.api.detect`: one model (or unsupervised method) for every pair. Unsupervised
        methods are fitted on each pair separately; supervised models with ``"scene"`` normalisation use each
        pair's statistics (as a two-date detect of that pair would).
    output_dir
        Folder for the outputs; None writes them to a temporary folder owned by the result.
    mode
        ``"consecutive"`` (each date against the previous one) or ``"reference"`` (each date against the first).
    keep_order
        Keep the order given instead of sorting by acquisition date (needed when dates are unknown).
    tile_size, overlap, blend, batch_size, threads, precision, tta, device, coregister, match_histograms
        As in :func:`changedet.api.detect`; every later date is aligned (and co-registered, histogram-matched)
        onto the first date.
    indexes
        1-based bands read from every date (``[4, 3, 2]``), or one list per raster in the order ``rasters`` are
        given (``[[4, 3, 2], [3, 2, 1], [4, 3, 2]]``: a date whose bands are numbered or named differently;
        the lists follow their rasters when the dates are sorted). CLI: ``--indexes 4,3,2:3,2,1:4,3,2``. Default:
        the model's bands by name (each date its own where its names or colours identify them), else all.
    min_area, simplify, fill_holes, vectorize, geojson_crs
        Vectorisation of the pixels that changed at least once (see :mod:`changedet.series` for the attributes).
    qgis_project, quicklook, overwrite
        As in :func:`changedet.api.detect`.
    resume
        Not supported for series (an :class:`~changedet.errors.InputError` says so); rerun instead.
    progress
        ``True`` draws a progress bar on stderr (tqdm, as ``detect(progress=True)``); or a
        ``progress(tiles_done, tiles_total, pixels_done)`` callback.

    Returns
    -------
    SeriesResult

    Raises
    ------
    InputError
        Fewer than two rasters, unknown dates without ``keep_order``, unknown mode or method, bands that do not
        match, dates without common area (:class:`~changedet.errors.NoOverlapError`), ...
    OutputExistsError
        An output exists and ``overwrite`` is False.
    OutputError
        Writing the outputs failed (a full disk, say): no output was written (as in :func:`changedet.api.detect`).

    Examples
    --------
    >>> import tempfile
    >>> series = detect_series(["a_2019-05-01.tif", "b_2020-05-01.tif", "c_2021-05-01.tif"],
    ...                        output_dir=tempfile.mkdtemp(), method="cva")  # doctest: +SKIP
    >>> [p.label for p in series.pairs]  # doctest: +SKIP
    ['2019-05-01/2020-05-01', '2020-05-01/2021-05-01']
    """
    from changedet.api import (
        METHODS,
        _bands_per_date,
        _check_options,
        _check_outputs,
        _checked_tta,
        _resolve_for_input,
        _sample_for_fit,
        torch_threads,
    )
    from changedet.errors import OutputFolderBusyError
    from changedet.export.vector import geojson_crs_option
    from changedet.geodesy import area_summary
    from changedet.inference import ScorerPredictor, TorchPredictor
    from changedet.io.folders import (
        missing_folders,
        output_folder_lock,
        remove_empty_folders,
        remove_stale_staging,
    )

    t0 = time.perf_counter()
    rasters = list(rasters)
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    tta = _checked_tta(tta, method)
    geojson_crs = geojson_crs_option(geojson_crs)
    _check_options(overlap=overlap, blend=blend, geojson_crs=geojson_crs if vectorize else None, tile_size=tile_size,
                   device=device if method == "model" else None, threshold=threshold, threads=threads,
                   indexes=indexes, n_dates=len(rasters))
    if resume:
        raise InputError("--resume is not supported with more than two dates; rerun the series (with --overwrite)")
    if method != "model" and model is not None:
        raise InputError(f"--model {model} is only used with --method model, not {method}")

    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise InputError(f"progress must be True, False, None or a callable(tiles_done, tiles_total, pixels_done), "
                         f"not {type(progress).__name__}")
    bar = None
    if isinstance(progress, bool):  # True: the tqdm bar of `changedet detect` (detect(progress=True))
        from changedet.inference import TileProgress

        bar = TileProgress(enabled=True) if progress else None
        progress = bar
    from changedet._xarray import is_xarray, write_dataarrays
    from changedet.api import _XARRAY_TMP_PREFIX, _in_memory

    xr_tmp = None  # the GeoTIFFs written from xarray inputs, kept as long as the result
    if any(is_xarray(r) for r in rasters):
        xr_tmp = tempfile.TemporaryDirectory(prefix=_XARRAY_TMP_PREFIX)
        rasters = write_dataarrays(rasters, xr_tmp.name, [f"input_{k + 1}" for k in range(len(rasters))])
    sources, infos = order_by_date(rasters, keep_order=keep_order)
    per_date = per_date_lists(indexes)
    if per_date:  # one list per raster as given: each follows its raster into date order
        given = _given_positions(rasters, sources)
        indexes = [list(indexes[k]) for k in given]  # type: ignore[index, arg-type]
    dates = [_label(i, k) for k, i in enumerate(infos)]  # the date (or the file's stem): the tags' and legend's
    labels = list(dates)  # unique: folder names and pair labels; a date given twice is numbered -1, -2 ...
    for k, lab in enumerate(dates):
        if dates.count(lab) > 1:
            labels[k] = f"{lab}-{dates[: k + 1].count(lab)}"
    pairs_idx = series_pairs(len(sources), mode)
    dirs = [pair_dir_name(k + 1, labels[i], labels[j]) for k, (i, j) in enumerate(pairs_idx)]

    tmp_holder = None
    if output_dir is None:
        tmp_holder = tempfile.TemporaryDirectory(prefix="changedet-series-")
        out = Path(tmp_holder.name)
    else:
        out = Path(output_dir)
    names = [SERIES_OUTPUT_NAMES[k] for k in ("change_count", "first_change", "last_change", "report")] + dirs
    if vectorize:
        names += [SERIES_OUTPUT_NAMES["gpkg"], SERIES_OUTPUT_NAMES["geojson"]]
    if quicklook:
        names.append(SERIES_OUTPUT_NAMES["quicklook"])
    if qgis_project:
        names.append(SERIES_OUTPUT_NAMES["project"])
    created = missing_folders(out)  # the folders this run creates, deepest first
    _check_outputs(out, names, overwrite, False)  # fails early (clash, not writable)
    remove_empty_folders(created)  # made again when the outputs are staged: a failed run leaves no folder
    failed, busy = True, False

    # -- model or method (the first date decides the bands, as BEFORE does in detect) ---------------------------
    source_names = [_source_name(s) for s in sources]
    meta = net = None
    select: Any = list(indexes) if indexes else None
    if method == "model":
        # the first date decides the model from its own list; every date then reads its own (open_series)
        net, meta, first = _resolve_for_input(model, checkpoint, infos[0], select[0] if per_date else select,
                                              source_names[0])
        select = [first, *select[1:]] if per_date else first
        if not indexes:  # a later date whose band names or colours stand in another order reads its own
            select = _bands_per_date(infos, meta, select)

    timings: dict[str, float] = {}
    stack = open_series(sources, indexes=select, coregister=coregister, match_histograms=match_histograms,
                        ordered=(sources, infos))
    from rasterio._err import CPLE_BaseError  # GDAL's own errors (e.g. reopening a truncated file)
    from rasterio.errors import RasterioError

    staging = out / f".changedet-staging-{os.getpid()}"
    made_staging = placing = False
    restore = contextlib.ExitStack()
    try:
        out.mkdir(parents=True, exist_ok=True)  # removed after the early check; a failed run removes it again
        restore.enter_context(output_folder_lock(out))  # no second run writes into this folder meanwhile
        _check_outputs(out, names, overwrite, False)  # again: a run that held the folder may have finished
        # killed runs' staging folders, ours too: one named with this pid is a dead run's (pid 1 in a container)
        remove_stale_staging(out)
        restore.enter_context(torch_threads(threads))  # torch's threads for this run (DSFA's fits too), restored
        write_geojson = vectorize
        if vectorize:  # the GeoJSON's CRS (or none without a CRS), decided before the prediction, as detect does
            from changedet.export.vector import plan_geojson
            from changedet.geodesy import grid_bounds

            write_geojson, geojson_crs = plan_geojson(
                stack.crs, geojson_crs, bounds=grid_bounds(stack.transform, stack.width, stack.height),
                source=source_names[0])
            if not write_geojson:
                names.remove(SERIES_OUTPUT_NAMES["geojson"])
        timings["open_and_check"] = time.perf_counter() - t0
        # -- one predictor per pair -------------------------------------------------------------------------
        predictors: list[Any] = []
        thresholds: list[float] = []
        methods: list[dict[str, Any]] = []
        t_fit = time.perf_counter()
        for i, j in pairs_idx:
            view = stack.pair(i, j)
            if method == "model":
                from changedet.io.radiometry import band_stats

                norm = meta.normalization or {"mode": "scene"}  # type: ignore[union-attr]
                if norm.get("mode") == "fixed":
                    mb, sb, ma, sa = norm["mean"], norm["std"], norm["mean"], norm["std"]
                else:
                    mb, sb = band_stats(view, which="before")
                    ma, sa = band_stats(view, which="after")
                predictors.append(TorchPredictor(net, mb, sb, ma, sa, device=device, precision=precision,
                                                 name=meta.name or meta.architecture,  # type: ignore[union-attr]
                                                 tta=tta))
                thresholds.append(float(meta.threshold if threshold is None else threshold))  # type: ignore[union-attr]
                methods.append({"normalization": norm.get("mode"),
                                "before_mean": [round(float(x), 4) for x in mb],
                                "after_mean": [round(float(x), 4) for x in ma]})
            else:
                from changedet.unsupervised import create_scorer

                scorer = create_scorer(method)
                b, a, v = _sample_for_fit(view)
                scorer.fit(b, a, v)
                predictors.append(ScorerPredictor(scorer))
                thresholds.append(float(scorer.threshold if threshold is None else threshold))
                methods.append({"fitted": scorer.to_dict()})
        timings["fit"] = time.perf_counter() - t_fit
        if method == "model":
            model_report: dict[str, Any] = {
                "method": "model", "name": meta.name or None, "architecture": meta.architecture,  # type: ignore[union-attr]
                "checkpoint": str(checkpoint) if checkpoint else (meta.name or None),  # type: ignore[union-attr]
                "band_names": meta.band_names, "calibrated_threshold": meta.threshold,  # type: ignore[union-attr]
                "metrics": meta.metrics, "precision": precision, "tta": tta,  # type: ignore[union-attr]
                "device": device,
            }
        else:
            model_report = {"method": method, "name": method, "calibrated_threshold": thresholds[0]}

        # -- stream every pair ----------------------------------------------------------------------------------
        staging.mkdir()  # new: never a dead run's, whose files would be moved into place with ours
        made_staging = True
        pair_labels = [f"{labels[i]}/{labels[j]}" for i, j in pairs_idx]
        base_tags = {"CHANGEDET_VERSION": __version__, "CHANGEDET_MODEL": str(model_report.get("name")),
                     "CHANGEDET_SERIES_MODE": mode}
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
        stats = predict_series(stack, pairs_idx, predictors, out_dir=staging, pair_dirs=dirs, thresholds=thresholds,
                               tile_size=tile_size, overlap=overlap, blend=blend, batch_size=batch_size,
                               progress=progress, pair_tags=pair_tags, index_tags=index_tags)
        timings["predict"] = stats.seconds_total
        if stats.valid_pixels == 0:
            warnings.warn(f"{', '.join(source_names)}: no pixel has valid data in any compared pair; the outputs are "
                          "empty", NothingToCompareWarning, stacklevel=2)
        px_area = stack.pixel_area_m2()

        def _areas(path: Path, valid: int, changed: int) -> dict[str, float | None]:
            """valid/changed area of a change raster (:func:`changedet.geodesy.area_summary`)."""
            v, c = area_summary(path, stack.crs, stack.transform, stack.width, stack.height, valid, changed, px_area)
            return {"valid_area_m2": v, "changed_area_m2": c}

        pairs: list[SeriesPair] = []
        for k, (i, j) in enumerate(pairs_idx):
            valid, changed = stats.pair_valid[k], stats.pair_changed[k]
            pairs.append(SeriesPair(
                index=k + 1, before=i, after=j, before_label=labels[i], after_label=labels[j],
                before_date=stack.dates[i], after_date=stack.dates[j], before_source=source_names[i],
                after_source=source_names[j],
                paths={"probability": staging / dirs[k] / "probability.tif", "change": staging / dirs[k] / "change.tif"},
                threshold=thresholds[k],
                summary={"valid_pixels": valid, "changed_pixels": changed,
                         "changed_percent": round(100.0 * changed / valid, 4) if valid else 0.0,
                         **_areas(staging / dirs[k] / "change.tif", valid, changed)},
                method=methods[k],
            ))

        # -- styles, polygons, figure -----------------------------------------------------------------------------
        from changedet.export import change_style_qml, probability_style_qml

        for k, p in enumerate(pairs):
            _write_text(staging / dirs[k] / "probability.qml", probability_style_qml(p.threshold))
            _write_text(staging / dirs[k] / "change.qml", change_style_qml())
        entries = _index_entries(pairs)
        _write_text(staging / "first_change.qml", paletted_style_qml(entries))
        _write_text(staging / "last_change.qml", paletted_style_qml(entries))
        _write_text(staging / "change_count.qml", paletted_style_qml(_count_entries(len(pairs))))

        polygons = None
        if vectorize:
            from changedet.export import write_vectors
            from changedet.vectorize import vectorize as _vectorize

            t1 = time.perf_counter()
            common_thr = thresholds[0] if len(set(thresholds)) == 1 else None
            polygons = _vectorize(staging / SERIES_OUTPUT_NAMES["change_count"], min_area=min_area,
                                  simplify=simplify, fill_holes=fill_holes, before_date=stack.dates[0],
                                  after_date=stack.dates[-1], model=str(model_report.get("name")),
                                  threshold=common_thr)
            polygons = _polygon_attributes(polygons, staging, pairs)
            write_vectors(polygons, staging / SERIES_OUTPUT_NAMES["gpkg"],
                          staging / SERIES_OUTPUT_NAMES["geojson"] if write_geojson else None,
                          geojson_crs=geojson_crs, overwrite=True)
            timings["vectorize"] = time.perf_counter() - t1
        if quicklook:
            t2 = time.perf_counter()
            _save_quicklook(staging, pairs, labels, staging / SERIES_OUTPUT_NAMES["quicklook"])
            timings["quicklook"] = time.perf_counter() - t2

        # -- report ------------------------------------------------------------------------------------------------
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
            "model": model_report,
            "threshold": thresholds[0],
            "thresholds": thresholds,
            "tiling": {"tile_size": tile_size, "overlap": overlap, "blend": blend, "batch_size": batch_size},
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
                **_areas(staging / SERIES_OUTPUT_NAMES["change_count"], valid, changed),
                "first_change_pixels": first_counts,
                "n_polygons": len(polygons) if polygons is not None else None,
                "nothing_to_compare": valid == 0,
            },
            "stats": stats.to_dict(),
            "timings": timings,
            "outputs": sorted(names),
        }
        report["stats"]["paths"] = sorted(report["stats"]["paths"])
        timings["total"] = time.perf_counter() - t0
        report["timings"] = {k: round(v, 3) for k, v in timings.items()}
        from changedet.api import _write_json

        _write_json(staging / SERIES_OUTPUT_NAMES["report"], report)

        # -- move into place: folders and files, the project next, report.json last -----------------------------
        placing = True
        for item in sorted(staging.iterdir()):
            if item.name == SERIES_OUTPUT_NAMES["report"] or item.name.startswith("."):
                continue
            target = out / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        if qgis_project:
            _write_series_project(out, source_names, [_moved(p, staging, out) for p in pairs])
        if overwrite:  # polygons, a project or other pairs' folders of an earlier series would stay beside it
            _remove_outputs_not_written(out, names)
        os.replace(staging / SERIES_OUTPUT_NAMES["report"], out / SERIES_OUTPUT_NAMES["report"])
        paths = {k: out / v for k, v in SERIES_OUTPUT_NAMES.items() if v in names and (out / v).exists()}
        failed = False
        return SeriesResult(output_dir=out, paths=paths, report=report, pairs=[_moved(p, staging, out) for p in pairs],
                            labels=labels, dates=list(stack.dates), crs=stack.crs, transform=stack.transform,
                            _polygons=polygons, _tmp=tmp_holder if xr_tmp is None else (tmp_holder, xr_tmp))
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        busy = isinstance(exc, OutputFolderBusyError)  # the folder is the other run's: leave it
        error = _write_failure(exc, out, staging if made_staging else None, placing)
        if error is exc:
            raise
        raise error from exc
    finally:
        if made_staging:  # (only ours: with the lock refused, a folder of that name is another namespace's run's)
            shutil.rmtree(staging, ignore_errors=True)
        restore.close()  # the lock, released once the staging folder is gone
        stack.close()
        if bar is not None:
            bar.close()
        if failed and not busy:
            if tmp_holder is None:
                remove_empty_folders(created)
            if xr_tmp is not None:
                xr_tmp.cleanup()


def _write_failure(exc: BaseException, out: Path, staging: Path | None, placing: bool) -> BaseException:
    """The error a failed series run raises for ``exc``: ``exc`` itself where it is one of changedet's (a busy or
    existing output, an unreadable input), else (a full disk, a permission taken away: GDAL's and the OS's errors,
    and changedet's about a file of this run's staging folder, such as a Cloud-Optimised GeoTIFF a full disk cut
    short) the :class:`~changedet.errors.OutputError` that :func:`changedet.api.detect` raises. ``staging`` is None
    until the run has made its staging folder: an error before that (a killed run's staging folder of the same name
    that cannot be removed) keeps its own message."""
    from changedet.errors import ChangedetError, OutputError, RasterReadError, root_message

    if isinstance(exc, ChangedetError) and not (isinstance(exc, (OutputError, RasterReadError))
                                                and staging is not None and staging.name in str(exc)):
        return exc
    reason = root_message(exc.__cause__ if isinstance(exc, ChangedetError) and exc.__cause__ else exc)
    if placing:  # os.replace does not fail on a full disk, but project.qgs is written beside the outputs moved
        return OutputError(f"{out}: writing the outputs failed ({reason}) while they were moved into place: the "
                           "folder holds an incomplete series without report.json. Check the free disk space and "
                           "write permission of the output folder, then rerun with --overwrite.")
    return OutputError(f"{out}: writing the outputs failed ({reason}); no output was written. Check the free disk "
                       "space and write permission of the output folder.")


def _moved(pair: SeriesPair, staging: Path, out: Path) -> SeriesPair:
    pair.paths = {k: out / v.relative_to(staging) if v.is_relative_to(staging) else v for k, v in pair.paths.items()}
    return pair


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
