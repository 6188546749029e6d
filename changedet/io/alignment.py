"""Can BEFORE and AFTER be compared, and how: pair checks and the common grid.

:func:`check_pair` inspects two rasters and collects every problem (the pair cannot be compared) and every warning
(it can, with a caveat) in a :class:`PairReport`. :func:`open_pair` (alias :func:`align`) returns an
:class:`AlignedPair`: AFTER on BEFORE's pixel grid, clipped to the common extent, read window by window.

The common grid is BEFORE's grid (its CRS, pixel size and pixel edges), restricted to the part AFTER covers.
BEFORE is never resampled. AFTER is read directly when it already lies on that grid (same CRS and pixel size,
origin an integer number of pixels away); otherwise it goes through a :class:`rasterio.vrt.WarpedVRT` (bilinear for
imagery by default; use ``resampling="nearest"`` for masks and classes) and a
:class:`~changedet.errors.ReprojectedInputWarning` says why.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from changedet.errors import (
    CoregistrationWarning,
    InputError,
    NoOverlapError,
    NotGeoreferencedError,
    NothingToCompareWarning,
    PairMismatchError,
    PairWarning,
    RasterReadError,
    ReprojectedInputWarning,
    root_message,
)
from changedet.io.coregister import COREGISTRATION_WARN_PX, ShiftEstimate, estimate_pair_shift
from changedet.io.raster import RasterInfo, crs_to_string, open_raster, raster_info

__all__ = ["AlignedPair", "PairReport", "align", "check_pair", "open_pair", "pixel_size_m"]

PathOrDataset: TypeAlias = str | os.PathLike[str] | DatasetReader
Indexes: TypeAlias = Sequence[int] | tuple[Sequence[int], Sequence[int]] | None

# A raster without georeferencing is handled in a made-up planar CRS with y up, so that GDAL's warper works.
_PIXEL_CRS = CRS.from_epsg(3857)
_PIXEL_TRANSFORM = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
_EPS_PX = 1e-3
_MIN_VALID_WARN = 0.5


@dataclass
class PairReport:
    """Everything :func:`check_pair` found about a BEFORE/AFTER pair.

    ``problems`` prevent the comparison (``ok`` is False); ``warnings`` do not; ``notes`` are facts worth
    showing (sizes, resampling, shift). Messages name the file, what was found, what was expected and the fix.
    """

    before: str
    after: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    before_info: RasterInfo | None = None
    after_info: RasterInfo | None = None
    overlap: float | None = None
    overlap_after: float | None = None
    common_bounds: tuple[float, float, float, float] | None = None
    crs: CRS | None = None
    transform: Affine | None = None
    width: int | None = None
    height: int | None = None
    resampled: bool = False
    valid_fraction: float | None = None
    shift: ShiftEstimate | None = None
    indexes: tuple[list[int], list[int]] | None = None
    band_names: list[str] = field(default_factory=list)
    problem_classes: list[type[InputError]] = field(default_factory=list, repr=False)
    warning_classes: list[type[Warning]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """True when the pair can be compared (no problems)."""
        return not self.problems

    def problem(self, message: str, cls: type[InputError] = PairMismatchError) -> None:
        """Record a problem (and the error class :meth:`raise_for_problems` raises for it)."""
        self.problems.append(message)
        self.problem_classes.append(cls)

    def warn(self, message: str, cls: type[Warning] = PairWarning) -> None:
        """Record a warning (and the warning class :func:`open_pair` emits for it)."""
        self.warnings.append(message)
        self.warning_classes.append(cls)

    def raise_for_problems(self) -> None:
        """Raise the error class of the first problem, with every problem in the message; no-op when ``ok``."""
        if self.ok:
            return
        cls = self.problem_classes[0] if self.problem_classes else PairMismatchError
        if len(self.problems) == 1:
            raise cls(self.problems[0])
        raise cls(
            f"{self.before} / {self.after}: the pair cannot be compared:\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )

    def emit_warnings(self, stacklevel: int = 3) -> None:
        """Issue each recorded warning with :func:`warnings.warn` and its class."""
        for msg, cls in zip(self.warnings, self.warning_classes, strict=False):
            warnings.warn(msg, cls, stacklevel=stacklevel)

    def format(self) -> str:
        """Human-readable multi-line summary (what ``changedet check`` prints)."""
        lines = [f"BEFORE {self.before}", f"AFTER  {self.after}"]
        for label, info in (("before", self.before_info), ("after", self.after_info)):
            if info is not None:
                lines.append(f"  {label:<6} {_describe_info(info)}")
        if self.width is not None:
            lines.append(
                f"  common grid: {self.width} x {self.height} px, CRS {crs_to_string(self.crs) or 'none (pixels)'}, "
                f"pixel {_fmt_res(self.transform)}"
            )
        if self.overlap is not None:
            lines.append(
                f"  overlap: {_pct(self.overlap)} of BEFORE, {_pct(self.overlap_after or 0)} of AFTER"
                + (
                    f"; valid in both dates: {_pct(self.valid_fraction)}"
                    if self.valid_fraction is not None
                    else ""
                )
            )
        if self.shift is not None:
            lines.append(f"  residual shift: {self.shift.describe()}")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(
            "OK: the pair can be compared" if self.ok else f"NOT OK: {len(self.problems)} problem(s)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "before": self.before,
            "after": self.after,
            "ok": self.ok,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "before_info": self.before_info.to_dict() if self.before_info else None,
            "after_info": self.after_info.to_dict() if self.after_info else None,
            "overlap": self.overlap,
            "overlap_after": self.overlap_after,
            "common_bounds": list(self.common_bounds) if self.common_bounds else None,
            "grid": None
            if self.width is None
            else {
                "crs": crs_to_string(self.crs),
                "transform": list(self.transform)[:6] if self.transform is not None else None,
                "width": self.width,
                "height": self.height,
            },
            "resampled": self.resampled,
            "valid_fraction": self.valid_fraction,
            "shift": self.shift.to_dict() if self.shift else None,
            "indexes": {"before": self.indexes[0], "after": self.indexes[1]} if self.indexes else None,
            "band_names": list(self.band_names),
        }


def _pct(fraction: float) -> str:
    """A fraction as a percentage that never rounds a small non-zero share to 0.0 %.

    >>> _pct(0.5), _pct(0.000381), _pct(0.0), _pct(0.99996)
    ('50.0%', '0.038%', '0.0%', '99.996%')
    """
    pct = 100.0 * float(fraction)
    if pct == 0.0 or 0.1 <= pct <= 99.9:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%" if pct < 0.1 else f"{pct:.5g}%"


def _fmt_res(t: Affine | None, digits: int = 6) -> str:
    """Pixel width x height in CRS units (the lengths of the pixel's sides, so rotated grids too)."""
    if t is None:
        return "?"
    return f"{math.hypot(t.a, t.d):.{digits}g} x {math.hypot(t.b, t.e):.{digits}g}"


def _describe_info(info: RasterInfo) -> str:
    crs = crs_to_string(info.crs) or "no CRS"
    if crs and len(crs) > 40:
        crs = crs[:37] + "..."
    date = info.date.isoformat() if info.date else "date unknown"
    return (
        f"{info.width} x {info.height} px, {info.count} band(s) {','.join(sorted(set(info.dtypes)))}, {crs}, "
        f"pixel {info.res[0]:.6g} x {info.res[1]:.6g}, nodata {info.nodata}, {date}"
    )


def pixel_size_m(crs: CRS | None, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """Pixel (height, width) in metres at the centre of a grid; geodesic for a geographic CRS; None without CRS."""
    if crs is None:
        return None
    if crs.is_geographic:
        geod = _geod(crs)
        cx, cy = transform @ (width / 2, height / 2)
        x1, y1 = transform @ (width / 2 + 1, height / 2)
        x2, y2 = transform @ (width / 2, height / 2 + 1)
        _, _, dx = geod.inv(cx, cy, x1, y1)
        _, _, dy = geod.inv(cx, cy, x2, y2)
        return float(dy), float(dx)
    factor = _linear_factor(crs)
    return (math.hypot(transform.d, transform.e) * factor, math.hypot(transform.a, transform.b) * factor)


def _linear_factor(crs: CRS) -> float:
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - unknown units: assume metres
        return 1.0


def _geod(crs: CRS) -> Any:
    from pyproj import CRS as PCRS

    return PCRS.from_user_input(crs.to_wkt()).get_geod()


# --------------------------------------------------------------------------------------------------------------
# Analysis shared by check_pair and open_pair


@dataclass
class _Plan:
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    before_window: Window
    after_window: Window | None  # direct read; None: warp
    idx_b: list[int]
    idx_a: list[int]
    after_crs: CRS | None
    after_transform: (
        Affine | None
    )  # source georeferencing for the warper (pixel frame when not georeferenced)


def _same_colours(info_b: RasterInfo, ib: list[int], info_a: RasterInfo, ia: list[int]) -> bool:
    """Whether the selected bands of both dates stand for the same colours, each known (:func:`band_colours`)."""
    from changedet.io.bands import band_colours

    cb, ca = band_colours(info_b), band_colours(info_a)
    pick_b = [cb[i - 1] if i <= len(cb) else "" for i in ib]
    pick_a = [ca[i - 1] if i <= len(ca) else "" for i in ia]
    return all(pick_b) and pick_b == pick_a


def _normalize_indexes(
    indexes: Indexes, nb: int, na: int, report: PairReport
) -> tuple[list[int], list[int]] | None:
    if indexes is None:
        if nb != na:
            report.problem(
                f"{_base(report.after)}: {na} band(s) but {_base(report.before)} has {nb}; the bands must "
                "correspond. Select "
                f"matching bands with indexes=[...] (CLI: --indexes 1,2,3, or --indexes 1,2,3:3,2,1 for different "
                f"orders).",
                PairMismatchError,
            )
            return None
        return list(range(1, nb + 1)), list(range(1, na + 1))
    seq: list[Any] = list(indexes)
    if len(seq) == 2 and all(isinstance(s, Sequence) and not isinstance(s, str) for s in seq):
        ib, ia = [int(i) for i in seq[0]], [int(i) for i in seq[1]]
    else:
        ib = ia = [int(i) for i in seq]
    ok = True
    for name, idx, count in ((_base(report.before), ib, nb), (_base(report.after), ia, na)):
        bad = [i for i in idx if not 1 <= i <= count]
        if bad:
            report.problem(
                f"{name}: band index {bad} out of range; it has {count} band(s) and indexes are 1-based (1..{count}).",
                PairMismatchError,
            )
            ok = False
    if not ib or not ia:
        report.problem("indexes: no band selected; give at least one 1-based band index.", PairMismatchError)
        ok = False
    if len(ib) != len(ia):
        report.problem(
            f"indexes: {len(ib)} band(s) selected in {_base(report.before)} but {len(ia)} in {_base(report.after)}; "
            "select the same "
            "number of corresponding bands.",
            PairMismatchError,
        )
        ok = False
    return (ib, ia) if ok else None


def _base(path: str) -> str:
    return os.path.basename(path) or path


def _band_names(info_b: RasterInfo, info_a: RasterInfo, ib: list[int], ia: list[int]) -> list[str]:
    db = [info_b.descriptions[i - 1] for i in ib]
    da = [info_a.descriptions[i - 1] for i in ia]
    if all(db):
        return [str(d) for d in db]
    if all(da):
        return [str(d) for d in da]
    return [f"B{i}" for i in ib]


def _footprint_after_in_before(ds_b: DatasetReader, ds_a: DatasetReader) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    if ds_a.crs == ds_b.crs:
        return tuple(ds_a.bounds)  # type: ignore[return-value]
    return transform_bounds(ds_a.crs, ds_b.crs, *ds_a.bounds, densify_pts=21)


def _footprint_intersection(
    ds_b: DatasetReader, ds_a: DatasetReader, before_bounds: Sequence[float], per_edge: int = 64
) -> tuple[tuple[float, float, float, float], float, float] | None:
    """Bounds and area of (AFTER's footprint in BEFORE's CRS) & BEFORE's bounds, and the footprint's area.

    The footprint is AFTER's outline densified to ``per_edge`` points per edge and projected. None when it cannot
    be computed reliably (projection failure, a footprint that wraps around the antimeridian, an empty result
    although the bounding boxes overlap): the caller then keeps the bounding-box intersection, which is safe.
    """
    import shapely
    from rasterio.warp import transform as warp_transform

    left, bottom, right, top = ds_a.bounds
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)
    xs = np.concatenate([left + t * (right - left), np.full(per_edge, right), right - t * (right - left),
                         np.full(per_edge, left)])
    ys = np.concatenate([np.full(per_edge, top), top - t * (top - bottom), np.full(per_edge, bottom),
                         bottom + t * (top - bottom)])
    try:
        px, py = warp_transform(ds_a.crs, ds_b.crs, xs.tolist(), ys.tolist())
        ring = np.column_stack([px, py])
        if not np.isfinite(ring).all():
            return None
        footprint = shapely.Polygon(ring)
        if not footprint.is_valid:  # self-intersecting (e.g. wrapped around the antimeridian)
            return None
        common = footprint.intersection(shapely.box(*before_bounds))
    except Exception:  # noqa: BLE001 - any projection/geometry failure: fall back on bounding boxes
        return None
    if common.is_empty or common.area <= 0:
        return None
    return tuple(float(v) for v in common.bounds), float(common.area), float(footprint.area)  # type: ignore[return-value]


def _analyze(
    ds_b: DatasetReader, ds_a: DatasetReader, indexes: Indexes, resampling: str
) -> tuple[PairReport, _Plan | None]:
    info_b, info_a = raster_info(ds_b), raster_info(ds_a)
    report = PairReport(before=info_b.path, after=info_a.path, before_info=info_b, after_info=info_a)
    nb_name, na_name = info_b.name, info_a.name

    # bands, dtypes, names ---------------------------------------------------------------------------------------
    idx = _normalize_indexes(indexes, info_b.count, info_a.count, report)
    if idx is not None:
        ib, ia = idx
        report.indexes = (ib, ia)
        report.band_names = _band_names(info_b, info_a, ib, ia)
        tb = sorted({info_b.dtypes[i - 1] for i in ib})
        ta = sorted({info_a.dtypes[i - 1] for i in ia})
        if tb != ta:
            report.warn(
                f"{nb_name}: data type {','.join(tb)} differs from {na_name} ({','.join(ta)}); both are read as "
                "float32 but their value ranges may not be comparable: consider match_histograms=True "
                "(--match-histograms) or rescaling one date.",
                PairWarning,
            )
        db = [info_b.descriptions[i - 1] for i in ib]
        da = [info_a.descriptions[i - 1] for i in ia]
        if all(db) and all(da) and [str(d).lower() for d in db] != [str(d).lower() for d in da] and not (
                _same_colours(info_b, ib, info_a, ia)):  # B04 and SR_B4 are both red: no need to check them
            report.warn(
                f"{na_name}: band names {list(da)} differ from {nb_name} ({list(db)}); check that the bands "
                "correspond, or pick each date's bands: --indexes with one list per raster separated by ':', in the "
                "order given, such as 1,2,3:3,2,1 for two rasters or 1,2,3:3,2,1:1,2,3 for three (in Python one "
                "list per raster: indexes=([1, 2, 3], [3, 2, 1])).",
                PairWarning,
            )

    # nodata ---------------------------------------------------------------------------------------------------
    if info_b.nodata != info_a.nodata and not (
        info_b.nodata is not None
        and info_a.nodata is not None
        and math.isnan(info_b.nodata)
        and math.isnan(info_a.nodata)
    ):
        report.notes.append(
            f"nodata differs: {nb_name} {info_b.nodata}, {na_name} {info_a.nodata}; each date's own nodata is masked."
        )
    for info in (info_b, info_a):
        if info.nodata is not None and not math.isnan(info.nodata):
            for dt in info.dtypes:
                if np.dtype(dt).kind in "iu" and not _fits(info.nodata, dt):
                    report.warn(
                        f"{info.name}: nodata {info.nodata} is outside the range of its data type {dt}, so it never "
                        "matches a pixel; fix it with `rio edit-info --nodata VALUE`.",
                        PairWarning,
                    )
                    break

    # dates ------------------------------------------------------------------------------------------------------
    if info_b.date and info_a.date:
        if info_a.date < info_b.date:
            report.warn(
                f"{na_name}: acquired {info_a.date} before {nb_name} ({info_b.date}); AFTER should be the later "
                "date. Swap the two inputs unless this is intended.",
                PairWarning,
            )
        elif info_a.date == info_b.date:
            report.warn(f"{na_name}: acquired on the same date as {nb_name} ({info_a.date}).", PairWarning)
        else:
            report.notes.append(
                f"dates: {info_b.date} -> {info_a.date} ({(info_a.date - info_b.date).days} days)"
            )
    else:
        missing = [i.name for i in (info_b, info_a) if i.date is None]
        report.notes.append(
            f"acquisition date unknown for {', '.join(missing)} (no date tag or date in the name)"
        )

    # georeferencing and grid ---------------------------------------------------------------------------------------
    plan = _grid(ds_b, ds_a, info_b, info_a, report, resampling)
    if plan is not None and idx is not None:
        plan.idx_b, plan.idx_a = idx
    elif idx is None:
        plan = None
    return report, plan


def _fits(value: float, dtype: str) -> bool:
    info = np.iinfo(np.dtype(dtype))
    return float(value).is_integer() and info.min <= value <= info.max


def _grid(
    ds_b: DatasetReader,
    ds_a: DatasetReader,
    info_b: RasterInfo,
    info_a: RasterInfo,
    report: PairReport,
    resampling: str,
) -> _Plan | None:
    nb_name, na_name = info_b.name, info_a.name
    size_b, size_a = f"{info_b.width} x {info_b.height} px", f"{info_a.width} x {info_a.height} px"
    if info_b.georeferenced != info_a.georeferenced:
        missing, has = (info_a, info_b) if info_b.georeferenced else (info_b, info_a)
        report.problem(
            f"{missing.name}: has no georeferencing (no CRS/geotransform) but {has.name} has "
            f"({crs_to_string(has.crs)}); the two cannot be placed on one grid. Georeference it (e.g. "
            f"`gdal_translate -a_srs EPSG:xxxx -a_ullr ulx uly lrx lry`) or strip both.",
            NotGeoreferencedError,
        )
        return None
    if not info_b.georeferenced:
        tb_, ta_ = info_b.transform, info_a.transform
        ignored = (
            f" Their geotransforms differ ({nb_name}: {tuple(round(v, 6) for v in tuple(tb_)[:6])}, {na_name}: "
            f"{tuple(round(v, 6) for v in tuple(ta_)[:6])}) but without a CRS they are not used: give both a CRS "
            "(`gdal_edit.py -a_srs EPSG:xxxx`) to align them on the ground."
            if not (tb_.is_identity and ta_.is_identity) and not tb_.almost_equals(ta_) else ""
        )
        report.warn(
            f"{nb_name} and {na_name}: neither is georeferenced; they are compared pixel by pixel in pixel "
            f"coordinates (outputs will have no CRS; polygons' area_m2 is empty, pixel_count counts their pixels).{ignored}",
            PairWarning,
        )
        if (info_b.width, info_b.height) != (info_a.width, info_a.height):
            report.problem(
                f"{na_name}: {size_a} but {nb_name} is {size_b}; without georeferencing the two must have the same "
                "size. Georeference both, or crop/resample one to the other's size.",
                PairMismatchError,
            )
            return None
        report.overlap = report.overlap_after = 1.0
        report.common_bounds = tuple(info_b.bounds)  # type: ignore[assignment]
        report.crs, report.transform, report.width, report.height = (
            None,
            Affine.identity(),
            info_b.width,
            info_b.height,
        )
        full = Window(0, 0, info_b.width, info_b.height)
        return _Plan(None, Affine.identity(), info_b.width, info_b.height, full, full, [], [], None, None)

    assert info_b.crs is not None and info_a.crs is not None
    for info in (info_b, info_a):
        t = info.transform
        if t.b == 0 and t.d == 0 and t.e > 0:
            # rasterio's windows (and so the common grid) assume rows that run north to south
            report.problem(
                f"{info.name}: is south-up (its geotransform's pixel height is +{t.e:g}: row 0 is the southern "
                "edge); changedet reads north-up rasters. Make a north-up copy with `gdalwarp "
                f"{info.path} {os.path.splitext(info.name)[0]}_northup.tif` and give that instead.",
                PairMismatchError,
            )
            return None
    try:
        fa = _footprint_after_in_before(ds_b, ds_a)
    except Exception as exc:  # noqa: BLE001 - any projection failure is reported
        report.problem(
            f"{na_name}: its bounds {tuple(round(v, 6) for v in info_a.bounds)} in {crs_to_string(info_a.crs)} cannot "
            f"be transformed to {crs_to_string(info_b.crs)} of {nb_name} ({exc}); reproject one of them first.",
            NoOverlapError,
        )
        return None
    bb = info_b.bounds
    left, bottom = max(bb[0], fa[0]), max(bb[1], fa[1])
    right, top = min(bb[2], fa[2]), min(bb[3], fa[3])
    area_b = (bb[2] - bb[0]) * (bb[3] - bb[1])
    area_a = (fa[2] - fa[0]) * (fa[3] - fa[1])
    if right <= left or top <= bottom:
        report.overlap = report.overlap_after = 0.0
        report.problem(
            f"{nb_name} and {na_name} do not overlap: BEFORE bounds {_fmt_bounds(bb)} in {crs_to_string(info_b.crs)}, "
            f"AFTER bounds {_fmt_bounds(info_a.bounds)} in {crs_to_string(info_a.crs)}"
            + (f" (= {_fmt_bounds(fa)} in BEFORE's CRS)" if info_a.crs != info_b.crs else "")
            + ". Check that the two files cover the same place and that their CRSs are right.",
            NoOverlapError,
        )
        return None
    inter = (right - left) * (top - bottom)
    if info_a.crs != info_b.crs:
        # AFTER's footprint is a rotated/curved quadrilateral in BEFORE's CRS: the common grid only needs to cover
        # its intersection with BEFORE, which can be smaller than the intersection of the two bounding boxes
        tight = _footprint_intersection(ds_b, ds_a, bb)
        if tight is not None:
            (left, bottom, right, top), inter, area_a = tight
    report.overlap = float(inter / area_b) if area_b > 0 else 0.0
    report.overlap_after = float(inter / area_a) if area_a > 0 else 0.0
    report.common_bounds = (left, bottom, right, top)

    # BEFORE window of the common extent, snapped outwards to whole BEFORE pixels (with a small tolerance)
    from rasterio.windows import from_bounds

    win = from_bounds(left, bottom, right, top, transform=info_b.transform)
    c0 = max(0, math.floor(win.col_off + _EPS_PX))
    r0 = max(0, math.floor(win.row_off + _EPS_PX))
    c1 = min(info_b.width, math.ceil(win.col_off + win.width - _EPS_PX))
    r1 = min(info_b.height, math.ceil(win.row_off + win.height - _EPS_PX))
    if c1 - c0 < 1 or r1 - r0 < 1:
        report.problem(
            f"{nb_name} and {na_name}: the common extent {_fmt_bounds(report.common_bounds)} is smaller than one "
            "BEFORE pixel; there is nothing to compare.",
            NoOverlapError,
        )
        return None
    bwin = Window(c0, r0, c1 - c0, r1 - r0)
    grid_t = info_b.transform @ Affine.translation(c0, r0)
    width, height = c1 - c0, r1 - r0
    report.crs, report.transform, report.width, report.height = info_b.crs, grid_t, width, height
    if (width, height) != (info_b.width, info_b.height):
        report.warn(
            f"{na_name} covers {_pct(report.overlap)} of {nb_name}; only the common extent ({width} x {height} px of "
            f"{info_b.width} x {info_b.height}) is compared.",
            PairWarning,
        )
    elif report.overlap < 0.999:
        report.notes.append(
            f"{na_name} covers {_pct(report.overlap)} of {nb_name} (edge pixels partly outside)"
        )

    # Can AFTER be read directly (same grid), or must it be resampled?
    reasons = []
    if info_a.crs != info_b.crs:
        reasons.append(
            f"CRS {crs_to_string(info_a.crs)} differs from {nb_name} ({crs_to_string(info_b.crs)})"
        )
    ta, tb = info_a.transform, info_b.transform
    scale = max(abs(tb.a), abs(tb.b), abs(tb.d), abs(tb.e))
    same_res = all(  # the same pixel size and orientation (rotated grids included)
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12 * scale)
        for x, y in ((ta.a, tb.a), (ta.b, tb.b), (ta.d, tb.d), (ta.e, tb.e))
    )
    if info_a.crs == info_b.crs and not same_res:
        digits = next((d for d in (6, 9, 12, 17) if _fmt_res(ta, d) != _fmt_res(tb, d)), 6)
        what = "pixel size" if _fmt_res(ta, 17) != _fmt_res(tb, 17) else "grid orientation (rotation)"
        reasons.append(
            f"{what} {_fmt_res(ta, digits)} ({size_a}) differs from {nb_name} ({_fmt_res(tb, digits)}, {size_b})"
        )
    after_window = None
    if not reasons:
        # origin offset of AFTER in BEFORE pixels
        ox, oy = ~tb @ (ta.c, ta.f)
        if abs(ox - round(ox)) < 1e-6 and abs(oy - round(oy)) < 1e-6:
            after_window = Window(c0 - round(ox), r0 - round(oy), width, height)
            if (
                after_window.col_off < 0
                or after_window.row_off < 0
                or after_window.col_off + width > info_a.width
                or after_window.row_off + height > info_a.height
            ):
                after_window = None  # partially outside AFTER: warp it to get nodata outside its footprint
        else:
            reasons.append(
                f"its pixel grid is offset from {nb_name}'s by a fraction of a pixel "
                f"({ox - round(ox):+.2f}, {oy - round(oy):+.2f} px)"
            )
    if after_window is None:
        report.resampled = True
        why = "; ".join(reasons) if reasons else "it only partly covers the common grid"
        report.warn(
            f"{na_name}: {why}; it is resampled ({resampling}) onto the {nb_name} grid ({width} x {height} px, "
            f"pixel {_fmt_res(tb)}).",
            ReprojectedInputWarning,
        )
    if (info_a.width, info_a.height) != (info_b.width, info_b.height):
        report.notes.append(f"size differs: {nb_name} {size_b}, {na_name} {size_a}")
    return _Plan(info_b.crs, grid_t, width, height, bwin, after_window, [], [], info_a.crs, info_a.transform)


