"""Radiometry: per-band statistics, scaling, normalisation and histogram matching (numpy only, no torch).

Training and inference normalise with the same function, :func:`normalize`, using statistics from
:func:`band_stats` (``normalization.mode == "scene"``) or stored ones (``"fixed"``). Statistics come from a
decimated read of the valid pixels only, so they cost one small read whatever the scene size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rasterio.io import DatasetReader
from rasterio.windows import Window

__all__ = [
    "HistogramMatcher",
    "band_stats",
    "dtype_scale",
    "normalize",
    "percentile_bounds",
    "scale",
]

Which = Literal["before", "after"]


def dtype_scale(dtype: str | np.dtype) -> float:
    """Factor that brings raw values of a data type to about 0..1.

    uint8 -> 1/255; uint16 (and other integers wider than 8 bits) -> 1/10000, the reflectance scale of Sentinel-2
    L1C/L2A and Landsat Collection 2 surface reflectance products; float -> 1 (assumed already reflectance).

    >>> dtype_scale("uint8"), dtype_scale("uint16"), dtype_scale("float32")
    (0.00392156862745098, 0.0001, 1.0)
    """
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 1.0 / 255.0
    if dt.kind in "iu":
        return 1.0 / 10000.0
    return 1.0


def percentile_bounds(
    array: np.ndarray, valid: np.ndarray | None = None, *, low: float = 2.0, high: float = 98.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) percentiles of a (band, row, col) array over valid pixels."""
    arr = np.asarray(array, dtype=np.float64)
    ok = np.isfinite(arr).all(axis=0)
    if valid is not None:
        ok &= valid
    if not ok.any():
        return np.zeros(arr.shape[0]), np.ones(arr.shape[0])
    vals = arr[:, ok]
    return np.percentile(vals, low, axis=1), np.percentile(vals, high, axis=1)


def scale(
    array: np.ndarray,
    dtype: str | np.dtype | None = None,
    *,
    method: Literal["dtype", "percentile", "none"] = "dtype",
    bounds: tuple[Sequence[float], Sequence[float]] | None = None,
) -> np.ndarray:
    """Scale a (band, row, col) array to about 0..1, as float32.

    Parameters
    ----------
    array
        Raw values.
    dtype
        The source data type for ``method="dtype"`` (default: the array's).
    method
        ``"dtype"``: multiply by :func:`dtype_scale`; ``"percentile"``: map per-band ``bounds`` (low, high) to 0..1
        and clip (bounds default to the 2nd/98th percentiles of the array; pass scene-wide bounds when scaling
        windows one by one); ``"none"``: cast only.

    >>> import numpy as np
    >>> scale(np.array([[[0, 255]]], dtype="uint8")).tolist()
    [[[0.0, 1.0]]]
    """
    arr = np.asarray(array)
    if method == "none":
        return arr.astype(np.float32, copy=False)
    if method == "dtype":
        return (
            arr.astype(np.float32) * np.float32(dtype_scale(dtype if dtype is not None else arr.dtype))
        ).astype(np.float32, copy=False)
    if method == "percentile":
        lo, hi = bounds if bounds is not None else percentile_bounds(arr)
        lo_a = np.asarray(lo, dtype=np.float32).reshape(-1, 1, 1)
        hi_a = np.asarray(hi, dtype=np.float32).reshape(-1, 1, 1)
        span = np.where(hi_a - lo_a > 0, hi_a - lo_a, 1.0).astype(np.float32)
        return np.clip((arr.astype(np.float32) - lo_a) / span, 0.0, 1.0)
    raise ValueError(f"unknown scaling method {method!r}; use 'dtype', 'percentile' or 'none'")


