"""Shared machinery of the unsupervised change scorers: the protocol, input checks, sampling and thresholds.

Every scorer works on numpy arrays only: ``before`` and ``after`` are (band, row, col) arrays of any real dtype
and ``valid`` is a bool (row, col) array that is True where both dates hold data. Scorers are *pixel-wise*: once
fitted, the probability of a pixel depends only on that pixel's two spectra, so predicting window by window gives
exactly the map that one whole-scene prediction would give (the detect engine streams tiles through ``predict``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from changedet.errors import InputError, PairMismatchError

__all__ = [
    "BaseScorer",
    "ChangeScorer",
    "ThresholdMethod",
    "auto_threshold",
    "ratio_probability",
]

log = logging.getLogger("changedet.unsupervised")

ThresholdMethod = Literal["otsu", "kmeans"]
_THRESHOLD_METHODS = ("otsu", "kmeans")


@runtime_checkable
class ChangeScorer(Protocol):
    """What the detect engine needs from an unsupervised method.

    ``fit`` learns statistics on a sample of the scene (a decimated read or a few random windows), ``predict``
    turns any window of the pair into a per-pixel change probability in [0, 1] (float32, NaN-free, 0 on invalid
    pixels), and ``threshold`` is the probability above which (``>=``) a pixel is called changed.
    """

    name: str
    threshold: float

    def fit(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> ChangeScorer: ...

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...


def ratio_probability(score: np.ndarray, score_threshold: float, sharpness: float) -> np.ndarray:
    """Map a non-negative change score to a probability with the threshold at 0.5.

    ``p = 1 / (1 + (t / s) ** k)``, i.e. a logistic in ``k * log(s / t)``: ``s = 0`` gives 0, ``s = t`` gives 0.5,
    ``s = 2t`` gives ``2**k / (1 + 2**k)`` (0.94 for k = 4) and large scores tend to 1.

    Parameters
    ----------
    score : numpy.ndarray
        Non-negative scores (any shape).
    score_threshold : float
        Score that maps to 0.5 (> 0).
    sharpness : float
        Exponent ``k`` (> 0); larger makes the map closer to a hard mask.

    Returns
    -------
    numpy.ndarray
        float32 probabilities of the same shape.

    Examples
    --------
    >>> [round(float(p), 3) for p in ratio_probability(np.array([0.0, 1.0, 2.0]), 1.0, 4.0)]
    [0.0, 0.5, 0.941]
    """
    s = np.maximum(np.asarray(score, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", over="ignore"):
        ratio = np.where(s > 0, (score_threshold / np.where(s > 0, s, 1.0)) ** sharpness, np.inf)
        p = 1.0 / (1.0 + ratio)
    return np.nan_to_num(p, nan=0.0).astype(np.float32)


def auto_threshold(scores: np.ndarray, method: str = "otsu") -> float:
    """Split 1-D scores into no-change / change with Otsu's method or 2-means.

    Parameters
    ----------
    scores : numpy.ndarray
        Finite scores of the fitting sample.
    method : {"otsu", "kmeans"}
        ``"otsu"`` uses :func:`skimage.filters.threshold_otsu` (256 bins); ``"kmeans"`` runs
        :func:`scipy.cluster.vq.kmeans2` with k = 2 (initialised at the 5th and 95th percentiles, so it is
        deterministic) and returns the midpoint of the two centres.

    Returns
    -------
    float
        The threshold (> 0 when the scores are not all zero).

    Examples
    --------
    >>> x = np.r_[np.zeros(90), np.full(10, 10.0)]
    >>> 0 < auto_threshold(x, "otsu") < 10 and 0 < auto_threshold(x, "kmeans") < 10
    True
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if method not in _THRESHOLD_METHODS:
        raise InputError(
            f"unknown threshold method {method!r}; expected one of {', '.join(_THRESHOLD_METHODS)}"
        )
    if x.size == 0 or float(x.max()) <= float(x.min()):
        # Nothing to split: every pixel has the same score. Put the threshold just above it.
        top = float(x.max()) if x.size else 0.0
        return max(top * (1 + 1e-6), float(np.finfo(np.float32).tiny)) if top >= 0 else 1e-12
    if method == "otsu":
        from skimage.filters import threshold_otsu

        t = float(threshold_otsu(x))
    else:
        from scipy.cluster.vq import kmeans2

        init = np.percentile(x, [5.0, 95.0]).reshape(2, 1)
        if init[1, 0] <= init[0, 0]:
            init = np.array([[x.min()], [x.max()]])
        centres, _ = kmeans2(x.reshape(-1, 1), init, minit="matrix", iter=100, missing="warn")
        c = np.sort(centres.ravel())
        t = float(c.mean())
    return max(t, float(np.finfo(np.float32).tiny))


