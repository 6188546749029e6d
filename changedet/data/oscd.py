"""Reader of the Onera Satellite Change Detection dataset (OSCD, Daudt et al., IGARSS 2018).

Layout (as released)::

    <root>/Onera Satellite Change Detection dataset - Images/<city>/imgs_1/*_B01.tif ... *_B8A.tif
                                                              /imgs_2/...
                                                              /dates.txt
    <root>/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/<city>-cm.tif   (1 = no change, 2 = change)

Each date has 13 single-band Sentinel-2 L1C rasters (uint16 DN) at 10, 20 and 60 m over the same extent. The reader
puts every band of both dates on the 10 m grid of ``imgs_1/*B02.tif`` with :func:`rasterio.warp.reproject`
(bilinear; bands already on that grid are read as they are), in sensor order ``B01 B02 B03 B04 B05 B06 B07 B08 B8A
B09 B10 B11 B12``. The label files carry no georeferencing: they are pixel-aligned with ``imgs_1/*B02.tif`` and take
its CRS and transform. In a few cities (abudhabi, hongkong, saclay_e, saclay_w) ``imgs_2`` is a few pixels smaller
with a slightly different pixel size; it is resampled onto the ``imgs_1`` grid like any other band.

>>> from changedet.data import list_oscd_cities, read_oscd  # doctest: +SKIP
>>> list_oscd_cities("/data/oscd")  # doctest: +SKIP
['abudhabi', 'aguasclaras', ...]
>>> scene = read_oscd("/data/oscd", "beirut", bands=("B04", "B03", "B02"))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.warp import Resampling

from changedet.data.generic import (
    Scene,
    _band_indexes,
    open_dataset,
    read_text,
    reproject_to_grid,
    same_grid,
)
from changedet.errors import InputError

__all__ = ["OSCD_BANDS", "OSCD_RGB", "list_oscd_cities", "oscd_folders", "read_oscd", "read_oscd_cities"]

#: Sentinel-2 bands in sensor order, as the OSCD readers of Daudt et al. stack them.
OSCD_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
#: The true-colour bands (red, green, blue).
OSCD_RGB: tuple[str, ...] = ("B04", "B03", "B02")
#: Nominal ground sampling distance of the common grid, metres.
OSCD_PIXEL_SIZE = 10.0

IMAGES_DIR = "Onera Satellite Change Detection dataset - Images"
LABELS_DIR = "Onera Satellite Change Detection dataset - Train Labels"
TEST_LABELS_DIR = "Onera Satellite Change Detection dataset - Test Labels"


def oscd_folders(root: str | Path) -> tuple[Path, list[Path]]:
    """The images folder and the label folders (train, and test when present) under an OSCD root.

    ``root`` may be the folder that holds the released sub-folders, or the images folder itself (labels are then
    looked for next to it).
    """
    root = Path(root).expanduser()
    if (root / IMAGES_DIR).is_dir():
        images = root / IMAGES_DIR
    elif root.name == IMAGES_DIR and root.is_dir():
        images, root = root, root.parent
    else:
        raise InputError(
            f"{root}: not an OSCD folder; expected a sub-folder {IMAGES_DIR!r} (and {LABELS_DIR!r}) as released "
            "at https://rcdaudt.github.io/oscd/"
        )
    labels = [root / d for d in (LABELS_DIR, TEST_LABELS_DIR) if (root / d).is_dir()]
    return images, labels


def _label_path(label_dirs: Sequence[Path], city: str) -> Path | None:
    for folder in label_dirs:
        cm = folder / city / "cm"
        for candidate in (cm / f"{city}-cm.tif", cm / f"{city}-cm.tiff"):
            if candidate.is_file():
                return candidate
    return None


def list_oscd_cities(root: str | Path, *, labelled: bool = True) -> list[str]:
    """Cities present on disk (sorted), by default only those with a label file.

    The list is read from the folders, not from ``train.txt``/``test.txt``: copies of OSCD often hold back some
    cities or their labels.
    """
    images, label_dirs = oscd_folders(root)
    cities = sorted(p.name for p in images.iterdir() if (p / "imgs_1").is_dir() and (p / "imgs_2").is_dir())
    if labelled:
        cities = [c for c in cities if _label_path(label_dirs, c) is not None]
    return cities


def _band_file(folder: Path, band: str) -> Path:
    hits = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.stem.upper().endswith(
        "_" + band.upper()
    ))
    if not hits:
        hits = sorted(p for p in folder.iterdir() if p.stem.upper() == band.upper())
    if len(hits) != 1:
        found = "none" if not hits else ", ".join(p.name for p in hits)
        raise InputError(
            f"{folder}: expected one *_{band}.tif file, found {found}; an OSCD date folder holds 13 band files"
        )
    return hits[0]


def _read_date(
    folder: Path, bands: Sequence[str], grid: tuple[tuple[int, int], Any, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` of one date onto ``grid`` (shape, transform, crs): (float32 (band,row,col), valid)."""
    shape, transform, crs = grid
    out = np.empty((len(bands), *shape), dtype=np.float32)
    for i, band in enumerate(bands):
        path = _band_file(folder, band)
        with open_dataset(path) as ds:
            data = ds.read(1, masked=True)
            src_transform, src_crs = ds.transform, ds.crs
        values = np.ma.filled(data.astype(np.float32), np.nan)
        if src_crs is None:
            raise InputError(f"{path}: not georeferenced; OSCD band files carry EPSG:4326 georeferencing")
        if same_grid(values.shape, src_transform, src_crs, shape, transform, crs):
            out[i] = values
        else:
            out[i] = reproject_to_grid(values, src_transform, src_crs, shape, transform, crs, Resampling.bilinear)
    valid = np.isfinite(out).all(axis=0)
    # L1C products use 0 as "no data": a pixel that is 0 in every band lies outside the tile
    valid &= (np.nan_to_num(out) != 0).any(axis=0)
    return out, valid


