"""Chip augmentation for change detection (numpy, applied per chip).

Geometric transforms (flips, 90-degree rotations) are applied identically to both dates, the label and the valid
mask, so the pair stays aligned. A *date swap* exchanges BEFORE and AFTER: valid for symmetric change labels
("something changed here"), not for directional ones ("built-up appeared"). *Radiometric jitter* multiplies each band
of each date by its own gain in ``[1 - gain, 1 + gain]`` and adds its own offset drawn from ``N(0, offset)``, on the
normalised values; it teaches the network to ignore illumination and calibration differences between dates.

>>> import numpy as np
>>> aug = Augment(flips=True, rotations=True, date_swap=0.5, gain=0.1, offset=0.05)
>>> rng = np.random.default_rng(0)
>>> b, a = np.zeros((3, 8, 8), np.float32), np.ones((3, 8, 8), np.float32)
>>> lab, val = np.eye(8, dtype=np.uint8), np.ones((8, 8), bool)
>>> b2, a2, lab2, val2 = aug(b, a, lab, val, rng)
>>> b2.shape, int(lab2.sum())
((3, 8, 8), 8)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from changedet.errors import InputError

__all__ = ["Augment", "dihedral"]


def dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate the last two axes by ``k`` x 90 degrees, then flip left-right if ``flip`` (one of the 8 symmetries)."""
    out = np.rot90(array, k, axes=(-2, -1)) if k % 4 else array
    return out[..., ::-1] if flip else out


@dataclass(frozen=True)
class Augment:
    """Augmentation settings; calling the object augments one chip.

    Parameters
    ----------
    flips : bool
        Random left-right flip (with ``rotations`` this covers all 8 dihedral symmetries, so up-down flips too).
    rotations : bool
        Random rotation by 0, 90, 180 or 270 degrees.
    date_swap : float
        Probability of exchanging BEFORE and AFTER (0 disables; only for symmetric change labels).
    gain : float
        Half-width of the per-date, per-band multiplicative jitter (0 disables).
    offset : float
        Standard deviation of the per-date, per-band additive jitter, in normalised units (0 disables).
    """

    flips: bool = True
    rotations: bool = True
    date_swap: float = 0.0
    gain: float = 0.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.date_swap <= 1.0:
            raise InputError(f"augment date_swap must be a probability in [0, 1], got {self.date_swap}")
        if not 0.0 <= self.gain < 1.0:
            raise InputError(f"augment gain must be in [0, 1), got {self.gain}")
        if self.offset < 0:
            raise InputError(f"augment offset must be >= 0, got {self.offset}")

    @classmethod
    def from_config(cls, config: bool | dict[str, Any] | Augment | None) -> Augment | None:
        """Build from ``True`` (flips and rotations), ``False``/``None`` (no augmentation) or a dict of fields."""
        if isinstance(config, Augment):
            return config
        if config is None or config is False:
            return None
        if config is True:
            return cls()
        if isinstance(config, dict):
            unknown = set(config) - {"flips", "rotations", "date_swap", "gain", "offset"}
            if unknown:
                raise InputError(
                    f"unknown augment option(s) {sorted(unknown)}; known: flips, rotations, date_swap, gain, offset"
                )
            return cls(**config)
        raise InputError(f"augment must be true/false or a mapping of options, got {config!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(
        self,
        before: np.ndarray,
        after: np.ndarray,
        label: np.ndarray,
        valid: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Augment one chip: ``before``/``after`` (C, h, w) float32, ``label``/``valid`` (h, w).

        Returns new arrays (views where possible); the inputs are never modified in place.
        """
        k = int(rng.integers(4)) if self.rotations else 0
        flip = bool(rng.random() < 0.5) if self.flips else False
        if k or flip:
            before, after = dihedral(before, k, flip), dihedral(after, k, flip)
            label, valid = dihedral(label, k, flip), dihedral(valid, k, flip)
        if self.date_swap and rng.random() < self.date_swap:
            before, after = after, before
        if self.gain or self.offset:
            c = before.shape[0]
            gains = 1.0 + rng.uniform(-self.gain, self.gain, size=(2, c, 1, 1)) if self.gain else np.ones((2, c, 1, 1))
            offsets = rng.normal(0.0, self.offset, size=(2, c, 1, 1)) if self.offset else np.zeros((2, c, 1, 1))
            before = (before * gains[0] + offsets[0]).astype(np.float32)
            after = (after * gains[1] + offsets[1]).astype(np.float32)
        return before, after, label, valid
