"""Multi-temporal change detection: what changed, and when?

:func:`detect_series` takes N >= 2 rasters of one site (a yearly or monthly stack), orders them by acquisition
date (``RasterInfo.date``: the metadata, else a date in the file name; or the order given with ``keep_order``),
aligns every date onto the FIRST date's grid clipped to the extent that all dates cover, and compares them in pairs:

``consecutive`` (default)
    each date with the previous one: pair k is (date k-1, date k), "what changed between two visits";
``reference``
    each date with the first one: pair k is (date 0, date k), "how far has the site moved from the start".

One streamed pass over the tiles computes every pair (:func:`predict_series`): for each tile all N dates are read
once (a :class:`SeriesStack` read), the model or unsupervised method runs on each pair, and the probabilities are
blended into per-pair strip accumulators that are written as soon as no later tile touches them. Memory is the tile
stack (N tiles) plus one strip of ``~2 x tile_size`` rows per pair, whatever the scene size.

Outputs in the output folder (every file is written into a staging folder and moved into place when all are
complete, ``report.json`` last, as :func:`changedet.api.detect` does):

``pair_01_<before>_<after>/probability.tif``, ``change.tif`` (+ ``.qml`` styles)
    The per-pair rasters of a two-date detect (``<before>``/``<after>``: ISO dates, or the file stems when the
    dates are unknown and ``keep_order`` is set). Pairs are numbered from 1 in date order.
``change_count.tif``
    uint8, how many pairs changed at each pixel (0..n_pairs) among the pairs with valid data there; nodata 255
    where no pair has valid data.
``first_change.tif``, ``last_change.tif``
    Number of the first / last pair that changed (1..n_pairs), 0 where no pair changed; nodata 255 (uint8; uint16
    with nodata 65535 above 254 pairs). The band description says so and the tags give each number's pair and
    date: ``PAIR_1=2019-05-01/2020-05-01`` and ``PAIR_1_DATE=2020-05-01`` (the change is seen at the pair's AFTER
    date). ``first_change.qml`` / ``last_change.qml`` style them in QGIS with one colour per date (viridis, early
    dark to late yellow) and the dates as legend; ``change_count.qml`` likewise per count.
``changes.gpkg``, ``changes.geojson``
    One polygon per 4-connected region of pixels that changed at least once, with :data:`SERIES_COLUMNS`:
    ``first_change`` / ``first_change_date`` / ``first_change_pair`` are the *majority* (mode) of the pixels'
    first-change pair (ties: the earlier pair), ``earliest_change_date`` the minimum, ``last_change_date`` the
    mode of the last change, ``n_changes`` the mode of the pixels' change count and ``max_changes`` its maximum.
``report.json``, ``quicklook.png``, ``project.qgs`` (with ``qgis_project``)
    Inputs with their dates and order, mode, per-pair summaries, the series summary.

Example (the command line is the same function: ``changedet detect d1.tif d2.tif d3.tif -o out/ --method cva``):

>>> from changedet.series import detect_series  # doctest: +SKIP
>>> series = detect_series(["s2_2019-05-01.tif", "s2_2020-05-01.tif", "s2_2021-05-01.tif"],
...                        output_dir="out", method="cva")  # doctest: +SKIP
>>> series.polygons[["first_change_date", "n_changes", "area_m2"]]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import logging
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from changedet._version import __version__
from changedet.errors import InputError, NoOverlapError, NothingToCompareWarning, PairWarning

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    from rasterio.io import DatasetReader

log = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "SERIES_COLUMNS",
    "SERIES_OUTPUT_NAMES",
    "SeriesPair",
    "SeriesResult",
    "SeriesStack",
    "SeriesStats",
    "detect_series",
    "open_series",
    "order_by_date",
    "predict_series",
    "series_pairs",
]

MODES = ("consecutive", "reference")

#: Files a series run writes at the top of its output folder (plus one ``pair_NN_<before>_<after>`` folder per pair).
SERIES_OUTPUT_NAMES = {
    "change_count": "change_count.tif",
    "first_change": "first_change.tif",
    "last_change": "last_change.tif",
    "gpkg": "changes.gpkg",
    "geojson": "changes.geojson",
    "report": "report.json",
    "quicklook": "quicklook.png",
    "project": "project.qgs",
}
_STYLES = ("change_count.qml", "first_change.qml", "last_change.qml", "changes.qml")

#: Attribute columns of the series polygons (plus ``geometry``), see the module docstring.
SERIES_COLUMNS: tuple[str, ...] = (
    "id", "area_m2", "perimeter_m", "pixel_count", "first_change", "first_change_date", "first_change_pair",
    "earliest_change_date", "last_change_date", "n_changes", "max_changes", "before_date", "after_date", "model",
    "threshold",
)

# viridis at 0, .25, .5, .75, 1: early dates dark purple, late dates yellow
_VIRIDIS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
            (1.0, (253, 231, 37)))
_IN_MEMORY_LIMIT = 64_000_000


# ---------------------------------------------------------------------------------------------------------------
# ordering and alignment
# ---------------------------------------------------------------------------------------------------------------
def _label(info: Any, index: int) -> str:
    if info.date is not None:
        return info.date.isoformat()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(info.path).stem).strip("-")
    return stem or f"date{index + 1}"


def order_by_date(rasters: Sequence[Any], *, keep_order: bool = False) -> tuple[list[Any], list[Any]]:
    """Order rasters by acquisition date; return ``(sources, infos)`` in that order.

    Parameters
    ----------
    rasters
        Paths or open rasterio datasets.
    keep_order
        Keep the order given (dates may then be unknown; a :class:`~changedet.errors.PairWarning` is issued when
        known dates are not increasing).

    Raises
    ------
    InputError
        Fewer than two rasters, a raster given twice, or (without ``keep_order``) a raster whose date is unknown:
        the message names every such file and the fixes.
    RasterReadError
        A raster cannot be opened.
    """
    from changedet.io.raster import raster_info

    sources = list(rasters)
    if len(sources) < 2:
        raise InputError(f"a series needs at least two rasters, {len(sources)} given")
    names = [os.path.abspath(os.fspath(s)) if isinstance(s, (str, os.PathLike)) else None for s in sources]
    dupes = sorted({n for n in names if n is not None and names.count(n) > 1})
    if dupes:
        raise InputError(f"{', '.join(dupes)}: given more than once; give each date once")
    infos = [raster_info(s) for s in sources]
    if keep_order:
        dates = [i.date for i in infos]
        for k in range(1, len(infos)):
            if dates[k] is not None and dates[k - 1] is not None and dates[k] <= dates[k - 1]:  # type: ignore[operator]
                warnings.warn(
                    f"{infos[k].name} ({dates[k]}) does not come after {infos[k - 1].name} ({dates[k - 1]}) but "
                    "keep_order (--keep-order) keeps the order given; drop it to sort the dates",
                    PairWarning, stacklevel=3,
                )
        return sources, infos
    unknown = [i.path for i in infos if i.date is None]
    if unknown:
        raise InputError(
            f"acquisition date unknown for {', '.join(unknown)}: no date in the metadata (ACQUISITION_DATE, "
            "DATE_ACQUIRED, SENSING_TIME, TIFFTAG_DATETIME, ...) nor in the file name. Put the date in the name "
            "(e.g. site_2019-05-01.tif), tag it (`gdal_edit.py -mo ACQUISITION_DATE=2019-05-01 FILE`), or pass "
            "--keep-order (keep_order=True) to use the order given"
        )
    order = sorted(range(len(infos)), key=lambda k: infos[k].date)  # stable: ties keep the order given
    for a, b in itertools.pairwise(order):
        if infos[a].date == infos[b].date:
            warnings.warn(f"{infos[a].name} and {infos[b].name} have the same date ({infos[a].date}); they are "
                          "compared in the order given", PairWarning, stacklevel=3)
    return [sources[k] for k in order], [infos[k] for k in order]


def series_pairs(n_dates: int, mode: str = "consecutive") -> list[tuple[int, int]]:
    """The (before, after) date indexes (0-based) compared in ``mode``.

    >>> series_pairs(4), series_pairs(4, "reference")
    ([(0, 1), (1, 2), (2, 3)], [(0, 1), (0, 2), (0, 3)])
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if n_dates < 2:
        raise InputError(f"a series needs at least two dates, found {n_dates}")
    if mode == "consecutive":
        return [(k - 1, k) for k in range(1, n_dates)]
    return [(0, k) for k in range(1, n_dates)]


