"""``detect()``: the one entry point that the CLI and notebooks share.

``changedet detect BEFORE AFTER -o OUT`` calls :func:`detect` with the same keyword names, so the command line and
Python cannot drift apart. A run validates everything first (outputs, model, bands, pair), streams the prediction
(:mod:`changedet.inference`), vectorises the change mask (:mod:`changedet.vectorize`), writes the report, the
quick-look figure and the QGIS styles/project, and moves every output into place only when all of them are
complete: a failed or interrupted run leaves no output file behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from changedet._version import __version__
from changedet.errors import (
    ChangedetError,
    ChangedetWarning,
    CheckpointError,
    InputError,
    NotGeoreferencedWarning,
    NothingToCompareWarning,
    OutputError,
    OutputExistsError,
    OutputFolderBusyError,
    root_message,
)
from changedet.io.bands import (  # noqa: F401 - band_colours and identified_bands are part of this module's API
    _bands_by_colour,
    _bands_by_s2_order,
    band_colours,
    identified_bands,
)
from changedet.io.folders import (
    missing_folders,
    output_folder_lock,
    remove_empty_folders,
    remove_stale_staging,
)
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

#: Files a detect run writes into its output folder.
OUTPUT_NAMES = {
    "probability": "probability.tif",
    "change": "change.tif",
    "gpkg": "changes.gpkg",
    "geojson": "changes.geojson",
    "report": "report.json",
    "quicklook": "quicklook.png",
    "project": "project.qgs",
}
_SIDE_CARS = ("probability.qml", "change.qml", "changes.qml")


def _env_count(name: str, default: int, what: str) -> int:
    """A whole number >= 1 from the environment variable ``name`` (``default`` when unset or empty); an
    :class:`InputError` naming the variable when it holds anything else."""
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{name}={env!r} is not a whole number >= 1; set it to {what} or unset it")
    return value


def gdal_cache_bytes() -> int:
    """GDAL's block cache during a detect run: ``CHANGEDET_GDAL_CACHE_MB`` (default 128) MiB, bounded so that memory
    stays flat whatever the scene size."""
    return _env_count("CHANGEDET_GDAL_CACHE_MB", 128, "a size in MiB such as 128") * 2**20


def gdal_read_threads() -> int:
    """Threads GDAL may use to decode the blocks of one read (``GDAL_NUM_THREADS`` during a detect run).

    The engine reads a tile between forward passes (see :func:`changedet.inference.auto_prefetch`), while torch's
    threads wait, so the decoding may use every core: a 512-pixel tile touches 4 blocks of 512, decoded in
    parallel. On this project's 2-core machine, two threads read the 81 tiles of a 4096 x 4096 x 13-band uint16
    DEFLATE pair 1.2-1.4x faster (4.5-5.9 s against 3.8-4.2 s over two runs). ``CHANGEDET_GDAL_THREADS``
    overrides it.
    """
    if os.environ.get("CHANGEDET_GDAL_THREADS", "").strip():
        return _env_count("CHANGEDET_GDAL_THREADS", 1, "a thread count such as 2")
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))
_IN_MEMORY_LIMIT = 64_000_000  # pixels: larger results stay on disk (paths only)
METHODS = ("model", "cva", "irmad", "dsfa")


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


# ---------------------------------------------------------------------------------------------------------------
def _source_name(src: Any) -> str:
    """The path of an input as given (a str or path-like), or an open dataset's ``name``."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)  # type: ignore[return-value]
    name = getattr(src, "name", None)
    return str(name if name is not None else src)


def _check_outputs(output_dir: Path, names: Sequence[str], overwrite: bool, resume: bool) -> None:
    try:
        output_dir.exists()
    except OSError as exc:  # a name longer than the file system allows (ENAMETOOLONG), say
        raise OutputError(f"{output_dir}: cannot write there ({exc.strerror or exc}); choose another output "
                          "folder") from None
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder; give a folder path with -o/--output-dir")
    existing = [n for n in names if (output_dir / n).exists()]
    if existing and resume and not overwrite and not (output_dir / ".changedet-partial" / "journal.json").is_file():
        raise OutputExistsError(
            f"{output_dir}: {', '.join(existing)} already exist(s) and there is nothing to resume there (no "
            "interrupted run's journal); pass --overwrite (overwrite=True) to replace them, or choose another folder"
        )
    if existing and not (overwrite or resume):
        raise OutputExistsError(
            f"{output_dir}: {', '.join(existing)} already exist(s); pass --overwrite (overwrite=True) to replace "
            "them, or choose another output folder"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".changedet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"{output_dir}: cannot write there ({exc.strerror or exc}); choose a writable output folder"
        ) from exc


