"""Change-detection accuracy: confusion matrices, metrics of the change class, PR curves and thresholds.

Everything here works on numpy arrays (band, row, col conventions: masks are 2-D (row, col)) and never imports
torch; :func:`evaluate_paths` reads rasters lazily with rasterio. The array metrics (:class:`ConfusionMatrix`,
:func:`confusion_matrix`, :func:`pool`, :class:`PRCurve`, :func:`precision_recall_curve`,
:func:`f1_optimal_threshold`, :func:`otsu_threshold`) live in :mod:`changedet.metrics`, which defines them, and are
re-exported here; this module holds the truth-label conventions and the evaluation of raster files. The change class
is the positive class:

- ``precision``, ``recall``, ``f1``, ``iou``, ``overall_accuracy`` and Cohen's ``kappa`` as defined in
  :mod:`changedet.metrics`; a metric whose denominator is zero is ``nan`` (``None`` in JSON).
- Scores over several files are *pooled*: the confusion matrices are summed over all pixels and the metrics computed
  once, the convention of the published OSCD and AirChange results (Daudt et al. 2018). Per-file metrics are
  reported alongside.

>>> import numpy as np
>>> pred = np.array([[1, 1, 0], [0, 0, 1]])
>>> truth = np.array([[1, 0, 0], [0, 1, 1]])
>>> cm = confusion_matrix(pred, truth)
>>> (cm.tp, cm.fp, cm.fn, cm.tn)
(2, 1, 1, 2)
>>> round(cm.f1, 4), round(cm.kappa, 4)
(0.6667, 0.3333)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import InputError
from changedet.metrics import (
    DETECT_MASK_NODATA,
    ConfusionMatrix,
    PRCurve,
    confusion_matrix,
    detect_mask_nodata_count,
    f1_optimal_threshold,
    otsu_threshold,
    pool,
    precision_recall_curve,
)

__all__ = [
    "ConfusionMatrix",
    "PRCurve",
    "binarize_truth",
    "confusion_matrix",
    "evaluate_paths",
    "f1_optimal_threshold",
    "label_nodata_class",
    "otsu_threshold",
    "pair_files",
    "pool",
    "precision_recall_curve",
]

RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")


def binarize_truth(
    truth: np.ndarray,
    *,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a truth raster into (change bool, known bool).

    With ``change_values`` (e.g. ``[2]`` for OSCD's 1/2 labels, ``[255]`` for 0/255 masks) only those values are
    change. With ``no_change_values`` too, pixels holding neither are unknown (``known`` False). Without either,
    any non-zero value is change.
    """
    truth = np.asarray(truth)
    if change_values is None:
        change = truth != 0
        known = np.ones(truth.shape, dtype=bool)
    else:
        change = np.isin(truth, np.asarray(change_values))
        known = np.ones(truth.shape, dtype=bool)
    if no_change_values is not None:
        known = change | np.isin(truth, np.asarray(no_change_values))
    return change, known


def label_nodata_class(
    nodata: float | None,
    found: Iterable[float],
    *,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
) -> str | None:
    """The class (``"change"`` or ``"no change"``) that a label raster's nodata value stands for, or None when it
    stands for none and may mean "unknown".

    A label tagged ``nodata=0`` (what ``gdal_rasterize -a_nodata 0`` and QGIS write for 0/255 or 0/1 masks) would
    otherwise lose its whole "no change" class. With ``change_values``, the classes are those values and
    ``no_change_values`` (default: 0, as every non-change value is no change); without them, 0 is "no change", except
    in OSCD's 1/2 labels (``found``, the values of the label's other pixels, hold 2 and nothing but 1 and 2), where
    0 means unknown.

    >>> label_nodata_class(0, {255.0})
    'no change'
    >>> label_nodata_class(255, {0.0, 1.0}) is None  # changedet's own change.tif: 0/1, nodata 255
    True
    >>> label_nodata_class(0, {1.0, 2.0}) is None  # OSCD: 0 is unknown
    True
    >>> label_nodata_class(255, {0.0}, change_values=[255])
    'change'
    """
    if nodata is None or not math.isfinite(float(nodata)):
        return None
    nd = float(nodata)
    if change_values is not None:
        if nd in {float(v) for v in change_values}:
            return "change"
        no_change = {0.0} if no_change_values is None else {float(v) for v in no_change_values}
        return "no change" if nd in no_change else None
    if no_change_values is not None:
        return "no change" if nd in {float(v) for v in no_change_values} else None
    values = {float(v) for v in found}
    return "no change" if nd == 0.0 and not (2.0 in values and values <= {1.0, 2.0}) else None


