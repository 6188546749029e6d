"""The :class:`Scene` every reader returns, shared raster helpers, and the generic CSV/YAML list reader.

A scene is one labelled pair on one grid: ``before`` and ``after`` are float32 arrays (band, row, col), ``label``
is uint8 (row, col) with 1 = change and 0 = no change, ``valid`` is a bool (row, col) mask of the pixels where both
dates hold data and the label is known. Georeferencing (``crs``, ``transform``) is that of the grid; non-georeferenced
sources (BMP/PNG benchmarks) have ``crs=None`` and an identity transform.

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
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferencedWarning
from rasterio.warp import Resampling, reproject

from changedet.errors import InputError, NoOverlapError

__all__ = ["Scene", "read_label_raster", "read_list", "read_pair_files", "read_text"]


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


# ---------------------------------------------------------------------------------------------------- raster helpers


def open_dataset(path: str | Path) -> Any:
    """Open a raster read-only with :func:`changedet.io.raster.open_raster` (clear errors on bad files).

    Missing, empty, truncated or non-raster files raise :class:`~changedet.errors.RasterReadError` naming the file;
    the not-georeferenced warnings of the benchmark BMP/PNG files are silenced (their scenes have ``crs=None``).
    """
    from changedet.errors import NotGeoreferencedWarning
    from changedet.io.raster import open_raster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RioNotGeoreferencedWarning)
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return open_raster(Path(path))


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


def read_raster(path: str | Path) -> tuple[np.ndarray, np.ndarray, Any, Affine, list[str]]:
    """Read all bands of a raster: (float32 (band,row,col), valid (row,col), crs, transform, band names).

    ``valid`` is False where any band is nodata or non-finite. Band names are the band descriptions, else
    ``band1, band2, ...``. Non-georeferenced files get ``crs=None`` and the identity transform.
    """
    values, valid, crs, transform, names, _ = _read_raster(path)
    return values, valid, crs, transform, names


def _read_raster(path: str | Path) -> tuple[np.ndarray, np.ndarray, Any, Affine, list[str], float | None]:
    """:func:`read_raster` and the file's nodata value."""
    with open_dataset(path) as ds:
        data = ds.read(masked=True)
        crs = ds.crs
        transform = ds.transform if (ds.crs is not None or not ds.transform.is_identity) else Affine.identity()
        names = [d if d else f"band{i + 1}" for i, d in enumerate(ds.descriptions)]
        nodata = ds.nodata
    values = np.ma.getdata(data).astype(np.float32, copy=False)
    valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
    valid &= np.isfinite(values).all(axis=0)
    return values, valid, crs, transform, [str(n) for n in names], nodata


def read_label_raster(
    path: str | Path,
    *,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, Any, Affine]:
    """Read a label raster like :func:`read_raster`: (float32 (band,row,col), known (row,col), crs, transform).

    The label's nodata value marks unknown pixels, unless it is one of the label's classes
    (:func:`changedet.evaluation.label_nodata_class`): a 0/255 mask tagged ``nodata=0`` (``gdal_rasterize -a_nodata
    0``) keeps its 0s as "no change", with a :class:`~changedet.errors.ChangedetWarning` naming the file, instead of
    losing its whole no-change class.
    """
    from changedet.errors import ChangedetWarning
    from changedet.evaluation import label_nodata_class, label_nodata_message

    path = Path(path)
    values, valid, crs, transform, _, nodata = _read_raster(path)
    if nodata is None or valid.all():
        return values, valid, crs, transform
    held = ~valid & np.isfinite(values).all(axis=0) & (values == np.float32(nodata)).any(axis=0)
    if not held.any():
        return values, valid, crs, transform
    band = _label_band(path, values)
    found = np.unique(band[valid]) if valid.any() else np.zeros(0)
    cls = label_nodata_class(nodata, found, change_values=change_values, no_change_values=no_change_values)
    if cls is None:
        return values, valid, crs, transform
    warnings.warn(label_nodata_message(path, float(nodata), cls), ChangedetWarning, stacklevel=3)
    return values, valid | held, crs, transform


