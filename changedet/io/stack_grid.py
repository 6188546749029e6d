"""The bands a stack reads and the grid it takes: the grid step of :func:`~changedet.io.stack.stack_bands`.

:class:`_Band` holds what a single-band file's header tells (CRS, transform, size, dtype, nodata);
:func:`_reference_band` picks the band whose grid the stack takes (the finest pixel in metres) and
:func:`_coverage_problems` names the bands that cover only part of that grid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine
from rasterio.crs import CRS

from changedet.errors import InputError, ReprojectedInputWarning


@dataclass(frozen=True)
class _Band:
    path: Path
    name: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None


def _coverage_problems(bands: Sequence[_Band], ref: _Band, folder: Any) -> list[str]:
    """The names of the bands whose footprint covers only part of ``ref``'s grid; an :class:`InputError` for a band
    that does not touch it at all."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    ref_box = array_bounds(ref.height, ref.width, ref.transform)  # (west, south, east, north)
    partial = []
    for b in bands:
        bb = array_bounds(b.height, b.width, b.transform)
        box = transform_bounds(b.crs, ref.crs, *bb, densify_pts=21) if b.crs != ref.crs else bb
        w, s_, e, n = max(box[0], ref_box[0]), max(box[1], ref_box[1]), min(box[2], ref_box[2]), min(box[3], ref_box[3])
        if w >= e or s_ >= n:
            raise InputError(
                f"{folder}: {b.path.name} does not overlap {ref.path.name} (bounds {tuple(round(v, 3) for v in box)} "
                f"against {tuple(round(v, 3) for v in ref_box)}); stack files of the same place"
            )
        tx, ty = 0.5 * abs(ref.transform.a), 0.5 * abs(ref.transform.e)  # half a pixel
        if box[0] > ref_box[0] + tx or box[1] > ref_box[1] + ty or box[2] < ref_box[2] - tx \
                or box[3] < ref_box[3] - ty:
            partial.append(b.path.name)
    return partial


def _pixel_area_m2(b: _Band) -> float:
    """A band's pixel area in square metres: degrees converted at the band's centre latitude, other linear units
    by the CRS's factor (pixel units for a band without georeferencing)."""
    det = abs(b.transform.determinant)
    if b.crs is None:
        return det
    if b.crs.is_geographic:
        lat = max(-89.0, min(89.0, (b.transform * (b.width / 2, b.height / 2))[1]))
        return det * 111_320.0 * math.cos(math.radians(lat)) * 110_574.0
    try:
        factor = float(b.crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - a CRS without linear units: take them as metres
        factor = 1.0
    return det * factor * factor


def _reference_band(bands: Sequence[_Band], folder: Any) -> _Band:
    """The band whose grid the stack takes: the finest pixel in metres; bands within 10 % of it tie, and the tie
    goes to the CRS most bands share, then the finer pixel, then more pixels, then file order. Warns naming the bands
    in other CRSs, which are reprojected."""
    areas = [_pixel_area_m2(b) for b in bands]
    finest = min(areas)
    crs_count: dict[str, int] = {}
    for b in bands:
        key = b.crs.to_wkt()  # type: ignore[union-attr]
        crs_count[key] = crs_count.get(key, 0) + 1
    tied = [i for i, a in enumerate(areas) if a <= finest * 1.21]  # 1.1 ** 2: 10 % in pixel size
    i_ref = min(tied, key=lambda i: (-crs_count[bands[i].crs.to_wkt()], areas[i],  # type: ignore[union-attr]
                                     -bands[i].width * bands[i].height, i))
    ref = bands[i_ref]
    other = [b for b in bands if b.crs != ref.crs]
    if other:
        crss = ", ".join(dict.fromkeys(b.crs.to_string() for b in other))  # type: ignore[union-attr]
        warnings.warn(
            f"{folder}: the CRS of {', '.join(b.path.name for b in other)} ({crss}) differs from that of "
            f"{ref.path.name} ({ref.crs.to_string()}), the band with the finest pixel "  # type: ignore[union-attr]
            f"({math.sqrt(areas[i_ref]):.3g} m); reprojected onto its grid",
            ReprojectedInputWarning, stacklevel=3,
        )
    return ref
