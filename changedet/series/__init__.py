"""Multi-temporal change detection: what changed, and when?

:func:`detect_series` takes N >= 2 rasters of one site (a yearly or monthly stack), orders them by acquisition
date (``RasterInfo.date``: the metadata, else a date in the file name; or the order given with ``keep_order``),
aligns every date onto the FIRST date's grid clipped to the extent that all dates cover, and compares them in pairs:

``consecutive`` (default)
    each date with the previous one: pair k is (date k-1, date k), "what changed between two visits";
``reference``
    each date with the first one: pair k is (date 0, date k), "how far has the site moved from the start".

One streamed pass over the tiles computes every pair (:func:`predict_series`): for each tile all N dates are read
once (a :class:`SeriesStack` read), the model or unsupervised method runs on each pair, and the probabilities are
blended into per-pair strip accumulators that are written as soon as no later tile touches them. Memory is the tile
stack (N tiles) plus one strip of ``tile_size + 512`` rows per pair, whatever the scene size.

Outputs in the output folder (every file is written into a staging folder and moved into place when all are
complete, ``report.json`` last, as :func:`changedet.api.detect` does):

``pair_01_<before>_<after>/probability.tif``, ``change.tif`` (+ ``.qml`` styles)
    The per-pair rasters of a two-date detect (``<before>``/``<after>``: ISO dates, or the file stems when the
    dates are unknown and ``keep_order`` is set). Pairs are numbered from 1 in date order.
``change_count.tif``
    uint8, how many pairs changed at each pixel (0..n_pairs) among the pairs with valid data there; nodata 255
    where no pair has valid data.
``first_change.tif``, ``last_change.tif``
    Number of the first / last pair that changed (1..n_pairs), 0 where no pair changed; nodata 255 (uint8; uint16
    with nodata 65535 above 254 pairs). The band description says so and the tags give each number's pair and
    date: ``PAIR_1=2019-05-01/2020-05-01`` and ``PAIR_1_DATE=2020-05-01`` (the change is seen at the pair's AFTER
    date). ``first_change.qml`` / ``last_change.qml`` style them in QGIS with one colour per date (viridis, early
    dark to late yellow) and the dates as legend; ``change_count.qml`` likewise per count.
``changes.gpkg``, ``changes.geojson``
    One polygon per 4-connected region of pixels that changed at least once, with :data:`SERIES_COLUMNS`:
    ``first_change`` / ``first_change_date`` / ``first_change_pair`` are the *majority* (mode) of the pixels'
    first-change pair (ties: the earlier pair), ``earliest_change_date`` the minimum, ``last_change_date`` the
    mode of the last change, ``n_changes`` the mode of the pixels' change count and ``max_changes`` its maximum.
``report.json``, ``quicklook.png``, ``project.qgs`` (with ``qgis_project``)
    Inputs with their dates and order, mode, per-pair summaries, the series summary.

Example (the command line is the same function: ``changedet detect d1.tif d2.tif d3.tif -o out/ --method cva``):

>>> from changedet.series import detect_series  # doctest: +SKIP
>>> series = detect_series(["s2_2019-05-01.tif", "s2_2020-05-01.tif", "s2_2021-05-01.tif"],
...                        output_dir="out", method="cva")  # doctest: +SKIP
>>> series.polygons[["first_change_date", "n_changes", "area_m2"]]  # doctest: +SKIP
"""

from __future__ import annotations

from changedet.series.detect import detect_series
from changedet.series.engine import SeriesStats, index_dtype, predict_series
from changedet.series.outputs import (
    SERIES_COLUMNS,
    SERIES_OUTPUT_NAMES,
    SeriesPair,
    SeriesResult,
    date_colors,
    pair_dir_name,
    paletted_style_qml,
)
from changedet.series.stack import MODES, SeriesStack, open_series, order_by_date, series_pairs

__all__ = [
    "MODES",
    "SERIES_COLUMNS",
    "SERIES_OUTPUT_NAMES",
    "SeriesPair",
    "SeriesResult",
    "SeriesStack",
    "SeriesStats",
    "date_colors",
    "detect_series",
    "index_dtype",
    "open_series",
    "order_by_date",
    "pair_dir_name",
    "paletted_style_qml",
    "predict_series",
    "series_pairs",
]
