"""How two dates' feature maps become one: difference, concatenation, or a distance map.

``fuse(before, after, mode)`` for (N, C, H, W) features:

============  =====================================  ===========  =========================================
mode          result                                 channels     symmetric in the dates
============  =====================================  ===========  =========================================
``diff``      ``after - before``                     C            no (sign flips)
``absdiff``   ``|after - before|``                   C            yes
``concat``    ``[before, after]``                    2C           no (halves swap)
``l1``        ``sum_c |after - before|``             1            yes
``l2``        ``sqrt(sum_c (after - before)^2)``     1            yes
``cosine``    ``1 - cos(before, after)``             1            yes
============  =====================================  ===========  =========================================

Identical dates give exactly zero for ``diff``, ``absdiff``, ``l1`` and ``l2`` (and zero up to rounding for
``cosine``), so a Siamese network with shared weights sees "no difference" where nothing changed.

>>> import torch
>>> a = torch.randn(2, 8, 4, 4)
>>> fuse(a, a, "l2").abs().max().item()
0.0
>>> fused_channels(8, "concat"), fused_channels(8, "cosine")
(16, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from changedet.errors import ModelError
from changedet.losses import feature_distance

__all__ = ["DISTANCES", "FUSIONS", "SYMMETRIC_FUSIONS", "Fusion", "feature_distance", "fuse", "fused_channels",
           "resolve_fusions"]

FUSIONS: tuple[str, ...] = ("diff", "absdiff", "concat", "l1", "l2", "cosine")
DISTANCES: tuple[str, ...] = ("l1", "l2", "cosine")
SYMMETRIC_FUSIONS: tuple[str, ...] = ("absdiff", "l1", "l2", "cosine")


def _check(mode: str) -> str:
    if mode not in FUSIONS:
        raise ModelError(f"unknown fusion {mode!r}; choose one of {', '.join(FUSIONS)}")
    return mode


def fused_channels(channels: int, mode: str) -> int:
    """Channels of ``fuse(before, after, mode)`` for inputs of ``channels`` channels."""
    _check(mode)
    if mode == "concat":
        return 2 * channels
    if mode in DISTANCES:
        return 1
    return channels


def fuse(before: torch.Tensor, after: torch.Tensor, mode: str) -> torch.Tensor:
    """Fuse two (N, C, H, W) feature maps (see the module docstring for the modes)."""
    if mode == "diff":
        return after - before
    if mode == "absdiff":
        return torch.abs(after - before)
    if mode == "concat":
        return torch.cat((before, after), dim=1)
    if mode in DISTANCES:
        return feature_distance(before, after, mode, dim=1, keepdim=True)
    raise ModelError(f"unknown fusion {mode!r}; choose one of {', '.join(FUSIONS)}")


def resolve_fusions(fusion: str | Sequence[str], levels: int, model: str = "model") -> list[str]:
    """Expand one fusion mode or a list of modes (one per level, shallowest first) to ``levels`` modes."""
    if isinstance(fusion, str):
        return [_check(fusion)] * levels
    modes = list(fusion)
    if len(modes) != levels:
        raise ModelError(
            f"{model}: fusion lists one mode per encoder level ({levels} levels, shallowest first), got "
            f"{len(modes)}: {modes}"
        )
    return [_check(m) for m in modes]


class Fusion(nn.Module):
    """``nn.Module`` wrapper of :func:`fuse` (no parameters)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = _check(mode)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return fuse(before, after, self.mode)

    def extra_repr(self) -> str:
        return repr(self.mode)