def _is_pair_form(indexes: Any) -> bool:
    """Whether ``indexes`` is ``([BEFORE bands], [AFTER bands])`` rather than one list for both dates."""
    seq = list(indexes) if indexes else []
    return len(seq) == 2 and all(isinstance(s, Sequence) and not isinstance(s, str) for s in seq)


def _n_selected(indexes: Any) -> int:
    """Number of bands per date that ``indexes`` selects (one list, or a BEFORE/AFTER pair of lists)."""
    return len(next(iter(indexes))) if _is_pair_form(indexes) else len(indexes)


def _select_bands(info: Any, meta: Any, indexes: Any, source: str) -> Any:
    """1-based band indexes of the input that feed the model, matched by name where possible."""
    want = list(meta.band_names or [])
    n_model = meta.in_channels or len(want)
    if indexes:
        n_sel = _n_selected(indexes)
        if n_sel != n_model:
            raise CheckpointError(
                f"{source}: --indexes selects {n_sel} bands but the model {meta.name or meta.architecture} "
                f"expects {n_model} ({', '.join(want)}); select exactly {n_model} bands, or choose a model for "
                f"{n_sel} bands with --model (`changedet models` lists them, e.g. s2-13band for 13)"
            )
        if _is_pair_form(indexes):
            return [list(i) for i in indexes]
        chosen = [int(i) for i in indexes]
        _warn_named_mismatch(info, want, chosen, source)
        return chosen
    found = identified_bands(info, want)  # by name, colour (RGBA, RGB + NIR, ...) or Sentinel-2 band order
    if found is not None:
        return None if found == list(range(1, info.count + 1)) else found
    if info.count == n_model:
        return None
    raise CheckpointError(
        f"{source}: has {info.count} bands but the model {meta.name or meta.architecture} expects {n_model} "
        f"({', '.join(want) or 'unnamed'}); pass --indexes with {n_model} 1-based band numbers, or choose a model "
        "for this band count (`changedet models` lists them)"
    )


def _bands_per_date(infos: Sequence[Any], meta: Any, select: Any) -> Any:
    """The bands each date feeds the model when the user named none: the first date's selection (``select``, from
    :func:`_select_bands`), and for each later date its own where its names or colours identify the model's bands
    (a 3-band B02, B03, B04 file beside a 13-band stack), else the first date's positions.

    Returns ``select`` unchanged when every date reads the same bands, else one list of 1-based indexes per date.
    """
    want = list(meta.band_names or [])
    first = list(select) if select else list(range(1, infos[0].count + 1))
    per_date = [first] + [identified_bands(info, want) or first for info in infos[1:]]
    return select if all(p == first for p in per_date) else per_date


def _warn_named_mismatch(info: Any, want: list[str], chosen: list[int], source: str) -> None:
    """A warning when ``--indexes`` feeds a model bands whose names contradict the ones it was trained on (B02 into
    an input trained on B04, say): a band order given on purpose, or a slip; the run goes on either way."""
    from changedet.models.bundled import S2_BANDS

    names = [str(d).strip().upper() if d else "" for d in (info.descriptions or ())]
    picked = [names[i - 1] if 0 < i <= len(names) else "" for i in chosen]
    known = {b.upper() for b in S2_BANDS}
    if len(want) != len(picked) or not all(p in known for p in picked) or not all(w.upper() in known for w in want):
        return
    if picked != [w.upper() for w in want]:
        warnings.warn(
            f"{source}: --indexes {','.join(map(str, chosen))} feeds the model {', '.join(picked)}, but it was trained "
            f"on {', '.join(want)} in that order; leave --indexes out to pick them by name", ChangedetWarning,
            stacklevel=4,
        )