def reproject_to_grid(
    source: np.ndarray,
    src_transform: Affine,
    src_crs: Any,
    dst_shape: tuple[int, int],
    dst_transform: Affine,
    dst_crs: Any,
    resampling: Resampling = Resampling.bilinear,
) -> np.ndarray:
    """Resample a (band, row, col) float32 array onto another grid with :func:`rasterio.warp.reproject`.

    Pixels outside the source are NaN. Invalid source pixels should be NaN already (they are the source nodata).
    """
    source = np.asarray(source, dtype=np.float32)
    squeeze = source.ndim == 2
    if squeeze:
        source = source[None]
    dst = np.full((source.shape[0], *dst_shape), np.nan, dtype=np.float32)
    reproject(
        source=source,
        destination=dst,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return dst[0] if squeeze else dst


def same_grid(
    shape_a: tuple[int, int], transform_a: Affine, crs_a: Any, shape_b: tuple[int, int], transform_b: Affine, crs_b: Any
) -> bool:
    """Whether two rasters share shape, transform (within 1e-6 pixel) and CRS."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    if (crs_a is None) != (crs_b is None) or (crs_a is not None and crs_a != crs_b):
        return False
    return bool(transform_a.almost_equals(transform_b, precision=1e-9 * max(abs(transform_a.a), 1e-12) + 1e-12))


def pixel_size_metres(crs: Any, transform: Affine, shape: tuple[int, int]) -> float | None:
    """Nominal ground pixel size in metres: the mean of x/y resolution, converted at the centre for degree CRSs."""
    if crs is None:
        return None
    res_x, res_y = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        lat = (transform * (shape[1] / 2, shape[0] / 2))[1]
        metres_per_degree = 111_320.0
        return float(0.5 * (res_x * metres_per_degree * math.cos(math.radians(lat)) + res_y * metres_per_degree))
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return float(0.5 * (res_x + res_y) * factor)


def label_from_array(
    values: np.ndarray,
    valid: np.ndarray,
    *,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
    where: str = "label",
) -> tuple[np.ndarray, np.ndarray]:
    """Map a label raster onto (uint8 0/1 label, known mask).

    Without ``change_values``, the label must be binary: {0, 1}, {0, 255} or {1, 2} (OSCD: 1 no change, 2 change);
    anything else is an error that names the values found. With ``change_values`` those values are change; with
    ``no_change_values`` as well, the remaining values are unknown (not valid).
    """
    values = np.asarray(values)
    if values.ndim == 3:
        values = values[0]
    known = np.asarray(valid, dtype=bool).copy()
    if change_values is not None:
        change = np.isin(values, np.asarray(change_values, dtype=values.dtype))
        if no_change_values is not None:
            known &= change | np.isin(values, np.asarray(no_change_values, dtype=values.dtype))
    else:
        uniq = np.unique(values[known]) if known.any() else np.zeros(0)
        found = set(float(v) for v in uniq)
        if found <= {0.0, 1.0}:
            change = values == 1
        elif found <= {0.0, 255.0}:
            change = values == 255
        elif found <= {0.0, 1.0, 2.0}:  # OSCD convention, 0 = unknown
            change = values == 2
            known &= values != 0
        else:
            shown = ", ".join(f"{v:g}" for v in sorted(found)[:10])
            raise InputError(
                f"{where}: label values {{{shown}}} are not a binary change mask (expected 0/1, 0/255 or 1/2); "
                "say which values are change with change_values=[...]"
            )
    return change.astype(np.uint8), known


def _label_band(path: Path, values: np.ndarray) -> np.ndarray:
    """The one band of label values in a label raster: band 1, or for a colour label whose colour bands differ (change
    painted green or blue on black) their maximum, so that a pixel is change where any colour band is non-zero. An
    alpha band is left out."""
    if values.shape[0] == 1:
        return values[0]
    from rasterio.enums import ColorInterp

    with open_dataset(path) as ds:
        colour = [i for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha] or [0]
    bands = values[colour]
    if all(np.array_equal(bands[0], b) for b in bands[1:]):
        return bands[0]
    return bands.max(axis=0)


def _label_values(path: Path) -> set[float]:
    """The distinct valid values of a label raster's label band (see :func:`_label_band`)."""
    values, valid, *_ = read_raster(path)
    band = _label_band(path, values)
    return {float(v) for v in np.unique(band[valid])} if valid.any() else set()


def oscd_no_change_labels(labels: Sequence[Path]) -> set[Path]:
    """The labels among ``labels`` that hold only 1s while others hold OSCD's 1/2 (1 no change, 2 change): OSCD's
    label of a scene without change, which read on its own (as 0/1) would be all change. A warning names them.

    Labels with other values (0/1 with both, 0/255) keep their own reading. The scan stops at the first label with
    a value outside 0, 1, 2 (a 0/255 dataset is not OSCD's).
    """
    found: dict[Path, set[float]] = {}
    for p in labels:
        found[Path(p)] = _label_values(Path(p))
        if not found[Path(p)] <= {0.0, 1.0, 2.0}:
            return set()
    oscd = [p for p, v in found.items() if 2.0 in v]
    ones = {p for p, v in found.items() if v == {1.0}}
    if not oscd or not ones:
        return set()
    shown = ", ".join(str(p) for p in sorted(ones)[:3]) + (" ..." if len(ones) > 3 else "")
    warnings.warn(
        f"{shown}: only 1s, beside OSCD labels such as {oscd[0]} (1 no change, 2 change): read as a scene without "
        "change; if every pixel there is change, write it as 255 (or 2)", UserWarning, stacklevel=3,
    )
    return ones


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
        The list; relative raster paths are resolved against its folder. ``name`` defaults to the BEFORE stem.
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
    no_change: set[Path] | None = None  # oscd_no_change_labels, once
    for row, name in zip(rows, row_names, strict=True):
        if wanted is not None and name not in wanted:
            continue

        def resolve(value: Any) -> Path:
            p = Path(str(value)).expanduser()
            return p if p.is_absolute() else base / p

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
