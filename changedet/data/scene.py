"""The :class:`Scene` every dataset reader returns: one labelled bi-temporal pair on one grid.

A scene is one labelled pair on one grid: ``before`` and ``after`` are float32 arrays (band, row, col), ``label``
is uint8 (row, col) with 1 = change and 0 = no change, ``valid`` is a bool (row, col) mask of the pixels where both
dates hold data and the label is known. Georeferencing (``crs``, ``transform``) is that of the grid; non-georeferenced
sources (BMP/PNG benchmarks) have ``crs=None`` and an identity transform.

Re-exported by :mod:`changedet.data.generic` and :mod:`changedet.data`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from affine import Affine

from changedet.errors import InputError

__all__ = ["Scene"]


@dataclass
class Scene:
    """One labelled bi-temporal pair on a common grid.

    Attributes
    ----------
    name : str
        Identifier (city, pair id, file stem).
    before, after : numpy.ndarray
        float32 (band, row, col), raw values (not normalised); invalid pixels may hold anything.
    label : numpy.ndarray or None
        uint8 (row, col), 1 = change, 0 = no change; None for unlabelled scenes.
    valid : numpy.ndarray
        bool (row, col): both dates hold data and (if labelled) the label is known.
    crs : rasterio.crs.CRS or None
    transform : affine.Affine
    band_names : list of str
    pixel_size : float or None
        Ground sampling distance in metres (nominal), None if unknown.
    meta : dict
        Reader-specific extras (dates, source paths, ...), JSON-safe.
    """

    name: str
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray | None
    valid: np.ndarray
    crs: Any
    transform: Affine
    band_names: list[str]
    pixel_size: float | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.before.shape != self.after.shape:
            raise InputError(
                f"scene {self.name}: before {self.before.shape} and after {self.after.shape} differ in shape"
            )
        if self.before.ndim != 3:
            raise InputError(f"scene {self.name}: arrays must be (band, row, col), got {self.before.shape}")
        if self.valid.shape != self.before.shape[1:]:
            raise InputError(f"scene {self.name}: valid mask {self.valid.shape} != image {self.before.shape[1:]}")
        if self.label is not None and self.label.shape != self.before.shape[1:]:
            raise InputError(f"scene {self.name}: label {self.label.shape} != image {self.before.shape[1:]}")
        if len(self.band_names) != self.before.shape[0]:
            raise InputError(
                f"scene {self.name}: {len(self.band_names)} band names for {self.before.shape[0]} bands"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return int(self.before.shape[1]), int(self.before.shape[2])

    @property
    def count(self) -> int:
        """Number of bands."""
        return int(self.before.shape[0])

    @property
    def change_fraction(self) -> float:
        """Fraction of valid pixels labelled as change (nan without a label or valid pixels)."""
        if self.label is None:
            return math.nan
        n = int(self.valid.sum())
        return float(np.count_nonzero(self.label[self.valid])) / n if n else math.nan

    def select_bands(self, bands: Sequence[str]) -> Scene:
        """A scene with only ``bands`` (by name, in that order); arrays are copied."""
        index = _band_indexes(self.band_names, bands, self.name)
        return replace(
            self,
            before=np.ascontiguousarray(self.before[index]),
            after=np.ascontiguousarray(self.after[index]),
            band_names=[self.band_names[i] for i in index],
        )

    def crop(self, row_off: int, col_off: int, height: int, width: int) -> Scene:
        """A scene restricted to a pixel window (copies; the transform follows the window)."""
        rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
        return replace(
            self,
            before=self.before[:, rows, cols].copy(),
            after=self.after[:, rows, cols].copy(),
            label=None if self.label is None else self.label[rows, cols].copy(),
            valid=self.valid[rows, cols].copy(),
            transform=self.transform @ Affine.translation(col_off, row_off),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (no arrays)."""
        cf = self.change_fraction
        return {
            "name": self.name,
            "shape": list(self.shape),
            "bands": list(self.band_names),
            "crs": None if self.crs is None else str(self.crs),
            "pixel_size": self.pixel_size,
            "valid_pixels": int(self.valid.sum()),
            "change_fraction": None if math.isnan(cf) else cf,
        }


def _band_indexes(names: Sequence[str], wanted: Sequence[str], where: str) -> list[int]:
    lookup = {n.upper(): i for i, n in enumerate(names)}
    out = []
    for band in wanted:
        key = str(band).upper()
        if key not in lookup:
            raise InputError(f"{where}: band {band!r} not found; available bands: {', '.join(names)}")
        out.append(lookup[key])
    return out
