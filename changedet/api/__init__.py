"""``detect()``: the one entry point that the CLI and notebooks share.

``changedet detect BEFORE AFTER -o OUT`` calls :func:`detect` with the same keyword names, so the command line and
Python cannot drift apart. A run validates everything first (outputs, model, bands, pair), streams the prediction
(:mod:`changedet.inference`), vectorises the change mask (:mod:`changedet.vectorize`), writes the report, the
quick-look figure and the QGIS styles/project, and moves every output into place only when all of them are
complete: a failed or interrupted run leaves no output file behind.

The pieces live in submodules and are re-exported here: :mod:`changedet.api.options` (option checks, GDAL and torch
threads), :mod:`changedet.api.selection` (the model and the bands of each date), :mod:`changedet.api.outputs` (output
names, folder check, report pieces, styles, project) and :mod:`changedet.api.pipeline` (the run once checked).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

# re-exported (noqa: F401): the names that the CLI, changedet.series, changedet.distributed, tests and scripts import
# from here, as before the split into submodules
from changedet.api.options import (  # noqa: F401
    METHODS,
    _check_options,
    _checked_tta,
    _ignored_options,
    gdal_cache_bytes,
    gdal_read_threads,
    torch_threads,
)
from changedet.api.outputs import (  # noqa: F401
    _SIDE_CARS,
    _XARRAY_TMP_PREFIX,
    OUTPUT_NAMES,
    _abspath,
    _check_outputs,
    _in_memory,
    _remove_outputs_not_written,
    _write_json,
    _write_project,
)
from changedet.api.pipeline import _detect_checked, _sample_for_fit  # noqa: F401
from changedet.api.selection import (  # noqa: F401
    RANGE_STD_FACTOR,
    RANGE_Z_LIMIT,
    _bands_per_date,
    _resolve_for_input,
    default_model_for,
)
from changedet.errors import InputError, OutputError, OutputExistsError, OutputFolderBusyError
from changedet.io.bands import (  # noqa: F401 - band_colours and identified_bands are part of this module's API
    _bands_by_colour,
    _bands_by_s2_order,
    band_colours,
    identified_bands,
)
from changedet.io.folders import missing_folders, output_folder_lock, remove_empty_folders
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

if TYPE_CHECKING:  # pragma: no cover
    import folium
    import geopandas as gpd
    import xarray
    from affine import Affine
    from matplotlib.figure import Figure
    from rasterio.crs import CRS
    from rasterio.io import DatasetReader

    #: What ``detect`` accepts for BEFORE and AFTER.
    RasterInput: TypeAlias = str | os.PathLike[str] | DatasetReader | xarray.DataArray

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_NAMES", "ChangeResult", "detect"]

_IN_MEMORY_LIMIT = 64_000_000  # pixels: larger results stay on disk (paths only)


@dataclass
class ChangeResult:
    """The result of :func:`detect`: the output files, the report, and ways to look at them.

    Attributes
    ----------
    output_dir : pathlib.Path
        Folder holding the outputs (a temporary folder when ``detect`` was called without ``output_dir``; it lives
        as long as this object: use :meth:`save` to keep the files).
    paths : dict of str to pathlib.Path
        Output name -> path (``probability``, ``change``, ``gpkg``, ``geojson``, ``report``, ``quicklook``,
        ``project`` when written): the rasters are Cloud-Optimised GeoTIFFs, so a scene too large for memory is
        read window by window with rasterio from these paths.
    report : dict
        The content of ``report.json``.
    crs : rasterio.crs.CRS or None
        CRS of the rasters and polygons (None for inputs in pixel coordinates).
    transform : affine.Affine
        Transform of the rasters: the BEFORE grid clipped to the common extent.
    before, after
        The inputs as given (paths or datasets; an xarray input is the temporary GeoTIFF written from it), read
        again by :meth:`plot` and :meth:`explore`.

    Examples
    --------
    >>> import tempfile
    >>> from changedet.testing import make_pair, paint_change
    >>> before, after = make_pair(tempfile.mkdtemp(), "aligned", size=64)
    >>> truth = paint_change(after, (10, 20, 16, 24))
    >>> result = detect(before, after, method="cva", min_area=500, quicklook=False)
    >>> result  # doctest: +ELLIPSIS
    ChangeResult(1 polygon, ... % changed, 0.03... km2 changed of 0.4096 km2 compared; outputs in ...)
    >>> result.mask.shape, result.probability.dtype.name, result.crs.to_epsg()
    ((64, 64), 'float32', 32631)
    >>> round(float(result.polygons.area_m2.sum()), -3)  # the painted 16 x 24 pixels of 10 m
    38000.0
    """

    output_dir: Path
    paths: dict[str, Path]
    report: dict[str, Any]
    crs: CRS | None
    transform: Affine
    before: Any = None
    after: Any = None
    _polygons: Any = field(default=None, repr=False)
    _tmp: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, output_dir: str | os.PathLike[str]) -> ChangeResult:
        """The result of an earlier run (``changedet detect ... -o OUTDIR`` or ``detect(output_dir=...)``).

        BEFORE and AFTER are found again through the input paths in ``report.json`` (for :meth:`plot`).

        Raises
        ------
        InputError
            ``output_dir`` has no ``report.json``, ``probability.tif`` or ``change.tif``.
        """
        import rasterio

        out = Path(output_dir)
        report_path, prob_path = out / OUTPUT_NAMES["report"], out / OUTPUT_NAMES["probability"]
        missing = [p.name for p in (report_path, prob_path, out / OUTPUT_NAMES["change"]) if not p.is_file()]
        if missing:
            raise InputError(
                f"{out}: {', '.join(missing)} not found; give the output folder of a finished `changedet detect` run"
            )
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{report_path}: not a readable report ({exc}); run detect again") from exc
        with rasterio.open(prob_path) as ds:
            crs, transform = ds.crs, ds.transform
        paths = {k: out / v for k, v in OUTPUT_NAMES.items() if (out / v).exists()}
        inputs = report.get("inputs") or {}
        sources = []
        for which in ("before", "after"):
            info = inputs.get(which) or {}
            found = [Path(p) for p in (info.get("path"), info.get("source")) if p and Path(p).is_file()]
            sources.append(found[0] if found else None)
        return cls(output_dir=out, paths=paths, report=report, crs=crs, transform=transform, before=sources[0],
                   after=sources[1])

    # -- data access --------------------------------------------------------------------------------------------
    def _read(self, key: str) -> np.ndarray:
        import rasterio

        with rasterio.open(self.paths[key]) as ds:
            if ds.width * ds.height > _IN_MEMORY_LIMIT:
                raise InputError(
                    f"{self.paths[key]}: {ds.width} x {ds.height} pixels is too large to load into memory; "
                    "read it window by window with rasterio instead (result.paths holds the file names)"
                )
            return ds.read(1)

    @property
    def probability(self) -> np.ndarray:
        """Change probability (row, col) float32 in 0..1, -1 where either date has no data.

        Read from ``probability.tif`` on each access; a scene larger than 64 Mpx raises
        :class:`~changedet.errors.InputError`: read ``paths["probability"]`` window by window instead.
        """
        return self._read("probability")

    @property
    def mask(self) -> np.ndarray:
        """Change mask (row, col) uint8: 1 changed, 0 unchanged, 255 no data (from ``change.tif``)."""
        return self._read("change")

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the rasters in :attr:`crs`."""
        from rasterio.transform import array_bounds

        grid = self.report.get("grid") or {}
        west, south, east, north = array_bounds(int(grid["height"]), int(grid["width"]), self.transform)
        # pixel coordinates (no CRS, identity transform) grow downwards: keep left <= right and bottom <= top
        return (float(min(west, east)), float(min(south, north)), float(max(west, east)), float(max(south, north)))

    @property
    def polygons(self) -> gpd.GeoDataFrame | None:
        """The change polygons as a GeoDataFrame in the raster CRS (from ``changes.gpkg``; None when detect ran
        with ``vectorize=False``)."""
        if self._polygons is None:
            import geopandas as gpd

            self._polygons = gpd.read_file(self.paths["gpkg"], layer="changes") if "gpkg" in self.paths else None
        return self._polygons

    def to_geodataframe(self) -> gpd.GeoDataFrame | None:
        """Same as :attr:`polygons`."""
        return self.polygons

    @property
    def changed_area_m2(self) -> float | None:
        """Area of the changed pixels in square metres (None without a CRS)."""
        value = (self.report.get("summary") or {}).get("changed_area_m2")
        return None if value is None else float(value)

    @property
    def changed_percent(self) -> float:
        """Changed pixels as a percentage of the pixels compared (valid in both dates)."""
        return float((self.report.get("summary") or {}).get("changed_percent") or 0.0)

    @property
    def changed_fraction(self) -> float:
        """Changed pixels as a fraction (0..1) of the pixels compared."""
        summary = self.report.get("summary") or {}
        valid, changed = summary.get("valid_pixels"), summary.get("changed_pixels")
        if valid and changed is not None:
            return float(changed) / float(valid)
        return self.changed_percent / 100.0

    # -- outputs ------------------------------------------------------------------------------------------------
    def save(self, output_dir: str | os.PathLike[str], *, overwrite: bool = False) -> dict[str, Path]:
        """Copy every output (rasters, vectors, report, quick-look, QGIS styles and project) into ``output_dir``.

        The folder is created if needed; each file is copied under a temporary name and renamed when complete.
        With ``overwrite``, outputs of an earlier run in ``output_dir`` that this result lacks (polygons, a
        quick-look, a project) are removed, so the folder holds one result. ``project.qgs`` is written again for
        the new folder (its layer paths are relative to it).

        Returns
        -------
        dict of str to pathlib.Path
            Output name -> new path, as :attr:`paths`.

        Raises
        ------
        OutputExistsError
            A file of the same name exists in ``output_dir`` and ``overwrite`` is False (nothing is copied).
        """
        dest = Path(output_dir)
        if dest.exists() and dest.resolve() == self.output_dir.resolve():
            return dict(self.paths)
        if dest.exists() and not dest.is_dir():
            raise OutputError(f"{dest}: exists and is not a folder; give a folder to save the outputs into")
        names = [p.name for p in self.paths.values()] + [n for n in _SIDE_CARS if (self.output_dir / n).exists()]
        clash = [n for n in names if (dest / n).exists()]
        if clash and not overwrite:
            raise OutputExistsError(f"{dest}: {', '.join(clash)} exist(s); pass overwrite=True to replace them")
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name == OUTPUT_NAMES["project"]:
                continue  # written again below, with paths relative to dest
            tmp = dest / f".{name}.{os.getpid()}.tmp"
            try:
                shutil.copy2(self.output_dir / name, tmp)
                os.replace(tmp, dest / name)
            finally:
                tmp.unlink(missing_ok=True)
        if "project" in self.paths:
            thr = self.report.get("threshold")
            sources = tuple(str(s) if isinstance(s, (str, os.PathLike)) else "" for s in (self.before, self.after))
            _write_project(dest, float(thr) if thr is not None else 0.5, sources)  # type: ignore[arg-type]
        if overwrite:
            _remove_outputs_not_written(dest, names)
        return {key: dest / path.name for key, path in self.paths.items()}

    def plot(self, **kwargs: Any) -> Figure:
        """A matplotlib figure: BEFORE, AFTER, probability and the polygons over AFTER, in map coordinates with a
        scale bar (keywords: see :func:`changedet.plotting.plot_result`). ``quicklook.png`` is this figure."""
        from changedet.plotting import plot_result

        return plot_result(self, **kwargs)

    def explore(self, **kwargs: Any) -> folium.Map:
        """An interactive folium map: AFTER and the change mask as overlays, the polygons on top (keywords: see
        :func:`changedet.plotting.explore_result`; needs ``folium``)."""
        from changedet.plotting import explore_result

        return explore_result(self, **kwargs)

    def __repr__(self) -> str:
        s = self.report.get("summary") or {}

        def km2(v: Any) -> str:
            return f"{v / 1e6:.4g} km2" if isinstance(v, (int, float)) else "? m2"

        if s.get("changed_area_m2") is not None:
            area = f"{km2(s.get('changed_area_m2'))} changed of {km2(s.get('valid_area_m2'))} compared"
        else:
            area = f"{s.get('changed_pixels')} of {s.get('valid_pixels')} pixels changed"
        n = s.get("n_polygons")
        polygons = "not vectorised" if n is None else f"{n} polygon{'' if n == 1 else 's'}"
        return f"ChangeResult({polygons}, {self.changed_percent:.3g} % changed, {area}; outputs in {self.output_dir})"


