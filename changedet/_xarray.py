"""xarray / rioxarray inputs: write a ``DataArray`` to a GeoTIFF that the raster path of changedet reads.

:func:`changedet.detect` accepts ``xarray.DataArray`` objects (from ``rioxarray.open_rasterio``, stackstac,
odc-stac, ...) for BEFORE and AFTER, and :func:`changedet.detect_series` for every date. Their CRS and transform come
from the ``rio`` accessor of rioxarray; the array is written block by block (a dask-backed array is computed one
block of rows at a time) north-up and west-to-east (increasing y or decreasing x coordinates are flipped), with the
band coordinate as band descriptions (so ``B04``/``B03``/``B02`` are matched by name; integer band numbers pick the
names of rioxarray's ``long_name`` attribute, which keeps the file's order when bands are reordered) and a scalar
``time`` coordinate as the acquisition date. float16 (which GDAL cannot store) is written as float32.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import InputError

__all__ = ["XARRAY_TMP_PREFIX", "dataarray_to_geotiff", "is_xarray", "write_dataarrays"]

#: Prefix of the temporary folders that hold the GeoTIFFs written from xarray inputs (the same as
#: ``changedet.api.outputs._XARRAY_TMP_PREFIX``, by which reports recognise in-memory inputs).
XARRAY_TMP_PREFIX = "changedet-xarray-"

_DATE_ATTRS = ("ACQUISITION_DATE", "acquisition_date", "datetime", "date", "time", "start_datetime")


def is_xarray(obj: Any) -> bool:
    """Whether ``obj`` is an xarray object (checked without importing xarray).

    >>> is_xarray("before.tif"), is_xarray(None)
    (False, False)
    """
    return type(obj).__module__.split(".")[0] == "xarray"


def _as_date(value: Any) -> _dt.date | None:
    if value is None:
        return None
    try:
        ts = np.datetime64(value, "D")
    except (TypeError, ValueError):
        from changedet.io.raster import date_from_tags

        return date_from_tags({"DATE": str(value)})
    if np.isnat(ts):
        return None
    return _dt.date.fromisoformat(str(ts))


def dataarray_to_geotiff(data: Any, path: str | os.PathLike[str], *, name: str = "input",
                         block_rows: int = 512) -> Path:
    """Write an ``xarray.DataArray`` with a CRS and transform (rioxarray) to a tiled GeoTIFF at ``path``.

    Parameters
    ----------
    data
        A DataArray with spatial dimensions that rioxarray recognises (``y``/``x``, ``latitude``/``longitude``, ...), at most
        one other dimension (the bands) and any number of length-1 dimensions (e.g. ``time``: its value becomes the
        acquisition date).
    path
        Output GeoTIFF.
    name
        What the array is called in error messages (``"before"``, ``"after"``).
    block_rows
        Rows written (and computed, for dask arrays) at a time.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        A Dataset instead of a DataArray, no spatial dimensions, more than one non-spatial dimension, a data type
        that a GeoTIFF cannot hold (e.g. object or text), rioxarray is not installed, or a CRS without a transform
        that can be derived (one row or column, or no x/y coordinate values, and no transform written with
        ``.rio.write_transform``).

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr, rioxarray  # doctest: +SKIP
    >>> da = xr.DataArray(np.zeros((3, 4, 5), "uint16"), dims=("band", "y", "x"),
    ...                   coords={"band": ["B04", "B03", "B02"], "y": [35.5, 25.5, 15.5, 5.5],
    ...                           "x": [0.5, 10.5, 20.5, 30.5, 40.5]}).rio.write_crs("EPSG:32631")  # doctest: +SKIP
    >>> path = dataarray_to_geotiff(da, tempfile.mkdtemp() + "/before.tif")  # doctest: +SKIP
    """
    import rasterio
    import xarray as xr

    if isinstance(data, xr.Dataset):
        raise InputError(
            f"{name}: an xarray.Dataset was given, but changedet needs one DataArray of (band, y, x); stack the "
            "variables, e.g. ds[['B04', 'B03', 'B02']].to_dataarray(dim='band')"
        )
    if not isinstance(data, xr.DataArray):
        raise InputError(f"{name}: {type(data).__name__} is not an xarray.DataArray")
    try:
        import rioxarray  # noqa: F401 - registers the .rio accessor
    except ImportError as exc:
        raise InputError(
            f"{name}: reading an xarray.DataArray needs rioxarray for its CRS and transform; "
            "pip install rioxarray (or 'changedet[notebook]'), or write it to a GeoTIFF first"
        ) from exc
    from rioxarray.exceptions import RioXarrayError

    da = data
    try:
        x_dim, y_dim = da.rio.x_dim, da.rio.y_dim
    except RioXarrayError as exc:
        raise InputError(
            f"{name}: no spatial dimensions found in the DataArray (dims {tuple(da.dims)}); name them x/y "
            "(or longitude/latitude), or call .rio.set_spatial_dims(x_dim=..., y_dim=...)"
        ) from exc
    date = None
    extra = [d for d in da.dims if d not in (x_dim, y_dim)]
    while len(extra) > 1 and any(da.sizes[d] == 1 for d in extra):
        # drop length-1 dimensions such as time=1 (its value is the date), a band dimension last
        dim = sorted((d for d in extra if da.sizes[d] == 1), key=lambda d: d == "band")[0]
        if date is None and dim in da.coords:
            date = _date_of(da[dim].values.reshape(-1)[0])
        da = da.squeeze(dim, drop=True)
        extra.remove(dim)
    if len(extra) > 1:
        raise InputError(
            f"{name}: the DataArray has dimensions {tuple(da.dims)}; changedet needs (band, y, x): select one "
            f"value of the other dimensions, e.g. .isel({extra[0]}=0) or .sel(time='2020-05-01')"
        )
    if extra:
        band_dim = extra[0]
        da = da.transpose(band_dim, y_dim, x_dim)
    else:
        band_dim = None
        da = da.transpose(y_dim, x_dim).expand_dims("band")
    # south-up coordinates (y growing with the row) are flipped to north-up, and x decreasing with the column to
    # west-to-east, so that the transform has a positive pixel width and a negative pixel height as GDAL's grids
    # (and the overlap test) expect. Without coordinate values the rows and columns are in the order of the
    # transform written with .rio.write_transform (da[y_dim] is then just 0, 1, 2...)
    if y_dim in da.coords and da.sizes[y_dim] > 1 and float(da[y_dim][1]) > float(da[y_dim][0]):
        da = da.isel({y_dim: slice(None, None, -1)})
    if x_dim in da.coords and da.sizes[x_dim] > 1 and float(da[x_dim][1]) < float(da[x_dim][0]):
        da = da.isel({x_dim: slice(None, None, -1)})
    crs = da.rio.crs
    transform = _transform_of(da, x_dim, y_dim, crs, name)
    count, height, width = (int(s) for s in da.shape)

    descriptions = _band_names(da, band_dim, data.attrs.get("long_name"), count)

    if date is None:
        for coord in ("time", "t", "date"):
            if coord in data.coords and data[coord].size == 1:
                date = _date_of(data[coord].values.reshape(-1)[0])
                break
    if date is None:
        for key in _DATE_ATTRS:
            if key in data.attrs:
                date = _date_of(data.attrs[key])
                if date:
                    break

    dtype = _gdal_dtype(np.dtype(da.dtype), name)
    nodata = da.rio.nodata if da.rio.nodata is not None else da.rio.encoded_nodata
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype.name,
        "crs": crs, "transform": transform, "nodata": None if nodata is None else float(nodata),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    out = Path(os.fspath(path))
    with rasterio.open(out, "w", **profile) as dst:
        for row in range(0, height, block_rows):
            rows = min(block_rows, height - row)
            block = np.asarray(da.isel({y_dim: slice(row, row + rows)}).values).astype(dtype, copy=False)
            dst.write(block, window=rasterio.windows.Window(0, row, width, rows))
        for i, desc in enumerate(descriptions, start=1):
            if desc:
                dst.set_band_description(i, desc)
        if date is not None:
            dst.update_tags(ACQUISITION_DATE=date.isoformat())
    return out


def _transform_of(da: Any, x_dim: Any, y_dim: Any, crs: Any, name: str) -> Any:
    """The transform of a north-up, west-to-east DataArray (band, y, x) with its x/y coordinates.

    rioxarray derives the pixel size from the spacing of the coordinates: along an axis of one row or one column
    it cannot, and ``da.rio.transform(recalc=True)`` falls back to the transform the array carries
    (``.rio.write_transform``, rioxarray's ``GeoTransform`` of a file it opened) or to the identity. Here the pixel
    size of such an axis comes from the transform the array carries and the position from its coordinate (a
    carried transform may be the one of a larger array a row was selected from). With a CRS and no transform to
    use, an InputError gives the fix rather than a GeoTIFF with the CRS and the identity transform, which loses
    the georeferencing.
    """
    from affine import Affine

    height, width = int(da.sizes[y_dim]), int(da.sizes[x_dim])
    if height > 1 and width > 1:
        transform = da.rio.transform(recalc=True)
        if crs is not None and transform.is_identity:
            raise InputError(_no_transform_message(da, x_dim, y_dim, crs, name))
        return transform
    stored = _stored_transform(da)
    if stored is not None and (not stored.is_rectilinear or stored.b or stored.d):
        return stored  # rotated: as rioxarray does, the carried transform as it is

    def axis(dim: Any, size: int, res_index: int, origin_index: int, sign: float) -> tuple[float, float] | None:
        """(pixel size, origin) along one axis, None when unknown."""
        coords = np.asarray(da[dim].values, dtype="float64") if dim in da.coords else None
        if coords is not None and size > 1:
            res = float(coords[-1] - coords[0]) / (size - 1)
            return res, float(coords[0]) - res / 2
        if stored is None:
            return None
        res = float(stored[res_index])
        if coords is None:  # no coordinate values: the carried transform as it is
            return res, float(stored[origin_index])
        res = sign * abs(res)  # one row (column): north-up (west-to-east), placed at its coordinate
        return res, float(coords[0]) - res / 2

    x = axis(x_dim, width, 0, 2, 1.0)
    y = axis(y_dim, height, 4, 5, -1.0)
    if x is None or y is None:
        if crs is None:
            return Affine.identity()  # pixel coordinates, as for any array without a CRS
        raise InputError(_no_transform_message(da, x_dim, y_dim, crs, name))
    return Affine(x[0], 0.0, x[1], 0.0, y[0], y[1])


def _stored_transform(da: Any) -> Any:
    """The transform a DataArray carries (rioxarray's ``GeoTransform`` of its grid mapping, or an old-style
    ``transform`` attribute), None when it carries none."""
    from affine import Affine

    try:
        grid_mapping = da.rio.grid_mapping
        text = da.coords[grid_mapping].attrs.get("GeoTransform") if grid_mapping in da.coords else None
        if text:
            return Affine.from_gdal(*(float(v) for v in str(text).split()[:6]))
        attr = da.attrs.get("transform")
        if attr is not None and len(attr) >= 6:
            return Affine(*(float(v) for v in list(attr)[:6]))
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
    return None


def _no_transform_message(da: Any, x_dim: Any, y_dim: Any, crs: Any, name: str) -> str:
    """Why a DataArray with a CRS has no usable transform, and the ``.rio.write_transform`` that fixes it."""
    from changedet.io.raster import crs_to_string

    height, width = int(da.sizes[y_dim]), int(da.sizes[x_dim])
    xs = np.asarray(da[x_dim].values, dtype="float64") if x_dim in da.coords else None
    ys = np.asarray(da[y_dim].values, dtype="float64") if y_dim in da.coords else None
    if xs is None or ys is None:
        found = f"it has no {x_dim}/{y_dim} coordinate values"
    elif height == 1:
        found = f"it has 1 row: a pixel height cannot be derived from its one {y_dim} coordinate"
    else:
        found = f"it has 1 column: a pixel width cannot be derived from its one {x_dim} coordinate"
    res = None
    if xs is not None and width > 1:
        res = float(xs[-1] - xs[0]) / (width - 1)
    elif ys is not None and height > 1:
        res = float(ys[0] - ys[-1]) / (height - 1)
    if res is not None and xs is not None and ys is not None:
        example = (f"da.rio.write_transform(Affine({res!r}, 0.0, {float(xs[0]) - res / 2!r}, 0.0, {-res!r}, "
                   f"{float(ys[0]) + res / 2!r})) if its pixels are squares of {res:g}")
    else:
        example = "da.rio.write_transform(Affine(pixel_width, 0.0, left, 0.0, -pixel_height, top))"
    return (
        f"{name}: the xarray.DataArray has a CRS ({crs_to_string(crs)}) but its transform cannot be derived "
        f"({found}, and it carries no transform written with .rio.write_transform), so its georeferencing would be "
        f"lost. Give it its transform with rioxarray (from affine import Affine): {example}"
    )


def write_dataarrays(inputs: Sequence[Any], folder: str | os.PathLike[str], names: Sequence[str]) -> list[Any]:
    """``inputs`` with every ``xarray.DataArray`` written to ``folder/<name>.tif`` (:func:`dataarray_to_geotiff`);
    paths and open datasets are returned as given.

    Before anything is written, a DataArray without a CRS beside an input that has one is refused with the fix
    (``.rio.write_crs(...)``): past this point it is only a temporary GeoTIFF without georeferencing, and the
    pair check could only name that file.

    Raises
    ------
    NotGeoreferencedError
        A DataArray has no CRS and another input has one.
    InputError
        As :func:`dataarray_to_geotiff`.
    """
    crss = [_crs_of(src) for src in inputs]
    known = [(_display(src, n), c) for src, n, c in zip(inputs, names, crss, strict=True) if c is not None]
    for src, name, crs in zip(inputs, names, crss, strict=True):
        if is_xarray(src) and crs is None and known:
            from changedet.errors import NotGeoreferencedError
            from changedet.io.raster import crs_to_string

            other, other_crs = known[0]
            code = crs_to_string(other_crs) or "EPSG:xxxx"
            code = code if code.startswith("EPSG:") else "EPSG:xxxx"
            raise NotGeoreferencedError(
                f"{name}: the xarray.DataArray has no CRS but {other} has one ({crs_to_string(other_crs)}), so "
                f"the two cannot be placed on one grid. Give the DataArray its CRS with rioxarray: pass "
                f"da.rio.write_crs(\"{code}\") when its x/y coordinates are in that CRS (and "
                "da.rio.write_transform(...) when it has no x/y coordinate values)"
            )
    return [dataarray_to_geotiff(src, Path(os.fspath(folder)) / f"{name}.tif", name=name) if is_xarray(src) else src
            for src, name in zip(inputs, names, strict=True)]


def _display(src: Any, name: str) -> str:
    """What an input is called in messages: its path, an open dataset's name, else ``name``."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)  # type: ignore[return-value]
    return f"{name} (xarray.DataArray)" if is_xarray(src) else str(getattr(src, "name", name))


def _crs_of(src: Any) -> Any:
    """The CRS of an input (a DataArray's ``.rio.crs``, an open dataset's or a raster file's), None when it has none
    or cannot be read here (the errors come later, from the usual checks)."""
    import warnings

    try:
        if is_xarray(src):
            import rioxarray  # noqa: F401 - registers the .rio accessor

            return src.rio.crs
        if isinstance(src, (str, os.PathLike)):
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(os.fspath(src)) as ds:
                    return ds.crs
        return getattr(src, "crs", None)
    except Exception:  # noqa: BLE001 - unreadable here: open_pair reports it with the file's name
        return None


def _band_names(da: Any, band_dim: Any, long_name: Any, count: int) -> list[str | None]:
    """Band descriptions: the band coordinate when it holds names, else rioxarray's ``long_name`` attribute picked
    by the band coordinate.

    ``rioxarray.open_rasterio`` numbers the bands 1..n (the band coordinate) and keeps the file's band names in
    ``attrs["long_name"]`` in file order; the attribute is not updated when bands are selected or reordered
    (``da.isel(band=[3, 2, 1])`` keeps all n names), so each band takes the name at its band number. Names are
    only used when every band number is an integer in 1..len(long_name), or, without a band coordinate, when
    long_name holds one name per band; otherwise the bands are unnamed.
    """
    values: list[Any] = []
    if band_dim is not None and band_dim in da.coords:
        values = [v.item() if hasattr(v, "item") else v for v in da[band_dim].values]
    elif band_dim is None and "band" in da.coords and da["band"].size == 1:  # one band selected: da.sel(band=4)
        values = [da["band"].values.reshape(-1)[0].item()]
    if len(values) == count and all(isinstance(v, str) for v in values):
        return list(values)
    names = [long_name] if isinstance(long_name, str) else long_name
    if not values and isinstance(names, (list, tuple)) and len(names) == count:  # no band coordinate: file order
        return [str(n) for n in names]
    if (isinstance(names, (list, tuple)) and len(values) == count
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= len(names)
                    for v in values)):
        return [str(names[int(v) - 1]) for v in values]
    return [None] * count


def _gdal_dtype(dtype: np.dtype, name: str) -> np.dtype:
    """The GeoTIFF data type of an array: bool as uint8, float16 (which GDAL cannot write) as float32."""
    from rasterio.dtypes import check_dtype

    if dtype == np.bool_:
        return np.dtype("uint8")
    if dtype == np.float16:
        return np.dtype("float32")
    if dtype.kind == "f" and dtype.itemsize > 8:  # long double
        return np.dtype("float64")
    if not check_dtype(dtype):
        raise InputError(
            f"{name}: the DataArray's data type {dtype.name} cannot be written to a GeoTIFF; convert it, e.g. "
            ".astype('float32')"
        )
    return dtype


def _date_of(value: Any) -> _dt.date | None:
    try:
        return _as_date(value)
    except (TypeError, ValueError, OverflowError):
        return None
