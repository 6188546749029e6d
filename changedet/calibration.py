"""Threshold calibration of change scores on validation data, and the precision-recall plot.

No torch here: the training loop hands over probabilities (or distances) of whole validation scenes as numpy arrays.

- ``method="f1"``: the threshold that maximises the pooled F1 on the precision-recall curve (the default; on OSCD it
  is worth about ten F1 points over a fixed 0.5 after weighted-BCE training);
- ``method="otsu"``: Otsu's threshold of the score histogram (needs no labels; metrics are still reported);
- ``method="fixed"``: keep ``fixed`` (0.5 by default).

Probability calibration (:func:`calibrate_probabilities`, Platt scaling): a network trained with a weighted loss on
rare change ranks pixels well but its sigmoid outputs are not probabilities (after weighted BCE on uniform chips
they stay low; with heavy weights they run high). A logistic regression of the validation labels on the logits,
``p = sigmoid(scale * logit + bias)``, makes them probabilities (measured by :func:`probability_metrics`: expected
calibration error, Brier score, log loss) without changing their order, so the F1 at the calibrated threshold is
unchanged. :func:`changedet.training.train` fits it after the threshold and folds it into the network's last layer.

>>> import numpy as np
>>> scores = np.array([[0.9, 0.8], [0.3, 0.1]])
>>> truth = np.array([[1, 0], [1, 0]])
>>> result = calibrate_threshold([scores], [truth], method="f1")
>>> result.threshold, round(result.metrics["f1"], 3)
(0.2, 0.8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import InputError
from changedet.evaluation import (
    ConfusionMatrix,
    PRCurve,
    confusion_matrix,
    f1_optimal_threshold,
    otsu_threshold,
    pool,
    precision_recall_curve,
)

__all__ = [
    "Calibration",
    "ProbabilityCalibration",
    "calibrate_probabilities",
    "calibrate_threshold",
    "cross_calibrate",
    "fit_logistic",
    "plot_pr_curve",
    "probability_metrics",
]


@dataclass
class Calibration:
    """A calibrated threshold with the pooled metrics it gives, and those at ``reference`` (0.5)."""

    threshold: float
    method: str
    metrics: dict[str, Any]
    reference_threshold: float
    reference_metrics: dict[str, Any]
    curve: PRCurve | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (without the curve)."""
        return {
            "threshold": self.threshold,
            "method": self.method,
            "at_threshold": self.metrics,
            f"at_{self.reference_threshold:g}": self.reference_metrics,
            "average_precision": None
            if self.curve is None or math.isnan(self.curve.average_precision())
            else self.curve.average_precision(),
        }


def _scene_confusion(scores: np.ndarray, truth: np.ndarray, valid: np.ndarray | None, threshold: float) -> ConfusionMatrix:
    """Confusion matrix of one scene at ``threshold``; NaN scores (no prediction) and invalid pixels not counted."""
    s = np.asarray(scores)
    keep = np.isfinite(s) if valid is None else (np.isfinite(s) & np.asarray(valid, dtype=bool))
    return confusion_matrix(np.nan_to_num(s, nan=-np.inf) >= threshold, truth, keep)


def _pooled_metrics(
    scores: Sequence[np.ndarray], truth: Sequence[np.ndarray], valid: Sequence[np.ndarray] | None, threshold: float
) -> dict[str, Any]:
    valids: Sequence[np.ndarray | None] = valid if valid is not None else [None] * len(scores)
    return pool(_scene_confusion(s, t, v, threshold) for s, t, v in zip(scores, truth, valids, strict=True)).to_dict()


