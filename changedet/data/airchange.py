"""Reader of the SZTAKI AirChange benchmark (Benedek & Szirányi, 2008/2009).

Layout: ``<root>/Szada/<n>/``, ``<root>/Tiszadob/<n>/`` and ``<root>/Archieve/`` (sic), each holding ``im1.bmp``
(before), ``im2.bmp`` (after) and ``gt.bmp`` (0 = no change, 255 = change), RGB aerial images at 1.5 m per pixel,
952x640 (Archieve 1048x724), not georeferenced. File-name case varies (``.bmp``/``.BMP``).

Pair ids are ``"Szada/2"``, ``"Tiszadob/4"``, ``"Archieve"``. Daudt et al. (ICIP 2018) test on Szada/1 and
Tiszadob/3, cropped to the top-left 784x448 pixels (``crop=(0, 0, 448, 784)``), and train on the rest.

>>> from changedet.data import list_airchange_pairs, read_airchange  # doctest: +SKIP
>>> read_airchange("/data/sztaki-airchange", "Szada/2").shape  # doctest: +SKIP
(640, 952)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from affine import Affine

from changedet.data.generic import Scene, read_raster
from changedet.errors import InputError

__all__ = ["AIRCHANGE_PIXEL_SIZE", "DAUDT_TEST_CROP", "list_airchange_pairs", "read_airchange"]

AIRCHANGE_PIXEL_SIZE = 1.5
#: (row_off, col_off, height, width) of the test region used by Zhan et al. 2017 and Daudt et al. 2018.
DAUDT_TEST_CROP = (0, 0, 448, 784)
_SITES = ("Szada", "Tiszadob", "Archieve")


def _find(folder: Path, stem: str) -> Path | None:
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_file() and p.name.lower() == f"{stem}.bmp":
            return p
    return None


def _pair_dir(root: Path, pair_id: str) -> Path:
    return root.joinpath(*pair_id.replace("\\", "/").split("/"))


def list_airchange_pairs(root: str | Path) -> list[str]:
    """Pair ids found under ``root`` (folders holding im1/im2/gt BMPs), sorted by site then number."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; expected the AirChange folder with Szada/ and Tiszadob/")
    found = []
    for site in _SITES:
        site_dir = root / site
        if not site_dir.is_dir():
            continue
        if all(_find(site_dir, s) for s in ("im1", "im2", "gt")):
            found.append(site)
        subs = [p for p in site_dir.iterdir() if p.is_dir()]
        for sub in sorted(subs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
            if all(_find(sub, s) for s in ("im1", "im2", "gt")):
                found.append(f"{site}/{sub.name}")
    if not found:
        raise InputError(
            f"{root}: no AirChange pairs found; expected <site>/<n>/im1.bmp, im2.bmp and gt.bmp "
            "with site Szada, Tiszadob or Archieve"
        )
    return found


def read_airchange(
    root: str | Path, pair_id: str, *, crop: tuple[int, int, int, int] | None = None
) -> Scene:
    """Read one AirChange pair as a :class:`~changedet.data.Scene` (RGB, float32 0..255, label 0/1).

    Parameters
    ----------
    root : path
        The AirChange folder.
    pair_id : str
        ``"Szada/2"``, ``"Tiszadob/4"`` or ``"Archieve"``.
    crop : (row_off, col_off, height, width), optional
        A pixel window, e.g. :data:`DAUDT_TEST_CROP`.
    """
    root = Path(root).expanduser()
    folder = _pair_dir(root, pair_id)
    paths = {s: _find(folder, s) for s in ("im1", "im2", "gt")}
    missing = [f"{s}.bmp" for s, p in paths.items() if p is None]
    if missing:
        try:
            on_disk = ", ".join(list_airchange_pairs(root))
        except InputError:
            on_disk = "none"
        raise InputError(f"{folder}: missing {', '.join(missing)}; AirChange pairs on disk: {on_disk}")
    before, b_valid, _, _, _ = read_raster(paths["im1"])  # type: ignore[arg-type]
    after, a_valid, _, _, _ = read_raster(paths["im2"])  # type: ignore[arg-type]
    gt_values, g_valid, _, _, _ = read_raster(paths["gt"])  # type: ignore[arg-type]
    if before.shape != after.shape or gt_values.shape[1:] != before.shape[1:]:
        raise InputError(
            f"{folder}: im1 {before.shape[1:]}, im2 {after.shape[1:]} and gt {gt_values.shape[1:]} differ in size"
        )
    if before.shape[0] != 3:
        raise InputError(f"{paths['im1']}: {before.shape[0]} bands, expected RGB (3)")
    # gt is a grey mask (0 / 255); a few pairs hold stray intermediate grey values (Szada/6 has one 213): threshold
    label_mask = (gt_values[0] >= 128).astype(np.uint8)
    scene = Scene(
        name=pair_id,
        before=before,
        after=after,
        label=label_mask,
        valid=b_valid & a_valid & g_valid,
        crs=None,
        transform=Affine.identity(),
        band_names=["red", "green", "blue"],
        pixel_size=AIRCHANGE_PIXEL_SIZE,
        meta={"dataset": "airchange", "folder": str(folder)},
    )
    if crop is not None:
        r, c, h, w = crop
        if r < 0 or c < 0 or r + h > scene.shape[0] or c + w > scene.shape[1]:
            raise InputError(f"{folder}: crop {crop} lies outside the {scene.shape[1]}x{scene.shape[0]} image")
        scene = scene.crop(r, c, h, w)
    return scene


def read_airchange_pairs(root: str | Path, pair_ids: Sequence[str] | None = None) -> list[Scene]:
    """Read several AirChange pairs (default: all on disk)."""
    ids = list(pair_ids) if pair_ids is not None else list_airchange_pairs(root)
    return [read_airchange(root, p) for p in ids]
