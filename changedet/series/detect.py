"""``detect_series()``: the series entry point shared by ``changedet detect d1 d2 d3 ...`` and notebooks.

:func:`detect_series` runs its stages in order: the option checks, the dates in order (:class:`_SeriesDates`), the
output folder (:mod:`changedet.series.staging`), the model, the aligned stack, one predictor per pair
(:mod:`changedet.series.predictors`), one streamed pass (:func:`~changedet.series.predict_series`), the products
written into the staging folder (:mod:`changedet.series.products`, and the polygons here), and the outputs moved
into place. The stages that call functions whose warnings name their caller's line stay in this module (those of
:func:`~changedet.series.order_by_date` name the line that called :func:`detect_series`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from changedet.errors import InputError, NothingToCompareWarning
from changedet.series.engine import predict_series
from changedet.series.outputs import (
    SERIES_OUTPUT_NAMES,
    SeriesPair,
    SeriesResult,
    _polygon_attributes,
    _source_name,
    pair_dir_name,
)
from changedet.series.palette import _save_quicklook
from changedet.series.predictors import _model_report, _pair_predictors
from changedet.series.products import _areas_on, _pair_results, _raster_tags, _series_report, _write_styles
from changedet.series.stack import (
    MODES,
    SeriesStack,
    _given_positions,
    _label,
    open_series,
    order_by_date,
    per_date_lists,
    series_pairs,
)
from changedet.series.staging import _OutputFolder
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
    from changedet.api import _write_json, torch_threads

    t0 = time.perf_counter()
    rasters = list(rasters)
    tta, geojson_crs = _checked_arguments(
        rasters, model, mode=mode, method=method, tta=tta, geojson_crs=geojson_crs, vectorize=vectorize,
        overlap=overlap, blend=blend, tile_size=tile_size, device=device, threshold=threshold, threads=threads,
        indexes=indexes, resume=resume, progress=progress, batch_size=batch_size)
    bar, callback = _progress_bar(progress)
    rasters, xr_tmp = _xarray_written(rasters)  # the GeoTIFFs written from xarray inputs, kept as long as the result
    # here: its warnings name the caller's line
    sources, infos = order_by_date(rasters, keep_order=keep_order, mode=mode)
    series = _SeriesDates.of(rasters, sources, infos, indexes, mode)
    folder = _OutputFolder.plan(output_dir, series.dirs, vectorize=vectorize, quicklook=quicklook,
                                qgis_project=qgis_project, overwrite=overwrite)
    net, meta, select = _resolve_model(method, model, checkpoint, series)

    timings: dict[str, float] = {}
    stack = open_series(sources, indexes=select, coregister=coregister, match_histograms=match_histograms,
                        ordered=(sources, infos))
    from rasterio._err import CPLE_BaseError  # GDAL's own errors (e.g. reopening a truncated file)
    from rasterio.errors import RasterioError

    try:
        folder.lock(overwrite)  # no second run writes into this folder meanwhile
        folder.restore.enter_context(torch_threads(threads))  # torch's threads for this run (DSFA's fits too)
        write_geojson = vectorize
        if vectorize:  # the GeoJSON's CRS (or none without a CRS), decided before the prediction, as detect does
            write_geojson, geojson_crs = _plan_geojson(stack, geojson_crs, series.source_names[0])
            if not write_geojson:
                folder.names.remove(SERIES_OUTPUT_NAMES["geojson"])
        timings["open_and_check"] = time.perf_counter() - t0
        # -- one predictor per pair ---------------------------------------------------------------------------------
        t_fit = time.perf_counter()
        predictors, thresholds, methods = _pair_predictors(stack, series.pairs, method=method, net=net, meta=meta,
                                                           threshold=threshold, device=device, precision=precision,
                                                           tta=tta)
        timings["fit"] = time.perf_counter() - t_fit
        model_report = _model_report(method, meta, checkpoint, thresholds, precision=precision, tta=tta,
                                     device=device)
        model_name = str(model_report.get("name"))

        # -- stream every pair --------------------------------------------------------------------------------------
        folder.make_staging()
        staging = folder.staging
        pair_tags, index_tags = _raster_tags(stack, series, thresholds, model_name, mode)
        stats = predict_series(stack, series.pairs, predictors, out_dir=staging, pair_dirs=series.dirs,
                               thresholds=thresholds, tile_size=tile_size, overlap=overlap, blend=blend,
                               batch_size=batch_size, progress=callback, pair_tags=pair_tags, index_tags=index_tags)
        timings["predict"] = stats.seconds_total
        if stats.valid_pixels == 0:
            warnings.warn(f"{', '.join(series.source_names)}: no pixel has valid data in any compared pair; the "
                          "outputs are empty", NothingToCompareWarning, stacklevel=2)
        areas = _areas_on(stack)
        pairs = _pair_results(stack, series, stats, thresholds, methods, staging, areas)

        # -- styles, polygons, figure, report -----------------------------------------------------------------------
        _write_styles(staging, series.dirs, pairs)
        polygons = None
        if vectorize:
            polygons = _write_polygons(stack, pairs, staging, thresholds, model_name, min_area=min_area,
                                       simplify=simplify, fill_holes=fill_holes, write_geojson=write_geojson,
                                       geojson_crs=geojson_crs, timings=timings)
        if quicklook:
            t2 = time.perf_counter()
            _save_quicklook(staging, pairs, series.labels, staging / SERIES_OUTPUT_NAMES["quicklook"])
            timings["quicklook"] = time.perf_counter() - t2
        report = _series_report(
            stack, series, stats, pairs, mode=mode, keep_order=keep_order, model_report=model_report,
            thresholds=thresholds,
            tiling={"tile_size": tile_size, "overlap": overlap, "blend": blend, "batch_size": batch_size},
            vectorize=vectorize, min_area=min_area, simplify=simplify, fill_holes=fill_holes,
            geojson_crs=geojson_crs, write_geojson=write_geojson, polygons=polygons, areas=areas, staging=staging,
            timings=timings, names=folder.names)
        timings["total"] = time.perf_counter() - t0
        report["timings"] = {k: round(v, 3) for k, v in timings.items()}
        _write_json(staging / SERIES_OUTPUT_NAMES["report"], report)

        # -- move into place: folders and files, the project next, report.json last ---------------------------------
        paths = folder.place(pairs, series.source_names, qgis_project=qgis_project, overwrite=overwrite)
        folder.failed = False
        tmp = folder.tmp_holder if xr_tmp is None else (folder.tmp_holder, xr_tmp)
        return SeriesResult(output_dir=folder.out, paths=paths, report=report, pairs=folder.moved(pairs),
                            labels=series.labels, dates=list(stack.dates), crs=stack.crs, transform=stack.transform,
                            _polygons=polygons, _tmp=tmp)
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        error = folder.failure(exc)
        if error is exc:
            raise
        raise error from exc
    finally:
        folder.release()  # the staging folder, then the lock
        stack.close()
        if bar is not None:
            bar.close()
        if folder.failed and not folder.busy:
            folder.remove_created()
            if xr_tmp is not None:
                xr_tmp.cleanup()


# ---------------------------------------------------------------------------------------------------------------
# the stages, in the order detect_series runs them
# ---------------------------------------------------------------------------------------------------------------
def _checked_arguments(rasters: Sequence[Any], model: Any, *, mode: str, method: str, tta: str,
                       geojson_crs: str | None, vectorize: bool, overlap: int, blend: str, tile_size: int,
                       device: str, threshold: float | None, threads: int | None, indexes: Any, resume: bool,
                       progress: Any, batch_size: int | None = None) -> tuple[str, str | None]:
    """The checks made before anything is read, in this order (an :class:`InputError` naming the option); returns
    the canonical ``tta`` and ``geojson_crs``."""
    from changedet.api import METHODS, _check_options, _checked_tta
    from changedet.export.vector import geojson_crs_option

    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    tta = _checked_tta(tta, method)
    geojson_crs = geojson_crs_option(geojson_crs)
    _check_options(overlap=overlap, blend=blend, geojson_crs=geojson_crs if vectorize else None, tile_size=tile_size,
                   device=device if method == "model" else None, threshold=threshold, threads=threads,
                   indexes=indexes, n_dates=len(rasters), batch_size=batch_size)
    if resume:
        raise InputError("--resume is not supported with more than two dates; rerun the series (with --overwrite)")
    if method != "model" and model is not None:
        raise InputError(f"--model {model} is only used with --method model, not {method}")
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise InputError(f"progress must be True, False, None or a callable(tiles_done, tiles_total, pixels_done), "
                         f"not {type(progress).__name__}")
    return tta, geojson_crs


def _progress_bar(
        progress: Callable[[int, int, int], None] | bool | None) -> tuple[Any, Callable[[int, int, int], None] | None]:
    """``(bar, callback)``: for ``progress=True`` the tqdm bar of ``changedet detect`` (``detect(progress=True)``),
    which the run closes, as the callback; None for False; a callback (or None) as given."""
    if not isinstance(progress, bool):
        return None, progress
    # True: the tqdm bar of `changedet detect` (detect(progress=True))
    from changedet.inference import TileProgress

    bar = TileProgress(enabled=True) if progress else None
    return bar, bar


def _xarray_written(rasters: list[Any]) -> tuple[list[Any], tempfile.TemporaryDirectory[str] | None]:
    """``rasters`` with every ``xarray.DataArray`` written to a GeoTIFF in a temporary folder (also returned, None
    without one), which lives as long as the result."""
    from changedet._xarray import is_xarray, write_dataarrays
    from changedet.api import _XARRAY_TMP_PREFIX

    xr_tmp = None  # the GeoTIFFs written from xarray inputs, kept as long as the result
    if any(is_xarray(r) for r in rasters):
        xr_tmp = tempfile.TemporaryDirectory(prefix=_XARRAY_TMP_PREFIX)
        rasters = write_dataarrays(rasters, xr_tmp.name, [f"input_{k + 1}" for k in range(len(rasters))])
    return rasters, xr_tmp


@dataclass
class _SeriesDates:
    """The dates of a series in the order they are compared, and the names and pairs that follow from them."""

    sources: list[Any]
    infos: list[Any]
    indexes: Any  # the bands asked for; one list per date, in date order, where ``per_date``
    per_date: bool
    dates: list[str]  # the date (or the file's stem): the tags' and legend's
    labels: list[str]  # unique: folder names and pair labels; a date given twice is numbered -1, -2 ...
    pairs: list[tuple[int, int]]  # (before, after) date indexes of each pair
    dirs: list[str]  # each pair's folder
    source_names: list[str]

    @classmethod
    def of(cls, rasters: Sequence[Any], sources: list[Any], infos: list[Any], indexes: Any,
           mode: str) -> _SeriesDates:
        """The dates of ``sources`` and ``infos`` (:func:`order_by_date` of ``rasters``) compared in ``mode``."""
        per_date = per_date_lists(indexes)
        if per_date:  # one list per raster as given: each follows its raster into date order
            given = _given_positions(rasters, sources)
            indexes = [list(indexes[k]) for k in given]
        dates = [_label(i, k) for k, i in enumerate(infos)]  # the date (or the file's stem): the tags' and legend's
        labels = list(dates)  # unique: folder names and pair labels; a date given twice is numbered -1, -2 ...
        for k, lab in enumerate(dates):
            if dates.count(lab) > 1:
                labels[k] = f"{lab}-{dates[: k + 1].count(lab)}"
        pairs_idx = series_pairs(len(sources), mode)
        dirs = [pair_dir_name(k + 1, labels[i], labels[j]) for k, (i, j) in enumerate(pairs_idx)]
        return cls(sources, infos, indexes, per_date, dates, labels, pairs_idx, dirs,
                   [_source_name(s) for s in sources])


def _resolve_model(method: str, model: Any, checkpoint: Any, series: _SeriesDates) -> tuple[Any, Any, Any]:
    """``(net, meta, select)``: the network and its metadata (None for an unsupervised method) and the bands each
    date reads (the first date decides the bands, as BEFORE does in detect)."""
    meta = net = None
    indexes, per_date, infos = series.indexes, series.per_date, series.infos
    select: Any = list(indexes) if indexes else None
    if method == "model":
        from changedet.api import _bands_per_date, _resolve_for_input

        # the first date decides the model from its own list; every date then reads its own (open_series)
        net, meta, first = _resolve_for_input(model, checkpoint, infos[0], select[0] if per_date else select,
                                              series.source_names[0])
        select = [first, *select[1:]] if per_date else first
        if not indexes:  # a later date whose band names or colours stand in another order reads its own
            select = _bands_per_date(infos, meta, select)
    return net, meta, select


def _plan_geojson(stack: SeriesStack, geojson_crs: str | None, source: str) -> tuple[bool, Any]:
    """``(write, geojson_crs)`` of ``changes.geojson`` on the grid of ``stack``
    (:func:`~changedet.export.vector.plan_geojson`)."""
    from changedet.export.vector import plan_geojson
    from changedet.geodesy import grid_bounds

    return plan_geojson(stack.crs, geojson_crs, bounds=grid_bounds(stack.transform, stack.width, stack.height),
                        source=source)


def _write_polygons(stack: SeriesStack, pairs: list[SeriesPair], staging: Path, thresholds: Sequence[float],
                    model_name: str, *, min_area: float, simplify: float, fill_holes: float, write_geojson: bool,
                    geojson_crs: str | None, timings: dict[str, float]) -> Any:
    """The polygons of the pixels that changed at least once, with the series attributes, written to
    ``changes.gpkg`` (and ``changes.geojson``); their time goes to ``timings["vectorize"]``."""
    from changedet.export import write_vectors
    from changedet.vectorize import vectorize as _vectorize

    t1 = time.perf_counter()
    common_thr = thresholds[0] if len(set(thresholds)) == 1 else None
    polygons = _vectorize(staging / SERIES_OUTPUT_NAMES["change_count"], min_area=min_area,
                          simplify=simplify, fill_holes=fill_holes, before_date=stack.dates[0],
                          after_date=stack.dates[-1], model=model_name, threshold=common_thr)
    polygons = _polygon_attributes(polygons, staging, pairs)
    write_vectors(polygons, staging / SERIES_OUTPUT_NAMES["gpkg"],
                  staging / SERIES_OUTPUT_NAMES["geojson"] if write_geojson else None,
                  geojson_crs=geojson_crs, overwrite=True)
    timings["vectorize"] = time.perf_counter() - t1
    return polygons