def _resolve_for_input(model: Any, checkpoint: Any, info: Any, select: Any, source: str) -> tuple[Any, Any, Any]:
    """Load the model for an input and pick its bands: ``(net, meta, indexes)``.

    Without ``model`` and ``checkpoint`` the default bundled model is chosen from the band count, pixel size, band
    names and colour interpretation of ``info`` (:func:`~changedet.models.bundled.default_model_name`); the
    checkpoint's bands are then matched by name, else by colour, else by count (:func:`_select_bands`).
    """
    from changedet.models.bundled import resolve_model

    pixel = _pixel_metres(info)
    if select:  # out-of-range bands first: `--indexes 20` is not "no bundled model takes 1 bands"
        from changedet.errors import PairMismatchError

        bad = [i for i in (select[0] if _is_pair_form(select) else select) if not 1 <= int(i) <= info.count]
        if bad:
            raise PairMismatchError(f"{source}: band index {bad} out of range; it has {info.count} band(s) and "
                                    f"indexes are 1-based (1..{info.count}).")
    n_in = _n_selected(select) if select else info.count
    peek = _peek_meta(model, checkpoint, n_in, pixel, None if select else info)
    if peek is not None:  # match the checkpoint's bands by name before loading it
        select = _select_bands(info, peek, select, source)
        n_in = _n_selected(select) if select else info.count
        if model is None and checkpoint is None and peek.name:
            model = peek.name  # the default chosen from the whole input, now applied to the selected bands
    net, meta = resolve_model(model, band_count=n_in, pixel_size=pixel, checkpoint=checkpoint)
    return net, meta, _select_bands(info, meta, select, source)


def _pixel_metres(info: Any) -> float | None:
    """The pixel width in metres, roughly (degrees taken at the equator): enough to pick a default model."""
    pixel = abs(info.transform.a) if info.georeferenced else None
    if pixel is not None and info.crs is not None and info.crs.is_geographic:
        pixel = pixel * 111_320.0
    return pixel


def default_model_for(before: Any, after: Any) -> dict[str, Any]:
    """The bundled model ``detect`` runs on a pair when no model is named, and the bands each date feeds it.

    What ``changedet check`` reports: ``{"name": "s2-rgb", "bands": {"before": ["B04", ...], "after": [...]}}``
    (1-based indexes under ``"indexes"``). Raises the :class:`~changedet.errors.CheckpointError` that ``detect``
    would raise when no bundled model takes the input (say, an unnamed 4-band raster).
    """
    from changedet.io.raster import raster_info
    from changedet.models.bundled import default_model_name, list_bundled

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pixel-size and georeferencing warnings are detect's (and check's) own
        infos = [raster_info(before), raster_info(after)]
        info = infos[0]
        name = default_model_name(info.count, _pixel_metres(info), band_names=info.descriptions,
                                  colors=band_colours(info))
        meta = {m.name: m for m in list_bundled()}[name]
        select = _select_bands(info, meta, None, _source_name(before))
    per_date = _bands_per_date(infos, meta, select)
    if per_date is select:  # both dates read the same bands
        per_date = [list(select) if select else list(range(1, info.count + 1))] * 2
    picked = {"before": list(per_date[0]), "after": list(per_date[1])}
    return {"name": name, "indexes": picked,
            "bands": {k: [str(infos[j].descriptions[i - 1] or f"B{i}") if infos[j].descriptions else f"B{i}"
                          for i in picked[k]] for j, k in enumerate(("before", "after"))}}


def _peek_meta(model: Any, checkpoint: Any, band_count: int, pixel: float | None, info: Any = None) -> Any:
    """The checkpoint metadata that ``resolve_model`` would load, without loading weights (None if unknown)."""
    from changedet.errors import ChangedetError
    from changedet.models.bundled import default_model_name, list_bundled
    from changedet.models.checkpoint import read_meta

    try:
        if checkpoint is not None:
            return read_meta(checkpoint)
        bundled = {m.name: m for m in list_bundled()}
        name = str(model) if model is not None else default_model_name(
            band_count, pixel, band_names=getattr(info, "descriptions", None),
            colors=band_colours(info) if info is not None else None)
        if name in bundled:
            return bundled[name]
        if Path(name).suffix in (".json", ".safetensors") or Path(name).with_suffix(".json").exists():
            return read_meta(name)
    except (ChangedetError, OSError):
        return None
    return None


#: A band is "far outside" the training statistics when its scene mean lies more than this many training standard
#: deviations from the training mean, or its spread differs from the training spread by more than this factor.
RANGE_Z_LIMIT = 4.0
RANGE_STD_FACTOR = 10.0


