"""Results of a series run (:class:`SeriesResult`, :class:`SeriesPair`), dated polygons, QGIS project.

The per-date colours, the QGIS paletted styles and the quick-look figure are in :mod:`changedet.series.palette`;
their names stay importable from here.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from changedet.api.outputs import SERIES_OUTPUT_NAMES, SERIES_SIDE_CARS
from changedet.api.outputs import _remove_outputs_not_written as _remove_stale
from changedet.errors import InputError
from changedet.series.palette import (  # noqa: F401 - the palette's names stay importable from here
    _VIRIDIS,
    _count_entries,
    _index_entries,
    _save_quicklook,
    date_colors,
    paletted_style_qml,
)

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd

# the names of the files a series run writes (SERIES_OUTPUT_NAMES, SERIES_SIDE_CARS) are kept with the two-date
# run's in one list (changedet.api.outputs): --overwrite removes the other kind's outputs too

#: Attribute columns of the series polygons (plus ``geometry``), see the module docstring.
SERIES_COLUMNS: tuple[str, ...] = (
    "id", "area_m2", "perimeter_m", "pixel_count", "first_change", "first_change_date", "first_change_pair",
    "earliest_change_date", "last_change_date", "n_changes", "max_changes", "before_date", "after_date", "model",
    "threshold",
)

_IN_MEMORY_LIMIT = 64_000_000

log = logging.getLogger(__name__)

__all__ = [
    "SERIES_COLUMNS",
    "SERIES_OUTPUT_NAMES",
    "SERIES_SIDE_CARS",
    "SeriesPair",
    "SeriesResult",
    "date_colors",
    "pair_dir_name",
    "paletted_style_qml",
]


# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------
def _read_band(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        if ds.width * ds.height > _IN_MEMORY_LIMIT:
            raise InputError(f"{path}: {ds.width} x {ds.height} pixels is too large to load into memory; read it "
                             "window by window with rasterio instead")
        return ds.read(1)


@dataclass
class SeriesPair:
    """One compared pair of a series: its dates, files and summary.

    Attributes
    ----------
    index : int
        1-based number of the pair (the value in ``first_change.tif``/``last_change.tif``).
    before, after : int
        0-based indexes of the two dates in the series.
    before_label, after_label : str
        ISO dates (or file stems when dates are unknown).
    before_date, after_date : datetime.date or None
    before_source, after_source : str
    paths : dict
        ``probability`` and ``change`` (the per-pair COGs).
    threshold : float
    summary : dict
        valid/changed pixels, percent and areas of this pair.
    method : dict
        The model or the fitted unsupervised method of this pair.
    """

    index: int
    before: int
    after: int
    before_label: str
    after_label: str
    before_date: _dt.date | None
    after_date: _dt.date | None
    before_source: str
    after_source: str
    paths: dict[str, Path]
    threshold: float
    summary: dict[str, Any]
    method: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``before/after`` (what the ``PAIR_k`` tags hold)."""
        return f"{self.before_label}/{self.after_label}"

    @property
    def probability(self) -> np.ndarray:
        """Change probability (row, col) float32 0..1, -1 where either date has no data."""
        return _read_band(self.paths["probability"])

    @property
    def mask(self) -> np.ndarray:
        """Change mask (row, col) uint8: 1 changed, 0 unchanged, 255 no data."""
        return _read_band(self.paths["change"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "label": self.label, "before": self.before_label, "after": self.after_label,
            "before_date": _iso(self.before_date), "after_date": _iso(self.after_date),
            "before_source": self.before_source, "after_source": self.after_source,
            "folder": self.paths["probability"].parent.name, "threshold": self.threshold, "summary": self.summary,
            "method": self.method,
        }


@dataclass
class SeriesResult:
    """The result of :func:`detect_series`.

    Attributes
    ----------
    output_dir : Path
        Folder holding the outputs (a temporary folder owned by this object when ``output_dir`` was None).
    paths : dict
        Output name -> path: ``change_count``, ``first_change``, ``last_change``, ``gpkg``, ``geojson``,
        ``report``, ``quicklook``, ``project`` (those written).
    report : dict
        The content of ``report.json``.
    pairs : list of SeriesPair
        The compared pairs, in order (``pairs[k - 1]`` is pair number k).
    labels, dates : list
        The dates of the series in order (ISO text / ``datetime.date`` or None).
    crs, transform
        Georeferencing of every output raster (the first date's grid clipped to the common extent).
    """

    output_dir: Path
    paths: dict[str, Path]
    report: dict[str, Any]
    pairs: list[SeriesPair]
    labels: list[str]
    dates: list[_dt.date | None]
    crs: Any
    transform: Any
    _polygons: Any = field(default=None, repr=False)
    _tmp: Any = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return str(self.report.get("mode"))

    @property
    def change_count(self) -> np.ndarray:
        """How many pairs changed, (row, col) uint8 (nodata 255)."""
        return _read_band(self.paths["change_count"])

    @property
    def first_change(self) -> np.ndarray:
        """Number of the first pair that changed (1..n, 0 never), (row, col) (nodata 255)."""
        return _read_band(self.paths["first_change"])

    @property
    def last_change(self) -> np.ndarray:
        """Number of the last pair that changed (1..n, 0 never), (row, col) (nodata 255)."""
        return _read_band(self.paths["last_change"])

    @property
    def polygons(self) -> gpd.GeoDataFrame | None:
        """Polygons of the pixels that changed at least once (:data:`SERIES_COLUMNS`), raster CRS."""
        if self._polygons is None and "gpkg" in self.paths:
            import geopandas as gpd

            self._polygons = gpd.read_file(self.paths["gpkg"], layer="changes")
        return self._polygons

    def to_geodataframe(self) -> gpd.GeoDataFrame | None:
        """Same as :attr:`polygons`."""
        return self.polygons

    def save(self, output_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Copy every output (pair folders, rasters, styles, vectors, quick-look, report) into ``output_dir``.

        The folder is created if needed; each file and pair folder is copied under a temporary name and renamed
        when complete, ``report.json`` last. ``project.qgs`` is written again for the new folder (its layer paths
        are relative to it). With ``overwrite``, the outputs of an earlier series run in ``output_dir`` that this
        result lacks (polygons, a quick-look, a project, the folders of other pairs) are removed, so the folder
        holds one result. Saving into :attr:`output_dir` itself does nothing.

        Returns
        -------
        pathlib.Path
            ``output_dir``.

        Raises
        ------
        OutputExistsError
            An output of the same name exists in ``output_dir`` and ``overwrite`` is False (nothing is written,
            no folder is created).
        OutputError
            ``output_dir`` exists and is not a folder.
        """
        from changedet.errors import OutputError, OutputExistsError

        dest = Path(output_dir)
        if dest.exists() and dest.resolve() == self.output_dir.resolve():
            return dest
        if dest.exists() and not dest.is_dir():
            raise OutputError(f"{dest}: exists and is not a folder; give a folder to save the outputs into")
        names = self._output_names()
        clash = [n for n in names if (dest / n).exists()]
        if clash and not overwrite:
            raise OutputExistsError(f"{dest}: {', '.join(clash)} exist(s); pass overwrite=True to replace them")
        dest.mkdir(parents=True, exist_ok=True)
        report, project = SERIES_OUTPUT_NAMES["report"], SERIES_OUTPUT_NAMES["project"]
        for name in names:
            if name in (report, project):
                continue  # the project is written again below, with paths relative to dest; the report last
            _copy_atomic(self.output_dir / name, dest / name)
        if "project" in self.paths:
            inputs = self.report.get("inputs") or []
            sources = [str(i.get("source") or "") for i in inputs] or [self.pairs[0].before_source,
                                                                       self.pairs[-1].after_source]
            _write_series_project(dest, sources, self.pairs)
        if overwrite:
            _remove_outputs_not_written(dest, names)
        _copy_atomic(self.output_dir / report, dest / report)
        return dest

    def _output_names(self) -> list[str]:
        """Names (files and pair folders) of this result's outputs in :attr:`output_dir`, styles included."""
        listed = self.report.get("outputs")
        names = list(listed) if listed else [p.name for p in self.paths.values()] + [
            p.paths["change"].parent.name for p in self.pairs]
        names += [n for n in SERIES_SIDE_CARS if (self.output_dir / n).exists()]
        return [n for n in dict.fromkeys(names) if (self.output_dir / n).exists()]

    def __repr__(self) -> str:
        s = self.report.get("summary", {})
        return (f"SeriesResult({self.output_dir}, {len(self.labels)} dates, {len(self.pairs)} pairs "
                f"({self.mode}), {s.get('changed_percent')} % changed at least once, {s.get('n_polygons')} polygons)")


def _iso(d: Any) -> str | None:
    return d.isoformat() if isinstance(d, (_dt.date, _dt.datetime)) else (str(d) if d else None)


def _source_name(src: Any) -> str:
    """The path of a source (a path, or an open dataset's ``name``)."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return str(getattr(src, "name", src))


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file or a folder to ``dst`` under a temporary name, then rename it into place (replacing ``dst``)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        if src.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif dst.exists() or dst.is_symlink():
                dst.unlink()
        else:
            shutil.copy2(src, tmp)
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _remove_outputs_not_written(out: Path, names: Sequence[str]) -> None:
    """Remove the outputs of an earlier run in ``out`` that are not in ``names`` (this run's outputs).

    Polygons, a quick-look or a project left from a run that wrote them, the folder of a pair that this series
    does not have, or a two-date run's ``probability.tif`` and ``change.tif``, would describe another run beside the
    new ``report.json``. Only the names a detect run writes are touched
    (:func:`changedet.api.outputs._remove_outputs_not_written`: :data:`SERIES_OUTPUT_NAMES`,
    :data:`SERIES_SIDE_CARS`, :data:`changedet.api.OUTPUT_NAMES` and ``pair_NN_*`` folders holding a
    ``change.tif`` or ``probability.tif``).
    """
    _remove_stale(out, names)


def pair_dir_name(index: int, before_label: str, after_label: str) -> str:
    """Folder of pair ``index`` (1-based): ``pair_01_2019-05-01_2020-05-01``.

    >>> pair_dir_name(1, "2019-05-01", "2020-05-01")
    'pair_01_2019-05-01_2020-05-01'
    """
    return f"pair_{index:02d}_{before_label}_{after_label}"


# ---------------------------------------------------------------------------------------------------------------
# polygons, project
# ---------------------------------------------------------------------------------------------------------------
def _polygon_attributes(gdf: gpd.GeoDataFrame, folder: Path, pairs: Sequence[SeriesPair],
                        window_size: int = 2048) -> gpd.GeoDataFrame:
    """Per-polygon mode/min/max of the first change, last change and count rasters (window by window)."""
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import bounds as window_bounds

    n, k = len(gdf), len(pairs) + 1
    h_first = np.zeros((n, k), np.int64)
    h_last = np.zeros((n, k), np.int64)
    h_count = np.zeros((n, k), np.int64)
    if n:
        geoms = np.asarray(gdf.geometry.values)
        tree = shapely.STRtree(geoms)
        with rasterio.open(folder / "first_change.tif") as ds_f, rasterio.open(folder / "last_change.tif") as ds_l, \
                rasterio.open(folder / "change_count.tif") as ds_c:
            H, W = ds_c.height, ds_c.width
            nodata = ds_c.nodata
            for r in range(0, H, window_size):
                for c in range(0, W, window_size):
                    win = Window(c, r, min(window_size, W - c), min(window_size, H - r))
                    box = shapely.box(*window_bounds(win, ds_c.transform))
                    hits = tree.query(box, predicate="intersects")
                    if not len(hits):
                        continue
                    wt = ds_c.window_transform(win)
                    ids = rasterize(((geoms[i], int(i) + 1) for i in hits), out_shape=(int(win.height), int(win.width)),
                                    transform=wt, fill=0, dtype="int32")
                    cnt = ds_c.read(1, window=win).astype(np.int64)
                    sel = (ids > 0) & (cnt > 0) & (cnt != nodata)
                    if not sel.any():
                        continue
                    rows = ids[sel].astype(np.int64) - 1
                    fst = ds_f.read(1, window=win)[sel].astype(np.int64)
                    lst = ds_l.read(1, window=win)[sel].astype(np.int64)
                    cnt = cnt[sel]
                    for hist, vals in ((h_first, fst), (h_last, lst), (h_count, cnt)):
                        np.add.at(hist, (rows, np.clip(vals, 0, k - 1)), 1)
    has = h_count[:, 1:].sum(axis=1) > 0
    first = np.where(has, h_first.argmax(axis=1), 0)
    last = np.where(has, h_last.argmax(axis=1), 0)
    mode_count = np.where(has, h_count.argmax(axis=1), 0)
    nz = h_first[:, 1:] > 0
    earliest = np.where(nz.any(axis=1), nz.argmax(axis=1) + 1, 0)
    maxc = np.where(has, k - 1 - np.argmax(h_count[:, ::-1] > 0, axis=1), 0)
    after_dates = [None] + [p.after_label for p in pairs]
    labels = [None] + [p.label for p in pairs]
    gdf = gdf.drop(columns=[c for c in ("mean_prob", "max_prob") if c in gdf.columns])
    gdf["first_change"] = first.astype("int64")
    gdf["first_change_date"] = [after_dates[i] for i in first]
    gdf["first_change_pair"] = [labels[i] for i in first]
    gdf["earliest_change_date"] = [after_dates[i] for i in earliest]
    gdf["last_change_date"] = [after_dates[i] for i in last]
    gdf["n_changes"] = mode_count.astype("int64")
    gdf["max_changes"] = maxc.astype("int64")
    return gdf[[c for c in SERIES_COLUMNS if c in gdf.columns] + ["geometry"]]


def _write_series_project(out: Path, stack_sources: Sequence[str], pairs: Sequence[SeriesPair]) -> None:
    """``project.qgs``: first and last dates as RGB, polygons, and first_change styled per date."""
    import xml.etree.ElementTree as ET

    from changedet.api import _in_memory
    from changedet.export import write_qgis_project
    from changedet.export.qgis import DOCTYPE

    # in-memory (xarray) inputs are left out: their temporary GeoTIFFs go away with the result
    inputs = [Path(n).resolve() if n and Path(n).is_file() and not _in_memory(n) else None
              for n in (stack_sources[0], stack_sources[-1])]
    path = write_qgis_project(out, before=inputs[0], after=inputs[1], probability=None,
                              change=SERIES_OUTPUT_NAMES["first_change"],
                              polygons=SERIES_OUTPUT_NAMES["gpkg"] if (out / SERIES_OUTPUT_NAMES["gpkg"]).exists()
                              else None, path=SERIES_OUTPUT_NAMES["project"],
                              title=f"changedet series {pairs[0].before_label} → {pairs[-1].after_label}")
    # the mask layer holds first_change.tif: give it the per-date palette and its name
    tree = ET.parse(path)
    root = tree.getroot()
    style = ET.fromstring(paletted_style_qml(_index_entries(pairs)).split("\n", 1)[1])
    renderer = style.find("pipe/rasterrenderer")
    for node in root.iter():
        if node.get("name") == "change mask":
            node.set("name", "first change")
    for layer in root.iter("maplayer"):
        if layer.findtext("layername") == "change mask":
            layer.find("layername").text = "first change"  # type: ignore[union-attr]
            pipe = layer.find("pipe")
            old = pipe.find("rasterrenderer") if pipe is not None else None
            if pipe is not None and old is not None and renderer is not None:
                pipe.insert(list(pipe).index(old), renderer)
                pipe.remove(old)
    ET.indent(root, space="  ")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(DOCTYPE + ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    os.replace(tmp, path)