def _read_dates(city_dir: Path) -> tuple[str | None, str | None]:
    path = city_dir / "dates.txt"
    if not path.is_file():
        return None, None
    found: dict[str, str] = {}
    for line in read_text(path, encoding="utf-8-sig", what="dates file").splitlines():
        if ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            try:
                found[key] = _dt.datetime.strptime(value, "%Y%m%d").date().isoformat()
            except ValueError:
                continue
    return found.get("date_1"), found.get("date_2")


def read_oscd(
    root: str | Path,
    city: str,
    *,
    bands: Sequence[str] | None = None,
    require_label: bool = True,
) -> Scene:
    """Read one OSCD city into a :class:`~changedet.data.Scene` on the 10 m grid of ``imgs_1/*B02.tif``.

    Parameters
    ----------
    root : path
        The OSCD folder (see :func:`oscd_folders`).
    city : str
        City folder name, e.g. ``"beirut"``.
    bands : sequence of str, optional
        Band names to read, in that order (default all 13 in sensor order; ``OSCD_RGB`` for B04, B03, B02).
    require_label : bool
        Raise if the city has no label file (default); with False an unlabelled city gives ``label=None``.

    Returns
    -------
    Scene
        ``before``/``after`` float32 DN, ``label`` uint8 0/1 (from 1/2), ``valid`` where both dates hold data and
        the label is known, CRS and transform of ``imgs_1/*B02.tif``, ``pixel_size`` 10.0.
    """
    images, label_dirs = oscd_folders(root)
    city_dir = images / city
    if not (city_dir / "imgs_1").is_dir() or not (city_dir / "imgs_2").is_dir():
        known = list_oscd_cities(root, labelled=False)
        raise InputError(
            f"{city_dir}: no OSCD city {city!r} (imgs_1/imgs_2 missing); cities on disk: {', '.join(known)}"
        )
    wanted = list(bands) if bands else list(OSCD_BANDS)
    wanted = [OSCD_BANDS[i] for i in _band_indexes(OSCD_BANDS, wanted, f"OSCD {city}")]
    ref_path = _band_file(city_dir / "imgs_1", "B02")
    with open_dataset(ref_path) as ref:
        shape = (ref.height, ref.width)
        transform, crs = ref.transform, ref.crs
    if crs is None:
        raise InputError(f"{ref_path}: not georeferenced; the OSCD grid is taken from imgs_1/*B02.tif")
    grid = (shape, transform, crs)
    before, valid_b = _read_date(city_dir / "imgs_1", wanted, grid)
    after, valid_a = _read_date(city_dir / "imgs_2", wanted, grid)
    valid = valid_b & valid_a
    label = None
    label_path = _label_path(label_dirs, city)
    if label_path is not None:
        with open_dataset(label_path) as ds:
            raw = ds.read(1)
        if raw.shape != shape:
            raise InputError(
                f"{label_path}: {raw.shape[1]}x{raw.shape[0]} pixels but {ref_path.name} has "
                f"{shape[1]}x{shape[0]}; OSCD labels are pixel-aligned with imgs_1/*B02.tif"
            )
        values = set(np.unique(raw).tolist())
        if not values <= {0, 1, 2}:
            raise InputError(
                f"{label_path}: label values {sorted(values)}; expected OSCD's 1 (no change) and 2 (change)"
            )
        label = (raw == 2).astype(np.uint8)
        valid &= raw != 0
    elif require_label:
        raise InputError(
            f"OSCD city {city!r} has no label file under {', '.join(str(d) for d in label_dirs) or root}; "
            f"labelled cities on disk: {', '.join(list_oscd_cities(root))}"
        )
    date_1, date_2 = _read_dates(city_dir)
    return Scene(
        name=city,
        before=before,
        after=after,
        label=label,
        valid=valid,
        crs=crs,
        transform=transform,
        band_names=wanted,
        pixel_size=OSCD_PIXEL_SIZE,
        meta={
            "dataset": "oscd",
            "before_date": date_1,
            "after_date": date_2,
            "label": None if label_path is None else str(label_path),
        },
    )


def read_oscd_cities(
    root: str | Path, cities: Sequence[str] | None = None, *, bands: Sequence[str] | None = None
) -> list[Scene]:
    """Read several labelled OSCD cities (default: every labelled city on disk)."""
    names = list(cities) if cities is not None else list_oscd_cities(root)
    return [read_oscd(root, c, bands=bands) for c in names]
