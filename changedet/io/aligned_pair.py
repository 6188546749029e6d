"""BEFORE and AFTER on one grid, read window by window: :class:`AlignedPair` (made by
:func:`~changedet.io.alignment.open_pair`).

AFTER is read directly when it lies on the common grid, else through a :class:`rasterio.vrt.WarpedVRT` (shifted
when a co-registration correction is set); validity comes from each date's nodata, NaN and mask band. Also the pixel
size and area of a grid in metres (:func:`pixel_size_m`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from changedet.errors import InputError, RasterReadError, root_message
from changedet.io.coregister import ShiftEstimate
from changedet.io.pair_analysis import _Plan
from changedet.io.pair_report import PairReport
from changedet.io.raster import RasterInfo, crs_to_string

__all__ = ["AlignedPair", "pixel_size_m"]

# A raster without georeferencing is handled in a made-up planar CRS with y up, so that GDAL's warper works.
_PIXEL_CRS = CRS.from_epsg(3857)
_PIXEL_TRANSFORM = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


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
        tmp: Any = None,
    ) -> None:
        self._ds_b, self._ds_a = ds_before, ds_after
        self._plan = plan
        self._owned = list(owned)
        self._tmp = tmp  # a temporary folder (the GeoTIFFs written from xarray inputs), removed by close()
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
        """Close the warped view and the datasets this pair opened (not datasets passed in open), and remove the
        GeoTIFFs written from xarray inputs."""
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
            if self._tmp is not None:
                with contextlib.suppress(Exception):
                    self._tmp.cleanup()
                self._tmp = None

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