def _check_training_range(pair: Any, meta: Any, scene: tuple[Any, Any], source_names: tuple[str, str],
                          checkpoint: Any) -> dict[str, list[str]]:
    """Warn (:class:`~changedet.errors.InputRangeWarning`) when a date's band statistics are far from the
    checkpoint's fixed normalisation statistics (other units, scaling or bands); return the bands per date.

    Only checkpoints with ``normalization.mode == "fixed"`` record training statistics; a ``"scene"`` checkpoint
    z-scores each date with its own statistics, so the absolute range of the input does not matter to it.
    """
    from changedet.errors import InputRangeWarning

    if getattr(getattr(pair, "report", None), "valid_fraction", None) == 0.0:
        return {}
    t_mean = np.asarray(meta.normalization.get("mean") or [], np.float64)
    t_std = np.asarray(meta.normalization.get("std") or [], np.float64)
    if t_mean.size == 0 or t_std.size != t_mean.size:
        return {}
    names = list(meta.band_names or []) or list(getattr(pair, "band_names", []) or [])
    names += [f"band {i + 1}" for i in range(len(names), t_mean.size)]
    model = meta.name or (str(checkpoint) if checkpoint else meta.architecture)
    found: dict[str, list[str]] = {}
    for which, source, (mean, std) in zip(("before", "after"), source_names, scene, strict=True):
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.size != t_mean.size:
            continue
        safe = np.where(t_std > 0, t_std, 1.0)
        z = np.abs(mean - t_mean) / safe
        ratio = np.where(std > 0, std / safe, 1.0)
        bad = np.flatnonzero((z > RANGE_Z_LIMIT) | (ratio > RANGE_STD_FACTOR) | (ratio < 1.0 / RANGE_STD_FACTOR))
        if bad.size == 0:
            continue
        found[which] = [names[i] for i in bad]
        detail = ", ".join(
            f"{names[i]} mean {mean[i]:.4g} (trained on {t_mean[i]:.4g} +/- {t_std[i]:.4g})" for i in bad[:6]
        ) + (f", ... ({bad.size} bands)" if bad.size > 6 else "")
        warnings.warn(
            f"{source}: values far outside the statistics the model {model} was trained on: {detail}. The "
            "predictions may be meaningless: check the units and scaling (e.g. reflectance x 10000 vs 0..1, "
            "digital numbers vs reflectance) and the band order (--indexes), or use a model trained on such data "
            "(a scene-normalised model adapts to each scene's range).",
            InputRangeWarning,
            stacklevel=4,
        )
    return found


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


def _iso(d: Any) -> str | None:
    return d.isoformat() if isinstance(d, (_dt.date, _dt.datetime)) else (str(d) if d else None)


def _checked_tta(tta: str | None, method: str) -> str:
    """The canonical test-time augmentation mode; an :class:`InputError` for an unknown one or a non-network method."""
    from changedet.inference import parse_tta

    tta = parse_tta(tta)
    if tta != "none" and method != "model":
        raise InputError(f"--tta {tta} augments a network's predictions; --method {method} has none (drop --tta)")
    return tta


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Any:
    """torch's intra-op thread count set to ``threads`` for the block and restored afterwards (None: untouched).

    ``detect(threads=N)`` and ``detect_series(threads=N)`` run under it, so a notebook's later calls, and methods
    fitted with torch such as DSFA, see the thread count they were given rather than the last run's.
    """
    if not threads:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _ignored_options(*, method: str, vectorize: bool, precision: str, device: str, min_area: float,
                     simplify: float, fill_holes: float, geojson_crs: str | None) -> None:
    """A warning naming the options this run will not use (a network's precision or device with an unsupervised
    method, polygon options without polygons), instead of ignoring them without a word."""
    said = []
    if method != "model":
        net = [f"--precision {precision}"] * (precision != "float32") + [f"--device {device}"] * (device != "cpu")
        if net:
            said.append(f"{', '.join(net)}: not used, since --method {method} runs no network")
    if not vectorize:
        poly = [f"--{k.replace('_', '-')} {v:g}" for k, v in (("min_area", min_area), ("simplify", simplify),
                                                               ("fill_holes", fill_holes)) if v]
        poly += [f"--geojson-crs {geojson_crs}"] * (geojson_crs not in (None, "EPSG:4326"))
        if poly:
            said.append(f"{', '.join(poly)}: not used, since no polygons are made (--no-vectorize)")
    if said:
        warnings.warn("; ".join(said), ChangedetWarning, stacklevel=3)


