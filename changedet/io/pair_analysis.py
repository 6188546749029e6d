"""The analysis shared by :func:`~changedet.io.alignment.check_pair` and :func:`~changedet.io.alignment.open_pair`.

:func:`_analyze` reads both headers and records in a :class:`~changedet.io.pair_report.PairReport` what it finds
about the selected bands (count, data types, names), nodata, dates and georeferencing; :func:`_grid` works out the
common grid (BEFORE's grid clipped to the part AFTER covers) and whether AFTER can be read directly or must be
resampled. The result is a :class:`_Plan` that :class:`~changedet.io.aligned_pair.AlignedPair` reads by.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.windows import Window

from changedet.errors import (
    NoOverlapError,
    NotGeoreferencedError,
    PairMismatchError,
    PairWarning,
    ReprojectedInputWarning,
)
from changedet.io.pair_report import PairReport, _fmt_res, _pct
from changedet.io.raster import RasterInfo, crs_to_string, raster_info

Indexes: TypeAlias = Sequence[int] | tuple[Sequence[int], Sequence[int]] | None

_EPS_PX = 1e-3


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
