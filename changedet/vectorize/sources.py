"""The raster inputs of :func:`~changedet.vectorize.vectorize`: a mask or probability given as an array, a path or
an open dataset, read window by window, with its nodata value (detect's 0/1/255 encoding recognised when the tag
was lost) and the tags that ``changedet detect`` wrote."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.windows import Window

from changedet.errors import InputError, RasterReadError
from changedet.metrics import DETECT_MASK_NODATA, detect_mask_nodata_count
from changedet.metrics import DETECT_MASK_VALUES as DETECT_MASK_VALUES  # re-exported: detect's 0/1/255 values

log = logging.getLogger("changedet.vectorize")


@dataclass
class _Source:
    """One single-band raster input, an in-memory array or an open dataset, read window by window."""

    name: str
    array: np.ndarray | None = None
    dataset: Any = None
    owned: bool = False
    nodata: float | None = None
    band: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        if self.array is not None:
            return self.array.shape  # type: ignore[return-value]
        return (self.dataset.height, self.dataset.width)

    @property
    def dtype(self) -> np.dtype:
        if self.array is not None:
            return self.array.dtype
        return np.dtype(self.dataset.dtypes[self.band - 1])

    def read(self, window: Window) -> np.ndarray:
        if self.array is not None:
            r, c = int(window.row_off), int(window.col_off)
            return np.asarray(self.array[r : r + int(window.height), c : c + int(window.width)])
        try:
            return self.dataset.read(self.band, window=window)
        except Exception as exc:  # rasterio raises RasterioIOError/CPLE_* for truncated or corrupt blocks
            raise RasterReadError(
                f"{self.name}: cannot read window {window!r} ({exc}); the file may be truncated or corrupt. "
                "Re-create it or check it with `gdalinfo -checksum`."
            ) from exc

    def close(self) -> None:
        if self.owned and self.dataset is not None:
            self.dataset.close()


#: ``nodata="auto"`` for an array: 255, the nodata of ``change.tif`` (and of :attr:`ChangeResult.mask`).
ARRAY_NODATA = DETECT_MASK_NODATA


def _open_source(obj: Any, what: str, nodata: float | str | None) -> tuple[_Source, Any, Any]:
    """Wrap an array, a path or an open dataset; return it with the dataset's (transform, crs) if any.

    ``nodata``: ``"auto"`` (the dataset's declared nodata, none when it declares none; :data:`ARRAY_NODATA` for an
    array), None (no nodata value) or a number, which wins over what a dataset declares."""
    if isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and not hasattr(obj, "read")):
        arr = np.asarray(obj)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise InputError(
                f"{what}: expected a 2-D array (row, col) or a single-band (1, row, col) array, found shape "
                f"{arr.shape}; pass one band, e.g. array[0]."
            )
        return _Source(what, array=arr, nodata=ARRAY_NODATA if isinstance(nodata, str) else nodata), None, None
    if isinstance(obj, (str, os.PathLike)):
        from changedet.io.raster import open_raster

        path = os.fspath(obj)
        ds = open_raster(path)
        owned = True
    elif hasattr(obj, "read") and hasattr(obj, "transform"):
        ds, owned = obj, False
        path = getattr(obj, "name", what)
    else:
        raise InputError(
            f"{what}: expected a numpy array, a path or an open rasterio dataset, found {type(obj).__name__}."
        )
    if ds.count != 1:
        log.info("%s has %d bands; band 1 is used as the %s", path, ds.count, what)
    src = _Source(path, dataset=ds, owned=owned, nodata=ds.nodata if isinstance(nodata, str) else nodata)
    georef = ds.crs is not None
    return src, (ds.transform if georef or not ds.transform.is_identity else None), ds.crs


def _detect_encoded_nodata(src: _Source, size: int) -> int | None:
    """The number of 255 pixels when ``src`` (a file or dataset that declares no nodata) holds only the values 0, 1
    and 255 with both 1 and 255 present: detect's ``change.tif`` encoding (255 = no data) whose nodata tag was
    lost (``gdal_translate -a_nodata none``, a re-export); None otherwise (a 0/255 or 0/1 mask, any other value).
    Read window by window; stops at the first window holding another value. The rule is
    :func:`changedet.metrics.detect_mask_nodata_count`, which ``changedet evaluate`` applies too."""
    if src.dataset is None or src.dtype.kind not in "uif":
        return None
    height, width = src.shape
    return detect_mask_nodata_count(src.read(win) for _i, _j, win in _windows(height, width, size))


def _is_probability(src: _Source) -> bool:
    """Whether ``src`` holds floating-point values: a change probability (0..1) such as detect's
    ``probability.tif``, not a mask. ``changedet vectorize`` and :func:`~changedet.vectorize.vectorize` read such a
    raster given as the mask as a probability: change is ``probability >= threshold``, not every non-zero pixel."""
    return src.dtype.kind == "f"


def _float_values(src: _Source, size: int, *, stop_above_one: bool = True) -> tuple[bool, float, float]:
    """Of a float ``src``'s valid values (finite, not its nodata): whether they are all 0 or 1 (a mask stored as
    floats), and their minimum and maximum (0, 0 when there are none). Read window by window; with
    ``stop_above_one`` it stops at the first window holding a value above 1 (the range is then partial)."""
    binary, lo, hi = True, math.inf, -math.inf
    height, width = src.shape
    for _i, _j, win in _windows(height, width, size):
        v = src.read(win)
        ok = np.isfinite(v)
        if src.nodata is not None and not math.isnan(src.nodata):
            ok &= v != src.nodata
        v = v[ok]
        if v.size:
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            binary = binary and bool(np.all((v == 0) | (v == 1)))
            if stop_above_one and hi > 1.0:
                break
    return (binary, lo, hi) if hi >= lo else (binary, 0.0, 0.0)


def _tagged_threshold(tag: str | None) -> float | None:
    """The threshold a ``THRESHOLD``/``CHANGEDET_THRESHOLD`` tag gives (detect tags its rasters so), None when the
    tag is missing, not a number or outside 0..1."""
    try:
        value = float(tag) if tag else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _source_tags(src: _Source | None) -> dict[str, str]:
    """The dataset tags of a path/dataset source, upper-cased keys; empty for arrays."""
    ds = getattr(src, "dataset", None)
    if ds is None:
        return {}
    try:
        return {str(k).upper(): str(v) for k, v in ds.tags().items()}
    except Exception:  # noqa: BLE001 - tags are a nicety
        return {}


def _windows(height: int, width: int, size: int) -> Iterator[tuple[int, int, Window]]:
    for i, r in enumerate(range(0, height, size)):
        for j, c in enumerate(range(0, width, size)):
            yield i, j, Window(c, r, min(size, width - c), min(size, height - r))