def _check_options(*, overlap: int, blend: str, geojson_crs: str | None, device: str | None,
                   tile_size: int | None = None, threshold: float | None = None, threads: int | None = None,
                   indexes: Any = None, n_dates: int = 2) -> None:
    """Options that can be checked before anything is read or written (an :class:`InputError` naming the option);
    the tile size is checked against the scene and the model once both are known. ``indexes`` is one list of bands
    for every date or one list per date: ``n_dates`` lists (BEFORE, AFTER for a pair; one per raster of a series)."""
    import math
    import numbers

    from changedet.tiling import BLENDS

    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
        raise InputError(f"--threshold must be a probability between 0 and 1, got {threshold!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or threads < 1):
        raise InputError(f"--threads must be a whole number >= 1 (or None: torch's choice), got {threads!r}")
    if indexes is not None:
        lists = isinstance(indexes, Sequence) and len(indexes) > 0 and all(
            isinstance(s, Sequence) and not isinstance(s, (str, bytes)) for s in indexes)
        if isinstance(indexes, (str, bytes)) or not isinstance(indexes, Sequence) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool)
                for i in ([i for part in indexes for i in part] if lists else indexes)):
            per_date = "a BEFORE/AFTER pair of lists" if n_dates == 2 else f"one list per raster ({n_dates})"
            raise InputError(f"--indexes must be a list of 1-based band numbers such as [4, 3, 2], or {per_date} "
                             f"such as ({', '.join(['[1, 2, 3]', '[3, 2, 1]', *['[1, 2, 3]'] * (n_dates - 2)])}); "
                             f"got {indexes!r}")
        if lists and len(indexes) != n_dates:
            raise InputError(
                f"--indexes gives {len(indexes)} lists of bands for {n_dates} rasters: give one list for every date, "
                f"or one list per raster, in the order the rasters are given ({n_dates} lists; on the command line "
                f"separated by ':', such as {':'.join(['1,2,3', '3,2,1', *['1,2,3'] * (n_dates - 2)])})")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0:
        raise InputError(f"--overlap must be a whole number of pixels >= 0, got {overlap!r}")
    if isinstance(tile_size, numbers.Integral) and not isinstance(tile_size, bool) and overlap >= tile_size:
        raise InputError(f"--overlap {overlap} must be smaller than --tile-size {tile_size} (tiles overlap by a "
                         "part of themselves); the default 32 suits tiles of 512")
    if blend not in BLENDS:
        raise InputError(f"unknown --blend {blend!r}; choose one of {', '.join(BLENDS)}")
    if geojson_crs is not None:
        from pyproj import CRS as ProjCRS

        try:
            ProjCRS.from_user_input(geojson_crs)
        except Exception as exc:  # noqa: BLE001 - rasterio's and PROJ's errors alike mean: not a CRS
            raise InputError(
                f"--geojson-crs {geojson_crs!r} is not a coordinate reference system ({exc}); give e.g. EPSG:4326 "
                "(the GeoJSON standard's) or EPSG:32631"
            ) from None
    if device is not None:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"--device {device!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device} requested but CUDA is not available here; use --device cpu")


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
                   indexes=indexes)
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
        if tmp_holder is None and not isinstance(exc, OutputFolderBusyError):  # (the folder is the other run's)
            # leave no empty output folder behind (a resume folder keeps it), nor its parents
            remove_empty_folders(created)
        raise


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


def _checkpoint_file(model: Any, checkpoint: Any) -> Any:
    """The checkpoint file a run loaded when the user named one (``checkpoint=`` or ``--model PATH``), else None.

    A bundled model is reported by its name; a checkpoint file by its path, even when it carries the name of a
    bundled model (``changedet train`` with ``checkpoint_name: s2-rgb``), so the report tells them apart.
    """
    if checkpoint is not None:
        return checkpoint
    if model is None:
        return None
    from changedet.models.bundled import list_bundled
    from changedet.models.checkpoint import checkpoint_paths

    if str(model) in {m.name for m in list_bundled()}:
        return None
    try:
        weights, _json = checkpoint_paths(model)
    except (ValueError, TypeError, OSError):
        return None
    return weights if weights.is_file() else None