def normalize(
    array: np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Z-score a (band, row, col) or (N, band, row, col) array per band, as float32.

    A band with ``std == 0`` (constant) is only centred, never divided by zero; non-finite inputs become 0.

    >>> import numpy as np
    >>> normalize(np.array([[[1.0, 3.0]], [[5.0, 5.0]]]), [2.0, 5.0], [1.0, 0.0]).tolist()
    [[[-1.0, 1.0]], [[0.0, 0.0]]]
    """
    arr = np.asarray(array, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    band_axis = arr.ndim - 3
    if arr.ndim not in (3, 4) or arr.shape[band_axis] != m.size or m.size != s.size:
        raise ValueError(f"array of shape {arr.shape} does not match {m.size} mean and {s.size} std values")
    shape = [1] * arr.ndim
    shape[band_axis] = m.size
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)
    out = (arr - m.reshape(shape)) / s.reshape(shape)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def _sample(source: Any, which: Which, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """A decimated (band, row, col) read and its validity, from an AlignedPair or a dataset."""
    if isinstance(source, DatasetReader):
        import math

        scale_ = max(1.0, math.sqrt(source.width * source.height / max(1, max_pixels)))
        h, w = max(1, int(source.height / scale_)), max(1, int(source.width / scale_))
        arr = source.read(out_shape=(source.count, h, w), out_dtype="float32")
        valid = np.isfinite(arr).all(axis=0)
        if source.nodata is not None and np.isfinite(source.nodata):
            valid &= (arr != np.float32(source.nodata)).all(axis=0)
        return arr, valid
    if hasattr(source, "read_decimated"):
        before, after, valid = source.read_decimated(max_pixels=max_pixels, apply_corrections=False)
        return (before if which == "before" else after), valid
    raise TypeError(f"expected an AlignedPair or a rasterio dataset, got {type(source).__name__}")


def band_stats(
    pair_or_ds: Any, which: Which = "before", max_pixels: int = 1_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over valid pixels, from a decimated read.

    Parameters
    ----------
    pair_or_ds
        An :class:`~changedet.io.alignment.AlignedPair` (valid = valid in both dates) or an open dataset
        (valid = finite and not nodata).
    which
        Date to summarise for a pair.
    max_pixels
        The read is decimated (``out_shape``) to at most this many pixels per band.

    Returns
    -------
    mean, std
        float64 arrays of one value per band (0 and 1 when no pixel is valid).
    """
    arr, valid = _sample(pair_or_ds, which, max_pixels)
    return _stats(arr, valid)


def _stats(arr: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not valid.any():
        return np.zeros(arr.shape[0]), np.ones(arr.shape[0])
    vals = arr.reshape(arr.shape[0], -1)
    if not valid.all():
        vals = vals[:, valid.ravel()]
    # float64 accumulation without a float64 copy of the sample
    return vals.mean(axis=1, dtype=np.float64), vals.std(axis=1, dtype=np.float64)


def pair_band_stats(
    pair: Any, max_pixels: int = 1_000_000
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``band_stats`` of both dates of an AlignedPair from one decimated read: ``((mean_b, std_b), (mean_a, std_a))``.

    Valid pixels are those valid in both dates, as in :func:`band_stats` (the sample is
    :meth:`~changedet.io.alignment.AlignedPair.read_decimated`'s).
    """
    before, after, valid = pair.read_decimated(max_pixels=max_pixels, apply_corrections=False)
    return _stats(before, valid), _stats(after, valid)


@dataclass
class HistogramMatcher:
    """Per-band quantile mapping of AFTER values onto BEFORE's distribution, fitted once, applied per window.

    Equivalent to :func:`skimage.exposure.match_histograms` on the valid pixels of a decimated read, but as a
    monotone piecewise-linear function (``np.interp`` between ``n_quantiles`` matched quantiles), so it can be
    applied to each window of a scene that does not fit in memory.
    """

    source_quantiles: list[np.ndarray]  # per band, increasing AFTER values
    target_quantiles: list[np.ndarray]  # per band, the BEFORE values they map to

    @classmethod
    def fit(cls, pair: Any, *, n_quantiles: int = 1024, max_pixels: int = 1_000_000) -> HistogramMatcher:
        """Fit on a decimated read of an :class:`~changedet.io.alignment.AlignedPair` (valid pixels only)."""
        before, after, valid = pair.read_decimated(max_pixels=max_pixels, apply_corrections=False)
        return cls.fit_arrays(before, after, valid, n_quantiles=n_quantiles)

    @classmethod
    def fit_arrays(
        cls,
        before: np.ndarray,
        after: np.ndarray,
        valid: np.ndarray | None = None,
        *,
        n_quantiles: int = 1024,
    ) -> HistogramMatcher:
        """Fit on (band, row, col) arrays of the two dates."""
        if before.shape[0] != after.shape[0]:
            raise ValueError(f"band counts differ: {before.shape[0]} vs {after.shape[0]}")
        ok_b = np.isfinite(before).all(axis=0)
        ok_a = np.isfinite(after).all(axis=0)
        if valid is not None:
            ok_b &= valid
            ok_a &= valid
        q = np.linspace(0.0, 1.0, n_quantiles)
        src, tgt = [], []
        for b in range(before.shape[0]):
            vb, va = before[b][ok_b], after[b][ok_a]
            if vb.size == 0 or va.size == 0:
                src.append(q.copy())
                tgt.append(q.copy())
                continue
            qa, qb = np.quantile(va, q), np.quantile(vb, q)
            # np.interp needs increasing x: collapse repeated source quantiles (flat histograms)
            qa, idx = np.unique(qa, return_index=True)
            src.append(qa)
            tgt.append(qb[idx])
        return cls(src, tgt)

    def apply(self, after: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Map a (band, row, col) AFTER array onto BEFORE's distribution (float32); invalid pixels untouched."""
        out = np.asarray(after, dtype=np.float32).copy()
        for b in range(out.shape[0]):
            xs, ys = self.source_quantiles[b], self.target_quantiles[b]
            if xs.size < 2:
                continue
            mapped = np.interp(out[b], xs, ys).astype(np.float32)
            out[b] = mapped if valid is None else np.where(valid, mapped, out[b])
        return out


def read_scaled(ds: DatasetReader, window: Window | None = None, *, method: str = "dtype") -> np.ndarray:
    """Read a window of a dataset and scale it with :func:`scale` (convenience for notebooks)."""
    arr = ds.read(window=window)
    return scale(arr, ds.dtypes[0], method=method)  # type: ignore[arg-type]
