"""The per-date palette of a series run: viridis colours (early dark purple, late yellow), the QGIS paletted styles
of the ``first_change``/``last_change``/``change_count`` rasters and the quick-look figure drawn in those colours."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from changedet.series.outputs import SeriesPair

__all__ = ["date_colors", "paletted_style_qml"]

# viridis at 0, .25, .5, .75, 1: early dates dark purple, late dates yellow
_VIRIDIS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
            (1.0, (253, 231, 37)))


def date_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` colours along viridis (early dark purple -> late yellow), one per pair.

    >>> date_colors(1), len(date_colors(5))
    ([(33, 145, 140)], 5)
    """
    out = []
    for k in range(n):
        t = 0.5 if n == 1 else k / (n - 1)
        for (t0, c0), (t1, c1) in itertools.pairwise(_VIRIDIS):
            if t <= t1:
                f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                out.append(tuple(round(a + f * (b - a)) for a, b in zip(c0, c1, strict=True)))
                break
    return out  # type: ignore[return-value]


def paletted_style_qml(entries: Sequence[tuple[int, tuple[int, int, int], str]]) -> str:
    """QGIS style (QML) of a class raster: a paletted renderer with one colour and legend label per value.

    ``entries`` are ``(value, (r, g, b), label)``; other values (0 = never changed, nodata) are transparent.

    >>> qml = paletted_style_qml([(1, (68, 1, 84), "2020-05-01"), (2, (253, 231, 37), "2021-05-01")])
    >>> 'type="paletted"' in qml and 'label="2021-05-01"' in qml
    True
    """
    from changedet.export.qgis import _el, _minmax_origin, _pipe, _qgis_root, _to_string

    root = _qgis_root(hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0")
    r = _el(None, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor="")
    _minmax_origin(r, "None")
    pal = _el(r, "colorPalette")
    for value, rgb, label in entries:
        _el(pal, "paletteEntry", value=str(int(value)), color="#{:02x}{:02x}{:02x}".format(*rgb), alpha="255",
            label=label)
    _el(r, "colorramp", name="[source]", type="randomcolors")
    _pipe(root, r)
    _el(root, "blendMode", 0)
    return _to_string(root)


def _index_entries(pairs: Sequence[SeriesPair]) -> list[tuple[int, tuple[int, int, int], str]]:
    colors = date_colors(len(pairs))
    return [(p.index, colors[k], f"{p.after_label} (pair {p.index}: {p.label})") for k, p in enumerate(pairs)]


def _count_entries(n_pairs: int) -> list[tuple[int, tuple[int, int, int], str]]:
    colors = date_colors(n_pairs)
    return [(k, colors[k - 1], f"changed {k} time{'s' if k > 1 else ''}") for k in range(1, n_pairs + 1)]


def _save_quicklook(folder: Path, pairs: Sequence[SeriesPair], labels: Sequence[str], path: Path,
                    max_size: int = 900) -> None:
    """Two panels: the first-change pair (one colour per date, legend of dates) and the change count."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(folder / "first_change.tif") as ds:
        scale = min(1.0, max_size / max(ds.height, ds.width))
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        first = ds.read(1, out_shape=shape)
        nodata = ds.nodata
        b = ds.bounds
    with rasterio.open(folder / "change_count.tif") as ds:
        count = ds.read(1, out_shape=shape)
    n = len(pairs)
    colors: list[tuple[float, float, float]] = [(0.93, 0.93, 0.93)] + [
        (r / 255, g / 255, b / 255) for r, g, b in date_colors(n)]
    cmap = ListedColormap(colors)
    extent = (b.left, b.right, b.bottom, b.top)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    shown = np.ma.masked_equal(first.astype(np.int32), int(nodata))
    axes[0].imshow(shown, cmap=cmap, vmin=-0.5, vmax=n + 0.5, interpolation="nearest", extent=extent)
    axes[0].set_title("first change (date first seen changed)")
    handles = [Patch(color=colors[0], label="no change")] + [
        Patch(color=colors[p.index], label=f"{p.after_label} ({p.label})") for p in pairs]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    cshown = np.ma.masked_equal(count.astype(np.int32), int(nodata))
    im = axes[1].imshow(cshown, cmap=ListedColormap(colors), vmin=-0.5, vmax=n + 0.5, interpolation="nearest",
                        extent=extent)
    axes[1].set_title(f"number of changes ({n} pairs)")
    fig.colorbar(im, ax=axes[1], ticks=list(range(n + 1)), shrink=0.8)
    fig.suptitle(f"changedet series: {labels[0]} → {labels[-1]} ({len(labels)} dates)")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