def label_nodata_message(path: str | Path, nodata: float, cls: str) -> str:
    """The warning given when a label's nodata value is read as a class (:func:`label_nodata_class`)."""
    return (
        f"{path}: its nodata value {nodata:g} is also the label's {cls!r} value, so it is read as {cls}, not as "
        f"unknown (as nodata, it would remove the {cls} class); to mark unknown pixels, give them a value of their "
        f"own and tag that as nodata (or remove the tag: gdal_edit.py -unsetnodata {Path(path).name})"
    )


def pair_files(
    pred: str | Path, truth: str | Path, *, probability: bool = False
) -> list[tuple[Path, Path]]:
    """Match prediction and truth rasters: two files, or two folders matched by file stem.

    In folders a prediction named ``<stem>.tif``, ``<stem>_change.tif``, ``<stem>/change.tif`` or
    ``<stem>/probability.tif`` matches the truth file ``<stem>.*`` (or ``<stem>-cm.*``). Where a scene has both a
    change mask and a probability raster, the mask is taken, or the probability raster with ``probability=True``
    (when a threshold is given). Truth files without a prediction are left out with a
    :class:`~changedet.errors.ChangedetWarning` that names them.
    """
    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder; give a raster or a folder of rasters")
    if pred.is_file() and truth.is_file():
        return [(pred, truth)]
    if pred.is_dir() != truth.is_dir():
        raise InputError(
            f"{pred} and {truth}: give two rasters or two folders of rasters (found one of each)"
        )

    def rasters(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)

    def key(stem: str) -> str:
        for suffix in ("_change", "_probability", "-cm", "_cm", "_label", "_gt"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem

    def rank(path: Path) -> int:  # lower is preferred: the kind of raster the threshold (or its absence) asks for
        is_probability = path.stem == "probability" or path.stem.endswith("_probability")
        return 0 if is_probability == probability else 1

    truths = {key(p.stem): p for p in rasters(truth)}
    candidates: dict[str, list[Path]] = {}
    for p in rasters(pred):
        candidates.setdefault(key(p.stem), []).append(p)
    for sub in sorted(p for p in pred.iterdir() if p.is_dir()):  # detect OUTDIRs: <name>/change.tif
        for name in ("change.tif", "probability.tif"):
            if (sub / name).is_file():
                candidates.setdefault(sub.name, []).append(sub / name)
    preds = {k: min(v, key=rank) for k, v in candidates.items()}
    common = sorted(set(truths) & set(preds))
    if not common:
        raise InputError(
            f"no file names in common between {pred} ({len(preds)} rasters) and {truth} ({len(truths)} rasters); "
            "predictions are matched to truths by file name (stem)"
        )
    missing = sorted(set(truths) - set(preds))
    if missing:
        import warnings

        from changedet.errors import ChangedetWarning

        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        warnings.warn(
            f"{pred}: no prediction for {len(missing)} of the {len(truths)} truth files in {truth} ({shown}); "
            f"they are left out of the scores", ChangedetWarning, stacklevel=2,
        )
    return [(preds[k], truths[k]) for k in common]


def _read_band(path: Path) -> tuple[np.ndarray, np.ndarray, Any, Any, float | None]:
    """Read band 1 of a raster: (data, valid mask from nodata, crs, transform, nodata value)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                data = ds.read(1, masked=True)
                crs, transform = ds.crs, ds.transform
                count = ds.count
                nodata = ds.nodata
    except RasterioIOError as exc:
        from changedet.errors import RasterReadError

        raise RasterReadError(f"{path}: cannot be read as a raster ({exc}); check the file") from exc
    if count > 1:
        from changedet.errors import ChangedetWarning

        warnings.warn(f"{path}: {count} bands; only band 1 is scored", ChangedetWarning, stacklevel=3)
    valid = ~np.ma.getmaskarray(data)
    values = np.ma.getdata(data)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values)
    return values, valid, crs, transform, nodata


def evaluate_paths(
    pred: str | Path,
    truth: str | Path,
    *,
    threshold: float | None = None,
    ignore_value: float | None = None,
    truth_change_values: Sequence[float] | None = None,
    truth_no_change_values: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Evaluate prediction rasters against truth rasters (files or folders matched by name).

    Parameters
    ----------
    pred : path
        A ``change.tif`` (0/1, nodata 255), any 0/non-zero mask, or a probability raster with ``threshold``;
        or a folder of them. A raster that declares no nodata value and holds only 0, 1 and 255 (with some 1 and
        some 255) is a ``change.tif`` whose nodata tag was lost: its 255s are no data, with a warning
        (:func:`~changedet.metrics.detect_mask_nodata_count`, the rule ``vectorize`` follows).
    truth : path
        The reference raster(s): non-zero is change unless ``truth_change_values`` says which values are; a truth
        holding only 1 and 2 is read as OSCD's labels (1 no change, 2 change), with a warning, and so is a truth of
        1s only beside such truths (an OSCD scene without change). Its nodata pixels are left out, unless the nodata
        value is a class (:func:`label_nodata_class`: a 0/255 truth tagged ``nodata=0``), read as that class with
        a warning.
    threshold : float, optional
        Predict change where the prediction value is >= threshold (for probability rasters).
    ignore_value : float, optional
        Truth value to leave out of the scores (e.g. an "unknown" class). It is left out first, as nodata is, so
        a truth of 0 (unknown), 1 and 2 with ``ignore_value=0`` is read as OSCD's 1/2 labels.
    truth_change_values, truth_no_change_values : sequence of float, optional
        Which truth values are change and which are no change (others are ignored), e.g. ``[2]`` and ``[1]`` for the
        OSCD label files.

    Returns
    -------
    dict
        ``{"files": [{"pred", "truth", <counts and metrics>}], "pooled": {...}}`` (JSON-safe).
    """
    rows: list[dict[str, Any]] = []
    matrices: list[ConfusionMatrix] = []
    oscd_labels: list[str] = []
    ones_only: list[int] = []  # rows whose truth holds only 1s: OSCD's "no change" when the others are OSCD
    nodata_warned: set[Path] = set()  # truths whose nodata value is a class, warned about once
    encoded_warned: set[Path] = set()  # predictions read as detect's 0/1/255 mask without its nodata tag

    def score(pred_path: Path, truth_path: Path, oscd: bool | None) -> tuple[dict[str, Any], ConfusionMatrix, bool]:
        p, p_valid, p_crs, p_transform, p_nodata = _read_band(pred_path)
        t, t_valid, t_crs, t_transform, t_nodata = _read_band(truth_path)
        if p_nodata is None:  # detect's change.tif (0/1, 255 no data) whose nodata tag was lost
            n_nodata = detect_mask_nodata_count([p])
            if n_nodata is not None:
                p_valid = p_valid & (p != DETECT_MASK_NODATA)
                if pred_path not in encoded_warned:
                    import warnings

                    from changedet.errors import ChangedetWarning

                    encoded_warned.add(pred_path)
                    warnings.warn(
                        f"{pred_path}: declares no nodata value but holds only the values 0, 1 and 255, as the "
                        "change.tif of changedet detect does (0 no change, 1 change, 255 no data): its "
                        f"{n_nodata} pixels of 255 are read as no data and left out of the scores, not scored as "
                        f"change; tag them (gdal_edit.py -a_nodata 255 {pred_path.name}) to say so, or recode "
                        "them to 1 to score them as change",
                        ChangedetWarning,
                        stacklevel=3,
                    )
        if ignore_value is not None:  # before the truth's value conventions are read from what remains
            t_valid = t_valid & (t != ignore_value)
        if t_nodata is not None and not t_valid.all() and (ignore_value is None or t_nodata != ignore_value):
            cls = label_nodata_class(t_nodata, np.unique(t[t_valid]), change_values=truth_change_values,
                                     no_change_values=truth_no_change_values)
            if cls is not None:  # a 0/255 truth tagged nodata=0: its "no change" pixels are not unknown
                import warnings

                from changedet.errors import ChangedetWarning

                if truth_path not in nodata_warned:
                    nodata_warned.add(truth_path)
                    warnings.warn(label_nodata_message(truth_path, t_nodata, cls), ChangedetWarning, stacklevel=3)
                t_valid = t_valid | (t == t_nodata)
        if p.shape != t.shape:
            raise InputError(
                f"{pred_path}: {p.shape[1]}x{p.shape[0]} pixels but the truth {truth_path} has "
                f"{t.shape[1]}x{t.shape[0]}; predict on the truth's grid"
            )
        if p_crs is not None and t_crs is not None and (p_crs != t_crs or not p_transform.almost_equals(t_transform)):
            raise InputError(
                f"{pred_path}: its grid (CRS {p_crs}, transform {tuple(p_transform)[:6]}) differs from the truth "
                f"{truth_path} ({t_crs}, {tuple(t_transform)[:6]}); predict on the truth's grid"
            )
        change_values, no_change_values = truth_change_values, truth_no_change_values
        if change_values is None and no_change_values is None and (oscd or (oscd is None and _oscd_style(t, t_valid))):
            change_values, no_change_values = [2], [1]  # OSCD's label files: 1 no change, 2 change
            oscd_labels.append(truth_path.name)
        ones = bool(t_valid.any()) and bool((t[t_valid] == 1).all())
        change, known = binarize_truth(t, change_values=change_values, no_change_values=no_change_values)
        valid = p_valid & t_valid & known
        if threshold is not None:
            pred_mask = p >= threshold
        else:
            if np.issubdtype(p.dtype, np.floating) and p_valid.any() and np.nanmax(np.where(p_valid, p, 0)) <= 1.0:
                fractional = np.any((p[p_valid] > 0) & (p[p_valid] < 1))
                if fractional:
                    raise InputError(
                        f"{pred_path}: holds fractional values (a probability raster?); pass --threshold"
                    )
            pred_mask = p != 0
        cm = confusion_matrix(pred_mask, change, valid)
        return {"pred": str(pred_path), "truth": str(truth_path), **cm.to_dict()}, cm, ones

    pairs = list(pair_files(pred, truth, probability=threshold is not None))
    for pred_path, truth_path in pairs:
        row, cm, ones = score(pred_path, truth_path, None)
        if ones:
            ones_only.append(len(rows))
        rows.append(row)
        matrices.append(cm)
    if oscd_labels and ones_only and truth_change_values is None and truth_no_change_values is None:
        for i in ones_only:  # a scene without change among OSCD labels: its 1s are "no change", not change
            rows[i], matrices[i], _ = score(*pairs[i], True)
    if oscd_labels:
        import warnings

        from changedet.errors import ChangedetWarning

        shown = ", ".join(oscd_labels[:3]) + (" ..." if len(oscd_labels) > 3 else "")
        warnings.warn(
            f"{shown}: truth values are 1 and 2 only (or 1 only, beside such truths), read as OSCD labels (1 no "
            "change, 2 change), as training does; pass --truth-change-value or --truth-values to say otherwise", ChangedetWarning, stacklevel=2,
        )
    return {"files": rows, "pooled": pool(matrices).to_dict(), "threshold": threshold}


def _oscd_style(truth: np.ndarray, valid: np.ndarray) -> bool:
    """Whether a truth raster holds only the values 1 and 2 (with some 2): OSCD's label files, where 1 is no change
    and 2 change. Read as "non-zero is change", every pixel would be change."""
    values = truth[valid]
    if values.size == 0:
        return False
    has_two = bool((values == 2).any())
    return has_two and bool(np.isin(values, (1, 2)).all())
