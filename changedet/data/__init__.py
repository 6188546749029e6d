"""Labelled change-detection datasets as in-memory :class:`Scene` objects, and chip sampling for training.

Readers (numpy and rasterio only):

- :func:`read_oscd` / :func:`list_oscd_cities`: Onera Satellite Change Detection (Sentinel-2, 13 bands);
- :func:`read_airchange` / :func:`list_airchange_pairs`: SZTAKI AirChange (aerial RGB, 1.5 m);
- :func:`read_folders`: the A/B/label layout of LEVIR-CD, DSIFN-CD, BIT and ChangeFormer;
- :func:`read_list`: a CSV/YAML list of before/after/label rasters;
- :func:`load_dataset`: any of them from a config mapping (what ``changedet train`` reads), split into train and
  validation scenes.

Sampling and augmentation (:mod:`changedet.data.sampling`, which imports torch) are loaded on first use:
``ChipDataset``, ``prepare_scenes``, ``Augment``.
"""

from __future__ import annotations

import importlib
from typing import Any

from changedet.data.airchange import list_airchange_pairs, read_airchange, read_airchange_pairs
from changedet.data.folders import list_folder_pairs, read_folders
from changedet.data.generic import Scene, read_list, read_pair_files
from changedet.data.oscd import OSCD_BANDS, OSCD_RGB, list_oscd_cities, read_oscd, read_oscd_cities
from changedet.data.spec import load_dataset

_LAZY = {
    "Augment": "changedet.data.augment",
    "ChipDataset": "changedet.data.sampling",
    "PreparedScene": "changedet.data.sampling",
    "prepare_scenes": "changedet.data.sampling",
    "band_statistics": "changedet.data.sampling",
}

__all__ = [
    "OSCD_BANDS",
    "OSCD_RGB",
    "Scene",
    "list_airchange_pairs",
    "list_folder_pairs",
    "list_oscd_cities",
    "load_dataset",
    "read_airchange",
    "read_airchange_pairs",
    "read_folders",
    "read_list",
    "read_oscd",
    "read_oscd_cities",
    "read_pair_files",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'changedet.data' has no attribute {name!r}")
