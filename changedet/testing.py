"""Synthetic georeferenced fixtures for tests, docs and benchmarks (no real data, no network).

The pairs are built from one smooth random texture defined on the ground, sampled on each date's own grid, so
that a pair in two CRSs or at two resolutions shows the same ground: alignment and shift estimates are meaningful.

>>> import tempfile
>>> before, after = make_pair(tempfile.mkdtemp(), "other-crs")
>>> before.name, after.name
('before.tif', 'after.tif')

Kinds of :func:`make_pair` (:data:`PAIR_KINDS`):

``aligned``            same grid, same ground, a little independent noise per date
``half-pixel-shift``   AFTER's grid origin is half a pixel off BEFORE's (same ground): AFTER is resampled
``misregistered``      same grid, but AFTER's content is displaced by ``shift`` pixels (dy, dx): a co-registration error
``other-crs``          AFTER in EPSG:32632 instead of EPSG:32631 (same ground)
``other-resolution``   AFTER at twice the pixel size over the same extent
``other-size``         AFTER a few pixels smaller over the same extent (slightly larger pixels, like OSCD abudhabi)
``partial-overlap``    AFTER shifted by 40 % of the width: 60 % overlap
``disjoint``           AFTER 100 km away: no overlap
``band-mismatch``      AFTER has one band more than BEFORE
``no-crs``             AFTER has no georeferencing (BEFORE has)
``no-crs-both``        neither date is georeferenced (same size: compared in pixel coordinates)
``nodata-border``      nodata (0) borders: 12 px on BEFORE's left, 20 px on AFTER's top; AFTER also has NaN-free
                       nodata inside one corner
``corrupt``            AFTER is a truncated GeoTIFF
``reversed-dates``     aligned, but AFTER's acquisition date is earlier than BEFORE's
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

__all__ = [
    "PAIR_KINDS",
    "FixturePair",
    "TextureField",
    "make_geotiff",
    "make_pair",
    "paint_change",
]

PAIR_KINDS: tuple[str, ...] = (
    "aligned",
    "half-pixel-shift",
    "misregistered",
    "other-crs",
    "other-resolution",
    "other-size",
    "partial-overlap",
    "disjoint",
    "band-mismatch",
    "no-crs",
    "no-crs-both",
    "nodata-border",
    "corrupt",
    "reversed-dates",
)

DEFAULT_CRS = "EPSG:32631"
DEFAULT_ORIGIN = (500000.0, 5700000.0)


class FixturePair(NamedTuple):
    """Paths of a synthetic pair (unpacks as ``before, after``)."""

    before: Path
    after: Path


def make_geotiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    crs: str | CRS | None = DEFAULT_CRS,
    transform: Affine | None = None,
    res: float | tuple[float, float] = 10,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    nodata: float | None = None,
    descriptions: Sequence[str | None] | None = None,
    tags: Mapping[str, Any] | None = None,
    dtype: str | np.dtype | None = None,
) -> Path:
    """Write a small (band, row, col) or (row, col) array as a tiled GeoTIFF and return its path.

    The grid is ``transform`` if given, else north-up with pixel size ``res`` and upper-left corner ``origin``.
    ``crs=None`` writes a raster with no georeferencing at all (no CRS, identity transform).

    >>> import numpy as np, tempfile, os
    >>> p = make_geotiff(os.path.join(tempfile.mkdtemp(), "a.tif"), np.ones((4, 4)), dtype="uint8", nodata=0)
    >>> import rasterio
    >>> with rasterio.open(p) as ds:
    ...     ds.count, ds.dtypes[0], ds.nodata, ds.res
    (1, 'uint8', 0.0, (10.0, 10.0))
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a (band, row, col) array, got shape {arr.shape}")
    if dtype is not None:
        arr = arr.astype(dtype)
    count, height, width = arr.shape
    if crs is None:
        transform = None
    elif transform is None:
        rx, ry = cast("tuple[float, float]", (res, res) if np.isscalar(res) else res)
        transform = Affine(float(rx), 0.0, float(origin[0]), 0.0, -float(ry), float(origin[1]))
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": arr.dtype.name,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = CRS.from_user_input(crs)
        profile["transform"] = transform
    if width >= 16 and height >= 16:
        bs = 16 * max(1, min(width, height, 256) // 16)
        profile.update(tiled=True, blockxsize=bs, blockysize=bs)
    out = Path(os.fspath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out, "w", **profile) as ds:
            ds.write(arr)
            if descriptions is not None:
                for i, d in enumerate(descriptions, start=1):
                    if d:
                        ds.set_band_description(i, str(d))
            if tags:
                ds.update_tags(**{str(k): str(v) for k, v in tags.items()})
    return out


class TextureField:
    """A smooth random multi-band texture defined on continuous coordinates of a reference grid.

    ``sample(rows, cols)`` evaluates it (cubic spline) at fractional reference-pixel coordinates, so any other grid
    (shifted, rotated, coarser) can be filled with the same ground. Values are about N(0, 1) per band; bands are
    correlated (a shared component plus a band-specific one), as in real imagery.
    """

    def __init__(
        self, size: int, bands: int = 3, *, sigma: float = 2.5, seed: int = 0, margin: int | None = None
    ):
        rng = np.random.default_rng(seed)
        self.margin = int(margin if margin is not None else size // 2 + 16)
        n = size + 2 * self.margin
        common = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma)
        fields = []
        for _ in range(bands):
            own = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma)
            f = 0.6 * common / common.std() + 0.4 * own / own.std()
            fields.append(((f - f.mean()) / f.std()).astype(np.float64))
        # Prefiltered spline coefficients make each sample() call cheap.
        self._coeffs = [ndimage.spline_filter(f, order=3) for f in fields]
        self.bands = bands

    def sample(self, rows: np.ndarray, cols: np.ndarray, *, supersample: int = 1) -> np.ndarray:
        """Values (band, *rows.shape) at fractional reference pixel coordinates (pixel centres at .5)."""
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        out = np.zeros((self.bands, *rows.shape))
        offs = (np.arange(supersample) + 0.5) / supersample - 0.5 if supersample > 1 else np.zeros(1)
        step_r, step_c = _local_steps(rows), _local_steps(cols, axis=1)
        for dr in offs:
            for dc in offs:
                r = rows + dr * step_r + self.margin - 0.5
                c = cols + dc * step_c + self.margin - 0.5
                for b, coef in enumerate(self._coeffs):
                    out[b] += ndimage.map_coordinates(coef, [r, c], order=3, mode="mirror", prefilter=False)
        return out / len(offs) ** 2


