"""The quick-look figure of a :class:`~changedet.api.ChangeResult` (:func:`plot_result`, :func:`save_quicklook`).

Four panels on the output grid, in map coordinates with a scale bar: BEFORE and AFTER as colour composites
(:mod:`changedet.plotting.composite`), the change probability, and the change polygons over AFTER.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.plotting.composite import (
    CHANGE_COLOR,
    OUTLINE_COLOR,
    _out_shape,
    _read_on_grid,
    rgb_composite,
    stretch_limits,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rasterio.crs import CRS

    from changedet.api import ChangeResult

__all__ = ["plot_result", "save_quicklook"]

NODATA_FACE = "#d0d0d0"  # nodata: light grey hatched with darker grey, distinct from white (saturated) pixels
NODATA_HATCH = "#7a7a7a"


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

