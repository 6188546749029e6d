"""Predictors: turn a batch of tiles into change probabilities for the engine of :mod:`changedet.inference`.

* :class:`TilePredictor` is the protocol the engine calls (``predict(before, after, valid)`` and ``multiple``);
* :class:`TorchPredictor` wraps a Siamese network with its checkpoint's band normalisation, ``torch.inference_mode``,
  channels-last memory format, optional bf16, reflection padding up to the model's ``required_multiple`` and optional
  test-time augmentation (:data:`TTA_MODES`, :func:`parse_tta`, :func:`tta_transforms`);
* :class:`ScorerPredictor` wraps a fitted unsupervised scorer (CVA, IR-MAD, DSFA; see :mod:`changedet.unsupervised`).

All of them are re-exported by :mod:`changedet.inference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from changedet.errors import InputError

__all__ = ["TTA_MODES", "ScorerPredictor", "TilePredictor", "TorchPredictor", "parse_tta", "tta_transforms"]


class TilePredictor(Protocol):
    """Turns a batch of tiles into change probabilities.

    ``predict(before, after, valid)`` takes float32 arrays (N, C, h, w) of raw (un-normalised) pixel values and a
    boolean validity mask (N, h, w), and returns float32 probabilities (N, h, w) in [0, 1]. ``multiple``: the engine
    sizes tiles and spaces their starts in multiples of it (a network's downsampling factor, so that every tile
    pools on the same pixel phase as a whole-image pass; 1 for per-pixel methods).
    """

    multiple: int
    name: str

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray: ...



#: Test-time augmentation modes of :class:`TorchPredictor` (``--tta``), with the number of forward passes per tile.
TTA_MODES = {"none": 1, "flip": 4, "d4": 8, "swap": 2, "flip+swap": 8, "d4+swap": 16}


def parse_tta(mode: str | None) -> str:
    """The canonical name of a test-time augmentation mode (``"swap+flip"`` -> ``"flip+swap"``; None -> ``"none"``).

    Raises :class:`~changedet.errors.InputError` for anything not in :data:`TTA_MODES`.
    """
    key = "none" if mode is None else str(mode).lower().replace(" ", "")
    parts = key.split("+")
    canonical = "+".join(p for p in ("flip", "d4", "swap") if p in parts)
    if key != "none" and (canonical not in TTA_MODES or len(parts) != len(set(parts))
                          or set(parts) - {"flip", "d4", "swap"}):
        raise InputError(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return canonical or "none"


def tta_transforms(mode: str) -> list[tuple[int, bool, bool]]:
    """The views of a test-time augmentation mode, as ``(quarter turns, mirrored, dates swapped)``.

    ``"flip"``: the tile, mirrored left-right, turned 180 degrees, and mirrored top-bottom (the four symmetries that
    keep a rectangle's shape); ``"d4"``: all eight rotations and reflections of the square; ``"swap"``: each view
    also with BEFORE and AFTER exchanged (change is symmetric in time; the bundled models are trained with date
    swaps). ``"none"`` is the identity alone.

    >>> tta_transforms("flip+swap")[:3]
    [(0, False, False), (0, False, True), (0, True, False)]
    >>> len(tta_transforms("d4"))
    8
    """
    parts = parse_tta(mode).split("+")
    geometry = ([(k, m) for k in range(4) for m in (False, True)] if "d4" in parts
                else [(0, False), (0, True), (2, False), (2, True)] if "flip" in parts else [(0, False)])
    swaps = (False, True) if "swap" in parts else (False,)
    return [(k, m, s) for k, m in geometry for s in swaps]


class TorchPredictor:
    """A Siamese network applied tile by tile (an eval-mode copy with batch norm folded into the convolutions).

    Parameters
    ----------
    model
        A changedet model (``forward(before, after) -> logits (N,1,H,W)``).
    mean_before, std_before, mean_after, std_after
        Per-band normalisation of each date (from the checkpoint for ``"fixed"`` normalisation, or per-scene
        statistics for ``"scene"``); each a 1-D sequence of length C.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision
        ``"float32"`` or ``"bf16"`` (the whole model in bfloat16; faster on CPUs with AVX-512 bf16 and on GPUs).
    tta
        Test-time augmentation (:data:`TTA_MODES`, :func:`tta_transforms`): the probability is the mean over the
        views of each tile, each mapped back onto the tile; costs one forward pass per view. ``"none"`` (default).
    """

    def __init__(
        self,
        model: Any,
        mean_before: Sequence[float],
        std_before: Sequence[float],
        mean_after: Sequence[float],
        std_after: Sequence[float],
        *,
        device: str = "cpu",
        precision: str = "float32",
        name: str = "model",
        tta: str = "none",
    ) -> None:
        import torch

        if precision not in ("float32", "bf16"):
            raise InputError(f"unknown precision {precision!r}; choose float32 or bf16")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        from changedet.models import flush_denormals, optimize_for_inference

        self._flush_denormals = flush_denormals

        self.model = optimize_for_inference(model, dtype=self.dtype, channels_last=True).to(self.device)
        # Tiles are sized, and their starts spaced, in multiples of the network's downsampling factor (its
        # pad_multiple, 16 for the FC models): then every tile pools on the same pixel phase as a whole-image pass.
        # On OSCD beirut, tiles of 415 px (multiples of 1) changed 556 (s2-13band) and 361 (s2-rgb) mask pixels
        # against one whole-image pass, tiles of 416 px 3 and 37 (scripts/seam_check.py).
        self.multiple = max(int(getattr(model, "required_multiple", 1)), int(getattr(model, "pad_multiple", 1)))
        pair_dim = getattr(model, "pair_dim", None)
        self._pair_dim = pair_dim if pair_dim in (0, 1) else None
        self.name = name
        self.tta = parse_tta(tta)
        self._views = tta_transforms(self.tta)

        def _stat(v: Sequence[float] | np.ndarray) -> Any:
            return torch.as_tensor(np.asarray(v, dtype=np.float32)).view(1, -1, 1, 1).to(self.device)

        std_b = np.where(np.asarray(std_before, np.float32) > 0, std_before, 1.0)
        std_a = np.where(np.asarray(std_after, np.float32) > 0, std_after, 1.0)
        self._mb, self._sb = _stat(mean_before), _stat(std_b)
        self._ma, self._sa = _stat(mean_after), _stat(std_a)
        # (x - mean) / std as one fused x * scale + shift into the channels-last tensor: half the memory passes
        self._norm_b = (1.0 / self._sb, -self._mb / self._sb)
        self._norm_a = (1.0 / self._sa, -self._ma / self._sa)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state (the model and the normalisation), so that a predictor can be sent to Dask workers."""
        return {
            "model": self.model,
            "stats": [t.detach().cpu().numpy().ravel() for t in (self._mb, self._sb, self._ma, self._sa)],
            "device": str(self.device),
            "precision": "bf16" if self.dtype == self.torch.bfloat16 else "float32",
            "name": self.name,
            "tta": self.tta,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], *state["stats"], device=state["device"],  # type: ignore[misc]
                      precision=state["precision"], name=state["name"], tta=state.get("tta", "none"))

    def _prep(self, before: np.ndarray, after: np.ndarray, dim: int | None,
              valid: np.ndarray | None = None) -> tuple[Any, Any]:
        """Both dates as normalised channels-last tensors of the model's dtype; non-finite values and the pixels
        that ``valid`` (n, h, w) rules out become 0 after normalisation (each date's mean, as training fills them),
        so that nodata looks the same in both dates instead of two different raw fill values.

        With ``dim`` (the model's ``pair_dim``) they share one buffer, AFTER right after BEFORE along it, so that the
        model joins them without a copy (:func:`changedet.models.cat_pair`); with None they are two tensors.
        """
        torch = self.torch
        n, c, h, w = before.shape
        shape = (n, c, h, w) if dim is None else (2 * n, c, h, w) if dim == 0 else (n, 2 * c, h, w)

        def empty() -> Any:
            return torch.empty(shape, dtype=torch.float32, device=self.device, memory_format=torch.channels_last)

        if dim is None:
            bufs = [empty(), empty()]
            parts = bufs
        else:
            bufs = [empty()]
            parts = [bufs[0][:n], bufs[0][n:]] if dim == 0 else [bufs[0][:, :c], bufs[0][:, c:]]
        for x, (scale, shift), part in zip((before, after), (self._norm_b, self._norm_a), parts, strict=True):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            torch.addcmul(shift, t, scale, out=part)  # (x - mean) / std in one pass
        for buf in bufs:
            buf.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        if valid is not None and not valid.all():
            keep = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32)[:, None]).to(self.device)
            for part in parts:
                part.mul_(keep)
        if dim is None:
            return bufs[0].to(self.dtype), bufs[1].to(self.dtype)  # .to keeps channels-last
        joint = bufs[0].to(self.dtype)
        return (joint[:n], joint[n:]) if dim == 0 else (joint[:, :c], joint[:, c:])

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        torch = self.torch
        _n, _c, h, w = before.shape
        with torch.inference_mode(), self._flush_denormals():
            # the views of test-time augmentation are transformed one date at a time: no joint buffer for them
            tb, ta = self._prep(before, after, self._pair_dim if len(self._views) == 1 else None, valid)
            ph, pw = (-h) % self.multiple, (-w) % self.multiple
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                tb = torch.nn.functional.pad(tb, (0, pw, 0, ph), mode=mode)
                ta = torch.nn.functional.pad(ta, (0, pw, 0, ph), mode=mode)
            if len(self._views) == 1:
                prob = torch.sigmoid(self.model(tb, ta).float())
            else:
                prob = self._augmented(tb, ta)
            return prob[:, 0, :h, :w].cpu().numpy()

    def _augmented(self, tb: Any, ta: Any) -> Any:
        """Mean probability over the test-time augmentation views, each mapped back onto the tile."""
        torch = self.torch
        total: Any = None
        for turns, mirrored, swapped in self._views:
            views = []
            for t in (ta, tb) if swapped else (tb, ta):
                v = t.flip(-1) if mirrored else t
                v = torch.rot90(v, turns, (-2, -1)) if turns else v
                views.append(v.contiguous(memory_format=torch.channels_last))
            p = torch.sigmoid(self.model(*views).float())
            p = torch.rot90(p, -turns, (-2, -1)) if turns else p
            p = p.flip(-1) if mirrored else p
            total = p if total is None else total.add_(p)
        return total / len(self._views)


class ScorerPredictor:
    """A fitted unsupervised scorer (``predict(before, after, valid) -> (h, w)``) used tile by tile."""

    multiple = 1

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.name = str(getattr(scorer, "name", type(scorer).__name__))

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.stack(
            [np.asarray(self.scorer.predict(b, a, v), dtype=np.float32) for b, a, v in zip(before, after, valid, strict=True)]
        )