def _local_steps(a: np.ndarray, axis: int = 0) -> float:
    if a.ndim < 2 or a.shape[axis] < 2:
        return 1.0
    return float(np.median(np.abs(np.diff(a, axis=axis)))) or 1.0


def _grid_coords(
    transform: Affine, width: int, height: int, crs: CRS | None, ref_transform: Affine, ref_crs: CRS | None
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional reference-grid (row, col) of each pixel centre of a grid."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = cast("tuple[np.ndarray, np.ndarray]", transform @ (cols, rows))
    if crs is not None and ref_crs is not None and crs != ref_crs:
        from rasterio.warp import transform as warp_transform

        xs_t, ys_t = warp_transform(crs, ref_crs, xs.ravel(), ys.ravel())
        xs, ys = np.asarray(xs_t).reshape(xs.shape), np.asarray(ys_t).reshape(ys.shape)
    rc, rr = ~ref_transform @ (xs, ys)
    return np.asarray(rr), np.asarray(rc)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Map ~N(0,1) texture values to a realistic range for the dtype."""
    if dtype.kind == "f":
        return (0.2 + 0.05 * values).astype(dtype)
    if dtype == np.uint8:
        return np.clip(np.rint(120 + 35 * values), 1, 255).astype(dtype)
    return np.clip(np.rint(1500 + 400 * values), 1, np.iinfo(dtype).max).astype(dtype)


def make_pair(
    tmp_dir: str | os.PathLike[str],
    kind: str = "aligned",
    *,
    size: int = 128,
    bands: int = 3,
    dtype: str = "uint16",
    res: float = 10.0,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    shift: tuple[float, float] = (0.3, -0.2),
    noise: float = 0.02,
    seed: int = 0,
    dates: tuple[str, str] = ("2019-05-01", "2020-05-01"),
    descriptions: Sequence[str] | None = None,
    names: tuple[str, str] = ("before.tif", "after.tif"),
) -> FixturePair:
    """Write a synthetic BEFORE/AFTER pair of the given ``kind`` into ``tmp_dir`` (see the module docstring).

    Parameters
    ----------
    tmp_dir
        Output folder (created if needed).
    kind
        One of :data:`PAIR_KINDS`.
    size
        BEFORE is ``size`` x ``size`` pixels.
    bands, dtype, res, crs, origin
        BEFORE's band count, data type, pixel size (m), CRS and upper-left corner.
    shift
        (dy, dx) displacement in pixels of AFTER's content for ``kind="misregistered"``: a feature at BEFORE
        pixel (r, c) appears at (r + dy, c + dx) in AFTER.
    noise
        Standard deviation of the independent noise added to each date, relative to the texture's.
    seed
        Seed of the texture (both dates share it) and of the noise.
    dates
        Acquisition dates written as ``ACQUISITION_DATE`` tags.

    Returns
    -------
    FixturePair
        ``(before, after)`` paths.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown fixture kind {kind!r}; known: {', '.join(PAIR_KINDS)}")
    out = Path(os.fspath(tmp_dir))
    out.mkdir(parents=True, exist_ok=True)
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed + 1000)
    field = TextureField(size, bands + 1, seed=seed)
    ref_crs = CRS.from_user_input(crs)
    ref_t = Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
    before_p, after_p = out / names[0], out / names[1]
    before_tags = {"ACQUISITION_DATE": dates[0]}
    after_tags = {"ACQUISITION_DATE": dates[1] if kind != "reversed-dates" else "2018-05-01"}

    def render(
        transform: Affine, width: int, height: int, g_crs: CRS | None, nb: int, *, dy: float = 0.0,
        dx: float = 0.0, ss: int = 1
    ) -> np.ndarray:
        rr, cc = _grid_coords(transform, width, height, g_crs, ref_t, ref_crs)
        vals = field.sample(rr - dy, cc - dx, supersample=ss)[:nb]
        vals = vals + noise * rng.standard_normal(vals.shape)
        return _to_dtype(vals, dt)

    desc_b = list(descriptions) if descriptions is not None else None
    before = render(ref_t, size, size, ref_crs, bands)
    before_nodata = None
    if kind == "nodata-border":
        before[:, :, :12] = 0
        before_nodata = 0
    make_geotiff(
        before_p,
        before,
        crs=None if kind == "no-crs-both" else ref_crs,
        transform=ref_t,
        nodata=before_nodata,
        descriptions=desc_b,
        tags=before_tags,
    )

    a_crs: CRS | None = ref_crs
    a_t = ref_t
    a_w = a_h = size
    a_bands = bands
    a_nodata = None
    kw: dict[str, Any] = {}
    if kind == "half-pixel-shift":
        a_t = ref_t @ Affine.translation(0.5, 0.5)
    elif kind == "misregistered":
        kw = {"dy": shift[0], "dx": shift[1]}
    elif kind == "other-crs":
        from rasterio.warp import calculate_default_transform

        a_crs = CRS.from_epsg(32632)
        left, top = origin
        right, bottom = left + size * res, top - size * res
        a_t, a_w, a_h = calculate_default_transform(
            ref_crs, a_crs, size, size, left, bottom, right, top, resolution=res
        )
    elif kind == "other-resolution":
        a_t = Affine(2 * res, 0.0, origin[0], 0.0, -2 * res, origin[1])
        a_w = a_h = size // 2
        kw = {"ss": 2}
    elif kind == "other-size":
        a_w = a_h = size - 3
        r2 = res * size / a_w
        a_t = Affine(r2, 0.0, origin[0], 0.0, -r2, origin[1])
    elif kind == "partial-overlap":
        a_t = ref_t @ Affine.translation(round(0.4 * size), 0)
    elif kind == "disjoint":
        a_t = Affine(res, 0.0, origin[0] + 100_000, 0.0, -res, origin[1])
    elif kind == "band-mismatch":
        a_bands = bands + 1
    elif kind in ("no-crs", "no-crs-both"):
        a_crs = None
    after = render(a_t, a_w, a_h, a_crs if a_crs is not None else ref_crs, a_bands, **kw)
    if kind == "nodata-border":
        after[:, :20, :] = 0
        after[:, -8:, -8:] = 0
        a_nodata = 0
    desc_a = list(descriptions) if descriptions is not None and len(descriptions) == a_bands else None
    make_geotiff(
        after_p, after, crs=a_crs, transform=a_t, nodata=a_nodata, descriptions=desc_a, tags=after_tags
    )
    if kind == "corrupt":
        data = after_p.read_bytes()
        after_p.write_bytes(data[: len(data) // 2])
    return FixturePair(before_p, after_p)


def paint_change(
    path: str | os.PathLike[str],
    block: tuple[int, int, int, int] | None = None,
    *,
    value: float | None = None,
) -> np.ndarray:
    """Paint a block of new content into a raster in place and return the truth mask on its grid.

    Parameters
    ----------
    path
        The AFTER raster (modified in place).
    block
        ``(row_off, col_off, height, width)``; default a block of a quarter of the size, centred.
    value
        Value written in every band; default a bright value far outside the texture's range (a new roof).

    Returns
    -------
    numpy.ndarray
        bool (row, col): True inside the painted block.

    >>> import tempfile
    >>> before, after = make_pair(tempfile.mkdtemp(), "aligned", size=64)
    >>> int(paint_change(after, (8, 8, 16, 20)).sum())
    320
    """
    with rasterio.open(path, "r+") as ds:
        h, w = ds.height, ds.width
        if block is None:
            bh, bw = max(1, h // 4), max(1, w // 4)
            block = ((h - bh) // 2, (w - bw) // 2, bh, bw)
        r0, c0, bh, bw = block
        if r0 < 0 or c0 < 0 or r0 + bh > h or c0 + bw > w:
            raise ValueError(f"block {block} outside the raster ({h} x {w})")
        dt = np.dtype(ds.dtypes[0])
        if value is None:
            value = 0.9 if dt.kind == "f" else (250 if dt == np.uint8 else 6000)
        from rasterio.windows import Window

        arr = np.full((ds.count, bh, bw), value, dtype=dt)
        ds.write(arr, window=Window(c0, r0, bw, bh))
    truth = np.zeros((h, w), dtype=bool)
    truth[r0 : r0 + bh, c0 : c0 + bw] = True
    return truth