class SeriesStack:
    """N dates on one grid: the first date's, clipped to the extent every date covers; read window by window.

    Made by :func:`open_series`. Each later date is aligned onto the first with
    :func:`~changedet.io.alignment.open_pair` (same checks, resampling, co-registration and histogram matching as a
    two-date detect); :meth:`read` then reads every date of a window once, the first date included.

    Attributes: ``crs``, ``transform``, ``width``, ``height``, ``count``, ``band_names``, ``infos`` (one
    :class:`~changedet.io.raster.RasterInfo` per date, in series order), ``dates``, ``labels`` (ISO dates or file
    stems), ``sources``, ``pair_reports`` (the :class:`~changedet.io.alignment.PairReport` of date k against the
    first, for k >= 1), ``georeferenced``.
    """

    def __init__(self, sources: list[Any], infos: list[Any], ref: DatasetReader, pairs: list[Any],
                 owned: list[Any]) -> None:
        from affine import Affine

        from changedet.io.alignment import _needs_mask

        self.sources, self.infos = sources, infos
        self._ref, self._pairs, self._owned = ref, pairs, owned
        self._lock = threading.Lock()
        self._ref_mask = _needs_mask(ref)
        wins = [p._plan.before_window for p in pairs]
        c0 = max(int(w.col_off) for w in wins)
        r0 = max(int(w.row_off) for w in wins)
        c1 = min(int(w.col_off + w.width) for w in wins)
        r1 = min(int(w.row_off + w.height) for w in wins)
        if c1 <= c0 or r1 <= r0:
            raise NoOverlapError(
                f"{', '.join(i.name for i in infos)}: the dates have no area in common (each overlaps the first "
                f"date {infos[0].name}, but not all at the same place); drop the dates that cover another area"
            )
        self._c0, self._r0 = c0, r0
        self._offsets = [(c0 - int(w.col_off), r0 - int(w.row_off)) for w in wins]
        self.width, self.height = c1 - c0, r1 - r0
        first = pairs[0]
        self.crs = first.crs
        self.transform = (infos[0].transform @ Affine.translation(c0, r0)) if first.crs is not None else \
            Affine.identity()
        self.georeferenced = first.crs is not None
        self.count = first.count
        self.indexes = list(first.indexes[0])
        self.band_names = list(first.band_names)
        self.dates: list[_dt.date | None] = [i.date for i in infos]
        self.labels = [_label(i, k) for k, i in enumerate(infos)]
        self.pair_reports = [p.report for p in pairs]
        self.n_dates = len(infos)
        if (self.width, self.height) != (first.width, first.height) and len(pairs) > 1:
            warnings.warn(
                f"{infos[0].name}: the dates cover different extents; only the part every date covers "
                f"({self.width} x {self.height} px of {infos[0].width} x {infos[0].height}) is compared",
                PairWarning, stacklevel=3,
            )

    # grid helpers ------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the grid."""
        return (self.height, self.width)

    def pixel_area_m2(self) -> float | None:
        """Area of one pixel in m2 at the grid centre (geodesic when geographic); None without georeferencing."""
        from changedet.io.alignment import AlignedPair

        if self.crs is None:
            return None
        return AlignedPair.pixel_area_m2(self)  # type: ignore[arg-type]  # uses crs/transform/width/height only

    def pair(self, before: int, after: int) -> _PairView:
        """An :class:`~changedet.io.alignment.AlignedPair`-like view of two dates (0-based) of the series."""
        return _PairView(self, before, after)

    # reading -------------------------------------------------------------------------------------------------------
    def read(self, window: Window | None = None, *, apply_corrections: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
        """Read every date of a window.

        Returns
        -------
        values, valid
            float32 (date, band, row, col) in the rasters' units and bool (date, row, col): True where that date
            has finite, non-nodata data inside its footprint. Invalid values are left as read (the pairs zero
            them, see :meth:`pair`).
        """
        window = Window(0, 0, self.width, self.height) if window is None else window
        arrays, valid = self._read(window, None, range(self.n_dates), apply_corrections)
        return np.stack(arrays), np.stack(valid)

    def _read(self, window: Window, out_hw: tuple[int, int] | None, dates: Sequence[int],
              apply_corrections: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from changedet.io.alignment import _read_masked

        c, r = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
        if c < 0 or r < 0 or w <= 0 or h <= 0 or c + w > self.width or r + h > self.height:
            raise ValueError(f"window {window} outside the series grid ({self.width} x {self.height})")
        hw = out_hw if out_hw is not None else (h, w)
        dates = list(dates)
        need_ref = 0 in dates or any(self._pairs[k - 1]._matcher is not None for k in dates if k > 0)
        arrays: dict[int, np.ndarray] = {}
        valid: dict[int, np.ndarray] = {}
        with self._lock:
            if need_ref:
                arrays[0], valid[0] = _read_masked(self._ref, self.indexes, Window(self._c0 + c, self._r0 + r, w, h),
                                                   hw, self._ref_mask)
            for k in dates:
                if k == 0:
                    continue
                pair = self._pairs[k - 1]
                dx, dy = self._offsets[k - 1]
                plan = pair._plan
                with pair._lock:
                    vrt = pair._vrt if apply_corrections else pair._vrt_plain
                    if vrt is None:
                        awin = Window(plan.after_window.col_off + dx + c, plan.after_window.row_off + dy + r, w, h)
                        arr, va = _read_masked(pair._ds_a, plan.idx_a, awin, hw, pair._mask_a)
                    else:
                        arr, va = _read_masked(vrt, plan.idx_a, Window(dx + c, dy + r, w, h), hw, False)
                if apply_corrections and pair._matcher is not None:
                    arr = pair._matcher.apply(arr, valid[0] & va)
                arrays[k], valid[k] = arr, va
        return [arrays[k] for k in dates], [valid[k] for k in dates]

    # lifetime -------------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pairs and the datasets the stack opened."""
        for p in self._pairs:
            with contextlib.suppress(Exception):
                p.close()
        for ds in self._owned:
            with contextlib.suppress(Exception):
                ds.close()
        self._pairs, self._owned = [], []

    def __enter__(self) -> SeriesStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SeriesStack({self.labels}, {self.width}x{self.height} px, {self.count} band(s))"


class _PairView:
    """Two dates of a :class:`SeriesStack` with the :class:`~changedet.io.alignment.AlignedPair` reading API."""

    def __init__(self, stack: SeriesStack, before: int, after: int) -> None:
        self.stack, self.i, self.j = stack, before, after
        self.crs, self.transform = stack.crs, stack.transform
        self.width, self.height, self.count = stack.width, stack.height, stack.count
        self.band_names = stack.band_names
        self.before_info, self.after_info = stack.infos[before], stack.infos[after]
        self.dates = (stack.dates[before], stack.dates[after])
        self.georeferenced = stack.georeferenced

    def pixel_area_m2(self) -> float | None:
        return self.stack.pixel_area_m2()

    def _pair(self, window: Window, out_hw: tuple[int, int] | None, apply_corrections: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (b, a), (vb, va) = self.stack._read(window, out_hw, (self.i, self.j), apply_corrections)
        return _zeroed(b, a, vb & va)

    def read(self, window: Window | None = None, *, apply_corrections: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        window = Window(0, 0, self.width, self.height) if window is None else window
        return self._pair(window, None, apply_corrections)

    def read_decimated(self, max_pixels: int = 1_000_000, *, apply_corrections: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = max(1.0, math.sqrt(self.width * self.height / max(1, max_pixels)))
        hw = (max(1, int(self.height / scale)), max(1, int(self.width / scale)))
        return self._pair(Window(0, 0, self.width, self.height), hw, apply_corrections)


def _zeroed(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of two dates with invalid pixels set to 0 (what :meth:`AlignedPair.read` returns)."""
    b, a = before.copy(), after.copy()
    b[:, ~valid] = 0.0
    a[:, ~valid] = 0.0
    return b, a, valid


def open_series(
    rasters: Sequence[Any],
    *,
    keep_order: bool = False,
    indexes: Sequence[int] | None = None,
    resampling: str = "bilinear",
    coregister: bool = False,
    match_histograms: bool = False,
    ordered: tuple[list[Any], list[Any]] | None = None,
) -> SeriesStack:
    """Order rasters by date (see :func:`order_by_date`) and align them all onto the first date's grid.

    Each later date goes through :func:`~changedet.io.alignment.open_pair` against the first (its checks and
    warnings name both files); the grid is the first date's, clipped to the extent every date covers.

    Parameters
    ----------
    rasters
        Paths or open rasterio datasets (datasets passed in are not closed).
    keep_order
        Keep the order given instead of sorting by date.
    indexes
        1-based bands used in every date.
    resampling, coregister, match_histograms
        As in :func:`~changedet.io.alignment.open_pair` (each later date against the first).
    ordered
        ``(sources, infos)`` already returned by :func:`order_by_date` (skips ordering).

    Returns
    -------
    SeriesStack
    """
    from rasterio.io import DatasetReader

    from changedet.io.alignment import open_pair
    from changedet.io.raster import open_raster

    sources, infos = ordered if ordered is not None else order_by_date(rasters, keep_order=keep_order)
    owned: list[Any] = []
    pairs: list[Any] = []
    try:
        ref = sources[0] if isinstance(sources[0], DatasetReader) else open_raster(sources[0])
        if ref is not sources[0]:
            owned.append(ref)
        for src in sources[1:]:
            pairs.append(open_pair(ref, src, indexes=list(indexes) if indexes else None, resampling=resampling,
                                   coregister=coregister, match_histograms=match_histograms))
        return SeriesStack(list(sources), list(infos), ref, pairs, owned)
    except BaseException:
        for p in pairs:
            p.close()
        for ds in owned:
            ds.close()
        raise


# ---------------------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SeriesStats:
    """What one :func:`predict_series` run did (per pair and for the series)."""

    tiles_total: int = 0
    tiles_read: int = 0
    tiles_skipped: int = 0
    predictions: int = 0  # tile x pair forward passes
    pair_valid: list[int] = field(default_factory=list)
    pair_changed: list[int] = field(default_factory=list)
    valid_pixels: int = 0  # valid in at least one pair
    changed_pixels: int = 0  # changed in at least one pair
    first_change_pixels: list[int] = field(default_factory=list)  # pixels whose first change is pair k (1-based)
    seconds_read: float = 0.0
    seconds_predict: float = 0.0
    seconds_write: float = 0.0
    seconds_finalize: float = 0.0
    seconds_total: float = 0.0
    strip_buffer_bytes: int = 0
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def index_dtype(n_pairs: int) -> tuple[str, int]:
    """Data type and nodata of ``first_change``/``last_change``/``change_count`` for ``n_pairs`` pairs.

    >>> index_dtype(3), index_dtype(300)
    (('uint8', 255), ('uint16', 65535))
    """
    return ("uint8", 255) if n_pairs <= 254 else ("uint16", 65535)


def _series_reader(stack: Any, tiles: Sequence[Any], out: queue.Queue, stop: threading.Event,
                   timing: dict[str, float]) -> None:
    """Prefetch thread: read every date of each tile once and queue it (or the exception that stopped it)."""
    try:
        for tile in tiles:
            if stop.is_set():
                return
            t0 = time.perf_counter()
            values, valid = stack.read(Window(*tile.window))
            timing["read"] += time.perf_counter() - t0
            while not stop.is_set():
                try:
                    out.put((tile, values, valid), timeout=0.2)
                    break
                except queue.Full:
                    continue
        out.put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        out.put(exc)


def _series_writer(jobs: queue.Queue, writers: list[Any], timing: dict[str, float],
                   errors: list[BaseException]) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        if errors:
            continue
        row_off, arrays = job
        try:
            t0 = time.perf_counter()
            for w, a in zip(writers, arrays, strict=True):
                w.write(a, row_off)
            timing["write"] += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)


def predict_series(
    stack: Any,
    pairs: Sequence[tuple[int, int]],
    predictors: Sequence[Any],
    *,
    out_dir: Path,
    pair_dirs: Sequence[str],
    thresholds: Sequence[float],
    tile_size: int = 512,
    overlap: int = 64,
    blend: str = "cosine",
    batch_size: int = 1,
    prefetch: int = 2,
    progress: Callable[[int, int, int], None] | None = None,
    pair_tags: Sequence[dict[str, str]] | None = None,
    index_tags: dict[str, str] | None = None,
) -> SeriesStats:
    """Predict every pair of a series in one streamed pass over the tiles.

    For each tile the dates are read once (``stack.read(window) -> (values (N,C,h,w), valid (N,h,w))``), each
    pair's predictor runs on its two dates (invalid pixels zeroed, as in a two-date read) and the probabilities
    are blended into that pair's strip accumulator; rows that no later tile touches are thresholded and written.

    Parameters
    ----------
    stack
        A :class:`SeriesStack` (or anything with ``height``, ``width``, ``crs``, ``transform`` and ``read``).
    pairs
        (before, after) date indexes, 0-based (see :func:`series_pairs`).
    predictors
        One :class:`~changedet.inference.TilePredictor` per pair (all with the same ``multiple``).
    out_dir
        Receives ``<pair_dir>/probability.tif`` and ``change.tif`` per pair, ``change_count.tif``,
        ``first_change.tif`` and ``last_change.tif`` (COGs; existing files are replaced).
    pair_dirs
        Folder name of each pair inside ``out_dir``.
    thresholds
        Probability threshold of each pair.
    tile_size, overlap, blend, batch_size, prefetch, progress
        As in :func:`~changedet.inference.predict_pair`.
    pair_tags, index_tags
        Metadata tags of each pair's rasters and of the three series rasters.

    Returns
    -------
    SeriesStats
    """
    from changedet.inference import MASK_NODATA, PROB_NODATA, StripWriter, _batches
    from changedet.tiling import TileGrid

    t_start = time.perf_counter()
    n_pairs = len(pairs)
    if not (n_pairs == len(predictors) == len(pair_dirs) == len(thresholds)):
        raise ValueError("pairs, predictors, pair_dirs and thresholds must have the same length")
    out_dir = Path(out_dir)
    H, W = int(stack.height), int(stack.width)
    multiples = {max(1, int(p.multiple)) for p in predictors}
    multiple = max(multiples)
    tile_size = max(multiple, int(tile_size) // multiple * multiple)
    overlap = min(int(overlap), tile_size - multiple) if tile_size > multiple else 0
    grid = TileGrid(H, W, tile_size=tile_size, overlap=overlap, multiple=multiple, blend=blend)  # type: ignore[arg-type]
    stats = SeriesStats(tiles_total=len(grid), pair_valid=[0] * n_pairs, pair_changed=[0] * n_pairs,
                        first_change_pixels=[0] * n_pairs)
    idx_dtype, idx_nodata = index_dtype(n_pairs)
    partial_root = out_dir / ".changedet-partial"
    common = {"width": W, "height": H, "crs": stack.crs, "transform": stack.transform}
    writers: list[Any] = []
    try:
        for p, name in enumerate(pair_dirs):
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            part = partial_root / name
            part.mkdir(parents=True, exist_ok=True)
            tags = (pair_tags[p] if pair_tags else None)
            writers.append(StripWriter(out_dir / name / "probability.tif", dtype="float32", nodata=PROB_NODATA,
                                       description="change probability", tags=tags, partial_dir=part, **common))
            writers.append(StripWriter(out_dir / name / "change.tif", dtype="uint8", nodata=MASK_NODATA,
                                       description="change (1) / no change (0)", tags=tags, partial_dir=part,
                                       **common))
        partial_root.mkdir(parents=True, exist_ok=True)
        for key, desc in (
            ("change_count", f"number of pairs changed (of {n_pairs})"),
            ("first_change", "first pair changed (1..n, 0 never); dates in tags PAIR_k"),
            ("last_change", "last pair changed (1..n, 0 never); dates in tags PAIR_k"),
        ):
            writers.append(StripWriter(out_dir / f"{key}.tif", dtype=idx_dtype, nodata=idx_nodata, description=desc,
                                       tags=index_tags, partial_dir=partial_root, **common))
    except BaseException:
        for w in writers:
            w.discard()
        raise

    block = 512
    buf_rows = 2 * tile_size + block
    buf_top = 0
    acc = [np.zeros((buf_rows, W), np.float32) for _ in range(n_pairs)]
    vbuf = [np.zeros((buf_rows, W), bool) for _ in range(n_pairs)]
    wsum = np.zeros((buf_rows, W), np.float32)
    stats.strip_buffer_bytes = int(sum(a.nbytes for a in acc) + sum(v.nbytes for v in vbuf) + wsum.nbytes)

    timing = {"read": 0.0, "write": 0.0}
    stop = threading.Event()
    tile_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    write_q: queue.Queue = queue.Queue(maxsize=2)
    write_errors: list[BaseException] = []
    reader = threading.Thread(target=_series_reader, args=(stack, grid.tiles, tile_q, stop, timing), daemon=True,
                              name="changedet-series-read")
    writer = threading.Thread(target=_series_writer, args=(write_q, writers, timing, write_errors), daemon=True,
                              name="changedet-series-write")
    reader.start()
    writer.start()

    def _tiles() -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        while True:
            item = tile_q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            stats.tiles_read += 1
            yield item

    def _flush(upto: int) -> None:
        nonlocal buf_top
        n = upto - buf_top
        if n <= 0:
            return
        w = wsum[:n]
        count = np.zeros((n, W), np.int32)
        first = np.zeros((n, W), np.int32)
        last = np.zeros((n, W), np.int32)
        any_valid = np.zeros((n, W), bool)
        arrays: list[np.ndarray] = []
        for p in range(n_pairs):
            v = vbuf[p][:n] & (w > 0)
            prob = np.full((n, W), PROB_NODATA, np.float32)
            np.divide(acc[p][:n], w, out=prob, where=v)
            np.clip(prob, 0.0, 1.0, out=prob, where=v)
            mask = np.full((n, W), MASK_NODATA, np.uint8)
            changed = v & (prob >= thresholds[p])
            mask[v] = 0
            mask[changed] = 1
            arrays += [prob, mask]
            stats.pair_valid[p] += int(v.sum())
            stats.pair_changed[p] += int(changed.sum())
            any_valid |= v
            count += changed
            first[(first == 0) & changed] = p + 1
            last[changed] = p + 1
        for k in range(1, n_pairs + 1):
            stats.first_change_pixels[k - 1] += int((first == k).sum())
        stats.valid_pixels += int(any_valid.sum())
        stats.changed_pixels += int((count > 0).sum())
        for a in (count, first, last):
            out = a.astype(idx_dtype)
            out[~any_valid] = idx_nodata
            arrays.append(out)
        if write_errors:
            raise write_errors[0]
        write_q.put((buf_top, arrays))
        for buf in (*acc, *vbuf, wsum):
            buf[:-n] = buf[n:].copy() if n < buf_rows else buf[:0]
            buf[-n:] = 0
        buf_top = upto

    done = 0
    pixels_done = 0
    current_row = 0
    try:
        for batch in _batches(_tiles(), max(1, batch_size)):
            pvalid = [[it[2][i] & it[2][j] for it in batch] for (i, j) in pairs]
            used = [any(pvalid[p][k].any() for p in range(n_pairs)) for k in range(len(batch))]
            stats.tiles_skipped += used.count(False)
            probs: list[dict[int, np.ndarray]] = []
            for p, (i, j) in enumerate(pairs):
                todo = [k for k in range(len(batch)) if pvalid[p][k].any()]
                out: dict[int, np.ndarray] = {}
                if todo:
                    parts = [_zeroed(batch[k][1][i], batch[k][1][j], pvalid[p][k]) for k in todo]
                    t0 = time.perf_counter()
                    pr = predictors[p].predict(np.stack([x[0] for x in parts]), np.stack([x[1] for x in parts]),
                                               np.stack([x[2] for x in parts]))
                    stats.seconds_predict += time.perf_counter() - t0
                    stats.predictions += len(todo)
                    out = dict(zip(todo, pr, strict=True))
                probs.append(out)
            for tile, *_rest in batch:
                while tile.row > current_row:
                    final = grid.rows_final_after(current_row)
                    _flush(final if final >= H else final // block * block)
                    current_row += 1
            for k, (tile, _values, _valid) in enumerate(batch):
                if not used[k]:
                    continue
                rs, cs = tile.slices
                br = slice(rs.start - buf_top, rs.stop - buf_top)
                wt = grid.weights(tile)
                wsum[br, cs] += wt
                for p in range(n_pairs):
                    if k in probs[p]:
                        acc[p][br, cs] += probs[p][k] * wt
                        vbuf[p][br, cs] |= pvalid[p][k]
            done += len(batch)
            pixels_done += sum(t.height * t.width for t, *_ in batch)
            if progress is not None:
                progress(done, len(grid), pixels_done)
        while current_row < len(grid.row_starts):
            final = grid.rows_final_after(current_row)
            _flush(final if final >= H else final // block * block)
            current_row += 1
        _flush(H)
        write_q.put(None)
        writer.join()
        if write_errors:
            raise write_errors[0]
        t0 = time.perf_counter()
        for w in writers:
            rel = w.final_path.relative_to(out_dir)
            stats.paths[str(rel)] = str(w.finalize())
        stats.seconds_finalize = time.perf_counter() - t0
        shutil.rmtree(partial_root, ignore_errors=True)
    except BaseException:
        stop.set()
        with contextlib.suppress(queue.Full):
            write_q.put_nowait(None)
        writer.join(timeout=30)
        for w in writers:
            w.discard()
        shutil.rmtree(partial_root, ignore_errors=True)
        raise
    finally:
        stop.set()
        reader.join(timeout=30)
    stats.seconds_read, stats.seconds_write = timing["read"], timing["write"]
    stats.seconds_total = time.perf_counter() - t_start
    return stats


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
        """Copy every output (pair folders included) into ``output_dir``; return it."""
        dest = Path(output_dir)
        dest.mkdir(parents=True, exist_ok=True)
        items = [p for p in self.output_dir.iterdir() if not p.name.startswith(".")]
        clash = [p.name for p in items if (dest / p.name).exists()]
        if clash and not overwrite:
            from changedet.errors import OutputExistsError

            raise OutputExistsError(f"{dest}: {', '.join(clash)} exist(s); pass overwrite=True to replace them")
        for p in items:
            target = dest / p.name
            if p.is_dir():
                shutil.copytree(p, target, dirs_exist_ok=True)
            else:
                shutil.copy2(p, target)
        return dest

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


def pair_dir_name(index: int, before_label: str, after_label: str) -> str:
    """Folder of pair ``index`` (1-based): ``pair_01_2019-05-01_2020-05-01``.

    >>> pair_dir_name(1, "2019-05-01", "2020-05-01")
    'pair_01_2019-05-01_2020-05-01'
    """
    return f"pair_{index:02d}_{before_label}_{after_label}"


# ---------------------------------------------------------------------------------------------------------------
# styles, polygons, figure
# ---------------------------------------------------------------------------------------------------------------
def date_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` colours along viridis (early dark purple -> late yellow), one per pair.

    >>> date_colors(1), len(date_colors(5))
    ([(33, 145, 140)], 5)
    """
    out = []
    for k in range(n):
        t = 0.5 if n == 1 else k / (n - 1)
        for (t0, c0), (t1, c1) in itertools.pairwise(_VIRIDIS):
            if t <= t1:
                f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                out.append(tuple(round(a + f * (b - a)) for a, b in zip(c0, c1, strict=True)))
                break
    return out  # type: ignore[return-value]


def paletted_style_qml(entries: Sequence[tuple[int, tuple[int, int, int], str]]) -> str:
    """QGIS style (QML) of a class raster: a paletted renderer with one colour and legend label per value.

    ``entries`` are ``(value, (r, g, b), label)``; other values (0 = never changed, nodata) are transparent.

    >>> qml = paletted_style_qml([(1, (68, 1, 84), "2020-05-01"), (2, (253, 231, 37), "2021-05-01")])
    >>> 'type="paletted"' in qml and 'label="2021-05-01"' in qml
    True
    """
    from changedet.export.qgis import _el, _minmax_origin, _pipe, _qgis_root, _to_string

    root = _qgis_root(hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0")
    r = _el(None, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor="")
    _minmax_origin(r, "None")
    pal = _el(r, "colorPalette")
    for value, rgb, label in entries:
        _el(pal, "paletteEntry", value=str(int(value)), color="#{:02x}{:02x}{:02x}".format(*rgb), alpha="255",
            label=label)
    _el(r, "colorramp", name="[source]", type="randomcolors")
    _pipe(root, r)
    _el(root, "blendMode", 0)
    return _to_string(root)


def _index_entries(pairs: Sequence[SeriesPair]) -> list[tuple[int, tuple[int, int, int], str]]:
    colors = date_colors(len(pairs))
    return [(p.index, colors[k], f"{p.after_label} (pair {p.index}: {p.label})") for k, p in enumerate(pairs)]


def _count_entries(n_pairs: int) -> list[tuple[int, tuple[int, int, int], str]]:
    colors = date_colors(n_pairs)
    return [(k, colors[k - 1], f"changed {k} time{'s' if k > 1 else ''}") for k in range(1, n_pairs + 1)]


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


def _save_quicklook(folder: Path, pairs: Sequence[SeriesPair], labels: Sequence[str], path: Path,
                    max_size: int = 900) -> None:
    """Two panels: the first-change pair (one colour per date, legend of dates) and the change count."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(folder / "first_change.tif") as ds:
        scale = min(1.0, max_size / max(ds.height, ds.width))
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        first = ds.read(1, out_shape=shape)
        nodata = ds.nodata
        b = ds.bounds
    with rasterio.open(folder / "change_count.tif") as ds:
        count = ds.read(1, out_shape=shape)
    n = len(pairs)
    colors = [(0.93, 0.93, 0.93)] + [tuple(c / 255 for c in rgb) for rgb in date_colors(n)]
    cmap = ListedColormap(colors)
    extent = (b.left, b.right, b.bottom, b.top)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    shown = np.ma.masked_equal(first.astype(np.int32), int(nodata))
    axes[0].imshow(shown, cmap=cmap, vmin=-0.5, vmax=n + 0.5, interpolation="nearest", extent=extent)
    axes[0].set_title("first change (date first seen changed)")
    handles = [Patch(color=colors[0], label="no change")] + [
        Patch(color=colors[p.index], label=f"{p.after_label} ({p.label})") for p in pairs]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    cshown = np.ma.masked_equal(count.astype(np.int32), int(nodata))
    im = axes[1].imshow(cshown, cmap=ListedColormap(colors), vmin=-0.5, vmax=n + 0.5, interpolation="nearest",
                        extent=extent)
    axes[1].set_title(f"number of changes ({n} pairs)")
    fig.colorbar(im, ax=axes[1], ticks=list(range(n + 1)), shrink=0.8)
    fig.suptitle(f"changedet series: {labels[0]} → {labels[-1]} ({len(labels)} dates)")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _write_series_project(out: Path, stack_sources: Sequence[str], pairs: Sequence[SeriesPair]) -> None:
    """``project.qgs``: first and last dates as RGB, polygons, and first_change styled per date."""
    import xml.etree.ElementTree as ET

    from changedet.export import write_qgis_project
    from changedet.export.qgis import DOCTYPE

    inputs = [Path(n).resolve() if Path(n).is_file() else None for n in (stack_sources[0], stack_sources[-1])]
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
    tile_size: int = 512,
    overlap: int = 64,
    blend: str = "cosine",
    batch_size: int = 1,
    threads: int | None = None,
    precision: str = "float32",
    device: str = "cpu",
    indexes: Sequence[int] | None = None,
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
    progress: Callable[[int, int, int], None] | None = None,
) -> SeriesResult:
    """Detect what changed, and when, in a series of N >= 2 rasters of one site.

    The options are those of :func:`changedet.api.detect` (same names, same meaning, applied to every pair); the
    outputs are described in :mod:`changedet.series`.

    Parameters
    ----------
    rasters
        Paths (any GDAL raster) or open rasterio datasets of the dates, in any order.
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
    tile_size, overlap, blend, batch_size, threads, precision, device, indexes, coregister, match_histograms
        As in :func:`changedet.api.detect`; every later date is aligned (and co-registered, histogram-matched)
        onto the first date.
    min_area, simplify, fill_holes, vectorize, geojson_crs
        Vectorisation of the pixels that changed at least once (see :mod:`changedet.series` for the attributes).
    qgis_project, quicklook, overwrite
        As in :func:`changedet.api.detect`.
    resume
        Not supported for series (an :class:`~changedet.errors.InputError` says so); rerun instead.
    progress
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

    Examples
    --------
    >>> import tempfile
    >>> series = detect_series(["a_2019-05-01.tif", "b_2020-05-01.tif", "c_2021-05-01.tif"],
    ...                        output_dir=tempfile.mkdtemp(), method="cva")  # doctest: +SKIP
    >>> [p.label for p in series.pairs]  # doctest: +SKIP
    ['2019-05-01/2020-05-01', '2020-05-01/2021-05-01']
    """
    from changedet.api import METHODS, _check_outputs, _peek_meta, _sample_for_fit, _select_bands
    from changedet.inference import ScorerPredictor, TorchPredictor

    t0 = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if resume:
        raise InputError("--resume is not supported with more than two dates; rerun the series (with --overwrite)")
    if method != "model" and model is not None:
        raise InputError(f"--model {model} is only used with --method model, not {method}")

    sources, infos = order_by_date(rasters, keep_order=keep_order)
    labels = [_label(i, k) for k, i in enumerate(infos)]
    if len(set(labels)) != len(labels):  # same date twice: make the folder names unique
        labels = [f"{lab}-{k + 1}" if labels.count(lab) > 1 else lab for k, lab in enumerate(labels)]
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
    _check_outputs(out, names, overwrite, False)

    # -- model or method (the first date decides the bands, as BEFORE does in detect) ---------------------------
    source_names = [_source_name(s) for s in sources]
    meta = net = None
    select = list(indexes) if indexes else None
    if method == "model":
        from changedet.models.bundled import resolve_model

        first = infos[0]
        pixel = abs(first.transform.a) if first.georeferenced else None
        if pixel is not None and first.crs is not None and first.crs.is_geographic:
            pixel = pixel * 111_320.0
        n_in = len(select) if select else first.count
        peek = _peek_meta(model, checkpoint, n_in, pixel)
        if peek is not None:
            select = _select_bands(first, peek, select, source_names[0])
            n_in = len(select) if select else first.count
        net, meta = resolve_model(model, band_count=n_in, pixel_size=pixel, checkpoint=checkpoint)
        select = _select_bands(first, meta, select, source_names[0])
        if threads:
            import torch

            torch.set_num_threads(int(threads))

    timings: dict[str, float] = {}
    stack = open_series(sources, indexes=select, coregister=coregister, match_histograms=match_histograms,
                        ordered=(sources, infos))
    staging = out / f".changedet-staging-{os.getpid()}"
    try:
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
                                                 name=meta.name or meta.architecture))  # type: ignore[union-attr]
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
                "metrics": meta.metrics, "precision": precision, "device": device,  # type: ignore[union-attr]
            }
        else:
            model_report = {"method": method, "name": method, "calibrated_threshold": thresholds[0]}

        # -- stream every pair ----------------------------------------------------------------------------------
        staging.mkdir(parents=True, exist_ok=True)
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
        index_tags = dict(base_tags, N_PAIRS=str(len(pairs_idx)), DATES=",".join(labels))
        for k, (_i, j) in enumerate(pairs_idx):
            index_tags[f"PAIR_{k + 1}"] = pair_labels[k]
            index_tags[f"PAIR_{k + 1}_DATE"] = labels[j]
        stats = predict_series(stack, pairs_idx, predictors, out_dir=staging, pair_dirs=dirs, thresholds=thresholds,
                               tile_size=tile_size, overlap=overlap, blend=blend, batch_size=batch_size,
                               progress=progress, pair_tags=pair_tags, index_tags=index_tags)
        timings["predict"] = stats.seconds_total
        if stats.valid_pixels == 0:
            warnings.warn(f"{', '.join(source_names)}: no pixel has valid data in any compared pair; the outputs are "
                          "empty", NothingToCompareWarning, stacklevel=2)
        px_area = stack.pixel_area_m2()

        def _area(px: int) -> float | None:
            return round(px * px_area, 2) if px_area else None

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
                         "valid_area_m2": _area(valid), "changed_area_m2": _area(changed)},
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
            write_vectors(polygons, staging / SERIES_OUTPUT_NAMES["gpkg"], staging / SERIES_OUTPUT_NAMES["geojson"],
                          geojson_crs=geojson_crs if stack.crs is not None else None, overwrite=True)
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
                {"index": k, "label": labels[k], "source": source_names[k], "date": _iso(infos[k].date),
                 "date_source": getattr(infos[k], "date_source", None),
                 **{key: v for key, v in infos[k].to_dict().items()
                    if key in ("driver", "crs", "width", "height", "count", "dtypes", "nodata", "res")}}
                for k in range(len(infos))
            ],
            "dates": labels,
            "grid": {"crs": stack.crs.to_string() if stack.crs else None, "transform": list(stack.transform)[:6],
                     "width": stack.width, "height": stack.height, "bands": stack.band_names},
            "alignment": [r.to_dict() for r in stack.pair_reports],
            "model": model_report,
            "threshold": thresholds[0],
            "thresholds": thresholds,
            "tiling": {"tile_size": tile_size, "overlap": overlap, "blend": blend, "batch_size": batch_size},
            "vectorize": {"min_area_m2": min_area, "simplify_m": simplify, "fill_holes_m2": fill_holes,
                          "geojson_crs": geojson_crs,
                          "attributes": "first_change/first_change_date/last_change_date/n_changes: majority "
                                        "(mode) over the polygon's changed pixels (ties: the earlier pair); "
                                        "earliest_change_date: minimum; max_changes: maximum"} if vectorize else None,
            "pairs": [p.to_dict() for p in pairs],
            "index_legend": {str(p.index): {"pair": p.label, "date": p.after_label} for p in pairs},
            "summary": {
                "n_dates": len(labels), "n_pairs": len(pairs), "mode": mode,
                "valid_pixels": valid, "changed_pixels": changed,
                "changed_percent": round(100.0 * changed / valid, 4) if valid else 0.0,
                "valid_area_m2": _area(valid), "changed_area_m2": _area(changed),
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
        for item in sorted(staging.iterdir()):
            if item.name == SERIES_OUTPUT_NAMES["report"] or item.name.startswith("."):
                continue
            target = out / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        if qgis_project:
            _write_series_project(out, source_names, [_moved(p, staging, out) for p in pairs])
        os.replace(staging / SERIES_OUTPUT_NAMES["report"], out / SERIES_OUTPUT_NAMES["report"])
        paths = {k: out / v for k, v in SERIES_OUTPUT_NAMES.items() if v in names and (out / v).exists()}
        return SeriesResult(output_dir=out, paths=paths, report=report, pairs=[_moved(p, staging, out) for p in pairs],
                            labels=labels, dates=list(stack.dates), crs=stack.crs, transform=stack.transform,
                            _polygons=polygons, _tmp=tmp_holder)
    finally:
        stack.close()
        shutil.rmtree(staging, ignore_errors=True)


def _moved(pair: SeriesPair, staging: Path, out: Path) -> SeriesPair:
    pair.paths = {k: out / v.relative_to(staging) if v.is_relative_to(staging) else v for k, v in pair.paths.items()}
    return pair


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
