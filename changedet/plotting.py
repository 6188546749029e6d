"""Figures and maps of a :class:`~changedet.api.ChangeResult`: the quick-look figure and an interactive map.

:func:`plot_result` draws four panels on the output grid, in map coordinates with a scale bar: BEFORE and AFTER as
colour composites (Sentinel-2 B04/B03/B02 when the bands are named so, else RED/GREEN/BLUE, else bands 1-3, or one
grey band) stretched with *one* set of limits for both dates, so a change of brightness between the dates stays
visible; the change probability; and the change polygons over AFTER. Rasters are read decimated (``max_size``
pixels on the long side), so the figure costs the same for any scene size. ``changedet detect`` writes this figure
as ``quicklook.png`` (:func:`save_quicklook`).

:func:`explore_result` returns an interactive folium map (through :meth:`geopandas.GeoDataFrame.explore`): AFTER
and the change mask as image overlays in Web Mercator, the polygons on top, and a layer switcher.

Examples
--------
>>> import numpy as np
>>> before = np.stack([np.full((2, 2), v, np.float32) for v in (100, 200, 300)])
>>> lo, hi = stretch_limits([(before, None), (before * 2, None)], percentiles=(0, 100))
>>> lo.tolist(), hi.tolist()
([100.0, 200.0, 300.0], [200.0, 400.0, 600.0])
>>> rgb_composite(before * 2, limits=(lo, hi))[0, 0].tolist()  # AFTER is twice as bright: the top of the stretch
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import folium
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rasterio.crs import CRS

    from changedet.api import ChangeResult

__all__ = ["explore_result", "plot_result", "rgb_composite", "rgb_indexes", "save_quicklook", "stretch_limits"]

#: Band names tried, in order, for a true-colour composite (Sentinel-2, then generic names).
RGB_NAMES = (("B04", "B03", "B02"), ("B4", "B3", "B2"), ("RED", "GREEN", "BLUE"), ("R", "G", "B"))
#: Colour of the change in every figure and map: polygons' fill, the mask overlay.
CHANGE_COLOR = "#ff2200"
OUTLINE_COLOR = "#ffee00"
NODATA_FACE = "#d0d0d0"  # nodata: light grey hatched with darker grey, distinct from white (saturated) pixels
NODATA_HATCH = "#7a7a7a"


def _out_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def rgb_indexes(descriptions: Sequence[str | None] | None, count: int) -> list[int]:
    """1-based band indexes of a true-colour composite: named red/green/blue bands, else 1-3, else band 1.

    >>> rgb_indexes(["B01", "B02", "B03", "B04", "B05"], 5)
    [4, 3, 2]
    >>> rgb_indexes([None, None, None, None], 4), rgb_indexes(["pan"], 1)
    ([1, 2, 3], [1])
    """
    names = [str(d).strip().upper() if d else "" for d in (descriptions or ())]
    for triple in RGB_NAMES:
        if all(t in names for t in triple):
            return [names.index(t) + 1 for t in triple]
    return [1, 2, 3] if count >= 3 else [1]


def stretch_limits(
    reads: Sequence[tuple[np.ndarray, np.ndarray | None]], percentiles: tuple[float, float] = (2, 98)
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band stretch limits pooled over several (band, row, col) arrays, e.g. BEFORE and AFTER.

    Parameters
    ----------
    reads
        ``(array, valid)`` pairs with the same band count; ``valid`` (row, col) bool or None for finite pixels.
    percentiles
        Lower and upper percentile of the pooled valid values of each band.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Low and high limit per band (float64). A band without valid pixels gets (0, 1).
    """
    if not reads:
        raise ValueError("stretch_limits needs at least one array")
    n = reads[0][0].shape[0]
    lo, hi = np.zeros(n), np.ones(n)
    for b in range(n):
        vals = []
        for array, valid in reads:
            band = np.asarray(array[b], dtype=np.float64)
            ok = np.isfinite(band) if valid is None else (valid & np.isfinite(band))
            vals.append(band[ok])
        pooled = np.concatenate(vals)
        if pooled.size:
            lo[b], hi[b] = np.percentile(pooled, percentiles)
    return lo, hi


