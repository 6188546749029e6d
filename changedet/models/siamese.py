"""Siamese U-Net on any segmentation-models-pytorch encoder.

``siam-unet`` (:class:`SiamUNet`): one smp encoder (``encoder_name="resnet18"``, ``"efficientnet-b0"``,
``"mobilenet_v2"``, ... any name of ``segmentation_models_pytorch.encoders.get_encoder_names()``) processes BEFORE and
AFTER with shared weights (both dates as one batch), or two encoders of the same kind with ``shared=False``
(pseudo-Siamese, for dates from different sensors). The features of the two dates are fused at every encoder level
(``fusion``: one of ``diff``, ``absdiff``, ``concat``, ``l1``, ``l2``, ``cosine``, or a list with one mode per level,
shallowest first; see :mod:`changedet.models.fusion`) and an smp U-Net decoder turns them into change logits.

Weights are never downloaded: ``encoder_weights`` must be None; trained weights come from changedet checkpoints.
Inputs are padded to a multiple of the encoder's output stride (32 for depth 5) and the output is cropped back.

>>> import torch
>>> from changedet.models import create_model
>>> model = create_model("siam-unet", in_channels=4, fusion=["concat", "absdiff", "absdiff", "l2", "l2"]).eval()
>>> model(torch.randn(1, 4, 45, 67), torch.randn(1, 4, 45, 67)).shape
torch.Size([1, 1, 45, 67])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from changedet.errors import ModelError
from changedet.models.fusion import fuse, fused_channels, resolve_fusions
from changedet.models.registry import ChangeModel, cat_pair

__all__ = ["SiamUNet", "build_encoder", "encoder_channels"]


def _prune_unused(encoder: nn.Module, in_channels: int, size: int) -> None:
    """Drop ResNet-style stages (``layer1``..``layer4``) that the encoder's forward never calls at its depth.

    smp keeps e.g. ResNet's ``layer4`` at depth 4: its parameters would count, be saved and get no gradient.
    Only direct ``layerN`` children found unused by a probe forward are replaced (by Identity); other encoders
    iterate over their stage containers, which are left as they are.
    """
    stages = {name: child for name, child in encoder.named_children()
              if name.startswith("layer") and name[5:].isdigit()}
    if not stages:
        return
    called: set[str] = set()
    handles = [child.register_forward_hook(lambda _m, _i, _o, name=name: called.add(name))
               for name, child in stages.items()]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, in_channels, size, size))
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    for name in stages:
        if name not in called:
            setattr(encoder, name, nn.Identity())


def encoder_channels(encoder: nn.Module) -> list[int]:
    """Channels of each feature map an smp encoder returns (level 0 = the input)."""
    return [int(c) for c in cast(Any, encoder).out_channels]


def build_encoder(encoder_name: str, in_channels: int, depth: int = 5, output_stride: int = 32,
                  encoder_weights: None = None, model: str = "model") -> nn.Module:
    """Create an smp encoder with random weights (nothing is downloaded) and no unused stages.

    Raises
    ------
    ModelError
        For pretrained weights, an unknown encoder name (listing a few known ones) or an invalid depth/stride.
    """
    if encoder_weights is not None:
        raise ModelError(
            f"{model}: encoder_weights={encoder_weights!r} would download weights; changedet never downloads at run "
            "time. Use encoder_weights=None and load a trained changedet checkpoint instead"
        )
    import segmentation_models_pytorch as smp

    try:
        encoder = smp.encoders.get_encoder(encoder_name, in_channels=in_channels, depth=depth, weights=None,
                                           output_stride=output_stride)
    except KeyError as exc:
        names = smp.encoders.get_encoder_names()
        raise ModelError(f"{model}: unknown encoder_name {encoder_name!r}; e.g. {', '.join(names[:12])}, ... "
                         f"({len(names)} in segmentation_models_pytorch.encoders.get_encoder_names())") from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{model}: cannot build encoder {encoder_name!r} (depth={depth}, "
                         f"output_stride={output_stride}): {exc}") from exc
    _prune_unused(encoder, in_channels, 2 ** (depth + 1))
    return encoder


class SiamUNet(ChangeModel):
    """Siamese (or pseudo-Siamese) U-Net with per-level feature fusion on an smp encoder.

    Parameters
    ----------
    in_channels : int
        Bands per date.
    encoder_name : str
        segmentation-models-pytorch encoder (``"resnet18"``, ``"resnet34"``, ``"efficientnet-b0"``, ...).
    encoder_depth : int
        Number of encoder stages (3-5).
    encoder_weights : None
        Must be None (nothing is downloaded); kept for smp familiarity.
    shared : bool
        True: one encoder for both dates (Siamese); False: one encoder per date (pseudo-Siamese).
    fusion : str or list of str
        ``diff``, ``absdiff``, ``concat``, ``l1``, ``l2``, ``cosine``; one mode for all levels or one per level
        (``encoder_depth`` modes, shallowest first).
    decoder_channels : list of int
        Channels of the U-Net decoder blocks, deepest first (``encoder_depth`` values).
    """

    name = "siam-unet"

    def __init__(self, in_channels: int = 3, encoder_name: str = "resnet18", encoder_depth: int = 5,
                 encoder_weights: None = None, shared: bool = True, fusion: str | Sequence[str] = "absdiff",
                 decoder_channels: Sequence[int] | None = None) -> None:
        super().__init__(in_channels)
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        if not 3 <= int(encoder_depth) <= 5:
            raise ModelError(f"{self.name}: encoder_depth must be 3, 4 or 5, got {encoder_depth!r}")
        depth = int(encoder_depth)
        fusions = resolve_fusions(fusion, depth, self.name)
        if decoder_channels is None:
            decoder_channels = (256, 128, 64, 32, 16)[5 - depth:]
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) != depth:
            raise ModelError(f"{self.name}: decoder_channels needs {depth} values (one per level), got "
                             f"{decoder_channels}")
        self._record_config(encoder_name=encoder_name, encoder_depth=depth, encoder_weights=None, shared=bool(shared),
                            fusion=fusion if isinstance(fusion, str) else list(fusions),
                            decoder_channels=decoder_channels)
        self.shared = bool(shared)
        self.fusions = fusions
        self.encoder = build_encoder(encoder_name, self.in_channels, depth, 32, encoder_weights, self.name)
        self.encoder_after = (None if self.shared else
                              build_encoder(encoder_name, self.in_channels, depth, 32, None, self.name))
        self.pad_multiple = 2**depth
        self.pair_dim = 0 if self.shared else None
        enc_channels = encoder_channels(self.encoder)
        fused = [enc_channels[0]] + [fused_channels(c, m) for c, m in zip(enc_channels[1:], fusions, strict=True)]
        self.decoder = UnetDecoder(encoder_channels=fused, decoder_channels=decoder_channels, n_blocks=depth)
        self.head = nn.Conv2d(decoder_channels[-1], 1, kernel_size=3, padding=1)

    def encode(self, before: torch.Tensor, after: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-level features of both dates, ``(features_before, features_after)``, level 0 = the input."""
        if self.encoder_after is None:
            n = before.shape[0]
            feats = self.encoder(cat_pair(before, after, 0))
            return [f[:n] for f in feats], [f[n:] for f in feats]
        return list(self.encoder(before)), list(self.encoder_after(after))

    def fused_features(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        """Fused features per encoder level (shallowest first), i.e. what the decoder sees."""
        fb, fa = self.encode(before, after)
        return [fuse(b, a, m) for b, a, m in zip(fb[1:], fa[1:], self.fusions, strict=True)]

    def _forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        fused = self.fused_features(before, after)
        # level 0 (the input resolution) is dropped by the smp decoder; only its size is used
        return self.head(self.decoder([before, *fused]))
