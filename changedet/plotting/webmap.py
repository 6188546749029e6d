"""The interactive map of a :class:`~changedet.api.ChangeResult` (:func:`explore_result`): folium, Web Mercator.

AFTER (a colour composite from :mod:`changedet.plotting.composite`) and the change mask as image overlays, the
change polygons on top, and a layer switcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.errors import InputError
from changedet.plotting.composite import (
    CHANGE_COLOR,
    OUTLINE_COLOR,
    _out_shape,
    _read_on_grid,
    rgb_composite,
    stretch_limits,
)

if TYPE_CHECKING:  # pragma: no cover
    import folium

    from changedet.api import ChangeResult

__all__ = ["explore_result"]


def _mercator_grid(ds: Any, max_size: int) -> tuple[Any, int, int, list[list[float]]]:
    """A Web Mercator grid over ``ds`` (long side ``max_size``) and its bounds as [[south, west], [north, east]]."""
    from rasterio.warp import calculate_default_transform, transform_bounds

    height, width = _out_shape(ds.height, ds.width, max_size)
    transform, w, h = calculate_default_transform(ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds,
                                                  dst_width=width, dst_height=height)
    left, top = transform * (0, 0)
    right, bottom = transform * (w, h)
    west, south, east, north = transform_bounds("EPSG:3857", "EPSG:4326", left, bottom, right, top)
    return transform, int(w), int(h), [[south, west], [north, east]]


def explore_result(
    result: ChangeResult,
    *,
    max_size: int = 1024,
    show_after: bool = True,
    percentiles: tuple[float, float] = (2, 98),
    **kwargs: Any,
) -> folium.Map:
    """An interactive folium map: AFTER and the change mask as image overlays, the polygons on top.

    Parameters
    ----------
    result
        A georeferenced :class:`~changedet.api.ChangeResult`.
    max_size
        Long side, in pixels, of the overlays (they are embedded in the map as PNG).
    show_after
        Add the AFTER colour composite as an overlay (stretched with BEFORE and AFTER's shared limits).
    percentiles
        Stretch of the AFTER composite.
    **kwargs
        Passed to :meth:`geopandas.GeoDataFrame.explore` for the polygon layer (``tooltip``, ``style_kwds``,
        ``tiles``, ...).

    Returns
    -------
    folium.Map
        Layers "AFTER" (when available), "change mask" (changed red, no data grey, unchanged transparent) and
        "change polygons", with a layer control. Needs ``folium`` (``pip install changedet[notebook]``).

    Examples
    --------
    >>> import tempfile
    >>> from changedet.api import detect
    >>> from changedet.testing import make_pair, paint_change
    >>> before, after = make_pair(tempfile.mkdtemp(), "aligned", size=64)
    >>> _ = paint_change(after, (10, 10, 20, 20))
    >>> m = detect(before, after, method="cva", min_area=500, quicklook=False).explore()
    >>> type(m).__name__, "change polygons" in m.get_root().render()
    ('Map', True)
    """
    try:
        import folium
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("explore() needs folium: pip install 'changedet[notebook]' (or pip install folium)") from exc
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with rasterio.open(result.paths["change"]) as ds:
        if ds.crs is None:
            raise InputError(
                f"{result.paths['change']}: the result has no CRS (pixel coordinates), so it cannot be placed on a "
                "web map; use plot() instead, or georeference the inputs"
            )
        transform, width, height, latlon = _mercator_grid(ds, max_size)
        with WarpedVRT(ds, crs="EPSG:3857", transform=transform, width=width, height=height,
                       resampling=Resampling.nearest, nodata=255) as vrt:
            mask = vrt.read(1)
        src_grid = (ds.crs, ds.transform, ds.width, ds.height)

    center = [(latlon[0][0] + latlon[1][0]) / 2, (latlon[0][1] + latlon[1][1]) / 2]
    m = folium.Map(location=center, zoom_start=13, tiles=kwargs.pop("tiles", "OpenStreetMap"), control_scale=True)
    if show_after:
        reads = [_read_on_grid(s, *src_grid, shape=(height, width)) for s in (result.before, result.after)]
        present = [r for r in reads if r is not None]
        if reads[1] is not None:
            limits = stretch_limits(present, percentiles) if len({r[0].shape[0] for r in present}) == 1 else None
            with rasterio.open(result.paths["change"]) as ds:
                rgb = _warp_rgb(rgb_composite(*reads[1], percentiles, limits=limits), reads[1][1], ds, transform,
                                (height, width))
            folium.raster_layers.ImageOverlay(rgb, bounds=latlon, name="AFTER", opacity=1.0).add_to(m)
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask == 1] = (255, 34, 0, 210)
    rgba[mask == 255] = (128, 128, 128, 90)
    folium.raster_layers.ImageOverlay(rgba, bounds=latlon, name="change mask", opacity=0.85).add_to(m)
    polys = result.polygons
    if polys is not None and len(polys):
        style = {"color": OUTLINE_COLOR, "weight": 2, "fillColor": CHANGE_COLOR, "fillOpacity": 0.25}
        style.update(kwargs.pop("style_kwds", {}))
        polys.explore(m=m, name="change polygons", style_kwds=style, **kwargs)
    m.fit_bounds(latlon)
    folium.LayerControl().add_to(m)
    return m


def _warp_rgb(img: np.ndarray, valid: np.ndarray, ds: Any, dst_transform: Any, shape: tuple[int, int]) -> np.ndarray:
    """Warp a (row, col, 3) composite on a decimated copy of ``ds``'s grid to Web Mercator as RGBA uint8."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    h, w = img.shape[:2]
    src_transform = ds.transform * ds.transform.scale(ds.width / w, ds.height / h)
    src = np.concatenate([img.transpose(2, 0, 1), valid[None].astype(np.float32)], axis=0).astype(np.float32)
    dst = np.zeros((4, *shape), np.float32)
    reproject(src, dst, src_transform=src_transform, src_crs=ds.crs, dst_transform=dst_transform,
              dst_crs="EPSG:3857", resampling=Resampling.bilinear, src_nodata=None, dst_nodata=0)
    rgba = np.clip(dst.transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(dst[3] > 0.5, 255, 0)
    return rgba