def rgb_composite(
    array: np.ndarray,
    valid: np.ndarray | None = None,
    percentiles: tuple[float, float] = (2, 98),
    *,
    limits: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray] | None = None,
) -> np.ndarray:
    """Stretch a (band, row, col) array of 1 or 3 bands to a float (row, col, 3) image in 0..1.

    Each band is stretched linearly between ``limits`` (low and high per band, e.g. from :func:`stretch_limits` over
    both dates) or, without them, between its own ``percentiles`` over the valid pixels. Invalid pixels are white (the quick-look figure makes them transparent over a hatch).
    """
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if valid is None:
        valid = np.all(np.isfinite(a), axis=0)
    if limits is None:
        lo, hi = stretch_limits([(a, valid)], percentiles)
    else:
        lo, hi = (np.broadcast_to(np.asarray(x, np.float64), (a.shape[0],)) for x in limits)
    out = np.ones((*a.shape[1:], 3), np.float32)
    channel = [0, 1, 2] if a.shape[0] >= 3 else [0, 0, 0]
    for i, b in enumerate(channel):
        span = hi[b] - lo[b]
        scaled = np.clip((a[b] - lo[b]) / (span if span > 0 else 1.0), 0, 1)
        out[..., i] = np.where(valid, scaled, 1.0)
    return out


# -- reading -----------------------------------------------------------------------------------------------------
def _open(source: Any) -> tuple[Any, bool]:
    """An open dataset for a path / dataset (and whether we opened it), or (None, False) if unreadable."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    if source is None:
        return None, False
    if hasattr(source, "read") and not getattr(source, "closed", False):
        return source, False
    name = getattr(source, "name", source) if hasattr(source, "read") else source
    try:
        with warnings.catch_warnings():  # detect already warned about a raster in pixel coordinates
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(os.fspath(name)), True
    except Exception:  # noqa: BLE001 - a missing preview must not break the figure
        return None, False


def _read_on_grid(
    source: Any, crs: CRS | None, transform: Any, width: int, height: int, shape: tuple[int, int],
    resampling: str = "average",
) -> tuple[np.ndarray, np.ndarray] | None:
    """The composite bands of ``source`` on the result grid, decimated to ``shape``: ``(array, valid)`` or None."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    ds, close = _open(source)
    if ds is None:
        return None
    try:
        idx = rgb_indexes(ds.descriptions, ds.count)
        if ds.crs is not None and crs is not None:
            with WarpedVRT(ds, crs=crs, transform=transform, width=width, height=height,
                           resampling=Resampling.bilinear) as vrt:
                arr = vrt.read(idx, out_shape=(len(idx), *shape), resampling=Resampling[resampling], masked=True)
        else:
            arr = ds.read(idx, out_shape=(len(idx), *shape), resampling=Resampling[resampling], masked=True)
        valid = ~np.ma.getmaskarray(arr).any(axis=0)
        data = np.asarray(arr.filled(0), dtype=np.float32)
        return data, np.asarray(valid & np.all(np.isfinite(data), axis=0))
    except Exception:  # noqa: BLE001 - e.g. a closed dataset or a source that moved: show the others
        return None
    finally:
        if close:
            ds.close()


# -- figure parts ------------------------------------------------------------------------------------------------
def _metres_per_unit(crs: CRS | None, lat: float) -> float | None:
    if crs is None:
        return None
    if crs.is_geographic:
        return 111_320.0 * math.cos(math.radians(lat))
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return float(factor)


def _nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``target``.

    >>> _nice_length(730.0), _nice_length(2600.0), _nice_length(12.0)
    (500.0, 2000.0, 10.0)
    """
    nice = 10.0 ** math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * nice <= target:
            return m * nice
    return nice


def _scale_bar(ax: Axes, extent: tuple[float, float, float, float], crs: CRS | None) -> str | None:
    """Draw a scale bar of a round length (about a quarter of the width) in the lower left corner."""
    import matplotlib.patheffects as pe

    left, right, bottom, top = extent
    width_units = right - left
    mpu = _metres_per_unit(crs, (top + bottom) / 2)
    if width_units <= 0 or not mpu:
        return None
    metres = _nice_length(width_units * mpu / 4)
    length = metres / mpu
    x0 = left + 0.05 * width_units
    y0 = bottom + 0.05 * (top - bottom)
    # a white-edged black bar with its first half white: readable over dark and light images alike
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=6.5, solid_capstyle="butt")
    ax.plot([x0, x0 + length], [y0, y0], color="black", linewidth=4, solid_capstyle="butt")
    ax.plot([x0, x0 + length / 2], [y0, y0], color="white", linewidth=4, solid_capstyle="butt")
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    ax.text(x0 + length / 2, y0 + 0.015 * (top - bottom), label, ha="center", va="bottom", fontsize=8,
            color="white", fontweight="bold", path_effects=[pe.withStroke(linewidth=2.5, foreground="black")])
    return label


def _figsize(extent: tuple[float, float, float, float], aspect: float) -> tuple[float, float]:
    """A figure size that fits 2 x 2 panels of the raster's shape without large empty margins."""
    left, right, bottom, top = extent
    ratio = abs(top - bottom) * aspect / max(abs(right - left), 1e-12)  # panel height / width
    panel_w = 5.2
    panel_h = panel_w * ratio
    if panel_h > 5.2:
        panel_h = 5.2
        panel_w = max(panel_h / ratio, 1.6)
    panel_h = max(panel_h, 1.6)
    return round(2 * panel_w + 1.5, 2), round(2 * panel_h + 1.6, 2)


