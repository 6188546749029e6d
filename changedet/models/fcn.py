"""The fully convolutional change-detection family of Daudt, Le Saux and Boulch.

R. Caye Daudt, B. Le Saux, A. Boulch, "Fully Convolutional Siamese Networks for Change Detection", IEEE ICIP 2018,
https://arxiv.org/abs/1810.08462.

Three U-Net-shaped networks with the same encoder (4 stages of 16/32/64/128 channels, 2/2/3/3 convolutions of 3x3
with batch norm, ReLU and dropout, then 2x2 max pooling) and the same decoder:

- ``fc-ef`` (:class:`FCEF`): early fusion; BEFORE and AFTER are stacked along the channels and go through one encoder.
- ``fc-siam-conc`` (:class:`FCSiamConc`): a Siamese encoder (shared weights; both dates run as one batch) whose skip
  connections of both dates are concatenated.
- ``fc-siam-diff`` (:class:`FCSiamDiff`): a Siamese encoder whose skip connections are the absolute difference of
  the two dates' features.

Differences from the reference implementation, all of them in the same function class:

- The decoder's stride-1 layers are ``Conv2d`` instead of ``ConvTranspose2d`` (a stride-1 transposed convolution with
  padding 1 is a convolution with a flipped kernel), which is several times faster on CPU.
- One output channel (change logits) instead of a two-class log-softmax; train it with a BCE-type loss.
- ``bottleneck`` chooses what enters the decoder from the deepest stage: ``"after"`` (the reference: the pooled AFTER
  features), ``"absdiff"`` (symmetric in the dates: identical dates give a spatially constant output) or
  ``"concat"``.

Inputs of any size are padded to a multiple of 16 and the output cropped back.

>>> import torch
>>> from changedet.models import create_model, count_parameters
>>> model = create_model("fc-siam-diff", in_channels=13)
>>> count_parameters(model)
1350225
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from changedet.errors import ModelError
from changedet.models.registry import ChangeModel, cat_pair

__all__ = ["FCEF", "FCSiamConc", "FCSiamDiff"]

Bottleneck = Literal["after", "absdiff", "concat"]

_ENC_CHANNELS = (16, 32, 64, 128)
_ENC_DEPTHS = (2, 2, 3, 3)


def _conv_block(cin: int, cout: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(p=dropout))
    return layers


def _upsample(channels_in: int, channels_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(channels_in, channels_out, kernel_size=3, stride=2, padding=1, output_padding=1)


class FCEncoder(nn.Module):
    """Daudt et al.'s 4-stage encoder; returns the 4 skip features and the pooled bottleneck."""

    def __init__(self, in_channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for cout, depth in zip(_ENC_CHANNELS, _ENC_DEPTHS, strict=True):
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += _conv_block(cin if i == 0 else cout, cout, dropout)
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        return skips, x


class FCDecoder(nn.Module):
    """Daudt et al.'s decoder: 4 x (upsample by a stride-2 transposed conv, concatenate the skip, convolutions)."""

    def __init__(self, skip_channels: tuple[int, ...], bottleneck_channels: int, out_channels: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__()
        s1, s2, s3, s4 = skip_channels
        self.up4 = _upsample(bottleneck_channels, 128)
        self.dec4 = nn.Sequential(*_conv_block(128 + s4, 128, dropout), *_conv_block(128, 128, dropout),
                                  *_conv_block(128, 64, dropout))
        self.up3 = _upsample(64, 64)
        self.dec3 = nn.Sequential(*_conv_block(64 + s3, 64, dropout), *_conv_block(64, 64, dropout),
                                  *_conv_block(64, 32, dropout))
        self.up2 = _upsample(32, 32)
        self.dec2 = nn.Sequential(*_conv_block(32 + s2, 32, dropout), *_conv_block(32, 16, dropout))
        self.up1 = _upsample(16, 16)
        self.dec1 = nn.Sequential(*_conv_block(16 + s1, 16, dropout))
        self.head = nn.Conv2d(16, out_channels, kernel_size=3, padding=1)

    def forward(self, skips: list[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        x = bottleneck
        for up, dec, skip in zip((self.up4, self.up3, self.up2, self.up1), (self.dec4, self.dec3, self.dec2, self.dec1),
                                 reversed(skips), strict=True):
            x = dec(torch.cat((up(x), skip), dim=1))
        return self.head(x)


def _check_dropout(name: str, dropout: float) -> float:
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


class FCEF(ChangeModel):
    """FC-EF: fully convolutional early fusion (Daudt et al., ICIP 2018).

    Parameters
    ----------
    in_channels : int
        Bands per date; the encoder sees ``2 * in_channels`` stacked channels.
    dropout : float
        Dropout2d rate after every convolution during training (0.2 in the paper).
    """

    name = "fc-ef"
    pad_multiple = 16
    pair_dim = 1

    def __init__(self, in_channels: int = 3, dropout: float = 0.2) -> None:
        super().__init__(in_channels)
        dropout = _check_dropout(self.name, dropout)
        self._record_config(dropout=dropout)
        self.encoder = FCEncoder(2 * self.in_channels, dropout)
        self.decoder = FCDecoder(_ENC_CHANNELS, _ENC_CHANNELS[-1], 1, dropout)

    def _forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        skips, x = self.encoder(cat_pair(before, after, 1))
        return self.decoder(skips, x)


class _FCSiamese(ChangeModel):
    pad_multiple = 16
    pair_dim = 0
    _skip_factor = 1

    def __init__(self, in_channels: int = 3, dropout: float = 0.2, bottleneck: Bottleneck = "after") -> None:
        super().__init__(in_channels)
        dropout = _check_dropout(self.name, dropout)
        if bottleneck not in ("after", "absdiff", "concat"):
            raise ModelError(f"{self.name}: bottleneck must be 'after', 'absdiff' or 'concat', got {bottleneck!r}")
        self._record_config(dropout=dropout, bottleneck=bottleneck)
        self.bottleneck = bottleneck
        self.encoder = FCEncoder(self.in_channels, dropout)
        bottleneck_channels = _ENC_CHANNELS[-1] * (2 if bottleneck == "concat" else 1)
        skip_channels = tuple(c * self._skip_factor for c in _ENC_CHANNELS)
        self.decoder = FCDecoder(skip_channels, bottleneck_channels, 1, dropout)

    def encode(self, before: torch.Tensor, after: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                          torch.Tensor, torch.Tensor]:
        """Run the shared encoder on both dates as one batch; return (skips_before, skips_after, x_before, x_after)."""
        n = before.shape[0]
        skips, x = self.encoder(cat_pair(before, after, 0))
        return [s[:n] for s in skips], [s[n:] for s in skips], x[:n], x[n:]

    def _fuse_bottleneck(self, xb: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        if self.bottleneck == "after":
            return xa
        if self.bottleneck == "absdiff":
            return torch.abs(xa - xb)
        return torch.cat((xb, xa), dim=1)

    def fuse_skip(self, fb: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        sb, sa, xb, xa = self.encode(before, after)
        skips = [self.fuse_skip(b, a) for b, a in zip(sb, sa, strict=True)]
        return self.decoder(skips, self._fuse_bottleneck(xb, xa))


class FCSiamConc(_FCSiamese):
    """FC-Siam-conc: Siamese encoder, skip connections of both dates concatenated (Daudt et al., ICIP 2018).

    Parameters
    ----------
    in_channels : int
        Bands per date.
    dropout : float
        Dropout2d rate after every convolution during training (0.2 in the paper).
    bottleneck : {"after", "absdiff", "concat"}
        What enters the decoder from the deepest stage; ``"after"`` as in the paper.
    """

    name = "fc-siam-conc"
    _skip_factor = 2

    def fuse_skip(self, fb: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        return torch.cat((fb, fa), dim=1)


class FCSiamDiff(_FCSiamese):
    """FC-Siam-diff: Siamese encoder, skip connections = |AFTER - BEFORE| features (Daudt et al., ICIP 2018).

    Parameters
    ----------
    in_channels : int
        Bands per date.
    dropout : float
        Dropout2d rate after every convolution during training (0.2 in the paper).
    bottleneck : {"after", "absdiff", "concat"}
        What enters the decoder from the deepest stage; ``"after"`` as in the paper, ``"absdiff"`` makes the whole
        network symmetric in the two dates.
    """

    name = "fc-siam-diff"

    def fuse_skip(self, fb: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        return torch.abs(fa - fb)