def _run(pair: Any, net: Any, meta: Any, method: str, out: Path, tmp_holder: Any, names: list[str], *,
         threshold: float | None, tile_size: int, overlap: int, blend: str, batch_size: int, threads: int | None,
         precision: str, tta: str, device: str, min_area: float, simplify: float, fill_holes: float, vectorize: bool,
         geojson_crs: str | None, qgis_project: bool, quicklook: bool, resume: bool,
         progress: Callable[[int, int, int], None] | None, t0: float, sources: tuple[Any, Any],
         source_names: tuple[str, str], checkpoint: Any, predictor_classes: tuple[Any, Any],
         predict_pair: Callable[..., Any]) -> ChangeResult:
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
                        "source": "xarray.DataArray (in memory)" if _in_memory(name) else name}
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


def _remove_outputs_not_written(out: Path, names: Sequence[str]) -> None:
    """Remove the outputs of an earlier run in ``out`` that this run (``--overwrite``/``--resume``) did not write:
    polygons left from a run that vectorised, beside a new ``change.tif`` made without ``--vectorize``, would
    describe another scene (and :meth:`ChangeResult.load` would read them)."""
    stale = [n for n in OUTPUT_NAMES.values() if n not in names]
    if OUTPUT_NAMES["gpkg"] not in names:
        stale.append("changes.qml")  # the polygon layer's style, written with the polygons
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


_XARRAY_TMP_PREFIX = "changedet-xarray-"  # the folder of the GeoTIFFs written from xarray inputs


def _in_memory(name: str) -> bool:
    """Whether an input's file is the temporary GeoTIFF written from an xarray input (gone with the result)."""
    return Path(name).parent.name.startswith(_XARRAY_TMP_PREFIX)


def _abspath(name: str) -> str | None:
    """The absolute path of an input file for the report; None for an in-memory (xarray) input."""
    if _in_memory(name):
        return None
    p = Path(name)
    return str(p.resolve()) if p.exists() else name


def _info_dict(pair: Any, which: str) -> dict[str, Any]:
    info = getattr(pair, f"{which}_info", None)
    if info is None:
        return {}
    d = info.to_dict() if hasattr(info, "to_dict") else {}
    return {k: d.get(k) for k in ("path", "driver", "crs", "width", "height", "count", "dtypes", "nodata", "res",
                                  "date", "descriptions") if k in d}


def _pair_report(pair: Any) -> dict[str, Any]:
    rep = getattr(pair, "report", None)
    if rep is None:
        return {}
    return rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)


def _summary(stats: Any, polygons: Any, areas: tuple[float | None, float | None]) -> dict[str, Any]:
    """The report's summary; ``areas`` (valid, changed m^2) from :func:`changedet.geodesy.area_summary`."""
    valid, changed = int(stats.valid_pixels), int(stats.changed_pixels)
    return {
        "valid_pixels": valid,
        "changed_pixels": changed,
        "changed_percent": round(100.0 * changed / valid, 4) if valid else 0.0,
        "valid_area_m2": areas[0],
        "changed_area_m2": areas[1],
        "n_polygons": len(polygons) if polygons is not None else None,
        "nothing_to_compare": valid == 0,
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


def _write_styles(staging: Path, thr: float) -> None:
    """QGIS styles: ``.qml`` sidecars of every layer and the default style embedded in the GeoPackage."""
    from changedet.export import change_style_qml, probability_style_qml

    # the polygon style (embedded in the GeoPackage + changes.qml) is written by export.write_vectors
    sidecars = {"probability": probability_style_qml(thr), "change": change_style_qml()}
    for stem, text in sidecars.items():
        _write_text(staging / f"{stem}.qml", text)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_project(out: Path, thr: float, source_names: tuple[str, str]) -> None:
    """``project.qgs`` in ``out``, with BEFORE and AFTER when they are files (paths stored relative)."""
    from changedet.export import write_qgis_project

    # in-memory (xarray) inputs are left out: their temporary GeoTIFFs go away with the result
    inputs = [Path(n).resolve() if Path(n).is_file() and not _in_memory(n) else None for n in source_names]
    write_qgis_project(out, before=inputs[0], after=inputs[1], threshold=thr, path=OUTPUT_NAMES["project"])