def _date(result: ChangeResult, which: str) -> str | None:
    return ((result.report.get("inputs") or {}).get(which) or {}).get("date")


def _polygons_area_m2(polys: Any) -> float | None:
    """Sum of the polygons' ``area_m2`` (0 for none; None without polygons or without areas, i.e. no CRS)."""
    if polys is None:
        return None
    if not len(polys):
        return 0.0
    if "area_m2" not in polys.columns:
        return None
    areas = np.asarray(polys["area_m2"], dtype="float64")
    return float(areas.sum()) if np.isfinite(areas).all() else None


def _area_text(m2: float | None) -> str:
    if m2 is None:
        return ""
    return f"{m2 / 1e6:.3g} km²" if m2 >= 1e5 else f"{m2:,.0f} m²"


def plot_result(
    result: ChangeResult,
    *,
    max_size: int = 1024,
    figsize: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (2, 98),
    shared_stretch: bool = True,
) -> Figure:
    """Four panels: BEFORE, AFTER, change probability, and the polygons over AFTER.

    Parameters
    ----------
    result
        A :class:`~changedet.api.ChangeResult` (its ``before``/``after`` sources are read again for the composites;
        a source that can no longer be read shows "not available").
    max_size
        Long side, in pixels, of the decimated reads.
    figsize
        Figure size in inches; default: fitted to the raster's shape.
    percentiles
        Stretch of the colour composites (per band, over the valid pixels).
    shared_stretch
        Stretch BEFORE and AFTER with the same limits, pooled over both dates (default), so that a change of
        brightness shows; False stretches each date on its own.

    Returns
    -------
    matplotlib.figure.Figure
        A figure (not attached to pyplot: display it in a notebook, or ``fig.savefig(path)``) with four map axes
        whose extents equal the raster bounds, in the raster CRS, each with a scale bar when the CRS is known.

    Examples
    --------
    >>> import tempfile
    >>> from changedet.api import detect
    >>> from changedet.testing import make_pair, paint_change
    >>> before, after = make_pair(tempfile.mkdtemp(), "aligned", size=64)
    >>> _ = paint_change(after, (10, 10, 20, 20))
    >>> fig = detect(before, after, method="cva", min_area=500, quicklook=False).plot()
    >>> [ax.get_title().split(" (")[0].split(",")[0] for ax in fig.axes if ax.get_images()]
    ['BEFORE', 'AFTER', 'change probability', 'change polygons over AFTER: 1']
    """
    import matplotlib
    import matplotlib.patheffects as pe
    import rasterio
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator
    from rasterio.enums import Resampling

    with rasterio.open(result.paths["probability"]) as ds:
        shape = _out_shape(ds.height, ds.width, max_size)
        prob = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        bounds, crs, transform, width, height = ds.bounds, ds.crs, ds.transform, ds.width, ds.height
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    geographic = crs is not None and crs.is_geographic
    aspect = 1 / math.cos(math.radians((extent[2] + extent[3]) / 2)) if geographic else 1.0

    reads = [_read_on_grid(src, crs, transform, width, height, shape) for src in (result.before, result.after)]
    present = [r for r in reads if r is not None]
    same_bands = len({r[0].shape[0] for r in present}) == 1
    limits = stretch_limits(present, percentiles) if shared_stretch and present and same_bands else None
    imgs = [rgb_composite(r[0], r[1], percentiles, limits=limits) if r is not None else None for r in reads]

    fig = Figure(figsize=figsize or _figsize(extent, aspect), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True)

    def show(ax: Axes, img: Any, **kwargs: Any) -> Any:
        """imshow on the raster's grid: its bounds for a north-up grid, its affine for a rotated one (the
        polygons are drawn in map coordinates, so the images must be too)."""
        if transform.b == 0 and transform.d == 0:
            return ax.imshow(img, extent=extent, interpolation="nearest", **kwargs)
        from matplotlib.transforms import Affine2D

        t = transform
        pixel_to_map = Affine2D.from_values(t.a, t.d, t.b, t.e, t.c, t.f)
        return ax.imshow(img, extent=(0, width, height, 0), interpolation="nearest",
                         transform=pixel_to_map + ax.transData, **kwargs)

    titles = ["BEFORE", "AFTER", "change probability", "change polygons over AFTER"]
    for i, key in enumerate(("before", "after")):
        date = _date(result, key)
        if date:
            titles[i] += f" ({date})"
    # nodata is transparent over a hatched background, so that it never reads as saturated white or as black
    imgs = [None if img is None or r is None else np.dstack([img, r[1].astype(np.float32)])
            for img, r in zip(imgs, reads, strict=True)]
    for ax in axes.flat:
        ax.add_patch(Rectangle((extent[0], extent[2]), extent[1] - extent[0], extent[3] - extent[2],
                               facecolor=NODATA_FACE, edgecolor=NODATA_HATCH, hatch="////", linewidth=0,
                               zorder=-1, label="nodata"))
    for ax, img in zip(axes[0], imgs, strict=True):
        if img is not None:
            show(ax, img)
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)

    threshold = result.report.get("threshold")
    cmap = matplotlib.colormaps["magma"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    shown = np.ma.masked_where(~(prob >= 0), prob)
    im = show(axes[1, 0], shown, cmap=cmap, vmin=0, vmax=1)
    cax = axes[1, 0].inset_axes((0.55, 0.07, 0.4, 0.035))
    cbar = fig.colorbar(im, cax=cax, orientation="horizontal", ticks=[0, 0.5, 1])
    halo: list[pe.AbstractPathEffect] = [pe.withStroke(linewidth=2, foreground="black")]
    cbar.ax.tick_params(labelsize=7, colors="white")
    for label in cbar.ax.get_xticklabels():
        label.set_path_effects(halo)
    cbar.set_label("probability" + (f" (threshold {threshold:.2f})" if threshold is not None else ""),
                   fontsize=7, color="white", path_effects=halo)
    cbar.ax.xaxis.set_label_position("top")
    if threshold is not None:
        cbar.ax.axvline(float(threshold), color="#00e5ff", linewidth=1.5)

    if imgs[1] is not None:
        show(axes[1, 1], imgs[1])
    polys = result.polygons
    if polys is not None and len(polys):
        if crs is not None and polys.crs is not None and polys.crs != crs:
            polys = polys.to_crs(crs)
        polys.plot(ax=axes[1, 1], facecolor=matplotlib.colors.to_rgba(CHANGE_COLOR, 0.35),
                   edgecolor=OUTLINE_COLOR, linewidth=1.0 if len(polys) < 300 else 0.5)
    n = 0 if polys is None else len(polys)
    summary = result.report.get("summary") or {}
    # the polygons' own area: with min_area (or fill_holes, simplify) it differs from the mask's changed area
    area = _area_text(_polygons_area_m2(polys))
    titles[3] += f": {n}" + (f", {area}" if area else "")

    for ax, title in zip(axes.flat, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect(aspect)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(useOffset=False, style="plain")
        _scale_bar(ax, extent, crs)
    if crs is None:
        xl, yl = "column (pixels)", "row (pixels)"
    elif geographic:
        xl, yl = "longitude (°)", "latitude (°)"
    else:
        unit = crs.linear_units if crs.linear_units and crs.linear_units != "unknown" else "m"
        xl, yl = f"easting ({unit})", f"northing ({unit})"
    for (row, col), ax in np.ndenumerate(axes):  # also replaces the labels that GeoDataFrame.plot sets
        ax.set_xlabel(xl if row == 1 else "", fontsize=8)
        ax.set_ylabel(yl if col == 0 else "", fontsize=8)
    model = (result.report.get("model") or {}).get("name")
    thr_text = f", threshold {threshold:.2f}" if threshold is not None else ""
    fig.suptitle(
        f"changedet: {summary.get('changed_percent') or 0:.2f} % changed{thr_text}, "
        f"{'model ' + str(model) if model else 'no model'}; "
        f"CRS {crs.to_string() if crs else 'none (pixel coordinates)'}",
        fontsize=10,
    )
    return fig


def save_quicklook(result: ChangeResult, path: str | os.PathLike[str], dpi: int = 110, **kwargs: Any) -> Path:
    """Write :func:`plot_result`'s figure as a PNG (atomically); extra keywords go to :func:`plot_result`."""
    path = Path(path)
    fig = plot_result(result, **kwargs)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- interactive map ---------------------------------------------------------------------------------------------
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
