"""Losses for change detection (torch only).

Every loss is called as ``loss(output, target, valid=None)``:

- ``output``: change logits (N, 1, H, W) from ``model(before, after)``, or the tuple
  ``(logits, emb_before, emb_after)`` from ``model.forward_with_embeddings`` (metric models; embeddings are
  (N, D, H, W)). The contrastive loss also accepts a distance map (N, 1, H, W) directly. Logit losses given a tuple
  use its first element, so ``"contrastive+bce"`` works on a metric model.
- ``target``: (N, 1, H, W) or (N, H, W), 0 = unchanged, 1 = changed, ``ignore_index`` (255) = unknown. Pixels with
  the ignore value contribute nothing to any numerator or denominator.
- ``valid``: optional bool mask of the same spatial shape; False pixels (nodata in either date) are ignored too.

A batch without any usable pixel gives a loss of exactly 0 that still backpropagates (zero gradients), never NaN.

Losses: :class:`BCELoss` (weighted by ``pos_weight``), :class:`DiceLoss`, :class:`FocalLoss` (Lin et al. 2017),
:class:`CombinedLoss` (weighted sums), :class:`ContrastiveLoss` (pixel-wise, batch-balanced, Hadsell et al. 2006 /
STANet's BCL), :class:`TripletLoss` (BEFORE anchors, unchanged AFTER positives, changed AFTER negatives, with hard,
semi-hard or all mining). Build them by name with :func:`create_loss`:

>>> import torch
>>> loss = create_loss("bce+dice", pos_weight=5.0)
>>> logits = torch.zeros(1, 1, 4, 4)
>>> target = torch.zeros(1, 1, 4, 4, dtype=torch.uint8); target[..., 0, 0] = 1; target[..., 3, 3] = 255
>>> round(float(loss(logits, target)), 4)
1.6675
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from changedet.errors import InputError

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "BCELoss",
    "CombinedLoss",
    "ContrastiveLoss",
    "DiceLoss",
    "FocalLoss",
    "TripletLoss",
    "create_loss",
    "feature_distance",
]

#: Target value of pixels whose label is unknown.
IGNORE_INDEX = 255

Output = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


def feature_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "l2", dim: int = 1,
                     keepdim: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Distance between feature vectors along ``dim``: ``"l1"``, ``"l2"`` or ``"cosine"`` (``1 - cos``).

    Identical inputs give exactly 0 for l1/l2 (and a finite zero gradient: the square root is guarded), and 0 up to
    rounding for cosine, including all-zero vectors (``(a.b + eps) / (|a||b| + eps)``).

    >>> a = torch.tensor([[3.0, 0.0]]); b = torch.tensor([[0.0, 4.0]])
    >>> [round(float(feature_distance(a, b, m, dim=1, keepdim=False)), 4) for m in ("l1", "l2", "cosine")]
    [7.0, 5.0, 1.0]
    """
    if metric == "l1":
        return torch.sum(torch.abs(a - b), dim=dim, keepdim=keepdim)
    if metric == "l2":
        sq = torch.sum((a - b) ** 2, dim=dim, keepdim=keepdim)
        positive = sq > 0
        return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))),
                           torch.zeros_like(sq))
    if metric == "cosine":
        dot = torch.sum(a * b, dim=dim, keepdim=keepdim)
        norm = torch.linalg.vector_norm(a, dim=dim, keepdim=keepdim) * torch.linalg.vector_norm(b, dim=dim,
                                                                                                 keepdim=keepdim)
        return torch.clamp(1.0 - (dot + eps) / (norm + eps), min=0.0, max=2.0)
    raise InputError(f"unknown distance {metric!r}; choose 'l1', 'l2' or 'cosine'")


