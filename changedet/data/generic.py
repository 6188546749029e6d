"""The generic readers: one before/after/label triple of rasters, or the pairs named in a CSV/YAML list.

Both return :class:`Scene` objects (:mod:`changedet.data.scene`); the raster helpers they share with the other
readers live in :mod:`changedet.data.rasters`. Both are re-exported here, where the readers have always imported
them from.

A list file names one pair per row, relative paths resolved against the list's folder::

    # pairs.csv                          # pairs.yaml
    name,before,after,label              - {name: site1, before: a/2019.tif, after: a/2021.tif, label: a/cm.tif}
    site1,a/2019.tif,a/2021.tif,a/cm.tif

>>> from changedet.data import read_list  # doctest: +SKIP
>>> scenes = read_list("pairs.csv", change_values=[255])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.warp import Resampling

from changedet.data.rasters import _label_band as _label_band
from changedet.data.rasters import _label_values as _label_values
from changedet.data.rasters import _read_raster as _read_raster
from changedet.data.rasters import (
    label_from_array,
    oscd_no_change_labels,
    pixel_size_metres,
    read_label_raster,
    read_raster,
    reproject_to_grid,
    same_grid,
)
from changedet.data.rasters import open_dataset as open_dataset
from changedet.data.scene import Scene
from changedet.data.scene import _band_indexes as _band_indexes
from changedet.errors import InputError, NoOverlapError

__all__ = ["Scene", "read_label_raster", "read_list", "read_pair_files", "read_text"]


def read_text(path: str | Path, *, encoding: str = "utf-8", newline: str | None = None, what: str = "file") -> str:
    """The text of a list or config file; a file in another encoding than UTF-8 (Windows-1252, as Excel's "CSV
    (Comma delimited)" saves it) is an :class:`~changedet.errors.InputError` that names the file and asks for UTF-8.

    ``encoding="utf-8-sig"`` also drops the byte-order mark of Excel's "CSV UTF-8"; ``newline=""`` keeps line ends
    as they are (what :mod:`csv` expects).
    """
    path = Path(path)
    try:
        with path.open(encoding=encoding, newline=newline) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        how = "in Excel: Save as 'CSV UTF-8'" if path.suffix.lower() == ".csv" else "in a text editor: Save as, UTF-8"
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}, e.g. an accented letter "
            f"saved as Windows-1252); save the {what} as UTF-8 ({how})"
        ) from exc


# ------------------------------------------------------------------------------------------------- generic pairs


def read_pair_files(
    before: str | Path,
    after: str | Path,
    label: str | Path | None = None,
    *,
    name: str | None = None,
    bands: Sequence[str] | None = None,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
    pixel_size: float | None = None,
) -> Scene:
    """Read one before/after(/label) triple of rasters into a :class:`Scene` on the BEFORE grid.

    AFTER is resampled onto the BEFORE grid (bilinear) when the grids differ, and the label (nearest) when its grid
    differs; non-georeferenced files must then have identical sizes. The label's nodata value marks unknown pixels
    unless it is a label class (a 0/255 mask tagged ``nodata=0``: see :func:`read_label_raster`). A label whose
    footprint does not overlap BEFORE is a :class:`~changedet.errors.NoOverlapError`; a scene left without any
    valid labelled pixel gives a :class:`~changedet.errors.ChangedetWarning` naming its files.
    """
    before, after = Path(before), Path(after)
    b, b_valid, crs, transform, names = read_raster(before)
    a, a_valid, a_crs, a_transform, a_names = read_raster(after)
    if a.shape[0] != b.shape[0]:
        raise InputError(
            f"{after}: {a.shape[0]} bands but {before} has {b.shape[0]}; both dates need the same bands"
        )
    shape = (b.shape[1], b.shape[2])
    if not same_grid(shape, transform, crs, a.shape[1:], a_transform, a_crs) and not (
        (crs is None or a_crs is None) and a.shape[1:] == shape  # pixel-aligned, one not georeferenced
    ):
        if crs is None or a_crs is None:
            raise InputError(
                f"{after}: {a.shape[2]}x{a.shape[1]} pixels but {before} has {shape[1]}x{shape[0]} and at least "
                "one is not georeferenced, so they cannot be aligned; give rasters of the same size or with a CRS"
            )
        a = np.where(a_valid[None], a, np.nan).astype(np.float32)
        a = reproject_to_grid(a, a_transform, a_crs, shape, transform, crs, Resampling.bilinear)
        a_valid = np.isfinite(a).all(axis=0)
    valid = b_valid & a_valid
    lab = None
    if label is not None:
        label = Path(label)
        lv, l_valid, l_crs, l_transform = read_label_raster(
            label, change_values=change_values, no_change_values=no_change_values
        )
        if not same_grid(shape, transform, crs, lv.shape[1:], l_transform, l_crs):
            if l_crs is None and lv.shape[1:] == shape:
                pass  # pixel-aligned label without georeferencing (OSCD style)
            elif crs is None or l_crs is None:
                raise InputError(
                    f"{label}: {lv.shape[2]}x{lv.shape[1]} pixels but {before} has {shape[1]}x{shape[0]}; "
                    "the label must be on the BEFORE grid"
                )
            else:
                source_shape = lv.shape[1:]
                had_data = bool(l_valid.any())
                lv = np.where(l_valid[None], lv, np.nan)
                lv = reproject_to_grid(lv, l_transform, l_crs, shape, transform, crs, Resampling.nearest)
                l_valid = np.isfinite(lv).all(axis=0)
                lv = np.nan_to_num(lv, nan=0.0)
                if had_data and not l_valid.any():
                    raise NoOverlapError(
                        f"{label}: does not overlap {before} (label bounds {_bounds(source_shape, l_transform)} in "
                        f"{l_crs}, image bounds {_bounds(shape, transform)} in {crs}); its CRS or transform is "
                        "wrong, or it belongs to another scene"
                    )
        lab, known = label_from_array(
            _label_band(label, lv), l_valid, change_values=change_values, no_change_values=no_change_values,
            where=str(label),
        )
        valid &= known
        if not valid.any():
            from changedet.errors import ChangedetWarning

            warnings.warn(
                f"{name or before.stem}: no pixel holds data in both {before} and {after} and a known label in "
                f"{label} (nodata, outside a date's footprint or unknown label values): the scene has nothing to "
                "train or score on", ChangedetWarning, stacklevel=2,
            )
    if all(n.startswith("band") for n in names) and not all(n.startswith("band") for n in a_names):
        names = a_names
    scene = Scene(
        name=name or before.stem,
        before=b,
        after=a,
        label=lab,
        valid=valid,
        crs=crs,
        transform=transform,
        band_names=names,
        pixel_size=pixel_size if pixel_size is not None else pixel_size_metres(crs, transform, shape),
        meta={"before": str(before), "after": str(after), "label": None if label is None else str(label)},
    )
    return scene.select_bands(bands) if bands else scene


def _bounds(shape: Sequence[int], transform: Affine) -> str:
    """``(west, south, east, north)`` of a (rows, cols) grid, for messages."""
    from rasterio.transform import array_bounds

    return "(" + ", ".join(f"{v:.8g}" for v in array_bounds(shape[0], shape[1], transform)) + ")"


def _list_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark; spaces around cells and names are dropped
        text = read_text(path, encoding="utf-8-sig", newline="", what="list")
        rows = [{str(k).strip().lower(): v.strip() if isinstance(v, str) else v for k, v in r.items() if k}
                for r in csv.DictReader(io.StringIO(text, newline=""))]
    elif suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            loaded = yaml.safe_load(read_text(path, encoding="utf-8-sig", what="list"))
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({exc})") from exc
        if isinstance(loaded, dict):
            loaded = loaded.get("pairs", loaded.get("scenes"))
        if not isinstance(loaded, list) or not all(isinstance(r, dict) for r in loaded):
            raise InputError(
                f"{path}: expected a list of mappings with before/after/label keys (or a 'pairs:' list)"
            )
        rows = loaded
    else:
        raise InputError(f"{path}: unknown list format {suffix!r}; use .csv, .yaml/.yml or .json")
    for i, row in enumerate(rows):
        missing = [k for k in ("before", "after") if not row.get(k)]
        if missing:
            raise InputError(f"{path}: row {i + 1} lacks {', '.join(missing)}; each row needs before and after")
    return rows


def _resolve_row_path(base: Path, value: Any) -> Path:
    """A path of a list's row: absolute, or relative to the list's folder ``base``."""
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _check_row_files(path: Path, rows: Sequence[dict[str, Any]], row_names: Sequence[str], wanted: set[str] | None,
                     *, all_labels: bool) -> None:
    """A :class:`~changedet.errors.RasterReadError` naming the list, the row and its column for a raster of the
    rows to read that is not there (``all_labels``: every row's label, which the OSCD label scan reads), saying
    that relative paths start at the list's folder."""
    from changedet.errors import RasterReadError

    base = path.parent
    for i, (row, name) in enumerate(zip(rows, row_names, strict=True)):
        read = wanted is None or name in wanted
        for key in ("before", "after", "label"):
            value = row.get(key)
            virtual = "://" in str(value) or str(value).startswith("/vsi")  # URLs, GDAL's virtual file systems
            if not value or virtual or not (read or (key == "label" and all_labels)):
                continue
            resolved = _resolve_row_path(base, value)
            if resolved.exists():
                continue
            given = Path(str(value)).expanduser()
            hint = ""
            if not given.is_absolute():
                hint = f"; relative paths in a list start at the list's folder ({base.absolute()}), not the current one"
                if given.exists():
                    relative = Path(os.path.relpath(given.absolute(), base.absolute()))
                    hint += (f": {value} exists relative to the current folder, so write {relative.as_posix()} or "
                             "an absolute path in the list")
            raise RasterReadError(
                f"{path}, row {i + 1} ({name}): {key} {value}: no such file (looked for {resolved}){hint}"
            )


def read_list(
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    bands: Sequence[str] | None = None,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
    pixel_size: float | None = None,
) -> list[Scene]:
    """Read the pairs named in a CSV or YAML list (columns/keys ``name, before, after, label``).

    Parameters
    ----------
    path : path
        The list; relative raster paths are resolved against its folder (a missing raster is a
        :class:`~changedet.errors.RasterReadError` naming the list, the row and the column). ``name`` defaults to
        the BEFORE stem.
    names : sequence of str, optional
        Only these rows (by name).
    bands, change_values, no_change_values, pixel_size
        As in :func:`read_pair_files`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such list file; give a .csv or .yaml list of before/after/label rasters")
    base = path.parent
    scenes = []
    wanted = None if names is None else {str(n) for n in names}
    rows = list(_list_rows(path))
    row_names = [str(row.get("name") or Path(str(row["before"])).stem) for row in rows]
    repeated = sorted({n for n in row_names if row_names.count(n) > 1})
    if repeated:  # scenes are told apart by name (validation, test and calibration lists name them)
        raise InputError(f"{path}: several rows are named {', '.join(repeated)}; give each row its own name")
    _check_row_files(path, rows, row_names, wanted,
                     all_labels=change_values is None and no_change_values is None)
    no_change: set[Path] | None = None  # oscd_no_change_labels, once
    for row, name in zip(rows, row_names, strict=True):
        if wanted is not None and name not in wanted:
            continue

        def resolve(value: Any) -> Path:
            return _resolve_row_path(base, value)

        label = row.get("label")
        if label and change_values is None and no_change_values is None and no_change is None:
            no_change = oscd_no_change_labels([resolve(r["label"]) for r in rows if r.get("label")])  # every split
        oscd_none = label is not None and no_change is not None and resolve(label) in no_change
        scenes.append(
            read_pair_files(
                resolve(row["before"]),
                resolve(row["after"]),
                resolve(label) if label else None,
                name=name,
                bands=bands,
                change_values=[2.0] if oscd_none else change_values,
                no_change_values=[1.0] if oscd_none else no_change_values,
                pixel_size=pixel_size,
            )
        )
    if wanted is not None:
        missing = wanted - {s.name for s in scenes}
        if missing:
            raise InputError(f"{path}: no rows named {', '.join(sorted(missing))}")
    if not scenes:
        raise InputError(f"{path}: the list holds no pairs")
    return scenes
