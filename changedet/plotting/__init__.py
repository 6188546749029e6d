"""Figures and maps of a :class:`~changedet.api.ChangeResult`: the quick-look figure and an interactive map.

:func:`plot_result` draws four panels on the output grid, in map coordinates with a scale bar: BEFORE and AFTER as
colour composites (Sentinel-2 B04/B03/B02 when the bands are named so, else RED/GREEN/BLUE, else bands 1-3, or one
grey band) stretched with *one* set of limits for both dates, so a change of brightness between the dates stays
visible; the change probability; and the change polygons over AFTER. Rasters are read decimated (``max_size``
pixels on the long side), so the figure costs the same for any scene size. ``changedet detect`` writes this figure
as ``quicklook.png`` (:func:`save_quicklook`).

:func:`explore_result` returns an interactive folium map (through :meth:`geopandas.GeoDataFrame.explore`): AFTER
and the change mask as image overlays in Web Mercator, the polygons on top, and a layer switcher.

The code lives in three submodules, re-exported here: :mod:`changedet.plotting.composite` (colour composites,
stretch limits, reading BEFORE/AFTER onto the result grid), :mod:`changedet.plotting.figure` (the quick-look
figure) and :mod:`changedet.plotting.webmap` (the interactive map).

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

from changedet.plotting.composite import CHANGE_COLOR as CHANGE_COLOR
from changedet.plotting.composite import OUTLINE_COLOR as OUTLINE_COLOR
from changedet.plotting.composite import RGB_NAMES as RGB_NAMES
from changedet.plotting.composite import rgb_composite, rgb_indexes, stretch_limits
from changedet.plotting.figure import NODATA_FACE as NODATA_FACE
from changedet.plotting.figure import NODATA_HATCH as NODATA_HATCH
from changedet.plotting.figure import _area_text as _area_text
from changedet.plotting.figure import plot_result, save_quicklook
from changedet.plotting.webmap import explore_result

__all__ = ["explore_result", "plot_result", "rgb_composite", "rgb_indexes", "save_quicklook", "stretch_limits"]