def detect(
    before: RasterInput,
    after: RasterInput,
    model: str | os.PathLike[str] | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
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
    indexes: Sequence[int] | tuple[Sequence[int], Sequence[int]] | None = None,
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
) -> ChangeResult:
    """Detect change between a BEFORE and an AFTER raster.

    Parameters
    ----------
    before, after
        Paths (any GDAL raster) or open rasterio datasets of the two dates, or ``xarray.DataArray`` objects of
        (band, y, x) with a CRS (rioxarray's ``.rio`` accessor; written to temporary GeoTIFFs that live as long as
        the result, band coordinate values become band names, a ``time`` coordinate the date). AFTER is aligned
        onto the BEFORE grid, clipped to the common extent (different CRS, resolution and extent work, with a
        warning).
    model
        A bundled checkpoint name (``changedet models`` lists them), a checkpoint path (``.safetensors`` with its
        ``.json``), or an architecture name together with ``checkpoint``. None picks the bundled default for the
        input's band count and pixel size.
    output_dir
        Folder for the outputs (``probability.tif``, ``change.tif``, ``changes.gpkg``, ``changes.geojson``,
        ``report.json``, ``quicklook.png``, ``project.qgs``). None writes them to a temporary folder owned by the
        returned result.
    method
        ``"model"`` (the supervised network, default), or an unsupervised baseline ``"cva"``, ``"irmad"``,
        ``"dsfa"`` (see :mod:`changedet.unsupervised`), with the same tiling, outputs and report.
    threshold
        Probability threshold of the change mask; default: the checkpoint's calibrated threshold.
    tile_size, overlap, blend, batch_size
        Tiling (see :class:`changedet.tiling.TileGrid`).
    threads
        torch intra-op threads (default: torch's choice).
    precision
        ``"float32"`` or ``"bf16"`` (whole model in bfloat16).
    tta
        Test-time augmentation of the network (``"none"``, ``"flip"``, ``"d4"``, ``"swap"``, ``"flip+swap"``,
        ``"d4+swap"``; see :func:`changedet.inference.tta_transforms`): the probability is the mean over flipped,
        rotated and/or date-swapped views of each tile, at one forward pass per view. The calibrated threshold was
        fitted without it (the README measures what it changes).
    indexes
        1-based band numbers of the inputs to feed the model (default: matched by band name, else all bands), or
        ``([...], [...])`` for BEFORE and AFTER separately (CLI: ``--indexes 1,2,3:3,2,1``).
    coregister
        Estimate and correct a global sub-pixel translation of AFTER (phase correlation).
    match_histograms
        Match AFTER's histograms to BEFORE per band before prediction.
    min_area, simplify, fill_holes
        Vectorisation options in square metres / metres (also for geographic CRSs).
    vectorize
        Write ``changes.gpkg`` and ``changes.geojson`` (not the GeoJSON for inputs without a CRS, with a warning:
        its readers would take pixel coordinates for longitude/latitude; ``report["vectorize"]["geojson_written"]``).
    geojson_crs
        CRS of the GeoJSON (``"EPSG:4326"``, RFC 7946, by default; None or ``"input"`` keeps the raster CRS).
        Checked before the prediction: a raster CRS that cannot be transformed to WGS84 keeps its own CRS in the
        GeoJSON where a GeoJSON can name it (an authority code), else no ``changes.geojson`` is written (a local or
        engineering CRS; ``changes.gpkg`` keeps it), with a warning either way; one that cannot be transformed to
        another explicit ``geojson_crs`` is an :class:`InputError`.
    qgis_project
        Also write ``project.qgs`` with BEFORE, AFTER, probability, mask and polygons styled.
    quicklook
        Write ``quicklook.png`` (the figure of :meth:`ChangeResult.plot`).
    overwrite
        Replace existing outputs (otherwise :class:`~changedet.errors.OutputExistsError`).
    resume
        Continue an interrupted run in the same ``output_dir`` (same settings) from its journal.
    progress
        ``True`` for a tqdm bar on stderr (tiles, Mpx/s, time left: :class:`changedet.inference.TileProgress`), or a
        ``progress(tiles_done, tiles_total, pixels_done)`` callback; ``None``/``False``: none.

    Returns
    -------
    ChangeResult

    Raises
    ------
    InputError
        Unreadable or mismatched inputs (the message names the file and the fix), an unknown ``method``.
    CheckpointError
        The model's bands do not match the inputs.
    OutputExistsError
        Outputs exist in ``output_dir`` and neither ``overwrite`` nor ``resume`` is set.

    Examples
    --------
    A synthetic pair with a block of new content painted into AFTER (``changedet.testing``), detected with change
    vector analysis; with ``output_dir=None`` the outputs live in a temporary folder as long as the result:

    >>> import tempfile
    >>> from changedet.testing import make_pair, paint_change
    >>> before, after = make_pair(tempfile.mkdtemp(), "aligned", size=128)
    >>> truth = paint_change(after, (40, 60, 20, 30))  # rows 40..60, cols 60..90
    >>> result = detect(before, after, method="cva", min_area=500, quicklook=False)
    >>> result.polygons[["area_m2", "before_date", "after_date"]]
       area_m2 before_date  after_date
    0  60000.0  2019-05-01  2020-05-01
    >>> sorted(result.paths)
    ['change', 'geojson', 'gpkg', 'probability', 'report']

    With the bundled model for the inputs' bands (Sentinel-2 13-band stacks), keeping the outputs:

    >>> result = detect("before.tif", "after.tif", output_dir="out", min_area=200)  # doctest: +SKIP
    >>> result.plot()  # doctest: +SKIP
    """
    if isinstance(progress, bool):
        if progress:
            call = {k: v for k, v in locals().items() if k not in ("before", "after", "progress")}
            from changedet.inference import TileProgress

            bar = TileProgress(enabled=True)
            try:
                return detect(before, after, progress=bar, **call)
            finally:
                bar.close()
        progress = None
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    tta = _checked_tta(tta, method)
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be True, False, None or a callable(tiles_done, tiles_total, pixels_done), "
                         f"not {type(progress).__name__}")
    for which, src in (("BEFORE", before), ("AFTER", after)):
        if isinstance(src, np.ndarray):
            raise InputError(
                f"{which} is a numpy array, which carries no grid; pass a raster path, an open rasterio dataset or "
                "an xarray.DataArray with a CRS and transform (rioxarray), or write the array with "
                "changedet.io.write_cog(path, array, crs=..., transform=...)"
            )
    _ignored_options(method=method, vectorize=vectorize, precision=precision, device=device, min_area=min_area,
                     simplify=simplify, fill_holes=fill_holes, geojson_crs=geojson_crs)
    from changedet.export.vector import geojson_crs_option

    geojson_crs = geojson_crs_option(geojson_crs)
    _check_options(overlap=overlap, blend=blend, geojson_crs=geojson_crs if vectorize else None, tile_size=tile_size,
                   device=device if method == "model" else None, threshold=threshold, threads=threads,
                   indexes=indexes, batch_size=batch_size)
    tmp_holder = None
    if output_dir is None:
        tmp_holder = tempfile.TemporaryDirectory(prefix="changedet-")
        out = Path(tmp_holder.name)
    else:
        out = Path(output_dir)
    names = [OUTPUT_NAMES[k] for k in ("probability", "change", "report")]
    if vectorize:
        names += [OUTPUT_NAMES["gpkg"], OUTPUT_NAMES["geojson"]]
    if quicklook:
        names.append(OUTPUT_NAMES["quicklook"])
    if qgis_project:
        names.append(OUTPUT_NAMES["project"])
    created = missing_folders(out)  # the folders this run creates, deepest first
    _check_outputs(out, names, overwrite, resume)
    xr_tmp = None
    try:
        from changedet._xarray import is_xarray, write_dataarrays

        if is_xarray(before) or is_xarray(after):
            xr_tmp = tempfile.TemporaryDirectory(prefix=_XARRAY_TMP_PREFIX)
            before, after = write_dataarrays([before, after], xr_tmp.name, ["before", "after"])
        with output_folder_lock(out):
            _check_outputs(out, names, overwrite, resume)  # again: a run that held the folder may have finished
            result = _detect_checked(
                before, after, model, out, tmp_holder, names, method=method, checkpoint=checkpoint,
                threshold=threshold, tile_size=tile_size, overlap=overlap, blend=blend, batch_size=batch_size,
                threads=threads, precision=precision, tta=tta, device=device, indexes=indexes,
                coregister=coregister, match_histograms=match_histograms, min_area=min_area, simplify=simplify,
                fill_holes=fill_holes, vectorize=vectorize, geojson_crs=geojson_crs, qgis_project=qgis_project,
                quicklook=quicklook, resume=resume, progress=progress, t0=t0,
            )
        if xr_tmp is not None:  # the GeoTIFFs written from xarray inputs live as long as the result
            result._tmp = (result._tmp, xr_tmp)
        return result
    except BaseException as exc:
        if xr_tmp is not None:
            xr_tmp.cleanup()
        if tmp_holder is not None:  # the in-memory result's folder: nothing will hold it now
            tmp_holder.cleanup()
        if tmp_holder is None and not isinstance(exc, OutputFolderBusyError):  # (the folder is the other run's)
            # leave no empty output folder behind (a resume folder keeps it), nor its parents
            remove_empty_folders(created)
        raise
