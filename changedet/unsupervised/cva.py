"""Change vector analysis (CVA): the length of the per-pixel spectral difference, thresholded automatically.

Each date is standardised per band with its own mean and standard deviation, learned by ``fit`` on the valid pixels
of a sample, which removes a linear radiometric difference (gain and offset) between the dates. The change
magnitude of a pixel is ``m = || z_after - z_before ||_2`` over the bands. ``fit`` splits the magnitudes of the
sample into two classes with Otsu's method (default) or 2-means and keeps that split ``t`` as ``score_threshold_``.
Changed pixels skew the statistics of the dates, so ``fit`` then re-estimates them on the pixels it called
unchanged (pseudo-invariant pixels, whose two dates differ only by the radiometric difference) and splits again,
``refine`` times.

The magnitude is turned into a probability with ``p = 1 / (1 + (t / m) ** sharpness)`` (a logistic in
``log(m / t)``), so the automatic threshold maps to exactly 0.5 and :attr:`CVA.threshold` is 0.5.

References
----------
Malila, W. A. (1980). Change vector analysis: an approach for detecting forest changes with Landsat. LARS
Symposia, 385. Bovolo, F. & Bruzzone, L. (2007). A theoretical framework for unsupervised change detection based on
change vector analysis in the polar domain. IEEE TGRS 45(1), 218-236.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from changedet.errors import InputError
from changedet.unsupervised._base import _THRESHOLD_METHODS, BaseScorer, auto_threshold, ratio_probability

__all__ = ["CVA"]


class CVA(BaseScorer):
    """Change vector analysis with an automatic (Otsu or K-means) threshold.

    Parameters
    ----------
    threshold_method : {"otsu", "kmeans"}
        How ``fit`` splits the change magnitudes of the sample into no-change and change.
    score_threshold : float, optional
        A fixed magnitude threshold (in standard deviations) instead of the automatic one.
    sharpness : float
        Exponent of the magnitude-to-probability mapping (see the module docstring); 4 by default, so a pixel
        at half the threshold gets 0.06 and one at twice the threshold 0.94.
    refine : int
        Rounds of re-estimating the per-date statistics on the pixels the previous round called unchanged
        (2 by default; 0 standardises on the whole sample).
    max_samples : int
        At most this many valid pixels of the fitting sample are used (drawn at random with ``seed``).
    seed : int
        Seed of the sub-sampling.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> before = rng.normal(100, 10, (4, 64, 64)).astype("float32")
    >>> after = 1.2 * before + 5 + rng.normal(0, 1, before.shape).astype("float32")
    >>> after[:, 10:30, 10:30] += 80  # a changed block
    >>> valid = np.ones((64, 64), bool)
    >>> cva = CVA().fit(before, after, valid)
    >>> mask = cva.predict(before, after, valid) >= cva.threshold
    >>> bool(mask[10:30, 10:30].all()), int(mask.sum())
    (True, 400)
    """

    name = "cva"

    def __init__(
        self,
        *,
        threshold_method: str = "otsu",
        score_threshold: float | None = None,
        sharpness: float = 4.0,
        refine: int = 2,
        max_samples: int = 500_000,
        seed: int = 0,
    ) -> None:
        super().__init__(max_samples=max_samples, seed=seed)
        if threshold_method not in _THRESHOLD_METHODS:
            raise InputError(
                f"unknown threshold_method {threshold_method!r} for CVA; expected one of "
                f"{', '.join(_THRESHOLD_METHODS)}"
            )
        if score_threshold is not None and not score_threshold > 0:
            raise InputError(f"score_threshold must be > 0, got {score_threshold}")
        if not sharpness > 0:
            raise InputError(f"sharpness must be > 0, got {sharpness}")
        self.threshold_method = threshold_method
        self.fixed_score_threshold = None if score_threshold is None else float(score_threshold)
        self.sharpness = float(sharpness)
        if int(refine) < 0:
            raise InputError(f"refine must be >= 0, got {refine}")
        self.refine = int(refine)
        self.threshold = 0.5
        self.score_threshold_: float | None = None

    def fit(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> CVA:
        """Learn the per-band statistics of each date and the magnitude threshold from a sample.

        Parameters
        ----------
        before, after : numpy.ndarray
            (band, row, col) arrays of a sample of the scene (a decimated read or a mosaic of windows).
        valid : numpy.ndarray, optional
            bool (row, col), True where both dates hold data; invalid pixels are ignored.

        Returns
        -------
        CVA
            ``self``, fitted.
        """
        x_raw, y_raw = self._fit_sample(before, after, valid)
        self.n_refined_ = 0
        for round_ in range(self.refine + 1):
            magnitude = self._score_pixels(*self._standardise(x_raw, y_raw))
            if self.fixed_score_threshold is not None:
                self.score_threshold_ = self.fixed_score_threshold
            else:
                self.score_threshold_ = auto_threshold(magnitude, self.threshold_method)
            unchanged = magnitude < self.score_threshold_
            if round_ == self.refine or unchanged.sum() < max(10, 0.05 * unchanged.size):
                break
            # Re-standardise both dates on the pixels called unchanged (pseudo-invariant features).
            self._set_band_stats(x_raw[unchanged], y_raw[unchanged])
            self.n_refined_ += 1
        self.changed_fraction_ = float((magnitude >= self.score_threshold_).mean())
        return self

    def _score_pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.sqrt(np.square(y - x).sum(axis=1))

    def _probability(self, score: np.ndarray) -> np.ndarray:
        assert self.score_threshold_ is not None
        return ratio_probability(score, self.score_threshold_, self.sharpness)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters and fitted statistics (for report.json)."""
        d = self._base_dict()
        d.update(
            threshold_method="fixed" if self.fixed_score_threshold is not None else self.threshold_method,
            score="magnitude of the difference of per-band standardised dates",
            score_threshold=self.score_threshold_,
            sharpness=self.sharpness,
            refine=self.refine,
            refine_rounds=getattr(self, "n_refined_", 0),
            probability="1 / (1 + (score_threshold / magnitude) ** sharpness)",
            sample_changed_fraction=getattr(self, "changed_fraction_", None),
        )
        return d