def calibrate_threshold(
    scores: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    valid: Sequence[np.ndarray] | None = None,
    *,
    method: str = "f1",
    fixed: float = 0.5,
    reference: float = 0.5,
) -> Calibration:
    """Choose a threshold on validation scores and report the pooled metrics there and at ``reference``.

    Parameters
    ----------
    scores, truth, valid : sequences of numpy.ndarray
        Per-scene change scores (higher = more likely changed), binary truths and valid masks.
    method : {"f1", "otsu", "fixed"}
    fixed : float
        The threshold for ``method="fixed"`` (and the fallback when the validation data hold no change).
    reference : float
        A second threshold to report metrics at (0.5: what an uncalibrated model would use).
    """
    if method not in ("f1", "otsu", "fixed"):
        raise InputError(f"unknown threshold method {method!r}; choose f1, otsu or fixed")
    scores, truth = list(scores), list(truth)
    valid_list = None if valid is None else list(valid)
    if not scores:
        raise InputError("no validation scores to calibrate a threshold on")
    curve = precision_recall_curve(scores, truth, valid_list)
    if method == "f1":
        threshold, _ = f1_optimal_threshold(scores, truth, valid_list)
        if math.isnan(threshold):
            threshold, method = float(fixed), "fixed (no change in the validation data)"
    elif method == "otsu":
        threshold = otsu_threshold(scores, valid_list)
    else:
        threshold = float(fixed)
    return Calibration(
        threshold=float(threshold),
        method=method,
        metrics=_pooled_metrics(scores, truth, valid_list, threshold),
        reference_threshold=float(reference),
        reference_metrics=_pooled_metrics(scores, truth, valid_list, reference),
        curve=curve,
    )


def cross_calibrate(
    scores: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    valid: Sequence[np.ndarray] | None = None,
    *,
    names: Sequence[str] | None = None,
    method: str = "f1",
) -> dict[str, Any]:
    """Score each scene at the threshold calibrated on the *other* scenes (leave one scene out), pooled.

    :func:`calibrate_threshold` scores the validation scenes at the threshold chosen on those same scenes, which is
    optimistic: on a scene it has not seen, a user gets a threshold chosen elsewhere. Here scene ``i`` is scored at
    the threshold that ``method`` picks on all scenes but ``i``, and the confusion matrices are pooled over the
    scenes (the published convention). The gap to the self-calibrated F1 is how much of that F1 the threshold's
    fit to the scenes provides. Needs at least two scenes.

    Returns ``{"method", "pooled": {precision, recall, f1, ...}, "scenes": {name: {"threshold", "f1", ...}}}``.

    >>> import numpy as np
    >>> a, b = np.array([[0.9, 0.7]]), np.array([[0.6, 0.1]])  # each scene alone is separable (F1 1.0)
    >>> out = cross_calibrate([a, b], [np.array([[1, 0]]), np.array([[1, 0]])], names=["a", "b"])
    >>> out["scenes"]["a"]["threshold"], out["scenes"]["b"]["threshold"], out["pooled"]["f1"]
    (0.35, 0.8, 0.5)
    """
    scores, truth = list(scores), list(truth)
    valids: list[np.ndarray | None] = [None] * len(scores) if valid is None else list(valid)
    if len(scores) < 2:
        raise InputError("cross-calibration needs at least two scenes (each scored at the others' threshold)")
    labels = list(names) if names is not None else [str(i) for i in range(len(scores))]
    per_scene: dict[str, Any] = {}
    matrices = []
    for i in range(len(scores)):
        rest = [k for k in range(len(scores)) if k != i]
        rest_valid = None if valid is None else [np.asarray(valids[k]) for k in rest]
        cal = calibrate_threshold([scores[k] for k in rest], [truth[k] for k in rest], rest_valid, method=method)
        cm = _scene_confusion(scores[i], truth[i], valids[i], cal.threshold)
        matrices.append(cm)
        per_scene[labels[i]] = {"threshold": cal.threshold, **cm.to_dict()}
    return {"method": method, "pooled": pool(matrices).to_dict(), "scenes": per_scene}


