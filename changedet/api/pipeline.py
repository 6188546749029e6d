"""The body of :func:`changedet.api.detect` once its options and output folder are checked: pick the model and the
bands, open the pair, predict (or fit and score an unsupervised method), vectorise, write the report, styles,
quick-look and project into a staging folder, and move every output into place when all are complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet._version import __version__
from changedet.api.options import gdal_cache_bytes, gdal_read_threads, torch_threads
from changedet.api.outputs import (
    OUTPUT_NAMES,
    _abspath,
    _in_memory,
    _info_dict,
    _iso,
    _pair_report,
    _relpath,
    _remove_outputs_not_written,
    _summary,
    _write_json,
    _write_project,
    _write_styles,
)
from changedet.api.selection import (
    _bands_per_date,
    _check_training_range,
    _checkpoint_file,
    _is_pair_form,
    _resolve_for_input,
    _source_name,
)
from changedet.errors import (
    ChangedetError,
    ChangedetWarning,
    InputError,
    NotGeoreferencedWarning,
    NothingToCompareWarning,
    OutputError,
    root_message,
)
from changedet.io.folders import remove_stale_staging

if TYPE_CHECKING:  # pragma: no cover
    from changedet.api import ChangeResult


def _detect_checked(before: Any, after: Any, model: Any, out: Path, tmp_holder: Any, names: list[str], *,
                    method: str, checkpoint: Any, threshold: float | None, tile_size: int, overlap: int, blend: str,
                    batch_size: int, threads: int | None, precision: str, tta: str, device: str, indexes: Any,
                    coregister: bool, match_histograms: bool, min_area: float, simplify: float, fill_holes: float,
                    vectorize: bool, geojson_crs: str | None, qgis_project: bool, quicklook: bool, resume: bool,
                    progress: Callable[[int, int, int], None] | None, t0: float) -> ChangeResult:
    """:func:`detect` once the output folder is known to be usable."""
    from changedet.inference import ScorerPredictor, TorchPredictor, predict_pair
    from changedet.io.alignment import open_pair
    from changedet.io.raster import raster_info

    with warnings.catch_warnings():  # open_pair below reports a raster in pixel coordinates, once
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        before_info = raster_info(before)
    before_name, after_name = _source_name(before), _source_name(after)

    # -- model or method ---------------------------------------------------------------------------------------
    meta = None
    net = None
    select: Any = ([list(i) for i in indexes] if _is_pair_form(indexes) else list(indexes)) if indexes else None
    if method == "model":
        net, meta, select = _resolve_for_input(model, checkpoint, before_info, select, before_name)
        if not indexes:  # AFTER's bands by its own names or colours, which may stand in another order than BEFORE's
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                after_info = raster_info(after)
            per_date = _bands_per_date([before_info, after_info], meta, select)
            select = tuple(per_date) if per_date is not select else select
    elif model is not None:
        raise InputError(f"--model {model} is only used with --method model, not {method}")

    import rasterio

    # GDAL's block cache defaults to 5 % of the RAM and keeps every decoded input block (the decimated read for
    # the scene statistics touches them all): bound it so that memory stays flat whatever the scene size; decode
    # the blocks of one read in parallel (gdal_read_threads)
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(), GDAL_NUM_THREADS=str(gdal_read_threads())):
        pair = open_pair(before, after, indexes=select, coregister=coregister, match_histograms=match_histograms,
                         allow_empty=True)
        try:
            if qgis_project and pair.crs is None:  # refused before anything is written, not after the whole run
                raise InputError(
                    f"{before_name} and {after_name} are not georeferenced (no CRS): a QGIS project needs "
                    "georeferenced layers; drop --qgis-project (qgis_project=True), or georeference both"
                )
            if vectorize:  # the GeoJSON's CRS (or none without a CRS), decided before the prediction runs
                from changedet.export.vector import plan_geojson
                from changedet.geodesy import grid_bounds

                write_geojson, geojson_crs = plan_geojson(
                    pair.crs, geojson_crs, bounds=grid_bounds(pair.transform, pair.width, pair.height),
                    source=before_name)
                if not write_geojson:
                    names.remove(OUTPUT_NAMES["geojson"])
            with torch_threads(threads):
                return _run(
                    pair, net, meta, method, out, tmp_holder, names,
                    threshold=threshold, tile_size=tile_size, overlap=overlap, blend=blend, batch_size=batch_size,
                    threads=threads, precision=precision, tta=tta, device=device, min_area=min_area,
                    simplify=simplify, fill_holes=fill_holes, vectorize=vectorize, geojson_crs=geojson_crs,
                    qgis_project=qgis_project, quicklook=quicklook, resume=resume, progress=progress, t0=t0,
                    sources=(before, after), source_names=(before_name, after_name),
                    checkpoint=_checkpoint_file(model, checkpoint),
                    predictor_classes=(TorchPredictor, ScorerPredictor), predict_pair=predict_pair,
                )
        finally:
            pair.close()


def _run(pair: Any, net: Any, meta: Any, method: str, out: Path, tmp_holder: Any, names: list[str], *,
         threshold: float | None, tile_size: int, overlap: int, blend: str, batch_size: int, threads: int | None,
         precision: str, tta: str, device: str, min_area: float, simplify: float, fill_holes: float, vectorize: bool,
         geojson_crs: str | None, qgis_project: bool, quicklook: bool, resume: bool,
         progress: Callable[[int, int, int], None] | None, t0: float, sources: tuple[Any, Any],
         source_names: tuple[str, str], checkpoint: Any, predictor_classes: tuple[Any, Any],
         predict_pair: Callable[..., Any]) -> ChangeResult:
    from changedet.api import ChangeResult  # (changedet.api imports this module)

    TorchPredictor, ScorerPredictor = predictor_classes
    timings: dict[str, float] = {"open_and_check": time.perf_counter() - t0}
    model_report: dict[str, Any]
    if method == "model":
        from changedet.io.radiometry import pair_band_stats

        norm = meta.normalization or {"mode": "scene"}
        scene_b, scene_a = pair_band_stats(pair)
        if norm.get("mode") == "fixed":
            mean_b, std_b = norm["mean"], norm["std"]
            mean_a, std_a = norm["mean"], norm["std"]
            out_of_range = _check_training_range(pair, meta, (scene_b, scene_a), source_names, checkpoint)
        else:
            (mean_b, std_b), (mean_a, std_a) = scene_b, scene_a
            out_of_range = {}
        predictor = TorchPredictor(net, mean_b, std_b, mean_a, std_a, device=device, precision=precision,
                                   name=meta.name or meta.architecture, tta=tta)
        thr = float(meta.threshold if threshold is None else threshold)
        model_report = {
            "method": "model", "name": meta.name or None, "architecture": meta.architecture,
            "checkpoint": str(checkpoint) if checkpoint else (meta.name or None),
            "weights_sha256": meta.weights_sha256 or None, "band_names": meta.band_names,
            "normalization": norm.get("mode"), "calibrated_threshold": meta.threshold,
            "metrics": meta.metrics, "precision": precision, "tta": predictor.tta, "device": device,
        }
        model_report["scene_stats"] = {
            "before_mean": [round(float(x), 4) for x in scene_b[0]],
            "before_std": [round(float(x), 4) for x in scene_b[1]],
            "after_mean": [round(float(x), 4) for x in scene_a[0]],
            "after_std": [round(float(x), 4) for x in scene_a[1]],
        }
        if out_of_range:
            model_report["out_of_training_range"] = out_of_range
    else:
        from changedet.unsupervised import create_scorer

        t_fit = time.perf_counter()
        scorer = create_scorer(method)
        b, a, v = _sample_for_fit(pair)
        fitted = bool(v.any())  # an all-nodata pair has nothing to fit on (and no tile to predict)
        if fitted:
            scorer.fit(b, a, v)
        timings["fit"] = time.perf_counter() - t_fit
        predictor = ScorerPredictor(scorer)
        own = float(getattr(scorer, "threshold", 0.5) or 0.5) if fitted else 0.5
        thr = float(own if threshold is None else threshold)
        model_report = {"method": method, "name": method, "fitted": scorer.to_dict() if fitted else None,
                        "calibrated_threshold": own}

    from rasterio._err import (
        CPLE_BaseError,  # GDAL's own errors (e.g. reopening a truncated file) are not RasterioError
    )
    from rasterio.errors import RasterioError

    partial_dir = out / ".changedet-partial"
    remove_stale_staging(out)
    staging = out / f".changedet-staging-{os.getpid()}"
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the staging folder ({exc}); choose a writable output folder") from exc
    quiet = warnings.catch_warnings()
    quiet.__enter__()
    if pair.crs is None:
        # the user was told once that the inputs have no georeferencing: not again for each output we re-open
        from changedet.errors import NotGeoreferencedWarning

        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
        warnings.filterwarnings("ignore", module="rasterio")
        warnings.filterwarnings("ignore", message=".*(crs|CRS).*not provided")
        warnings.filterwarnings("ignore", message=".*Affine.identity")
    try:
        before_date, after_date = (getattr(pair, "dates", None) or (None, None))
        tags = {"CHANGEDET_VERSION": __version__, "MODEL": str(model_report.get("name")),
                "THRESHOLD": f"{thr:.6g}"}
        if before_date:
            tags["BEFORE_DATE"] = _iso(before_date) or ""
        if after_date:
            tags["AFTER_DATE"] = _iso(after_date) or ""
        stats = predict_pair(
            pair, predictor, out_dir=staging, threshold=thr, tile_size=tile_size, overlap=overlap, blend=blend,
            batch_size=batch_size, progress=progress, resume=resume, partial_dir=partial_dir, tags=tags,
            keep_partial=True,  # removed below once every output is in place: a Ctrl-C before then resumes
        )
        timings["predict"] = stats.seconds_total
        if stats.overlap < overlap and stats.tiles_total > 1:
            warnings.warn(f"--overlap {overlap} is more than tiles of {stats.tile_size} px can hold: the tiles overlap "
                          f"by {stats.overlap} px (the report's tiling.overlap_used); raise --tile-size for more",
                          ChangedetWarning, stacklevel=3)
        already_warned = getattr(getattr(pair, "report", None), "valid_fraction", None) == 0.0
        if stats.valid_pixels == 0 and not already_warned:
            warnings.warn(
                f"{source_names[0]} and {source_names[1]}: no pixel has valid data in both dates (nodata, NaN or "
                "outside the other's footprint): nothing to compare; the outputs are empty",
                NothingToCompareWarning,
                stacklevel=3,
            )
        px_area = float(pair.pixel_area_m2()) if getattr(pair, "georeferenced", True) else None
        polygons = None
        if vectorize:
            from changedet.export import write_vectors
            from changedet.vectorize import vectorize as _vectorize

            t1 = time.perf_counter()
            polygons = _vectorize(
                staging / OUTPUT_NAMES["change"], staging / OUTPUT_NAMES["probability"], threshold=thr,
                min_area=min_area, simplify=simplify, fill_holes=fill_holes, before_date=before_date,
                after_date=after_date, model=str(model_report.get("name")),
            )
            write_vectors(polygons, staging / OUTPUT_NAMES["gpkg"],
                          staging / OUTPUT_NAMES["geojson"] if OUTPUT_NAMES["geojson"] in names else None,
                          geojson_crs=geojson_crs, overwrite=True)
            timings["vectorize"] = time.perf_counter() - t1

        from changedet.geodesy import area_summary

        report = {
            "changedet_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "inputs": {
                which: {**_info_dict(pair, which), "path": _abspath(name),
                        "source": "xarray.DataArray (in memory)" if _in_memory(name) else name,
                        "path_from_output": _relpath(name, out)}
                for which, name in zip(("before", "after"), source_names, strict=True)
            },
            "grid": {
                "crs": pair.crs.to_string() if pair.crs else None,
                "transform": list(pair.transform)[:6],
                "width": pair.width, "height": pair.height, "bands": list(getattr(pair, "band_names", []) or []),
            },
            "alignment": _pair_report(pair),
            "model": model_report,
            "threshold": thr,
            "tiling": {"tile_size": tile_size, "overlap": overlap, "blend": blend, "batch_size": batch_size,
                       # what the engine used: the tile edge shrinks to cover the scene evenly (engine_grid)
                       "tile_size_used": stats.tile_size, "overlap_used": stats.overlap},
            "vectorize": {"min_area_m2": min_area, "simplify_m": simplify, "fill_holes_m2": fill_holes,
                          # the CRS of changes.geojson (None: the raster's); none is written without a CRS
                          "geojson_crs": geojson_crs,
                          "geojson_written": OUTPUT_NAMES["geojson"] in names} if vectorize else None,
            "summary": _summary(stats, polygons, area_summary(
                staging / OUTPUT_NAMES["change"], pair.crs, pair.transform, pair.width, pair.height,
                int(stats.valid_pixels), int(stats.changed_pixels), px_area)),
            # the rasters' names only, as the series report: the engine wrote them into the staging folder
            "stats": {**stats.to_dict(), "paths": sorted(stats.paths)},
            "timings": timings,
            "outputs": sorted(names),
        }
        # absolute paths: the result (plot, save's project) still finds its files after the notebook's os.chdir
        inputs = [Path(src).absolute() if isinstance(src, (str, os.PathLike)) and Path(src).exists() else src
                  for src in sources]
        result = ChangeResult(output_dir=out, paths={}, report=report, crs=pair.crs, transform=pair.transform,
                              before=inputs[0], after=inputs[1], _polygons=polygons, _tmp=tmp_holder)
        staged = {k: staging / v for k, v in OUTPUT_NAMES.items() if (staging / v).exists()}
        result.paths = staged
        result.output_dir = staging
        if quicklook:
            t2 = time.perf_counter()
            from changedet.plotting import save_quicklook

            save_quicklook(result, staging / OUTPUT_NAMES["quicklook"])
            timings["quicklook"] = time.perf_counter() - t2
        _write_styles(staging, thr)
        timings["total"] = time.perf_counter() - t0
        report["timings"] = {k: round(v, 3) for k, v in timings.items()}
        _write_json(staging / OUTPUT_NAMES["report"], report)
        # every output is complete: move them into place, the project next, report.json last
        for item in sorted(staging.iterdir()):
            if item.name != OUTPUT_NAMES["report"]:
                os.replace(item, out / item.name)
        if qgis_project:
            _write_project(out, thr, source_names)
        _remove_outputs_not_written(out, names)
        os.replace(staging / OUTPUT_NAMES["report"], out / OUTPUT_NAMES["report"])
        shutil.rmtree(partial_dir, ignore_errors=True)  # the finished prediction, kept until now for --resume
        final: dict[str, Path] = {}
        for key, name in OUTPUT_NAMES.items():
            if (out / name).exists() and name in names:
                final[key] = out.absolute() / name
        result.paths = final
        result.output_dir = out.absolute()
        return result
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        from changedet.errors import RasterReadError

        if isinstance(exc, ChangedetError) and not (isinstance(exc, RasterReadError) and str(staging) in str(exc)):
            raise  # (an output this run wrote that cannot be read back, truncated by a full disk, is a write failure)
        # a write failure (disk full, permissions changed, file system gone): no output was moved into place
        resume_hint = (" Rerun the same command with --resume (resume=True) to continue from the finished blocks."
                       if partial_dir.is_dir() else "")
        raise OutputError(
            f"{out}: writing the outputs failed ({root_message(exc)}); no output was written. Check the free disk "
            f"space and write permission of the output folder.{resume_hint}"
        ) from exc
    finally:
        quiet.__exit__(None, None, None)
        shutil.rmtree(staging, ignore_errors=True)


def _sample_for_fit(pair: Any, max_pixels: int = 1_500_000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random windows of the pair (at most ``max_pixels``) for fitting an unsupervised method."""
    from rasterio.windows import Window

    size = 256
    if pair.height * pair.width <= max_pixels:
        return pair.read(Window(0, 0, pair.width, pair.height))
    rng = np.random.default_rng(seed)
    n = max(1, max_pixels // (size * size))
    parts = []
    for _ in range(n):
        r = int(rng.integers(0, max(1, pair.height - size)))
        c = int(rng.integers(0, max(1, pair.width - size)))
        parts.append(pair.read(Window(c, r, min(size, pair.width), min(size, pair.height))))
    return tuple(np.concatenate([p[i] for p in parts], axis=-1) for i in range(3))
