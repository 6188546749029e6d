"""Geospatial input/output: validated raster reading, COG writing, pair checks and alignment (no torch).

>>> import changedet.io as cio
>>> sorted(n for n in ("open_pair", "check_pair", "write_cog") if hasattr(cio, n))
['check_pair', 'open_pair', 'write_cog']
"""

from __future__ import annotations

from changedet.io.alignment import AlignedPair, PairReport, align, check_pair, open_pair, pixel_size_m
from changedet.io.coregister import ShiftEstimate, estimate_pair_shift, estimate_shift
from changedet.io.radiometry import HistogramMatcher, band_stats, normalize, scale
from changedet.io.raster import (
    COGWriter,
    RasterInfo,
    atomic_output,
    open_raster,
    raster_info,
    read_window,
    write_cog,
)
from changedet.io.stack import stack_bands

__all__ = [
    "AlignedPair",
    "COGWriter",
    "HistogramMatcher",
    "PairReport",
    "RasterInfo",
    "ShiftEstimate",
    "align",
    "atomic_output",
    "band_stats",
    "check_pair",
    "estimate_pair_shift",
    "estimate_shift",
    "normalize",
    "open_pair",
    "open_raster",
    "pixel_size_m",
    "raster_info",
    "read_window",
    "scale",
    "stack_bands",
    "write_cog",
]