# ---------------------------------------------------------------------------------------- probability calibration
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logits (float32 sigmoids saturate)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, iterations: int = 100,
                 smooth_targets: bool = False) -> tuple[float, float]:
    """Fit ``P(y = 1 | x) = sigmoid(slope * x + intercept)`` by maximum likelihood (Newton's method).

    The problem is convex in the two parameters; ``x`` is standardised internally for conditioning and a tiny ridge
    keeps perfectly separable data finite. ``smooth_targets`` replaces the 0/1 targets by Platt's (1999)
    ``1 / (N- + 2)`` and ``(N+ + 1) / (N+ + 2)``, which keeps the fit finite and stable on (nearly) separable data
    and changes nothing measurable on millions of pixels.

    >>> x = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]); y = np.array([0, 0, 1, 0, 1, 1])
    >>> slope, intercept = fit_logistic(x, y)
    >>> slope > 0, round(intercept, 6) == 0.0
    (True, True)

    Raises
    ------
    InputError
        No samples, or only one class among them.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    if x.size == 0 or bool((y == 0).all()) or bool((y == 1).all()):
        raise InputError("logistic calibration needs both changed and unchanged labelled pixels")
    if smooth_targets:
        n_pos = float(y.sum())
        n_neg = float(y.size) - n_pos
        y = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    design = np.stack(((x - mu) / sd, np.ones_like(x)), axis=1)
    w = np.zeros(2)
    ridge = 1e-6 * np.eye(2)
    for _ in range(iterations):
        p = _sigmoid64(design @ w)
        grad = design.T @ (p - y) + 1e-6 * w
        hess = (design.T * (p * (1.0 - p))) @ design + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    slope = float(w[0]) / sd
    return slope, float(w[1]) - slope * mu


def _pixels(values: Sequence[np.ndarray], truth: Sequence[np.ndarray], valid: Sequence[np.ndarray] | None,
            max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Valid, finite pixels of all scenes as flat (values, 0/1 truth), evenly subsampled to ``max_pixels``."""
    valids: Sequence[np.ndarray | None] = valid if valid is not None else [None] * len(values)
    xs, ys = [], []
    for v, t, m in zip(values, truth, valids, strict=True):
        v = np.asarray(v)
        t = np.asarray(t)
        keep = np.isfinite(v) & (t <= 1)
        if m is not None:
            keep &= np.asarray(m, dtype=bool)
        xs.append(v[keep])
        ys.append(t[keep] == 1)
    x, y = np.concatenate(xs) if xs else np.empty(0), np.concatenate(ys) if ys else np.empty(0, bool)
    if max_pixels is not None and x.size > max_pixels:
        step = math.ceil(x.size / max_pixels)
        x, y = x[::step], y[::step]
    return x, y


def probability_metrics(
    probabilities: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    valid: Sequence[np.ndarray] | None = None,
    *,
    bins: int = 15,
) -> dict[str, float]:
    """How well probabilities match observed change frequencies, pooled over valid pixels.

    Returns ``ece`` (expected calibration error: the pixel-weighted mean of ``|mean probability - change
    frequency|`` over ``bins`` equal-width bins), ``brier`` (mean squared error), ``nll`` (log loss, probabilities
    clipped to [1e-7, 1 - 1e-7]), ``mean_probability`` and ``change_fraction``. A calibrated model has a small ECE
    and ``mean_probability`` close to ``change_fraction``.

    >>> p = [np.array([0.1, 0.1, 0.9, 0.9])]; t = [np.array([0, 0, 1, 1])]
    >>> {k: round(v, 3) for k, v in probability_metrics(p, t, bins=10).items()}["ece"]
    0.1
    """
    p, y = _pixels(probabilities, truth, valid)
    if p.size == 0:
        raise InputError("no valid labelled pixels to measure probability calibration on")
    p = np.clip(p.astype(np.float64), 0.0, 1.0)
    yf = y.astype(np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    conf = np.bincount(idx, weights=p, minlength=bins)
    freq = np.bincount(idx, weights=yf, minlength=bins)
    ece = float(np.abs(conf - freq).sum() / p.size)
    q = np.clip(p, _EPS, 1.0 - _EPS)
    nll = float(-(yf * np.log(q) + (1.0 - yf) * np.log1p(-q)).mean())
    return {"ece": ece, "brier": float(((p - yf) ** 2).mean()), "nll": nll,
            "mean_probability": float(p.mean()), "change_fraction": float(yf.mean())}


@dataclass
class ProbabilityCalibration:
    """Platt scaling ``p' = sigmoid(scale * logit(p) + bias)`` and the calibration metrics before and after."""

    method: str
    scale: float
    bias: float
    before: dict[str, float]
    after: dict[str, float]

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated float32 probabilities of the same shape (NaN stays NaN)."""
        p = np.asarray(probabilities)
        out = _sigmoid64(self.scale * _logit(p) + self.bias).astype(np.float32)
        return np.where(np.isnan(p), np.float32(np.nan), out)

    def apply_logits(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits ``scale * logits + bias``."""
        return self.scale * np.asarray(logits) + self.bias

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scale": self.scale, "bias": self.bias, "before": self.before,
                "after": self.after}


