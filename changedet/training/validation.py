"""Whole-scene prediction and validation of a network during training.

:func:`predict_scene` runs a network over a normalised pair (in one pass, or overlap-tiled); ``_validate`` predicts
the validation scenes and pools their loss, ``_validate_sharded`` spreads them over the ranks of a distributed run,
and ``_val_row`` turns the predictions into the validation columns of ``metrics.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from changedet.data.sampling import PreparedScene
from changedet.ddp import DistContext, gather_to_main
from changedet.errors import InputError
from changedet.evaluation import confusion_matrix, f1_optimal_threshold, pool


def _windows(n: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) along one axis: tiles of ``tile`` overlapping by ``overlap``, centre parts kept."""
    if n <= tile:
        return [(0, 0, n)]
    if tile <= 2 * overlap:
        raise InputError(f"tile size {tile} must exceed twice the overlap ({overlap})")
    step = tile - 2 * overlap
    starts = [*range(0, n - tile, step), n - tile]
    out: list[tuple[int, int, int]] = []
    for i, s in enumerate(starts):
        keep_from = 0 if i == 0 else s + overlap
        keep_to = n if i == len(starts) - 1 else s + tile - overlap
        if i > 0:
            keep_from = max(keep_from, out[-1][2])
        out.append((s, keep_from, keep_to))
    return out



@torch.inference_mode()
def predict_scene(
    model: nn.Module,
    before: np.ndarray,
    after: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    tile_size: int = 1024,
    overlap: int = 64,
    channels_last: bool = True,
    output: str = "probability",
) -> np.ndarray:
    """Change scores (row, col) of a normalised (band, row, col) pair, in one pass or overlap-tiled.

    Scenes up to ``tile_size`` pixels on a side go through the network in one forward pass; larger ones are cut into
    tiles overlapping by ``2 * overlap`` pixels of which only the centres are kept, so tile borders never reach the
    output. The model is put in eval mode (and left so).

    Parameters
    ----------
    output : {"probability", "logits", "distance"}
        ``sigmoid(logits)``, the logits, or the embedding distance of a metric model (``model.distance_map``).
    """
    if output not in ("probability", "logits", "distance"):
        raise InputError(f"unknown output {output!r}; choose probability, logits or distance")
    model.eval()
    device = torch.device(device)
    _, h, w = before.shape
    out = np.empty((h, w), dtype=np.float32)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for r0, rk0, rk1 in _windows(h, tile_size, overlap):
        for c0, ck0, ck1 in _windows(w, tile_size, overlap):
            rs, cs = slice(r0, min(r0 + tile_size, h)), slice(c0, min(c0 + tile_size, w))
            tb = torch.from_numpy(np.ascontiguousarray(before[:, rs, cs]))[None].to(device).contiguous(memory_format=fmt)
            ta = torch.from_numpy(np.ascontiguousarray(after[:, rs, cs]))[None].to(device).contiguous(memory_format=fmt)
            if output == "distance":
                score = model.distance_map(tb, ta).float()  # type: ignore[operator]
            else:
                score = model(tb, ta).float()
                if output == "probability":
                    score = torch.sigmoid(score)
            tile = score[0, 0].cpu().numpy()
            out[rk0:rk1, ck0:ck1] = tile[rk0 - r0 : rk1 - r0, ck0 - c0 : ck1 - c0]
    return out



def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)



def _validate_parts(
    model: nn.Module,
    val: Sequence[PreparedScene],
    loss_fn: nn.Module | None,
    device: torch.device,
    tile_size: int,
    metric: bool,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Per validation scene: (score, probability, loss x valid pixels, valid pixels; 0.0, 0.0 without a loss)."""
    out = []
    for s in val:
        logits = predict_scene(model, s.before, s.after, device=device, tile_size=tile_size, output="logits")
        prob = _sigmoid(logits)
        score = (
            predict_scene(model, s.before, s.after, device=device, tile_size=tile_size, output="distance")
            if metric
            else prob
        )
        loss_sum, n = 0.0, 0.0
        if loss_fn is not None:
            with torch.inference_mode():
                target = torch.from_numpy(s.label.astype(np.float32))[None, None].to(device)
                valid = torch.from_numpy(s.valid)[None, None].to(device)
                n = float(s.valid.sum())
                loss_sum = float(loss_fn(torch.from_numpy(logits)[None, None].to(device), target, valid)) * n
        out.append((score, prob, loss_sum, n))
    return out



def _pool_parts(
    parts: Sequence[tuple[np.ndarray, np.ndarray, float, float]],
) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    losses, weights = 0.0, 0.0
    for _, _, loss_sum, n in parts:  # in scene order: the same sums whatever the number of processes
        losses += loss_sum
        weights += n
    return [p[0] for p in parts], [p[1] for p in parts], (losses / weights if weights else None)



def _validate(
    model: nn.Module,
    val: Sequence[PreparedScene],
    loss_fn: nn.Module | None,
    device: torch.device,
    tile_size: int,
    metric: bool,
) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    """Predict whole validation scenes: (scores, probabilities, mean loss over valid pixels or None).

    Scores are the probabilities, or for metric models the embedding distances (their calibration is set only at
    the end, and a threshold search on the distance is independent of it).
    """
    return _pool_parts(_validate_parts(model, val, loss_fn, device, tile_size, metric))



def _validate_sharded(
    model: nn.Module,
    val: Sequence[PreparedScene],
    loss_fn: nn.Module | None,
    device: torch.device,
    tile_size: int,
    metric: bool,
    ctx: DistContext | None,
    owners: Sequence[int],
) -> tuple[list[np.ndarray], list[np.ndarray], float | None] | None:
    """:func:`_validate`, each rank predicting the scenes it owns; the pooled result on rank 0, None elsewhere.

    Every rank holds the same weights, so a scene's prediction does not depend on the rank that makes it, and rank
    0 pools the scenes in their order: the metrics are those of a single process.
    """
    if ctx is None:
        return _validate(model, val, loss_fn, device, tile_size, metric)
    mine = [i for i, r in enumerate(owners) if r == ctx.rank]
    local = dict(zip(mine, _validate_parts(model, [val[i] for i in mine], loss_fn, device, tile_size, metric),
                     strict=True))
    gathered = gather_to_main(local, ctx)
    if gathered is None:
        return None
    merged: dict[int, tuple[np.ndarray, np.ndarray, float, float]] = {}
    for part in gathered:
        merged.update(part)
    return _pool_parts([merged[i] for i in range(len(val))])



def _val_row(scores: list[np.ndarray], probs: list[np.ndarray], val: Sequence[PreparedScene]) -> dict[str, Any]:
    labels = [s.label for s in val]
    valids = [s.valid for s in val]
    cm = pool(confusion_matrix(p >= 0.5, t, v) for p, t, v in zip(probs, labels, valids, strict=True))
    best_t, best_f1 = f1_optimal_threshold(scores, labels, valids)

    def clean(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(float(x), 6)

    return {
        "val_precision": clean(cm.precision),
        "val_recall": clean(cm.recall),
        "val_f1": clean(cm.f1),
        "val_iou": clean(cm.iou),
        "val_kappa": clean(cm.kappa),
        "val_f1_best": clean(best_f1),
        "val_threshold_best": clean(best_t),
    }
