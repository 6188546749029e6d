"""Normalisation and chip sampling over in-memory scenes (torch ``Dataset``).

Real change is rare (1-5 % of OSCD or AirChange pixels), so uniformly drawn chips are mostly empty.
:class:`ChipDataset` draws, each epoch, a set fraction of chips around changed pixels (*positive-aware sampling*;
the changed pixel lands anywhere in the central half of the chip) and the rest uniformly over the scenes (weighted by
their valid area, at least ``min_valid`` of each chip valid). Chip positions are drawn from a ``numpy.random.Generator``
seeded with ``(seed, epoch)`` and each chip's augmentation from ``(seed, epoch, index)``, so an epoch is reproducible
whatever the number of DataLoader workers.

Normalisation follows the checkpoint convention (``normalization`` in :class:`~changedet.models.checkpoint.
CheckpointMeta`): ``"scene"`` z-scores each date per band with its own statistics over its valid pixels (Daudt et
al.), ``"fixed"`` uses one mean/std per band for every scene. Invalid pixels are set to 0 after normalisation, as the
inference does. Each scene is normalised once and cached in memory.

>>> from changedet.data.sampling import ChipDataset, prepare_scenes  # doctest: +SKIP
>>> prepared = prepare_scenes(scenes, normalization={"mode": "scene"}, chip_size=96)  # doctest: +SKIP
>>> ds = ChipDataset(prepared, chip_size=96, chips_per_epoch=512, positive_fraction=0.5)  # doctest: +SKIP
>>> ds.set_epoch(0); before, after, label, valid = ds[0]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from changedet.data.augment import Augment
from changedet.data.generic import Scene
from changedet.errors import InputError

__all__ = [
    "ChipDataset",
    "PreparedScene",
    "band_statistics",
    "fixed_statistics",
    "normalize_array",
    "parse_normalization",
    "prepare_scenes",
]


def band_statistics(array: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of a (band, row, col) array over its valid, finite pixels.

    A band without spread gets std 1 (so normalising never divides by zero). This is the array form of
    ``changedet.io.radiometry.band_stats``, used on in-memory training scenes.
    """
    array = np.asarray(array, dtype=np.float32)
    mask = np.isfinite(array).all(axis=0)
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    if not mask.any():
        raise InputError("no valid pixel to compute band statistics from")
    values = array[:, mask].astype(np.float64)
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    std = np.where(std > 1e-12, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize_array(
    array: np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """``(array - mean) / std`` per band (float32), invalid/non-finite pixels set to 0.

    Uses ``changedet.io.radiometry.normalize``, the function the inference uses.
    """
    from changedet.io.radiometry import normalize

    out = np.asarray(normalize(array, np.asarray(mean, np.float32), np.asarray(std, np.float32)), dtype=np.float32)
    out = np.where(np.asarray(valid, dtype=bool)[None] & np.isfinite(out), out, np.float32(0.0))
    return np.ascontiguousarray(out, dtype=np.float32)


def fixed_statistics(scenes: Sequence[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """One mean/std per band pooled over both dates of every scene (valid pixels only), for ``"fixed"`` mode."""
    if not scenes:
        raise InputError("no scene to compute fixed normalisation statistics from")
    count = 0
    total = np.zeros(scenes[0].count, dtype=np.float64)
    total_sq = np.zeros_like(total)
    for scene in scenes:
        for arr in (scene.before, scene.after):
            values = arr[:, scene.valid].astype(np.float64)
            total += values.sum(axis=1)
            total_sq += np.square(values).sum(axis=1)
            count += values.shape[1]
    if count == 0:
        raise InputError("the scenes hold no valid pixel")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-12, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class PreparedScene:
    """A scene normalised once and padded to at least the chip size, ready for fast chip slicing.

    ``positives`` holds the flat indices of valid changed pixels; ``valid_integral`` is the summed-area table of
    ``valid`` (shape (H+1, W+1)) used to reject chips with too few valid pixels in O(1).
    """

    name: str
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray
    valid: np.ndarray
    positives: np.ndarray
    valid_integral: np.ndarray
    stats: dict[str, list[float]]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.valid.shape[0]), int(self.valid.shape[1])

    def valid_count(self, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
        s = self.valid_integral
        return s[rows + size, cols + size] - s[rows, cols + size] - s[rows + size, cols] + s[rows, cols]


_NORMALIZATION_KEYS = ("mode", "mean", "std")


def parse_normalization(normalization: Any) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """(mode, mean or None, std or None) of a ``normalization`` value, checked: unknown keys, a mean without a std
    (or the reverse), statistics in ``scene`` mode and std values that are not > 0 are errors naming the problem."""
    if isinstance(normalization, str):
        normalization = {"mode": normalization}
    if not isinstance(normalization, Mapping):
        raise InputError(
            f"normalization must be 'scene', 'fixed' or a mapping {{mode: fixed, mean: [...], std: [...]}}, "
            f"got {normalization!r}"
        )
    unknown = sorted(str(k) for k in normalization if k not in _NORMALIZATION_KEYS)
    if unknown:
        raise InputError(
            f"unknown normalization key(s) {unknown}; known keys: {', '.join(_NORMALIZATION_KEYS)} "
            "(e.g. {mode: fixed, mean: [...], std: [...]})"
        )
    mode = normalization.get("mode", "scene")
    if mode not in ("scene", "fixed"):
        raise InputError(f"unknown normalization mode {mode!r}; choose 'scene' or 'fixed'")
    given: dict[str, np.ndarray | None] = {}
    for key in ("mean", "std"):
        value = normalization.get(key)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            given[key] = None  # absent (a checkpoint's scene entry holds empty lists)
            continue
        try:
            arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):
            arr = np.zeros((0, 0))
        if arr.ndim != 1 or not np.isfinite(arr).all():
            raise InputError(f"normalization {key} must be a list of numbers, one per band, got {value!r}")
        given[key] = arr.astype(np.float32)
    mean, std = given["mean"], given["std"]
    if mode == "scene" and (mean is not None or std is not None):
        raise InputError(
            "normalization mean/std are used only with mode: fixed (mode scene computes each date's own "
            "statistics); write {mode: fixed, mean: [...], std: [...]} or drop them"
        )
    if (mean is None) != (std is None):
        missing, present = ("std", "mean") if std is None else ("mean", "std")
        raise InputError(
            f"normalization {present} given without {missing}; give both (one value per band), or neither to "
            "compute them from the training scenes"
        )
    if std is not None and not (std > 0).all():
        raise InputError(f"normalization std values must be > 0, got {[float(v) for v in std]}")
    return mode, mean, std


def prepare_scenes(
    scenes: Sequence[Scene],
    *,
    normalization: dict[str, Any] | str = "scene",
    chip_size: int = 0,
) -> tuple[list[PreparedScene], dict[str, Any]]:
    """Normalise scenes once (cached float32 arrays) and pad them to at least ``chip_size``.

    Parameters
    ----------
    scenes : sequence of Scene
        Labelled scenes with the same bands.
    normalization : dict or str
        ``"scene"`` / ``{"mode": "scene"}``, or ``{"mode": "fixed", "mean": [...], "std": [...]}`` (one value per
        band, std > 0); ``{"mode": "fixed"}`` without statistics computes them from ``scenes``
        (:func:`fixed_statistics`). Other keys, a mean without a std (or the reverse) and statistics with mode
        ``scene`` raise :class:`~changedet.errors.InputError`.
    chip_size : int
        Scenes smaller than this are padded (with invalid pixels) at the bottom/right.

    Returns
    -------
    (list of PreparedScene, dict)
        The prepared scenes and the checkpoint ``normalization`` entry (``{"mode", "mean", "std"}``).
    """
    if not scenes:
        raise InputError("no scene given")
    names = scenes[0].band_names
    for s in scenes:
        if s.label is None:
            raise InputError(f"scene {s.name} has no label; training and validation need labelled scenes")
        if [b.upper() for b in s.band_names] != [b.upper() for b in names]:
            raise InputError(
                f"scene {s.name} has bands {s.band_names} but {scenes[0].name} has {names}; use the same bands"
            )
    mode, mean, std = parse_normalization(normalization)
    entry: dict[str, Any] = {"mode": mode, "mean": [], "std": []}
    if mode == "fixed":
        if mean is None or std is None:
            mean, std = fixed_statistics(scenes)
        if len(mean) != len(names) or len(std) != len(names):
            raise InputError(
                f"fixed normalization needs {len(names)} mean/std values (one per band: {', '.join(names)}), "
                f"got {len(mean)} mean and {len(std)} std values"
            )
        entry = {"mode": "fixed", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    prepared = []
    for s in scenes:
        if not s.valid.any():
            source = s.meta.get("label") or s.meta.get("before")
            raise InputError(
                f"scene {s.name}{f' ({source})' if source else ''}: no valid pixel (no pixel holds data in both "
                "dates and a known label); check its files' footprints and nodata, or leave the scene out"
            )
        if mode == "scene":
            mb, sb = band_statistics(s.before, s.valid)
            ma, sa = band_statistics(s.after, s.valid)
        else:
            mb = ma = mean  # type: ignore[assignment]
            sb = sa = std  # type: ignore[assignment]
        before = normalize_array(s.before, mb, sb, s.valid)
        after = normalize_array(s.after, ma, sa, s.valid)
        label = np.ascontiguousarray(s.label, dtype=np.uint8)
        valid = np.ascontiguousarray(s.valid, dtype=bool)
        h, w = valid.shape
        ph, pw = max(0, chip_size - h), max(0, chip_size - w)
        if ph or pw:
            before = np.pad(before, ((0, 0), (0, ph), (0, pw)))
            after = np.pad(after, ((0, 0), (0, ph), (0, pw)))
            label = np.pad(label, ((0, ph), (0, pw)))
            valid = np.pad(valid, ((0, ph), (0, pw)))
        integral = np.zeros((valid.shape[0] + 1, valid.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = valid.cumsum(axis=0).cumsum(axis=1)
        prepared.append(
            PreparedScene(
                name=s.name,
                before=before,
                after=after,
                label=label,
                valid=valid,
                positives=np.flatnonzero((label != 0) & valid),
                valid_integral=integral,
                stats={
                    "mean_before": [float(v) for v in mb],
                    "std_before": [float(v) for v in sb],
                    "mean_after": [float(v) for v in ma],
                    "std_after": [float(v) for v in sa],
                },
            )
        )
    return prepared, entry


class ChipDataset(Dataset):
    """Chips drawn from prepared scenes with positive-aware sampling and augmentation.

    ``ds[i]`` returns ``(before, after, label, valid)`` tensors: (C, s, s) float32, (C, s, s) float32,
    (1, s, s) float32 0/1 and (1, s, s) bool. Call :meth:`set_epoch` before each epoch to draw new positions.

    Parameters
    ----------
    scenes : sequence of PreparedScene
    chip_size : int
        Side of the square chips in pixels.
    chips_per_epoch : int
        Number of chips per epoch (``len(ds)``).
    positive_fraction : float
        Share of chips centred (within the central half) on a changed pixel; the rest are uniform.
    augment : Augment or None
    seed : int
    min_valid : float
        Minimum fraction of valid pixels in a uniformly drawn chip.
    """

    def __init__(
        self,
        scenes: Sequence[PreparedScene],
        *,
        chip_size: int,
        chips_per_epoch: int,
        positive_fraction: float = 0.5,
        augment: Augment | None = None,
        seed: int = 0,
        min_valid: float = 0.5,
    ) -> None:
        if not scenes:
            raise InputError("ChipDataset needs at least one scene")
        if chip_size < 8:
            raise InputError(f"chip_size must be at least 8 pixels, got {chip_size}")
        if chips_per_epoch < 1:
            raise InputError(f"chips_per_epoch must be >= 1, got {chips_per_epoch}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise InputError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        for s in scenes:
            if min(s.shape) < chip_size:
                raise InputError(f"scene {s.name} {s.shape} is smaller than chip_size {chip_size}; prepare it padded")
        self.scenes = list(scenes)
        self.chip_size = int(chip_size)
        self.chips_per_epoch = int(chips_per_epoch)
        self.positive_fraction = float(positive_fraction)
        self.augment = augment
        self.seed = int(seed)
        self.min_valid = float(min_valid)
        self._pos_counts = np.array([s.positives.size for s in self.scenes], dtype=np.int64)
        self._area = np.array([s.valid_integral[-1, -1] for s in self.scenes], dtype=np.float64)
        if self._area.sum() == 0:
            raise InputError("the scenes hold no valid pixel")
        self.epoch = -1
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.chips_per_epoch

    def _uniform(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.chip_size
        scene_idx = np.empty(n, dtype=np.int64)
        rows = np.empty(n, dtype=np.int64)
        cols = np.empty(n, dtype=np.int64)
        todo = np.arange(n)
        p = self._area / self._area.sum()
        need = self.min_valid * size * size
        for attempt in range(20):
            k = todo.size
            if k == 0:
                break
            si = rng.choice(len(self.scenes), size=k, p=p)
            hs = np.array([self.scenes[i].shape[0] for i in si])
            ws = np.array([self.scenes[i].shape[1] for i in si])
            r = (rng.random(k) * (hs - size + 1)).astype(np.int64)
            c = (rng.random(k) * (ws - size + 1)).astype(np.int64)
            ok = np.ones(k, dtype=bool)
            if attempt < 19:  # the last round accepts whatever it drew
                for i in np.unique(si):
                    sel = si == i
                    ok[sel] = self.scenes[i].valid_count(r[sel], c[sel], size) >= need
            scene_idx[todo[ok]], rows[todo[ok]], cols[todo[ok]] = si[ok], r[ok], c[ok]
            todo = todo[~ok]
        return scene_idx, rows, cols

    def _positive(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.chip_size
        total = int(self._pos_counts.sum())
        picks = rng.integers(total, size=n)
        bounds = np.cumsum(self._pos_counts)
        scene_idx = np.searchsorted(bounds, picks, side="right")
        within = picks - np.concatenate([[0], bounds[:-1]])[scene_idx]
        rows = np.empty(n, dtype=np.int64)
        cols = np.empty(n, dtype=np.int64)
        quarter = size // 4
        for j, (si, wi) in enumerate(zip(scene_idx, within, strict=True)):
            s = self.scenes[si]
            r, c = divmod(int(s.positives[wi]), s.shape[1])
            r0 = r - size // 2 + int(rng.integers(-quarter, quarter + 1))
            c0 = c - size // 2 + int(rng.integers(-quarter, quarter + 1))
            rows[j] = min(max(r0, 0), s.shape[0] - size)
            cols[j] = min(max(c0, 0), s.shape[1] - size)
        return scene_idx, rows, cols

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's chip positions (deterministic in ``(seed, epoch)``)."""
        if epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, int(epoch)])
        n_pos = round(self.positive_fraction * self.chips_per_epoch) if self._pos_counts.sum() else 0
        s1, r1, c1 = self._positive(rng, n_pos) if n_pos else (np.zeros(0, np.int64),) * 3
        s2, r2, c2 = self._uniform(rng, self.chips_per_epoch - n_pos)
        order = rng.permutation(self.chips_per_epoch)
        self._scene_idx = np.concatenate([s1, s2])[order]
        self._rows = np.concatenate([r1, r2])[order]
        self._cols = np.concatenate([c1, c2])[order]
        self.epoch = int(epoch)

    def positions(self) -> np.ndarray:
        """This epoch's chips as an (n, 3) array of (scene index, row, col) of their top-left pixels."""
        return np.stack([self._scene_idx, self._rows, self._cols], axis=1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.chips_per_epoch:
            raise IndexError(index)
        s = self.scenes[int(self._scene_idx[index])]
        r, c, k = int(self._rows[index]), int(self._cols[index]), self.chip_size
        before = s.before[:, r : r + k, c : c + k]
        after = s.after[:, r : r + k, c : c + k]
        label = s.label[r : r + k, c : c + k]
        valid = s.valid[r : r + k, c : c + k]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
            before, after, label, valid = self.augment(before, after, label, valid, rng)
        return (
            torch.from_numpy(np.ascontiguousarray(before, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(after, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)[None]),
            torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)[None]),
        )
