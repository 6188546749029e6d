"""The training objective: the loss by name, online hard example mining, and the network-plus-loss module.

:func:`build_loss` turns the ``loss``, ``pos_weight`` and ``ohem`` settings of :func:`changedet.training.train` into
a loss module (:class:`OHEMLoss` for hard example mining, else :func:`changedet.losses.create_loss`);
``_auto_pos_weight`` derives the change-class weight from the chips of an epoch, and ``_LossStep`` binds the network
and its loss into one module for ``DistributedDataParallel``; ``METRIC_LOSSES`` names the losses computed on the
embeddings of metric models.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from changedet.data.sampling import ChipDataset
from changedet.errors import InputError

METRIC_LOSSES = ("contrastive", "triplet")  # losses on the embeddings of metric models


class OHEMLoss(nn.Module):
    """Online hard example mining: average a pixel loss over the hardest valid pixels of the batch only.

    Keeps the ``keep`` fraction (at least ``min_kept`` pixels) of valid pixels with the largest loss (Shrivastava et
    al. 2016, in the per-pixel form used for segmentation), so easy unchanged background stops dominating the
    gradient. Called like the losses of :mod:`changedet.losses`: ``loss(logits, target, valid)``.

    Parameters
    ----------
    kind : {"bce", "focal"}
        The per-pixel loss: BCE on logits weighted by ``pos_weight``, or focal (``gamma``, ``alpha``).
    keep : float
        Fraction of valid pixels kept, in (0, 1].
    min_kept : int
        Lower bound on the number of kept pixels.

    Examples
    --------
    >>> import torch
    >>> loss = OHEMLoss("bce", keep=0.5, min_kept=1)
    >>> logits = torch.tensor([[[[4.0, -4.0], [0.0, 0.0]]]])
    >>> target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    >>> round(float(loss(logits, target, torch.ones_like(target, dtype=torch.bool))), 4)  # the two 0.0 logits
    0.6931
    """

    def __init__(
        self,
        kind: str = "bce",
        *,
        keep: float = 0.25,
        min_kept: int = 1024,
        pos_weight: float | None = None,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
    ) -> None:
        super().__init__()
        if kind not in ("bce", "focal"):
            raise InputError(f"hard example mining needs a pixel-wise loss (bce or focal), not {kind!r}")
        if not 0.0 < keep <= 1.0:
            raise InputError(f"ohem keep fraction must be in (0, 1], got {keep}")
        self.kind = kind
        self.keep = float(keep)
        self.min_kept = int(min_kept)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight if pos_weight is not None else 1.0)))
        self.gamma = float(gamma)
        self.alpha = alpha

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss, same shape as ``logits``."""
        if self.kind == "bce":
            pos_weight: torch.Tensor = self.pos_weight  # type: ignore[assignment]
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = (1.0 - torch.exp(-bce)) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1.0 - self.alpha) * (1.0 - target))
        return loss

    def forward(self, output: Any, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = output[0] if isinstance(output, (tuple, list)) else output
        target = target.to(logits.dtype).reshape(logits.shape)
        mask = torch.ones_like(target, dtype=torch.bool) if valid is None else valid.reshape(logits.shape).bool()
        losses = self.pixel_loss(logits, target)[mask]
        n = losses.numel()
        if n == 0:
            return logits.sum() * 0.0
        k = min(n, max(self.min_kept, math.ceil(self.keep * n)))
        if k < n:
            losses = torch.topk(losses, k, sorted=False).values
        return losses.mean()



def build_loss(
    loss: str = "bce",
    *,
    pos_weight: float | None = None,
    ohem: float | None = None,
    ohem_min_kept: int = 1024,
    **loss_kwargs: Any,
) -> nn.Module:
    """Build the training loss by name (:func:`changedet.losses.create_loss`), optionally with hard example mining.

    Parameters
    ----------
    loss : str
        ``bce``, ``dice``, ``focal``, ``contrastive``, ``triplet`` or a ``+`` combination (``bce+dice``).
    pos_weight : float, optional
        Change-class weight of the BCE component.
    ohem : float, optional
        Keep only this fraction of the hardest pixels (``bce`` or ``focal`` only): :class:`OHEMLoss`.
    **loss_kwargs
        Component options: ``margin``, ``mining``, ``distance`` (metric losses), ``gamma``, ``alpha`` (focal),
        ``smooth`` (Dice), ``weights`` (of a combination).
    """
    if ohem:
        if loss not in ("bce", "focal"):
            raise InputError(f"ohem applies to the pixel losses bce and focal, not {loss!r}")
        allowed = {"gamma", "alpha"}
        unknown = set(loss_kwargs) - allowed
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)} for {loss} with ohem; known: gamma, alpha")
        try:
            return OHEMLoss(loss, keep=float(ohem), min_kept=ohem_min_kept, pos_weight=pos_weight, **loss_kwargs)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"cannot create the {loss} loss with ohem {ohem} and loss_kwargs {dict(loss_kwargs)}: "
                             f"{exc}; check their values") from exc
    from changedet.losses import create_loss

    kwargs = dict(loss_kwargs)
    if pos_weight is not None and "bce" in [p.strip() for p in loss.lower().split("+")]:
        kwargs["pos_weight"] = float(pos_weight)
    try:
        return create_loss(loss, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        # a value a loss cannot use (e.g. a word for a number) that train()'s checks did not catch
        raise InputError(f"cannot create loss {loss!r} with loss_kwargs {dict(loss_kwargs)}: {exc}; check the "
                         "values of loss_kwargs") from exc


class _LossStep(nn.Module):
    """Network and loss as one module, so ``DistributedDataParallel`` syncs the gradients of both.

    ``forward(before, after, target, valid)`` returns the batch loss; metric losses get the embeddings
    (``forward_with_embeddings``), which DDP could not see if it were called on the wrapped network directly.
    """

    def __init__(self, net: nn.Module, loss_fn: nn.Module, metric_loss: bool) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self.metric_loss = metric_loss

    def forward(self, before: torch.Tensor, after: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        if self.metric_loss:
            outputs = self.net.forward_with_embeddings(before, after)  # type: ignore[operator]
        else:
            outputs = self.net(before, after)
        loss: torch.Tensor = self.loss_fn(outputs, target, valid)
        return loss



def _auto_pos_weight(ds: ChipDataset, cap: float) -> float:
    pos = neg = 0
    scenes = ds.scenes
    k = ds.chip_size
    for si, r, c in ds.positions():
        s = scenes[int(si)]
        lab = s.label[r : r + k, c : c + k]
        val = s.valid[r : r + k, c : c + k]
        n_pos = int(np.count_nonzero(lab[val]))
        pos += n_pos
        neg += int(val.sum()) - n_pos
    if pos == 0:
        return 1.0
    return float(min(max(neg / pos, 1.0), cap))
