"""Co-registration check: the residual translation between two aligned dates, by sub-pixel phase correlation.

Georeferencing of two acquisitions often disagrees by a fraction of a pixel to a few pixels (orthorectification
with different DEMs, different processing baselines). A change detector then sees every edge as a change. This
module estimates that residual global translation on a representative band over a representative window
(:func:`skimage.registration.phase_cross_correlation` with sub-pixel upsampling) so that ``changedet check``
reports it and ``open_pair(coregister=True)`` removes it.

Sign convention: ``(dy, dx)`` is the displacement of AFTER's content relative to BEFORE: a feature at BEFORE
pixel (r, c) appears at AFTER pixel (r + dy, c + dx). Rows grow downwards (dy > 0: AFTER is shifted south),
columns to the right (dx > 0: shifted east, for a north-up grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from rasterio.windows import Window

__all__ = ["COREGISTRATION_WARN_PX", "ShiftEstimate", "estimate_pair_shift", "estimate_shift"]

#: Residual shifts above this many pixels trigger a :class:`~changedet.errors.CoregistrationWarning`.
COREGISTRATION_WARN_PX = 0.5

# Sentinel-2 bands preferred for the estimate (10 m, good texture), in order.
_PREFERRED_BANDS = ("B04", "B03", "B08", "B02", "red", "green", "nir")


class _PairLike(Protocol):  # what estimate_pair_shift needs from an AlignedPair
    width: int
    height: int
    band_names: list[str]

    def read(
        self, window: Window | None = None, *, apply_corrections: bool = True
    ) -> tuple[np.ndarray, ...]: ...

    def pixel_size_m(self) -> tuple[float, float] | None: ...


@dataclass(frozen=True)
class ShiftEstimate:
    """A residual translation of AFTER relative to BEFORE.

    Attributes
    ----------
    dy, dx
        Displacement in pixels of the aligned grid (see the module docstring for the sign convention).
    dy_m, dx_m
        The same in metres (None without georeferencing).
    error
        Normalised root-mean-square error of the correlation peak (0 perfect, 1 no correlation).
    band
        The band (name) or ``"mean of bands"`` used.
    window
        (col_off, row_off, width, height) of the window used, on the aligned grid.
    valid_fraction
        Fraction of valid pixels in that window.
    """

    dy: float
    dx: float
    dy_m: float | None
    dx_m: float | None
    error: float
    band: str
    window: tuple[int, int, int, int]
    valid_fraction: float

    @property
    def magnitude(self) -> float:
        """Length of the shift in pixels."""
        return math.hypot(self.dy, self.dx)

    @property
    def magnitude_m(self) -> float | None:
        """Length of the shift in metres (None without georeferencing)."""
        if self.dy_m is None or self.dx_m is None:
            return None
        return math.hypot(self.dy_m, self.dx_m)

    @property
    def reliable(self) -> bool:
        """Whether the correlation peak is clear enough to trust (``error < 0.95`` and enough valid pixels)."""
        return self.error < 0.95 and self.valid_fraction >= 0.5

    def describe(self) -> str:
        """One line for reports: ``0.31 px (3.1 m): dy=+0.30 px, dx=-0.08 px``."""
        metres = f" ({self.magnitude_m:.2f} m)" if self.magnitude_m is not None else ""
        return (
            f"{self.magnitude:.2f} px{metres}: dy={self.dy:+.2f} px, dx={self.dx:+.2f} px "
            f"(band {self.band}, window {self.window[2]}x{self.window[3]}, correlation error {self.error:.2f})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "dy_px": self.dy,
            "dx_px": self.dx,
            "magnitude_px": self.magnitude,
            "dy_m": self.dy_m,
            "dx_m": self.dx_m,
            "magnitude_m": self.magnitude_m,
            "error": self.error,
            "band": self.band,
            "window": list(self.window),
            "valid_fraction": self.valid_fraction,
            "reliable": self.reliable,
        }


def estimate_shift(
    before: np.ndarray,
    after: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    upsample_factor: int = 100,
) -> tuple[float, float, float]:
    """Sub-pixel translation of ``after`` relative to ``before`` (two 2-D arrays of one band).

    Invalid pixels (``valid`` False, or non-finite) are filled with each image's mean; both images are
    mean-centred and multiplied by a Hann window to suppress edge effects, then cross-correlated in the Fourier
    domain with the peak refined by matrix-multiply DFT upsampling (Guizar-Sicairos et al., 2008).

    Returns
    -------
    (dy, dx, error)
        A feature at (r, c) in ``before`` is at (r + dy, c + dx) in ``after``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> img = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((128, 128)), 3)
    >>> moved = ndimage.shift(img, (0.3, -1.25), order=3, mode="reflect")
    >>> dy, dx, _ = estimate_shift(img, moved)
    >>> round(dy, 1), round(dx, 1)
    (0.3, -1.2)
    """
    from skimage.registration import phase_cross_correlation

    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two 2-D arrays of one shape, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    if ok.sum() < 16:
        raise ValueError("fewer than 16 valid pixels: the shift cannot be estimated")
    a = np.where(ok, a, a[ok].mean()) - a[ok].mean()
    b = np.where(ok, b, b[ok].mean()) - b[ok].mean()
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    # Plain (not phase-normalised) cross-correlation: phase normalisation amplifies the noise-only high
    # frequencies of smooth imagery and biases the peak towards zero shift.
    shift, error, _ = phase_cross_correlation(
        a * win, b * win, upsample_factor=upsample_factor, normalization=None
    )
    # skimage returns the shift that registers `after` onto `before`: the displacement is its opposite.
    return float(-shift[0]), float(-shift[1]), float(error)


def _pick_band(names: Sequence[str]) -> int | None:
    lowered = [n.lower() for n in names]
    for pref in _PREFERRED_BANDS:
        if pref.lower() in lowered:
            return lowered.index(pref.lower())
    return None


def _candidate_windows(height: int, width: int, size: int) -> list[Window]:
    h, w = min(size, height), min(size, width)
    out = [Window((width - w) // 2, (height - h) // 2, w, h)]
    for fr in (0.0, 0.5, 1.0):
        for fc in (0.0, 0.5, 1.0):
            win = Window(round((width - w) * fc), round((height - h) * fr), w, h)
            if win not in out:
                out.append(win)
    return out


def estimate_pair_shift(
    pair: _PairLike,
    *,
    band: int | str | None = None,
    window_size: int = 512,
    upsample_factor: int = 100,
) -> ShiftEstimate | None:
    """Estimate the residual shift of an aligned pair (:class:`~changedet.io.alignment.AlignedPair`).

    Parameters
    ----------
    pair
        The aligned pair (its uncorrected AFTER is read).
    band
        0-based position or name of the band to use; default a 10 m Sentinel-2 band when the names say so
        (B04, B03, B08, B02), else the mean of all bands after z-scoring each one.
    window_size
        Side of the square window; the centre window is used unless less than half of it is valid, in which case
        the most valid of nine candidate windows is taken.
    upsample_factor
        Sub-pixel precision is ``1 / upsample_factor`` pixel.

    Returns
    -------
    ShiftEstimate or None
        None when the common grid is smaller than 32 x 32 pixels, no window has 16 valid pixels, or the band read
        is flat (one value where valid: nothing to correlate).
    """
    if min(pair.width, pair.height) < 32:
        return None
    best: tuple[float, Window, np.ndarray, np.ndarray, np.ndarray] | None = None
    for win in _candidate_windows(pair.height, pair.width, window_size):
        b, a, valid = pair.read(win, apply_corrections=False)[:3]
        frac = float(valid.mean())
        if best is None or frac > best[0]:
            best = (frac, win, b, a, valid)
        if frac >= 0.5:
            break
    assert best is not None
    frac, win, b, a, valid = best
    if valid.sum() < 16:
        return None
    if isinstance(band, str):
        idx: int | None = [n.lower() for n in pair.band_names].index(band.lower())
    elif band is not None:
        idx = int(band)
    else:
        idx = _pick_band(pair.band_names)
    if idx is not None:
        img_b, img_a, label = b[idx], a[idx], pair.band_names[idx]
    else:
        img_b, img_a, label = _zmean(b, valid), _zmean(a, valid), "mean of bands"
    if not (np.ptp(img_b[valid]) > 0 and np.ptp(img_a[valid]) > 0):
        return None  # a flat image (constant, or one value where valid) has no texture to correlate
    dy, dx, error = estimate_shift(img_b, img_a, valid, upsample_factor=upsample_factor)
    size = pair.pixel_size_m()
    dy_m = dx_m = None
    if size is not None:
        dy_m, dx_m = dy * size[0], dx * size[1]
    return ShiftEstimate(
        dy=dy,
        dx=dx,
        dy_m=dy_m,
        dx_m=dx_m,
        error=error,
        band=label,
        window=(int(win.col_off), int(win.row_off), int(win.width), int(win.height)),
        valid_fraction=frac,
    )


def _zmean(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(stack.shape[1:], dtype=np.float64)
    for band in stack:
        v = band[valid]
        sd = float(v.std()) if v.size else 0.0
        if sd > 0:
            out += (band - v.mean()) / sd
    return out / len(stack)
