"""Figures and maps of a :class:`~changedet.api.ChangeResult`: the quick-look figure and an interactive map.

:func:`plot_result` draws four panels on the output grid, in map coordinates with a scale bar: BEFORE and AFTER as
contrast-stretched colour composites (Sentinel-2 B04/B03/B02 when the bands are named so, else bands 1-3, or a
grey band), the change probability, and the change polygons over AFTER. Rasters are read decimated
(``max_size`` pixels on the long side), so the figure costs the same for any scene size.
:func:`explore_result` returns a folium map (``GeoDataFrame.explore``) with the change mask as an image overlay.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["explore_result", "plot_result", "rgb_composite", "save_quicklook"]

_RGB_NAMES = (("B04", "B03", "B02"), ("RED", "GREEN", "BLUE"), ("R", "G", "B"))


def _out_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _rgb_indexes(descriptions: tuple[str | None, ...], count: int) -> list[int]:
    names = [str(d).upper() if d else "" for d in descriptions]
    for triple in _RGB_NAMES:
        if all(t in names for t in triple):
            return [names.index(t) + 1 for t in triple]
    return [1, 2, 3] if count >= 3 else [1]


def rgb_composite(array: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2, 98)
                  ) -> np.ndarray:
    """Stretch a (band, row, col) array of 1 or 3 bands to a float (row, col, 3) image in 0..1.

    Each band is linearly stretched between its ``percentiles`` over the valid pixels; invalid pixels are white.
    """
    a = np.asarray(array, dtype=np.float32)
    if valid is None:
        valid = np.all(np.isfinite(a), axis=0)
    out = np.ones((*a.shape[1:], 3), np.float32)
    bands = [a[i] for i in range(a.shape[0])] if a.shape[0] == 3 else [a[0]] * 3
    for i, band in enumerate(bands):
        vals = band[valid]
        if vals.size == 0:
            continue
        lo, hi = np.percentile(vals, percentiles)
        scaled = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        out[..., i] = np.where(valid, scaled, 1.0)
    return out


def _read_on_grid(source: Any, result: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Read a source raster onto the result grid at ``shape`` (decimated); None if it cannot be read."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if source is None:
        return None
    close = False
    try:
        ds = source if hasattr(source, "read") else rasterio.open(source)
        close = ds is not source
    except Exception:  # noqa: BLE001 - a missing preview must not break the figure
        return None
    try:
        idx = _rgb_indexes(ds.descriptions, ds.count)
        with rasterio.open(result.paths["probability"]) as ref:
            height, width = ref.height, ref.width
        if ds.crs is not None and result.crs is not None:
            vrt = WarpedVRT(ds, crs=result.crs, transform=result.transform, width=width, height=height,
                            resampling=Resampling.bilinear)
            arr = vrt.read(idx, out_shape=(len(idx), *shape), resampling=Resampling.average, masked=True)
            vrt.close()
        else:
            arr = ds.read(idx, out_shape=(len(idx), *shape), resampling=Resampling.average, masked=True)
        valid = ~np.ma.getmaskarray(arr).any(axis=0)
        return np.asarray(arr.filled(0), dtype=np.float32), valid
    finally:
        if close:
            ds.close()


def _scale_bar(ax: Any, extent: tuple[float, float, float, float], crs: Any) -> None:
    """Draw a scale bar of a round length in the lower left corner."""
    left, right, bottom, top = extent
    width_units = right - left
    if width_units <= 0:
        return
    metres_per_unit = 1.0
    if crs is not None and getattr(crs, "is_geographic", False):
        metres_per_unit = 111_320.0 * math.cos(math.radians((top + bottom) / 2))
    elif crs is None:
        return
    target = width_units * metres_per_unit / 4
    nice = 10 ** math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * nice <= target:
            nice *= m
            break
    length_units = nice / metres_per_unit
    x0 = left + 0.05 * width_units
    y0 = bottom + 0.06 * (top - bottom)
    ax.plot([x0, x0 + length_units], [y0, y0], color="black", linewidth=4, solid_capstyle="butt")
    ax.plot([x0, x0 + length_units], [y0, y0], color="white", linewidth=2, solid_capstyle="butt")
    label = f"{nice / 1000:g} km" if nice >= 1000 else f"{nice:g} m"
    ax.text(x0 + length_units / 2, y0 + 0.02 * (top - bottom), label, ha="center", va="bottom", fontsize=8,
            color="black", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def plot_result(result: Any, *, max_size: int = 1024, figsize: tuple[float, float] = (13, 10)) -> Figure:
    """Four panels: BEFORE, AFTER, change probability, and the polygons over AFTER.

    Parameters
    ----------
    result
        A :class:`~changedet.api.ChangeResult`.
    max_size
        Long side, in pixels, of the decimated reads.
    figsize
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Four axes whose extents equal the raster bounds, in the raster CRS.
    """
    import rasterio
    from matplotlib.figure import Figure
    from rasterio.enums import Resampling

    with rasterio.open(result.paths["probability"]) as ds:
        shape = _out_shape(ds.height, ds.width, max_size)
        prob = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        bounds = ds.bounds
        crs = ds.crs
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    prob_valid = prob >= 0
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    titles = ["BEFORE", "AFTER", "change probability", "change polygons over AFTER"]
    dates = result.report.get("inputs", {})
    for i, key in enumerate(("before", "after")):
        date = (dates.get(key) or {}).get("date")
        if date:
            titles[i] += f" ({date})"
    reads = [_read_on_grid(src, result, shape) for src in (result.before, result.after)]
    imgs = [rgb_composite(*got) if got is not None else None for got in reads]
    for ax, img in zip(axes[0], imgs, strict=True):
        if img is not None:
            ax.imshow(img, extent=extent, interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
    shown = np.ma.masked_where(~prob_valid, prob)
    im = axes[1, 0].imshow(shown, extent=extent, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    cax = axes[1, 0].inset_axes((0.93, 0.55, 0.03, 0.4))
    cbar = fig.colorbar(im, cax=cax)
    cbar.ax.tick_params(labelsize=7, colors="white")
    cbar.set_label("probability", fontsize=7, color="white")
    if imgs[1] is not None:
        axes[1, 1].imshow(imgs[1], extent=extent, interpolation="nearest")
    polys = result.polygons
    if polys is not None and len(polys):
        polys.boundary.plot(ax=axes[1, 1], color="#ffee00", linewidth=1.0)
        polys.plot(ax=axes[1, 1], facecolor="#ff2200", alpha=0.35, edgecolor="none")
    n = 0 if polys is None else len(polys)
    titles[3] += f": {n}"
    geographic = crs is not None and crs.is_geographic
    for ax, title in zip(axes.flat, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.set_aspect(1 / math.cos(math.radians((extent[2] + extent[3]) / 2)) if geographic else "equal")
        _scale_bar(ax, extent, crs)
    xl, yl = ("longitude (°)", "latitude (°)") if geographic else ("x", "y")
    if crs is not None and not geographic:
        xl, yl = f"easting ({crs.linear_units or 'm'})", f"northing ({crs.linear_units or 'm'})"
    for ax in axes.flat:
        ax.set_xlabel(xl if ax in axes[1] else "", fontsize=8)
        ax.set_ylabel(yl if ax in axes[:, 0] else "", fontsize=8)
    s = result.report.get("summary", {})
    model = (result.report.get("model") or {}).get("name")
    fig.suptitle(
        f"changedet: {s.get('changed_percent', 0):.2f} % changed, threshold {result.report.get('threshold', 0):.2f}, "
        f"model {model}   CRS {crs.to_string() if crs else 'none (pixel coordinates)'}",
        fontsize=10,
    )
    return fig


def save_quicklook(result: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write :func:`plot_result`'s figure as a PNG (atomically)."""
    import os

    path = Path(path)
    fig = plot_result(result)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def explore_result(result: Any, *, max_size: int = 1024, **kwargs: Any) -> Any:
    """An interactive folium map: the change mask as an image overlay and the polygons on top.

    Extra keyword arguments go to :meth:`geopandas.GeoDataFrame.explore`. Needs ``folium`` (``pip install
    changedet[notebook]``).
    """
    import folium
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(result.paths["change"]) as ds:
        if ds.crs is None:
            raise ValueError("explore() needs georeferenced outputs; use plot() for pixel-coordinate results")
        dst_crs = "EPSG:4326"
        shape = _out_shape(ds.height, ds.width, max_size)
        transform, width, height = calculate_default_transform(ds.crs, dst_crs, ds.width, ds.height, *ds.bounds,
                                                               dst_width=shape[1], dst_height=shape[0])
        mask = np.full((height, width), 255, np.uint8)
        reproject(rasterio.band(ds, 1), mask, dst_transform=transform, dst_crs=dst_crs,
                  resampling=Resampling.nearest, dst_nodata=255)
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask == 1] = (255, 40, 0, 200)
    rgba[mask == 0] = (0, 0, 0, 0)
    rgba[mask == 255] = (128, 128, 128, 60)
    west, north = transform * (0, 0)
    east, south = transform * (width, height)
    polys = result.polygons
    if polys is not None and len(polys):
        m = polys.explore(style_kwds={"color": "#ffee00", "fillOpacity": 0.1}, name="change polygons", **kwargs)
    else:
        m = folium.Map(location=[(south + north) / 2, (west + east) / 2], zoom_start=12)
    folium.raster_layers.ImageOverlay(rgba, bounds=[[south, west], [north, east]], name="change mask",
                                      opacity=0.8).add_to(m)
    m.fit_bounds([[south, west], [north, east]])
    folium.LayerControl().add_to(m)
    return m
