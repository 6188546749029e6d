"""Metrics of the change class on numpy arrays: confusion matrices, PR curves and thresholds.

The array half of :mod:`changedet.evaluation` (which re-exports every name here and adds the raster-file side).
Numpy only, never torch. Masks are 2-D (row, col); the change class is the positive class:

- ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1 = 2 P R / (P + R)``,
  ``iou = TP / (TP + FP + FN)``, ``overall_accuracy = (TP + TN) / N`` and Cohen's ``kappa``
  ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` the chance agreement of the two binary labellings.
- A metric whose denominator is zero (for instance the precision of a file where nothing was predicted) is ``nan``;
  :meth:`ConfusionMatrix.to_dict` turns it into ``None`` for JSON.
- Scores over several files are *pooled* with :func:`pool`: the confusion matrices are summed over all pixels and
  the metrics computed once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from changedet.errors import InputError

__all__ = [
    "DETECT_MASK_NODATA",
    "DETECT_MASK_VALUES",
    "ConfusionMatrix",
    "PRCurve",
    "confusion_matrix",
    "detect_mask_nodata_count",
    "f1_optimal_threshold",
    "otsu_threshold",
    "pool",
    "precision_recall_curve",
]


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


#: The nodata value of the ``change.tif`` that ``changedet detect`` writes.
DETECT_MASK_NODATA = 255
#: The values of that ``change.tif``: 0 no change, 1 change, 255 no data.
DETECT_MASK_VALUES = (0, 1, DETECT_MASK_NODATA)


def detect_mask_nodata_count(blocks: Iterable[np.ndarray]) -> int | None:
    """The number of 255 pixels when ``blocks`` (the windows of a raster that declares no nodata value, or the whole
    array as one block) hold only the values 0, 1 and 255 (:data:`DETECT_MASK_VALUES`) with both 1 and 255 present:
    detect's ``change.tif`` encoding (255 = no data) whose nodata tag was lost (``gdal_translate -a_nodata none``, a
    re-export). None otherwise (a 0/255 or 0/1 mask, any other value, NaN). Stops at the first block holding another
    value. ``changedet vectorize`` and ``changedet evaluate`` read such a raster's 255s as no data, with a warning.

    >>> detect_mask_nodata_count([np.array([[0, 1], [255, 255]], dtype="uint8")])
    2
    >>> detect_mask_nodata_count([np.array([[0, 255]], dtype="uint8")]) is None  # a 0/255 mask: 255 is change
    True
    """
    ones = n255 = 0
    for block in blocks:
        m = np.asarray(block)
        if m.dtype.kind not in "uifb":
            return None
        n0 = int(np.count_nonzero(m == 0))
        n1 = int(np.count_nonzero(m == 1))
        n2 = int(np.count_nonzero(m == DETECT_MASK_NODATA))
        if n0 + n1 + n2 != m.size:  # another value (NaN included): not that encoding
            return None
        ones += n1
        n255 += n2
    return n255 if ones and n255 else None