def calibrate_probabilities(
    probabilities: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    valid: Sequence[np.ndarray] | None = None,
    *,
    method: str = "platt",
    max_pixels: int = 4_000_000,
    bins: int = 15,
) -> ProbabilityCalibration:
    """Fit Platt scaling of probabilities on labelled validation scenes.

    Parameters
    ----------
    probabilities, truth, valid : sequences of numpy.ndarray
        Per-scene sigmoid outputs of the network, binary truths (values above 1 are ignored) and valid masks.
    method : {"platt"}
        Logistic regression of the labels on the logits, with Platt's smoothed targets (two parameters; keeps the
        order of the pixels).
    max_pixels : int
        Fit on at most this many pixels (an even subsample); the metrics use all of them.

    Raises
    ------
    InputError
        Unknown method, only one class in the labels, or a fit that would reverse the order of the scores
        (a network that is not trained yet).
    """
    if method != "platt":
        raise InputError(f"unknown probability calibration {method!r}; choose platt (or none to skip it)")
    probabilities, truth = list(probabilities), list(truth)
    x, y = _pixels(probabilities, truth, valid, max_pixels)
    scale, bias = fit_logistic(_logit(x), y, smooth_targets=True)
    if not (math.isfinite(scale) and math.isfinite(bias) and scale > 0):
        raise InputError(f"Platt scaling found scale {scale:.4g}: higher scores are not more often changed in the "
                         "validation data (is the network trained?)")
    result = ProbabilityCalibration(method=method, scale=scale, bias=bias,
                                    before=probability_metrics(probabilities, truth, valid, bins=bins), after={})
    result.after = probability_metrics([result.apply(p) for p in probabilities], truth, valid, bins=bins)
    return result


def plot_pr_curve(calibration: Calibration, path: str | Path, *, title: str = "Validation precision-recall") -> Path:
    """Write a PNG of the precision-recall curve with the calibrated and the reference operating points."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    curve = calibration.curve
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    try:
        if curve is not None and curve.recall.size:
            ax.plot(curve.recall, curve.precision, lw=1.5, label=f"PR curve (AP {curve.average_precision():.3f})")
        for metrics, thr, marker, name in (
            (calibration.metrics, calibration.threshold, "o", calibration.method),
            (calibration.reference_metrics, calibration.reference_threshold, "s", "reference"),
        ):
            p, r, f1 = metrics.get("precision"), metrics.get("recall"), metrics.get("f1")
            if p is not None and r is not None:
                ax.plot([r], [p], marker, ms=8, label=f"{name}: t={thr:.3g}, F1={0 if f1 is None else f1:.3f}")
        f_grid = np.linspace(0.01, 1, 200)
        for f in (0.2, 0.4, 0.6, 0.8):
            with np.errstate(divide="ignore", invalid="ignore"):
                p_iso = f * f_grid / (2 * f_grid - f)
            ok = (p_iso > 0) & (p_iso <= 1)
            ax.plot(f_grid[ok], p_iso[ok], color="0.85", lw=0.8, zorder=0)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        from changedet.io.raster import atomic_output

        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