def _fmt_bounds(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


# --------------------------------------------------------------------------------------------------------------
# Public API


def check_pair(
    before: PathOrDataset,
    after: PathOrDataset,
    *,
    indexes: Indexes = None,
    estimate_shift: bool = True,
    resampling: str = "bilinear",
) -> PairReport:
    """Inspect a BEFORE/AFTER pair and collect every problem and warning, without raising.

    Checked: that both files open (missing, corrupt, ...), georeferencing, CRS, pixel size and grid offset,
    extent and overlap fraction, band count and data type (after ``indexes``), band names, nodata, dates, the share
    of the common grid that is valid in both dates, and (when the pair can be aligned and ``estimate_shift``) the
    residual co-registration shift, warned about above half a pixel.

    Parameters
    ----------
    before, after
        Paths or open rasterio datasets.
    indexes
        1-based band indexes used in both dates, or a pair ``([...], [...])`` of lists for BEFORE and AFTER.
    estimate_shift
        Estimate the residual shift by phase correlation (reads one window of up to 512 x 512 pixels).
    resampling
        Resampling named in the report when AFTER must be resampled.

    Returns
    -------
    PairReport
        ``report.ok`` is False when the pair cannot be compared; ``report.problems`` says why.

    Examples
    --------
    >>> import tempfile
    >>> from changedet.testing import make_pair
    >>> before, after = make_pair(tempfile.mkdtemp(), "band-mismatch")
    >>> report = check_pair(before, after)
    >>> report.ok, "4 band(s)" in report.problems[0]
    (False, True)
    """
    report = PairReport(before=_name(before), after=_name(after))
    opened: list[DatasetReader] = []
    try:
        datasets = []
        for src in (before, after):
            if isinstance(src, DatasetReader):
                datasets.append(src)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = open_raster(src)
            except RasterReadError as exc:
                report.problem(str(exc), RasterReadError)
                datasets.append(None)
                continue
            opened.append(ds)
            datasets.append(ds)
        if any(d is None for d in datasets):
            return report
        ds_b, ds_a = datasets
        full, plan = _analyze(ds_b, ds_a, indexes, resampling)
        if plan is None or not full.ok:
            return full
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = AlignedPair(ds_b, ds_a, plan, full, resampling=resampling)
        try:
            _assess_validity(pair, full)
            if estimate_shift and full.ok:
                _assess_shift(pair, full)
        finally:
            pair.close()
        return full
    finally:
        for ds in opened:
            ds.close()


def _name(src: PathOrDataset) -> str:
    return src.name if isinstance(src, DatasetReader) else os.fspath(src)


#: Share of the compared pixels that may be 0 in every band of a date whose nodata is not 0 before a warning says
#: they look like undeclared fill.
ZERO_FILL_WARN = 0.01


def _assess_validity(pair: AlignedPair, report: PairReport, allow_empty: bool = False) -> None:
    try:
        before, after, valid = pair.read_decimated(max_pixels=512 * 512)
    except RasterReadError as exc:
        report.problem(str(exc), RasterReadError)
        return
    frac = float(valid.mean()) if valid.size else 0.0
    report.valid_fraction = frac
    for arr, ds, name in ((before, pair._ds_b, report.before), (after, pair._ds_a, report.after)):
        _warn_zero_fill(arr, valid, ds.nodata, name, report)
    if frac == 0.0:
        msg = (
            f"{report.before} / {report.after}: no pixel of the common grid is valid in both dates (nodata, NaN or "
            "outside a footprint everywhere): nothing to compare; check the nodata values and the extents."
        )
        if allow_empty:
            report.warn(msg, NothingToCompareWarning)
        else:
            report.problem(msg, NoOverlapError)
    elif frac < _MIN_VALID_WARN:
        report.warn(
            f"{report.before} / {report.after}: only {_pct(frac)} of the common grid is valid in both dates (nodata, "
            "NaN or outside a footprint elsewhere); results cover that part only.",
            PairWarning,
        )


def _warn_zero_fill(arr: np.ndarray, valid: np.ndarray, nodata: float | None, name: str, report: PairReport) -> None:
    """A warning when one block of compared pixels of one date, more than :data:`ZERO_FILL_WARN` of them, is exactly
    0 in every band while its nodata is not 0 (the share said is that block's): the
    fill of a swath edge or of an export without ``-a_nodata`` (a 0 is no Sentinel-2 or Landsat value). Compared as
    data, such pixels skew the date's normalisation and come out as change (a 100-column 0 strip in a 563-column
    OSCD scene doubled the changed share and lost half of the real change elsewhere)."""
    if nodata == 0 or not valid.any():
        return
    zero = (arr == 0).all(axis=0) & valid
    share = float(zero.sum()) / float(valid.sum())
    if share > ZERO_FILL_WARN:
        from scipy import ndimage

        # fill is one block (a swath edge, a footprint's outside); the zeros of an 8-bit export stretched with a
        # 2-98 % cut are dark water and shadow in hundreds of specks, which the warning's advice would blank
        labels, n = ndimage.label(zero)
        largest = int(np.bincount(labels.ravel())[1:].max()) if n else 0
        share = largest / float(valid.sum())
    if share > ZERO_FILL_WARN:
        declared = "declares no nodata" if nodata is None else f"declares nodata {nodata:g}"
        report.warn(
            f"{name}: a block of {_pct(share)} of the compared pixels is 0 in every band and the file {declared}: if "
            "it is fill (outside a swath or a footprint), its pixels are compared as data, skew the normalisation "
            f"and come out as change; declare 0 as nodata (`gdal_edit.py -a_nodata 0 {name}` in place, or `gdal_translate -of "
            "VRT -a_nodata 0` to a VRT beside it, the file untouched) and run again.",
            PairWarning,
        )


def _assess_shift(pair: AlignedPair, report: PairReport) -> None:
    try:
        shift = estimate_pair_shift(pair)
    except (ValueError, RasterReadError) as exc:
        report.notes.append(f"residual shift not estimated ({exc})")
        return
    report.shift = shift
    if shift is None:
        report.notes.append("residual shift not estimated (common grid under 32 x 32 valid pixels, or an image without texture: one value throughout)")
        return
    if not shift.reliable:
        report.notes.append(f"residual shift estimate unreliable (weak correlation): {shift.describe()}")
    elif shift.magnitude > COREGISTRATION_WARN_PX:
        report.warn(
            f"{report.after}: residual shift of {shift.describe()} relative to {report.before}, above "
            f"{COREGISTRATION_WARN_PX} px; edges will look like changes. Correct it with coregister=True "
            "(--coregister) or co-register the inputs.",
            CoregistrationWarning,
        )


_PARALLEL_READ_PIXELS = 256 * 256  # windows at least this large read the two dates on two threads


class AlignedPair:
    """BEFORE and AFTER on one grid (BEFORE's, clipped to the common extent), read window by window.

    Made by :func:`open_pair`. Attributes: ``crs``, ``transform``, ``width``, ``height``, ``count``,
    ``band_names``, ``before_info``, ``after_info``, ``report`` (the :class:`PairReport`), ``dates``,
    ``georeferenced``, ``shift`` (the co-registration correction applied, or None), ``indexes``.

    Thread safety: :meth:`read` takes an internal lock, so one pair may be read from any thread (e.g. a prefetch
    thread feeding a model), but reads are serialised; for parallel reads open one pair per thread or process.
    Within one read of a window of 256 x 256 pixels or more, AFTER is read on a helper thread while the caller
    reads BEFORE (when they are two datasets); :meth:`close` stops that thread.
    """

    def __init__(
        self,
        ds_before: DatasetReader,
        ds_after: DatasetReader,
        plan: _Plan,
        report: PairReport,
        *,
        resampling: str = "bilinear",
        owned: Sequence[DatasetReader] = (),
        shift: ShiftEstimate | None = None,
    ) -> None:
        self._ds_b, self._ds_a = ds_before, ds_after
        self._plan = plan
        self._owned = list(owned)
        self._lock = threading.Lock()
        self._pool: futures.ThreadPoolExecutor | None = None  # reads AFTER beside BEFORE (_after_reader)
        self._pool_pid = 0
        self._closed = False
        self._resampling = _resampling(resampling)
        self.report = report
        self.crs: CRS | None = plan.crs
        self.transform: Affine = plan.transform
        self.width, self.height = plan.width, plan.height
        self.indexes = (list(plan.idx_b), list(plan.idx_a))
        self.count = len(plan.idx_b)
        self.band_names: list[str] = list(report.band_names)
        assert report.before_info is not None and report.after_info is not None
        self.before_info: RasterInfo = report.before_info
        self.after_info: RasterInfo = report.after_info
        self.dates: tuple[_dt.date | None, _dt.date | None] = (self.before_info.date, self.after_info.date)
        self.georeferenced = self.crs is not None
        self.shift: ShiftEstimate | None = None
        self._matcher: Any = None
        self._vrt: WarpedVRT | None = None
        self._vrt_plain: WarpedVRT | None = None
        self._mask_b = _needs_mask(ds_before)
        self._mask_a = _needs_mask(ds_after)
        if plan.after_window is None:
            self._vrt = self._make_vrt(0.0, 0.0)
            self._vrt_plain = self._vrt
        if shift is not None:
            self.set_shift(shift)

    # grid helpers ------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the common grid."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the common grid in its CRS (pixels when not georeferenced)."""
        from rasterio.transform import array_bounds

        return tuple(array_bounds(self.height, self.width, self.transform))  # type: ignore[return-value]

    def pixel_size_m(self) -> tuple[float, float] | None:
        """Pixel (height, width) in metres at the grid centre (geodesic when geographic); None without CRS."""
        return pixel_size_m(self.crs, self.transform, self.width, self.height)

    def pixel_area_m2(self) -> float | None:
        """Area of one pixel in square metres (at the grid centre, geodesic when the CRS is geographic).

        None when the pair is not georeferenced (areas are then in pixels).
        """
        if self.crs is None:
            return None
        if self.crs.is_geographic:
            t = self.transform
            c, r = self.width / 2, self.height / 2
            corners = [t @ (c, r), t @ (c + 1, r), t @ (c + 1, r + 1), t @ (c, r + 1)]
            lons, lats = zip(*corners, strict=True)
            area, _ = _geod(self.crs).polygon_area_perimeter(lons, lats)
            return abs(float(area))
        t = self.transform
        return abs(t.a * t.e - t.b * t.d) * _linear_factor(self.crs) ** 2

    def profile(self, **overrides: Any) -> dict[str, Any]:
        """A rasterio-style profile of the common grid (crs, transform, width, height), updated with overrides."""
        prof = {"crs": self.crs, "transform": self.transform, "width": self.width, "height": self.height}
        prof.update(overrides)
        return prof

    # corrections ---------------------------------------------------------------------------------------------------
    def set_shift(self, shift: ShiftEstimate | tuple[float, float] | None) -> None:
        """Sample AFTER displaced by a shift (dy, dx) in pixels, cancelling a global translation (None: no shift)."""
        if shift is None:
            self.shift = None
            self._vrt = self._vrt_plain
            return
        est = (
            shift
            if isinstance(shift, ShiftEstimate)
            else ShiftEstimate(float(shift[0]), float(shift[1]), None, None, 0.0, "given", (0, 0, 0, 0), 1.0)
        )
        with self._lock:
            if self._vrt is not None and self._vrt is not self._vrt_plain:
                self._vrt.close()
            self._vrt = self._make_vrt(est.dy, est.dx)
        self.shift = est

    def set_histogram_matcher(self, matcher: Any) -> None:
        """Apply ``matcher.apply(after, valid)`` to every AFTER window (see :mod:`changedet.io.radiometry`)."""
        self._matcher = matcher

    def _make_vrt(self, dy: float, dx: float) -> WarpedVRT:
        p = self._plan
        dst_crs = p.crs if p.crs is not None else _PIXEL_CRS
        dst_t = (p.transform if p.crs is not None else _PIXEL_TRANSFORM) @ Affine.translation(dx, dy)
        kw: dict[str, Any] = {}
        if p.crs is None or p.after_crs is None:
            kw.update(src_crs=_PIXEL_CRS, src_transform=_PIXEL_TRANSFORM)
        if self._ds_a.nodata is not None:
            kw["src_nodata"] = self._ds_a.nodata
        return WarpedVRT(
            self._ds_a,
            crs=dst_crs,
            transform=dst_t,
            width=p.width,
            height=p.height,
            resampling=self._resampling,
            nodata=np.nan,
            dtype="float32",
            init_dest_nodata=True,
            **kw,
        )

    # reading -------------------------------------------------------------------------------------------------------
    def read(
        self, window: Window | None = None, *, apply_corrections: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read a window of the common grid.

        Parameters
        ----------
        window
            A :class:`rasterio.windows.Window` on the common grid (None: all of it).
        apply_corrections
            Apply the co-registration shift and histogram matching (False reads AFTER as aligned only).

        Returns
        -------
        before, after, valid
            ``before`` and ``after`` float32 (band, row, col) in the raster's units (no scaling); ``valid`` bool
            (row, col), True where every selected band of both dates is finite, not nodata and inside both
            footprints. Invalid pixels are set to 0 in both arrays so that no NaN reaches a model.
        """
        if window is None:
            window = Window(0, 0, self.width, self.height)
        return self._read(window, None, apply_corrections)

    def read_decimated(
        self, max_pixels: int = 1_000_000, *, apply_corrections: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A sample of the common grid of at most about ``max_pixels`` pixels per band (for statistics).

        A grid of up to ``4 * max_pixels`` pixels is read decimated (``out_shape``). A larger one is sampled at full
        resolution: a regular k x k grid of 256 x 256 windows spread over the scene, returned as one mosaic image.
        Decoding the whole scene for a decimated read costs seconds to minutes on large pixel-interleaved GeoTIFFs
        (every block is decoded once per band when GDAL's block cache cannot hold the scene), while the windows
        touch a few dozen blocks.
        """
        size = 256
        if (self.width * self.height <= 4 * max_pixels or self.width < 2 * size or self.height < 2 * size):
            scale = max(1.0, math.sqrt(self.width * self.height / max(1, max_pixels)))
            out_h, out_w = max(1, int(self.height / scale)), max(1, int(self.width / scale))
            return self._read(Window(0, 0, self.width, self.height), (out_h, out_w), apply_corrections)
        k = max(2, round(math.sqrt(max_pixels) / size))
        rows = np.linspace(0, self.height - size, k).round().astype(int)
        cols = np.linspace(0, self.width - size, k).round().astype(int)
        strips = []
        for r in rows:
            parts = [self._read(Window(int(c), int(r), size, size), None, apply_corrections) for c in cols]
            strips.append(tuple(np.concatenate([p[i] for p in parts], axis=-1) for i in range(3)))
        before, after, valid = (np.concatenate([s[i] for s in strips], axis=-2) for i in range(3))
        return before, after, valid

    def _read(
        self, window: Window, out_hw: tuple[int, int] | None, apply_corrections: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self._plan
        window = Window(int(window.col_off), int(window.row_off), int(window.width), int(window.height))
        if (
            window.col_off < 0
            or window.row_off < 0
            or window.col_off + window.width > self.width
            or window.row_off + window.height > self.height
            or window.width <= 0
            or window.height <= 0
        ):
            raise ValueError(f"window {window} outside the common grid ({self.width} x {self.height})")
        h, w = out_hw if out_hw is not None else (int(window.height), int(window.width))
        bwin = Window(
            p.before_window.col_off + window.col_off,
            p.before_window.row_off + window.row_off,
            window.width,
            window.height,
        )

        def read_after(vrt: WarpedVRT | None) -> tuple[np.ndarray, np.ndarray]:
            if vrt is None:
                assert p.after_window is not None
                awin = Window(
                    p.after_window.col_off + window.col_off,
                    p.after_window.row_off + window.row_off,
                    window.width,
                    window.height,
                )
                return _read_masked(self._ds_a, p.idx_a, awin, (h, w), self._mask_a)
            return _read_masked(vrt, p.idx_a, window, (h, w), False)

        with self._lock:
            vrt = self._vrt if apply_corrections else self._vrt_plain
            pool = self._after_reader() if h * w >= _PARALLEL_READ_PIXELS else None
            if pool is None:
                before, vb = _read_masked(self._ds_b, p.idx_b, bwin, (h, w), self._mask_b)
                after, va = read_after(vrt)
            else:  # AFTER on the helper thread while this one reads BEFORE: two datasets, never one from two threads
                pending = pool.submit(read_after, vrt)
                try:
                    before, vb = _read_masked(self._ds_b, p.idx_b, bwin, (h, w), self._mask_b)
                except BaseException:
                    futures.wait([pending])  # the helper is done with AFTER before the lock is released
                    raise
                after, va = pending.result()
        valid = vb & va
        if apply_corrections and self._matcher is not None:
            after = self._matcher.apply(after, valid)
        if not valid.all():
            invalid = ~valid
            before[:, invalid] = 0.0
            after[:, invalid] = 0.0
        return before, after, valid

    def _after_reader(self) -> futures.ThreadPoolExecutor | None:
        """The helper thread that reads AFTER while the caller reads BEFORE (None when both are one dataset).

        GDAL releases the GIL while it decodes and converts, so the two dates' windows are read on two cores: the
        decoding of a read already uses ``GDAL_NUM_THREADS``, but the conversion to float32 and the copy out of
        pixel-interleaved blocks run on the calling thread. Called with the lock held.
        """
        if self._ds_b is self._ds_a or self._closed:
            return None
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child does not inherit the thread
            self._pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-read-after")
            self._pool_pid = os.getpid()
        return self._pool

    # lifetime ---------------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the warped view and the datasets this pair opened (not datasets passed in open)."""
        with self._lock:
            self._closed = True
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.shutdown(wait=True)
            self._pool = None
            for vrt in {id(v): v for v in (self._vrt, self._vrt_plain) if v is not None}.values():
                with contextlib.suppress(Exception):
                    vrt.close()
            self._vrt = self._vrt_plain = None
            for ds in self._owned:
                with contextlib.suppress(Exception):
                    ds.close()
            self._owned = []

    def __enter__(self) -> AlignedPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"AlignedPair({self.before_info.name!r}, {self.after_info.name!r}, {self.width}x{self.height} px, "
            f"{self.count} band(s), crs={crs_to_string(self.crs)}, resampled={self.report.resampled})"
        )


def _needs_mask(ds: DatasetReader) -> bool:
    """Whether the validity must come from GDAL's mask band (an alpha band or internal mask, no nodata)."""
    if ds.nodata is not None:
        return False
    return any(MaskFlags.per_dataset in flags or MaskFlags.alpha in flags for flags in ds.mask_flag_enums)


def _read_masked(
    ds: DatasetReader | WarpedVRT, idx: list[int], window: Window, out_hw: tuple[int, int], use_mask: bool
) -> tuple[np.ndarray, np.ndarray]:
    h, w = out_hw
    try:
        arr = ds.read(
            idx, window=window, out_shape=(len(idx), h, w), out_dtype="float32", resampling=Resampling.nearest
        )
        mask = ds.read_masks(idx[0], window=window, out_shape=(h, w)) if use_mask else None
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(
            f"{ds.name}: cannot read window {window} ({root_message(exc)}); the file may be truncated."
        ) from exc
    if all(np.issubdtype(np.dtype(ds.dtypes[i - 1]), np.integer) for i in idx):
        valid = np.ones((h, w), bool)  # integers are always finite: skip a pass over every band
    else:
        valid = np.isfinite(arr).all(axis=0)
    nodata = ds.nodata
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= (arr != np.float32(nodata)).all(axis=0)
    if mask is not None:
        valid &= mask > 0
    return arr, valid


def _resampling(name: str | Resampling) -> Resampling:
    if isinstance(name, Resampling):
        return name
    try:
        return Resampling[str(name).lower()]
    except KeyError:
        known = ", ".join(r.name for r in Resampling if r.value < 14)
        raise InputError(f"resampling {name!r} is not known; use one of: {known}.") from None


def open_pair(
    before: PathOrDataset,
    after: PathOrDataset,
    *,
    indexes: Indexes = None,
    resampling: str = "bilinear",
    coregister: bool = False,
    match_histograms: bool = False,
    estimate_shift: bool = False,
    allow_empty: bool = False,
) -> AlignedPair:
    """Open BEFORE and AFTER on one grid: AFTER on BEFORE's grid, clipped to the common extent.

    Parameters
    ----------
    before, after
        Paths or open rasterio datasets (datasets passed in are not closed by the pair).
    indexes
        1-based band indexes for both dates, or ``([...], [...])`` for BEFORE and AFTER separately.
    resampling
        How AFTER is resampled when it is not on BEFORE's grid: ``"bilinear"`` (default, imagery) or
        ``"nearest"`` (masks, classes); any :class:`rasterio.enums.Resampling` name.
    coregister
        Estimate the residual translation by phase correlation and sample AFTER displaced by it.
    match_histograms
        Map AFTER's per-band value distribution onto BEFORE's (a quantile mapping fitted on a decimated read of the
        valid pixels, applied to each window, so it streams).
    estimate_shift
        Estimate the residual shift (stored in ``pair.report.shift``) without correcting it.
    allow_empty
        When no pixel is valid in both dates, warn (:class:`~changedet.errors.NothingToCompareWarning`) instead
        of raising :class:`~changedet.errors.NoOverlapError` (``detect`` then writes an empty result).

    Returns
    -------
    AlignedPair

    Raises
    ------
    RasterReadError, NotGeoreferencedError, PairMismatchError, NoOverlapError
        When the pair cannot be compared; the message lists every problem (see :func:`check_pair`).

    Warns
    -----
    ReprojectedInputWarning
        AFTER was resampled (other CRS, pixel size or sub-pixel grid offset).
    PairWarning, CoregistrationWarning
        Partial overlap, dates out of order, data types differ, residual shift above half a pixel, ...

    Examples
    --------
    >>> import tempfile, warnings
    >>> from changedet.testing import make_pair
    >>> before, after = make_pair(tempfile.mkdtemp(), "other-resolution")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     with open_pair(before, after) as pair:
    ...         b, a, valid = pair.read()
    >>> b.shape, a.shape, b.dtype.name, bool(valid.all())
    ((3, 128, 128), (3, 128, 128), 'float32', True)
    >>> any(w.category.__name__ == "ReprojectedInputWarning" for w in caught)
    True
    """
    owned: list[DatasetReader] = []
    try:
        ds_b = before if isinstance(before, DatasetReader) else open_raster(before)
        if ds_b is not before:
            owned.append(ds_b)
        ds_a = after if isinstance(after, DatasetReader) else open_raster(after)
        if ds_a is not after:
            owned.append(ds_a)
        report, plan = _analyze(ds_b, ds_a, indexes, resampling)
        report.raise_for_problems()
        assert plan is not None
        pair = AlignedPair(ds_b, ds_a, plan, report, resampling=resampling, owned=owned)
    except BaseException:
        for ds in owned:
            ds.close()
        raise
    try:
        _assess_validity(pair, report, allow_empty=allow_empty)
        report.raise_for_problems()
        if coregister or estimate_shift:
            _assess_shift(pair, report)
            if coregister and report.shift is not None:
                if report.shift.reliable:
                    pair.set_shift(report.shift)
                    report.notes.append(
                        f"co-registration: AFTER sampled displaced by {report.shift.describe()}"
                    )
                else:
                    report.warn(
                        f"{report.after}: the residual shift could not be estimated reliably "
                        f"({report.shift.describe()}); no co-registration correction was applied.",
                        CoregistrationWarning,
                    )
        if coregister and report.shift is not None and report.shift.reliable:
            # the warning about the shift is moot once it is corrected
            keep = [
                (m, c)
                for m, c in zip(report.warnings, report.warning_classes, strict=False)
                if c is not CoregistrationWarning
            ]
            report.warnings = [m for m, _ in keep]
            report.warning_classes = [c for _, c in keep]
        if match_histograms:
            from changedet.io.radiometry import HistogramMatcher

            pair.set_histogram_matcher(HistogramMatcher.fit(pair))
            report.notes.append("AFTER histogram-matched to BEFORE per band")
    except BaseException:
        pair.close()
        raise
    report.emit_warnings(stacklevel=2)
    return pair


#: Same as :func:`open_pair` (the verb the design notes use for the pipeline stage).
align = open_pair