def _as_float_stack(array: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3:
        raise InputError(f"{what}: expected a (band, row, col) array, found {a.ndim} dimensions {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise InputError(f"{what}: expected real numbers, found dtype {a.dtype}")
    return a


class BaseScorer:
    """Input checks, per-band standardisation and sampling shared by the scorers (not a public class)."""

    name: str = ""
    threshold: float = 0.5

    def __init__(self, *, max_samples: int = 200_000, seed: int = 0) -> None:
        if int(max_samples) < 100:
            raise InputError(f"max_samples must be at least 100, got {max_samples}")
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.n_bands_: int | None = None
        self.mean_: np.ndarray | None = None  # (2, band): before, after
        self.std_: np.ndarray | None = None
        self.n_fit_pixels_: int = 0
        self.constant_bands_: list[int] = []

    # -- input handling -------------------------------------------------------------------------------------
    def _check(
        self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = _as_float_stack(before, "before")
        a = _as_float_stack(after, "after")
        if b.shape != a.shape:
            raise PairMismatchError(
                f"before has shape {b.shape} but after has {a.shape}; both must be (band, row, col) arrays on "
                "the same grid: align the pair first (changedet.open_pair)"
            )
        if valid is None:
            v = np.ones(b.shape[1:], dtype=bool)
        else:
            v = np.asarray(valid)
            if v.shape != b.shape[1:]:
                raise InputError(
                    f"valid has shape {v.shape} but the images are {b.shape[1:]} (row, col); pass one bool per pixel"
                )
            v = v.astype(bool, copy=True)
        if self.n_bands_ is not None and b.shape[0] != self.n_bands_:
            raise PairMismatchError(
                f"{self.name} was fitted on {self.n_bands_} bands but got {b.shape[0]}; fit and predict on the "
                "same bands"
            )
        # Non-finite values are never data, whatever the mask says.
        if np.issubdtype(b.dtype, np.floating):
            v &= np.isfinite(b).all(axis=0)
        if np.issubdtype(a.dtype, np.floating):
            v &= np.isfinite(a).all(axis=0)
        return b, a, v

    def _pixels(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Valid pixels as (n, band) float64 matrices."""
        return (before[:, valid].T.astype(np.float64), after[:, valid].T.astype(np.float64))

    def _fit_sample(
        self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Check the inputs, draw at most ``max_samples`` valid pixels (raw (n, band) float64 matrices) and fit the
        per-band statistics on them."""
        self.n_bands_ = None
        b, a, v = self._check(before, after, valid)
        n_valid = int(v.sum())
        if n_valid < 2:
            raise InputError(
                f"{self.name}: {n_valid} valid pixel(s) in the fitting sample; at least 2 pixels with data in both "
                "dates are needed: check the nodata values and the overlap of the pair"
            )
        x, y = self._pixels(b, a, v)
        if n_valid > self.max_samples:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(n_valid, size=self.max_samples, replace=False))
            x, y = x[keep], y[keep]
        self.n_bands_ = int(b.shape[0])
        self.n_fit_pixels_ = int(x.shape[0])
        self._set_band_stats(x, y)
        return x, y

    def _set_band_stats(self, x: np.ndarray, y: np.ndarray) -> None:
        """Per-date, per-band mean and standard deviation of raw (n, band) pixels; flags constant bands."""
        mean = np.stack([x.mean(axis=0), y.mean(axis=0)])
        std = np.stack([x.std(axis=0), y.std(axis=0)])
        constant = std <= 1e-9 * (1.0 + np.abs(mean))
        self.constant_bands_ = [int(i) for i in np.flatnonzero(constant.any(axis=0))]
        self.mean_, self.std_ = mean, np.where(constant, 1.0, std)

    def _standardise(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-date, per-band z-scores; bands constant in either date of the sample are zeroed (a band without
        variation in one date cannot tell change from no change)."""
        assert self.mean_ is not None and self.std_ is not None
        zx, zy = (x - self.mean_[0]) / self.std_[0], (y - self.mean_[1]) / self.std_[1]
        if self.constant_bands_:
            zx[:, self.constant_bands_] = 0.0
            zy[:, self.constant_bands_] = 0.0
        return zx, zy

    def _require_fitted(self) -> None:
        if self.n_bands_ is None:
            raise InputError(f"{self.name} is not fitted: call fit(before, after, valid) on a sample first")

    # -- public API ---------------------------------------------------------------------------------------------
    def fit(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> BaseScorer:
        raise NotImplementedError

    def _score_pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Standardised (n, band) pixels -> (n,) float64 change scores."""
        raise NotImplementedError

    def _probability(self, score: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Raw change score per pixel (float32 (row, col), 0 on invalid pixels).

        The unit depends on the method: CVA magnitude, IR-MAD chi-square statistic, DSFA chi-square distance.
        """
        self._require_fitted()
        b, a, v = self._check(before, after, valid)
        out = np.zeros(v.shape, dtype=np.float32)
        if v.any():
            x, y = self._standardise(*self._pixels(b, a, v))
            out[v] = self._score_pixels(x, y)
        return out

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Per-pixel change probability.

        Parameters
        ----------
        before, after : numpy.ndarray
            (band, row, col) arrays of any real dtype, with the band count used in :meth:`fit`.
        valid : numpy.ndarray, optional
            bool (row, col), True where both dates hold data; None means every finite pixel.

        Returns
        -------
        numpy.ndarray
            float32 (row, col) in [0, 1], NaN-free; invalid pixels are 0. A pixel is changed where the
            probability is ``>= self.threshold``.
        """
        self._require_fitted()
        b, a, v = self._check(before, after, valid)
        out = np.zeros(v.shape, dtype=np.float32)
        if v.any():
            x, y = self._standardise(*self._pixels(b, a, v))
            p = self._probability(self._score_pixels(x, y))
            out[v] = np.clip(np.nan_to_num(p, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        return out

    def predict_mask(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Binary change mask (uint8 (row, col): 1 changed, 0 unchanged or invalid)."""
        return (self.predict(before, after, valid) >= self.threshold).astype(np.uint8)

    def _base_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "threshold": float(self.threshold),
            "seed": self.seed,
            "max_samples": self.max_samples,
            "n_bands": self.n_bands_,
            "n_fit_pixels": self.n_fit_pixels_,
            "constant_bands": list(self.constant_bands_),
            "band_mean": None if self.mean_ is None else self.mean_.round(6).tolist(),
            "band_std": None if self.std_ is None else self.std_.round(6).tolist(),
        }

    def __repr__(self) -> str:
        fitted = "fitted" if self.n_bands_ is not None else "not fitted"
        return f"<{type(self).__name__} {self.name} ({fitted})>"