def _logits(output: Output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _prepare(reference: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
             ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(target as float 0/1 shaped like reference, bool mask of usable pixels)``."""
    if target.ndim == reference.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape != reference.shape:
        raise InputError(f"target shape {tuple(target.shape)} does not match the output {tuple(reference.shape)}")
    mask = target != ignore_index
    if valid is not None:
        if valid.ndim == reference.ndim - 1:
            valid = valid.unsqueeze(1)
        if valid.shape != reference.shape:
            raise InputError(f"valid mask shape {tuple(valid.shape)} does not match the output "
                             f"{tuple(reference.shape)}")
        mask = mask & valid.bool()
    t = torch.where(mask, target, torch.zeros_like(target)).to(reference.dtype)
    if bool(((t != 0) & (t != 1)).any()):
        raise InputError(f"target values must be 0 (unchanged), 1 (changed) or {ignore_index} (ignored); found "
                         f"{sorted({float(v) for v in torch.unique(t)})}")
    return t, mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / n.clamp_min(1).to(values.dtype)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over usable pixels.

    Parameters
    ----------
    pos_weight : float, optional
        Weight of the changed class (e.g. ``n_unchanged / n_changed`` for rare changes).
    ignore_index : int
        Target value of pixels to ignore (255).
    """

    def __init__(self, pos_weight: float | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.ignore_index = ignore_index

    def forward(self, output: Output, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = _logits(output)
        t, mask = _prepare(logits, target, valid, self.ignore_index)
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, dtype=logits.dtype,
                                                                device=logits.device)
        values = F.binary_cross_entropy_with_logits(logits, t, pos_weight=pw, reduction="none")
        return _masked_mean(values, mask)


class DiceLoss(nn.Module):
    """Soft Dice loss ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` over the usable pixels of the batch.

    Parameters
    ----------
    smooth : float
        Additive smoothing; keeps the loss defined (and 0 for a correct all-unchanged prediction) when a batch has no
        change.
    ignore_index : int
        Target value of pixels to ignore (255).
    """

    def __init__(self, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if smooth < 0:
            raise InputError(f"Dice smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.ignore_index = ignore_index

    def forward(self, output: Output, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = _logits(output)
        t, mask = _prepare(logits, target, valid, self.ignore_index)
        p = torch.where(mask, torch.sigmoid(logits), torch.zeros_like(logits))
        inter = (p * t).sum()
        denom = p.sum() + t.sum()
        return 1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth).clamp_min(1e-12)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., ICCV 2017), averaged over usable pixels (uses ``torchvision.ops``).

    Parameters
    ----------
    alpha : float or None
        Weight of the changed class in [0, 1] (0.25 in the paper); None disables class weighting.
    gamma : float
        Focusing parameter (2.0).
    ignore_index : int
        Target value of pixels to ignore (255).
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise InputError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        self.alpha = -1.0 if alpha is None else float(alpha)
        self.gamma = float(gamma)
        self.ignore_index = ignore_index

    def forward(self, output: Output, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        logits = _logits(output)
        t, mask = _prepare(logits, target, valid, self.ignore_index)
        values = sigmoid_focal_loss(logits, t, alpha=self.alpha, gamma=self.gamma, reduction="none")
        return _masked_mean(values, mask)


class ContrastiveLoss(nn.Module):
    """Pixel-wise contrastive loss on a distance map, balanced between changed and unchanged pixels.

    ``loss = 0.5 * mean_unchanged(d^2) + 0.5 * mean_changed(max(0, margin - d)^2)`` where each mean runs over the
    usable pixels of its class in the batch (Hadsell, Chopra, LeCun, CVPR 2006; batch-balanced as STANet's BCL,
    Chen & Shi 2020). A class absent from the batch contributes 0 (its count is clamped to 1, there is no epsilon in
    the denominators), and ignored pixels are absent from both numerators and denominators.

    Parameters
    ----------
    margin : float
        Distance beyond which changed pixels stop contributing.
    distance : {"l2", "l1", "cosine"}
        Used only when ``output`` is ``(logits, emb_before, emb_after)``; must match the model's distance.
    ignore_index : int
        Target value of pixels to ignore (255).

    Examples
    --------
    >>> d = torch.tensor([[[[0.5, 0.2, 3.0]]]])
    >>> y = torch.tensor([[[[0, 1, 255]]]])
    >>> round(float(ContrastiveLoss(margin=1.0)(d, y)), 6)  # 0.5 * 0.25 + 0.5 * 0.8**2
    0.445
    """

    def __init__(self, margin: float = 1.0, distance: Literal["l1", "l2", "cosine"] = "l2",
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if margin <= 0:
            raise InputError(f"contrastive margin must be > 0, got {margin}")
        self.margin = float(margin)
        self.distance = distance
        self.ignore_index = ignore_index

    def forward(self, output: Output, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            _, emb_before, emb_after = output
            dist = feature_distance(emb_before, emb_after, self.distance, dim=1, keepdim=True)
        else:
            dist = output
        t, mask = _prepare(dist, target, valid, self.ignore_index)
        changed = mask & (t > 0.5)
        unchanged = mask & (t < 0.5)
        pull = _masked_mean(dist**2, unchanged)
        push = _masked_mean(torch.clamp(self.margin - dist, min=0.0) ** 2, changed)
        return 0.5 * pull + 0.5 * push


class TripletLoss(nn.Module):
    """Pixel triplet loss: BEFORE anchors, unchanged AFTER positives, changed AFTER negatives.

    For an unchanged usable pixel ``p``: anchor ``a = emb_before[p]``, positive ``emb_after[p]`` (the same place,
    which did not change) and negatives ``emb_after[q]`` at changed usable pixels ``q`` of the same image. The loss
    per triplet is ``max(0, d(a, pos) - d(a, neg) + margin)``:

    - ``mining="hard"``: for each anchor, the closest negative (the hardest);
    - ``mining="semi-hard"``: the closest negative farther than the positive (FaceNet, Schroff et al. 2015), falling
      back to the hardest negative when none is;
    - ``mining="all"``: every (anchor, negative) pair, averaged over the pairs with a positive loss ("batch all").

    At most ``max_anchors`` anchors and ``max_negatives`` negatives are sampled per image (uniformly, with
    ``generator`` if given), so memory stays bounded on large tiles. Images without a changed or an unchanged usable
    pixel give no triplet; a batch without triplets gives 0.

    Parameters
    ----------
    margin : float
        Required gap between negative and positive distances.
    mining : {"hard", "semi-hard", "all"}
        Negative selection (see above).
    distance : {"l2", "l1", "cosine"}
        Distance between embeddings (should match the model's).
    max_anchors, max_negatives : int
        Per-image sampling bounds.
    ignore_index : int
        Target value of pixels to ignore (255).
    generator : torch.Generator, optional
        For reproducible sampling.
    """

    def __init__(self, margin: float = 0.5, mining: Literal["hard", "semi-hard", "all"] = "hard",
                 distance: Literal["l1", "l2", "cosine"] = "l2", max_anchors: int = 512, max_negatives: int = 512,
                 ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if mining not in ("hard", "semi-hard", "all"):
            raise InputError(f"triplet mining must be 'hard', 'semi-hard' or 'all', got {mining!r}")
        if margin < 0:
            raise InputError(f"triplet margin must be >= 0, got {margin}")
        if max_anchors < 1 or max_negatives < 1:
            raise InputError("max_anchors and max_negatives must be >= 1")
        self.margin = float(margin)
        self.mining = mining
        self.distance = distance
        self.max_anchors = int(max_anchors)
        self.max_negatives = int(max_negatives)
        self.ignore_index = ignore_index
        self.generator = generator

    def _sample(self, idx: torch.Tensor, k: int) -> torch.Tensor:
        if idx.numel() <= k:
            return idx
        perm = torch.randperm(idx.numel(), generator=self.generator)[:k].to(idx.device)
        return idx[perm]

    def forward(self, output: Output, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(output, (tuple, list)) or len(output) != 3:
            raise InputError("TripletLoss needs (logits, emb_before, emb_after) from model.forward_with_embeddings")
        _, emb_before, emb_after = output
        t, mask = _prepare(emb_before[:, :1], target, valid, self.ignore_index)
        n, d = emb_before.shape[:2]
        eb = emb_before.reshape(n, d, -1)
        ea = emb_after.reshape(n, d, -1)
        t, mask = t.reshape(n, -1), mask.reshape(n, -1)
        losses: list[torch.Tensor] = []
        for i in range(n):
            pos_idx = self._sample(torch.nonzero(mask[i] & (t[i] < 0.5)).squeeze(1), self.max_anchors)
            neg_idx = self._sample(torch.nonzero(mask[i] & (t[i] > 0.5)).squeeze(1), self.max_negatives)
            if pos_idx.numel() == 0 or neg_idx.numel() == 0:
                continue
            anchors = eb[i][:, pos_idx].T  # (A, D)
            positives = ea[i][:, pos_idx].T  # (A, D)
            negatives = ea[i][:, neg_idx].T  # (B, D)
            d_ap = feature_distance(anchors, positives, self.distance, dim=1, keepdim=True)  # (A, 1)
            d_an = feature_distance(anchors[:, None, :], negatives[None, :, :], self.distance, dim=2,
                                    keepdim=False)  # (A, B)
            if self.mining == "all":
                values = torch.clamp(d_ap - d_an + self.margin, min=0.0).flatten()
                losses.append(values)
                continue
            if self.mining == "hard":
                chosen = d_an.min(dim=1, keepdim=True).values
            else:
                farther = d_an > d_ap
                semi = torch.where(farther, d_an, torch.full_like(d_an, math.inf)).min(dim=1, keepdim=True).values
                chosen = torch.where(torch.isfinite(semi), semi, d_an.min(dim=1, keepdim=True).values)
            losses.append(torch.clamp(d_ap - chosen + self.margin, min=0.0).flatten())
        zero = (emb_before.sum() + emb_after.sum()) * 0.0
        if not losses:
            return zero
        values = torch.cat(losses)
        if self.mining == "all":
            active = values > 0
            return zero + torch.where(active, values, torch.zeros_like(values)).sum() / active.sum().clamp_min(1)
        return zero + values.mean()


class CombinedLoss(nn.Module):
    """Weighted sum of losses: ``sum_i weight_i * loss_i(output, target, valid)``.

    >>> loss = CombinedLoss([BCELoss(pos_weight=2.0), DiceLoss()], weights=[1.0, 0.5])
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not losses:
            raise InputError("CombinedLoss needs at least one loss")
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if len(weights) != len(losses):
            raise InputError(f"{len(losses)} losses but {len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, output: Output, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        total = self.weights[0] * self.losses[0](output, target, valid)
        for w, loss in zip(self.weights[1:], self.losses[1:], strict=True):
            total = total + w * loss(output, target, valid)
        return total


LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "contrastive": ContrastiveLoss,
    "triplet": TripletLoss,
}


def create_loss(name: str, *, weights: Sequence[float] | None = None, **kwargs: Any) -> nn.Module:
    """Build a loss by name; ``"a+b"`` sums several (e.g. ``"bce+dice"``, ``"contrastive+bce"``).

    Keyword arguments go to every component whose constructor accepts them (``pos_weight`` to BCE, ``margin`` to
    contrastive/triplet, ``ignore_index`` to all...); one that no component accepts is an error.

    Parameters
    ----------
    name : str
        ``bce``, ``dice``, ``focal``, ``contrastive``, ``triplet`` or a ``+``-joined combination.
    weights : sequence of float, optional
        Weights of the components of a combination (default 1 each).
    **kwargs
        Constructor arguments of the components.

    Raises
    ------
    InputError
        Unknown name (the message lists the known ones) or an argument no component takes.
    """
    parts = [p.strip().lower() for p in str(name).split("+")]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown:
        raise InputError(f"unknown loss {unknown[0]!r}; known losses: {', '.join(sorted(LOSSES))} "
                         "(combine them with '+', e.g. 'bce+dice')")
    accepted_by = {part: set(inspect.signature(LOSSES[part].__init__).parameters) - {"self"} for part in parts}
    taken = set().union(*accepted_by.values())
    extra = sorted(set(kwargs) - taken)
    if extra:
        names = sorted(taken | ({"weights"} if len(parts) > 1 else set()))
        raise InputError(f"loss {name!r} does not take {extra}; it takes {', '.join(names)}")
    modules: list[nn.Module] = []
    for part in parts:
        modules.append(LOSSES[part](**{k: v for k, v in kwargs.items() if k in accepted_by[part]}))
    if len(modules) == 1 and weights is None:
        return modules[0]
    return CombinedLoss(modules, weights)
