"""Ordering a series by date and aligning every date onto the first date's grid (:class:`SeriesStack`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
from rasterio.windows import Window

from changedet.errors import InputError, NoOverlapError, PairWarning

if TYPE_CHECKING:  # pragma: no cover
    from rasterio.io import DatasetReader

MODES = ("consecutive", "reference")

log = logging.getLogger(__name__)

__all__ = ["MODES", "SeriesStack", "open_series", "order_by_date", "series_pairs"]


# ---------------------------------------------------------------------------------------------------------------
# ordering and alignment
# ---------------------------------------------------------------------------------------------------------------
def _label(info: Any, index: int) -> str:
    if info.date is not None:
        return info.date.isoformat()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(info.path).stem).strip("-")
    return stem or f"date{index + 1}"


def order_by_date(rasters: Sequence[Any], *, keep_order: bool = False,
                  mode: str = "consecutive") -> tuple[list[Any], list[Any]]:
    """Order rasters by acquisition date; return ``(sources, infos)`` in that order.

    Parameters
    ----------
    rasters
        Paths or open rasterio datasets.
    keep_order
        Keep the order given (dates may then be unknown; a :class:`~changedet.errors.PairWarning` is issued for
        each compared pair whose AFTER, by known dates, does not come after its BEFORE).
    mode
        The pairs that will be compared (:func:`series_pairs`): the warnings about the order of the dates are for
        those pairs, e.g. each date against the first with ``"reference"``.

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
        _warn_about_pair_dates(infos, mode, stacklevel=4)
        return sources, infos
    unknown = [i.path for i in infos if i.date is None]
    if unknown:
        raise InputError(
            f"acquisition date unknown for {', '.join(unknown)}: no date in the metadata (ACQUISITION_DATE, "
            "DATE_ACQUIRED, SENSING_TIME, TIFFTAG_DATETIME, ...) nor in the file name. Put the date in the name "
            "(e.g. site_2019-05-01.tif), tag it (`gdal_edit.py -mo ACQUISITION_DATE=2019-05-01 FILE`), or pass "
            "--keep-order (keep_order=True) to use the order given"
        )
    known: list[_dt.date] = [i.date for i in infos if i.date is not None]  # all known here
    order = sorted(range(len(infos)), key=lambda k: known[k])  # stable: ties keep the order given
    infos = [infos[k] for k in order]
    _warn_about_pair_dates(infos, mode, stacklevel=4)  # sorted: only dates that tie
    return [sources[k] for k in order], infos


def pair_date_warnings(infos: Sequence[Any], mode: str) -> list[str]:
    """What is wrong with the dates of each pair compared in ``mode`` (infos in the order compared): its AFTER (by
    known dates) does not come after its BEFORE. The dates the pair really compares, not each date against the
    first; recorded in a series' ``report.json`` (``date_warnings``)."""
    found: list[str] = []
    pairs = series_pairs(len(infos), mode) if mode in MODES else series_pairs(len(infos))
    for b, a in pairs:
        date_b, date_a = infos[b].date, infos[a].date
        if date_b is None or date_a is None:
            continue
        if date_a == date_b:
            found.append(f"{infos[b].name} and {infos[a].name} have the same date ({date_a}); they are compared "
                         "in the order given")
        elif date_a < date_b:
            found.append(f"{infos[a].name} ({date_a}) does not come after {infos[b].name} ({date_b}), the BEFORE it "
                         "is compared with, but keep_order (--keep-order) keeps the order given; drop it to sort "
                         "the dates")
    return found


def _warn_about_pair_dates(infos: Sequence[Any], mode: str, *, stacklevel: int) -> None:
    """A :class:`PairWarning` for each of :func:`pair_date_warnings`."""
    for message in pair_date_warnings(infos, mode):
        warnings.warn(message, PairWarning, stacklevel=stacklevel)


#: open_pair's warnings about the order of BEFORE and AFTER (io.pair_analysis), meaningless for the alignment of a
#: date onto the first date's grid: a series warns per compared pair instead (:func:`_warn_about_pair_dates`).
_DATE_ORDER_WARNING = re.compile(r".*: acquired (\S+ before .*AFTER should be the later date|on the same date as )",
                                 re.DOTALL)


def _drop_date_order_warnings(report: Any) -> None:
    """Remove the warnings about the order of the two dates from an alignment report (see above)."""
    warned = list(getattr(report, "warnings", None) or [])
    classes = list(getattr(report, "warning_classes", None) or [])
    if not warned or len(classes) != len(warned):
        return
    keep = [(m, c) for m, c in zip(warned, classes, strict=True) if not _DATE_ORDER_WARNING.match(m)]
    report.warnings = [m for m, _ in keep]
    report.warning_classes = [c for _, c in keep]


def _given_positions(given: Sequence[Any], ordered: Sequence[Any]) -> list[int]:
    """Where each of ``ordered`` (:func:`order_by_date`'s, the very objects of ``given``) stands in ``given``."""
    used: set[int] = set()
    out: list[int] = []
    for src in ordered:
        k = next(k for k, g in enumerate(given) if g is src and k not in used)
        used.add(k)
        out.append(k)
    return out


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


def per_date_lists(indexes: Any) -> TypeGuard[Sequence[Sequence[int]]]:
    """Whether ``indexes`` holds one list of bands per date (``[[4, 3, 2], [3, 2, 1], ...]``) rather than one list
    for every date."""
    return bool(indexes) and all(isinstance(i, Sequence) and not isinstance(i, (str, bytes)) for i in indexes)


def open_series(
    rasters: Sequence[Any],
    *,
    keep_order: bool = False,
    indexes: Sequence[int] | Sequence[Sequence[int]] | None = None,
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
        1-based bands used in every date, or one list of them per raster in the order ``rasters`` are given (each
        list follows its raster into date order; with ``ordered``, in the order of its sources).
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
    if ordered is None and per_date_lists(indexes):
        given = list(rasters)
        if len(indexes) == len(given):  # (else refused below, naming both numbers)
            indexes = [list(indexes[k]) for k in _given_positions(given, sources)]  # type: ignore[index, arg-type]
    owned: list[Any] = []
    pairs: list[Any] = []
    try:
        ref = sources[0] if isinstance(sources[0], DatasetReader) else open_raster(sources[0])
        if ref is not sources[0]:
            owned.append(ref)
        per_date = per_date_lists(indexes)
        if per_date and len(indexes) != len(sources):  # type: ignore[arg-type]
            raise InputError(f"indexes: {len(indexes)} lists of bands for {len(sources)} dates; give one per date")  # type: ignore[arg-type]
        for k, src in enumerate(sources[1:], start=1):
            idx: Any = (list(indexes[0]), list(indexes[k])) if per_date else (list(indexes) if indexes else None)  # type: ignore[index, arg-type]
            with warnings.catch_warnings():
                # date k is aligned onto the first date's grid, but compared with the BEFORE of its pair: the
                # order of the dates is warned about per compared pair (order_by_date), not against the first
                warnings.filterwarnings("ignore", message=_DATE_ORDER_WARNING.pattern, category=PairWarning)
                pair = open_pair(ref, src, indexes=idx, resampling=resampling, coregister=coregister,
                                 match_histograms=match_histograms)
            pairs.append(pair)
            _drop_date_order_warnings(pair.report)
        return SeriesStack(list(sources), list(infos), ref, pairs, owned)
    except BaseException:
        for p in pairs:
            p.close()
        for ds in owned:
            ds.close()
        raise
