"""Change-detection accuracy: confusion matrices, metrics of the change class, PR curves and thresholds.

Everything here works on numpy arrays (band, row, col conventions: masks are 2-D (row, col)) and never imports
torch; :func:`evaluate_paths` reads rasters lazily with rasterio. The change class is the positive class:

- ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1 = 2 P R / (P + R)``,
  ``iou = TP / (TP + FP + FN)``, ``overall_accuracy = (TP + TN) / N`` and Cohen's ``kappa``
  ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` the chance agreement of the two binary labellings.
- A metric whose denominator is zero (for instance the precision of a file where nothing was predicted) is ``nan``;
  :meth:`ConfusionMatrix.to_dict` turns it into ``None`` for JSON.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import InputError

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


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


@dataclass(frozen=True)
class ConfusionMatrix:
    """Binary confusion matrix of the change class (counts of pixels).

    Instances add up (``cm1 + cm2``), which is how pooled scores over many files are computed.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return ConfusionMatrix(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def total(self) -> int:
        """Number of evaluated pixels."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return _div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _div(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _div(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        return _div(self.tp, self.tp + self.fp + self.fn)

    @property
    def overall_accuracy(self) -> float:
        return _div(self.tp + self.tn, self.total)

    @property
    def kappa(self) -> float:
        """Cohen's kappa of the two binary labellings (prediction vs truth)."""
        n = self.total
        if n == 0:
            return math.nan
        p_o = (self.tp + self.tn) / n
        pred_pos, pred_neg = self.tp + self.fp, self.fn + self.tn
        true_pos, true_neg = self.tp + self.fn, self.fp + self.tn
        p_e = (pred_pos * true_pos + pred_neg * true_neg) / (n * n)
        if p_e == 1.0:
            # both labellings constant and identical: perfect agreement, kappa is conventionally 1 (undefined 0/0)
            return 1.0 if p_o == 1.0 else math.nan
        return (p_o - p_e) / (1.0 - p_e)

    @property
    def change_fraction(self) -> float:
        """Fraction of evaluated pixels that are changed in the truth."""
        return _div(self.tp + self.fn, self.total)

    def metrics(self) -> dict[str, float]:
        """The change-class metrics as a dict of floats (``nan`` where undefined)."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "iou": self.iou,
            "overall_accuracy": self.overall_accuracy,
            "kappa": self.kappa,
        }

    def to_dict(self) -> dict[str, Any]:
        """Counts and metrics, JSON-safe (``nan`` becomes ``None``)."""
        out: dict[str, Any] = {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "pixels": self.total}
        for key, value in self.metrics().items():
            out[key] = None if math.isnan(value) else value
        out["change_fraction"] = None if math.isnan(self.change_fraction) else self.change_fraction
        return out


def _as_bool(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{name} holds NaN/inf values; pass them as invalid through `valid` instead")
    return array != 0


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
) -> ConfusionMatrix:
    """Confusion matrix of a binary prediction against a binary truth.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Arrays of the same shape; non-zero (or True) is change.
    valid : numpy.ndarray, optional
        Boolean array of the same shape; only pixels where it is True are counted.

    Returns
    -------
    ConfusionMatrix
    """
    pred_b, truth_b = _as_bool("pred", pred), _as_bool("truth", truth)
    if pred_b.shape != truth_b.shape:
        raise InputError(f"prediction shape {pred_b.shape} differs from truth shape {truth_b.shape}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != pred_b.shape:
            raise InputError(f"valid mask shape {valid.shape} differs from prediction shape {pred_b.shape}")
        pred_b = pred_b[valid]
        truth_b = truth_b[valid]
    n = int(pred_b.size)
    tp = int(np.count_nonzero(pred_b & truth_b))
    n_pred = int(np.count_nonzero(pred_b))
    n_true = int(np.count_nonzero(truth_b))
    fp = n_pred - tp
    fn = n_true - tp
    return ConfusionMatrix(tp=tp, fp=fp, fn=fn, tn=n - tp - fp - fn)


def pool(matrices: Iterable[ConfusionMatrix]) -> ConfusionMatrix:
    """Sum confusion matrices over files (the pooled, all-pixels convention)."""
    total = ConfusionMatrix()
    for cm in matrices:
        total = total + cm
    return total


@dataclass(frozen=True)
class PRCurve:
    """A precision-recall curve: ``precision[i]``, ``recall[i]`` when predicting change where score >= thresholds[i].

    Thresholds are in decreasing order (recall increasing). ``positives`` is the number of changed pixels.
    """

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    positives: int

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        return f1

    def average_precision(self) -> float:
        """Average precision (step-wise area under the PR curve, as scikit-learn computes it)."""
        if self.positives == 0 or self.recall.size == 0:
            return math.nan
        recall = np.concatenate([[0.0], self.recall])
        return float(np.sum(np.diff(recall) * self.precision))


def _flatten_scores(
    scores: np.ndarray | Sequence[np.ndarray],
    truth: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(scores, np.ndarray):
        scores, truth = [scores], [truth]  # type: ignore[list-item]
        valid = None if valid is None else [valid]  # type: ignore[list-item]
    truth_list = list(truth)  # type: ignore[arg-type]
    score_list = list(scores)
    if len(score_list) != len(truth_list):
        raise InputError(f"{len(score_list)} score arrays but {len(truth_list)} truth arrays")
    valid_list = [None] * len(score_list) if valid is None else list(valid)  # type: ignore[arg-type]
    flat_s, flat_t = [], []
    for s, t, v in zip(score_list, truth_list, valid_list, strict=True):
        s = np.asarray(s, dtype=np.float64)
        t = _as_bool("truth", t)
        if s.shape != t.shape:
            raise InputError(f"score shape {s.shape} differs from truth shape {t.shape}")
        keep = np.isfinite(s)
        if v is not None:
            keep &= np.asarray(v, dtype=bool)
        flat_s.append(s[keep])
        flat_t.append(t[keep])
    return np.concatenate(flat_s), np.concatenate(flat_t)


def precision_recall_curve(
    scores: np.ndarray | Sequence[np.ndarray],
    truth: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None = None,
) -> PRCurve:
    """Exact precision-recall curve of change scores (probabilities or distances) against a binary truth.

    Parameters
    ----------
    scores : numpy.ndarray or sequence of arrays
        Higher means more likely changed. A sequence pools several scenes (all pixels together).
    truth : numpy.ndarray or sequence of arrays
        Binary truth (non-zero = change), same shapes as ``scores``.
    valid : numpy.ndarray or sequence of arrays, optional
        Pixels to use; non-finite scores are always ignored.

    Returns
    -------
    PRCurve
        One point per distinct score value, thresholds decreasing.

    Examples
    --------
    >>> import numpy as np
    >>> curve = precision_recall_curve(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    >>> curve.thresholds.tolist(), curve.precision.tolist(), curve.recall.tolist()
    ([0.9, 0.8, 0.3, 0.1], [1.0, 0.5, 0.6666666666666666, 0.5], [0.5, 0.5, 1.0, 1.0])
    """
    s, t = _flatten_scores(scores, truth, valid)
    positives = int(np.count_nonzero(t))
    if s.size == 0:
        empty = np.zeros(0)
        return PRCurve(empty, empty, empty, positives)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    t_sorted = t[order]
    # last index of each run of equal scores: a threshold includes every pixel with that score
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size > 1 else np.zeros(0, dtype=np.intp)
    ends = np.concatenate([distinct, [s_sorted.size - 1]])
    tps = np.cumsum(t_sorted, dtype=np.int64)[ends]
    predicted = ends + 1
    precision = tps / predicted
    recall = tps / positives if positives else np.zeros_like(precision, dtype=np.float64)
    return PRCurve(precision.astype(np.float64), recall.astype(np.float64), s_sorted[ends], positives)


def f1_optimal_threshold(
    scores: np.ndarray | Sequence[np.ndarray],
    truth: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None = None,
) -> tuple[float, float]:
    """The threshold that maximises the pooled F1 of ``scores >= threshold``, and that F1.

    The returned threshold lies halfway between the best score value and the next lower one, so ``>`` and ``>=``
    give the same mask. Without any changed pixel the F1 is undefined: ``(nan, nan)`` is returned.

    Examples
    --------
    >>> import numpy as np
    >>> f1_optimal_threshold(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    (0.2, 0.8)
    """
    curve = precision_recall_curve(scores, truth, valid)
    if curve.positives == 0 or curve.thresholds.size == 0:
        return math.nan, math.nan
    f1 = curve.f1
    best = int(np.argmax(f1))
    t = float(curve.thresholds[best])
    if best + 1 < curve.thresholds.size:
        t = 0.5 * (t + float(curve.thresholds[best + 1]))
    return round(t, 12), float(f1[best])


def otsu_threshold(
    scores: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    bins: int = 256,
) -> float:
    """Otsu's threshold of change scores (no labels needed), via :func:`skimage.filters.threshold_otsu`.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.concatenate([np.full(90, 0.1), np.full(10, 0.9)])
    >>> 0.1 < otsu_threshold(s) < 0.9
    True
    """
    from skimage.filters import threshold_otsu

    arrays = [scores] if isinstance(scores, np.ndarray) else list(scores)
    valids = [valid] if (valid is None or isinstance(valid, np.ndarray)) else list(valid)
    if len(valids) == 1 and len(arrays) > 1:
        valids = valids * len(arrays)
    flat = []
    for s, v in zip(arrays, valids, strict=True):
        s = np.asarray(s, dtype=np.float64)
        keep = np.isfinite(s) if v is None else (np.isfinite(s) & np.asarray(v, dtype=bool))
        flat.append(s[keep])
    values = np.concatenate(flat) if flat else np.zeros(0)
    if values.size == 0:
        raise InputError("no valid score to compute an Otsu threshold from")
    if values.min() == values.max():
        return float(values.min())
    return float(threshold_otsu(values, nbins=bins))


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
        or a folder of them.
    truth : path
        The reference raster(s): non-zero is change unless ``truth_change_values`` says which values are; a truth
        holding only 1 and 2 is read as OSCD's labels (1 no change, 2 change), with a warning, and so is a truth of
        1s only beside such truths (an OSCD scene without change). Its nodata pixels are left out, unless the nodata
        value is a class (:func:`label_nodata_class`: a 0/255 truth tagged ``nodata=0``), read as that class with
        a warning.
    threshold : float, optional
        Predict change where the prediction value is >= threshold (for probability rasters).
    ignore_value : float, optional
        Truth value to leave out of the scores (e.g. an "unknown" class).
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

    def score(pred_path: Path, truth_path: Path, oscd: bool | None) -> tuple[dict[str, Any], ConfusionMatrix, bool]:
        p, p_valid, p_crs, p_transform, _ = _read_band(pred_path)
        t, t_valid, t_crs, t_transform, t_nodata = _read_band(truth_path)
        if t_nodata is not None and not t_valid.all():
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
        if ignore_value is not None:
            valid &= t != ignore_value
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
