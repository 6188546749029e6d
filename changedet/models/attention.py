"""Bitemporal image transformer (BIT): semantic tokens and a transformer between the two dates.

H. Chen, Z. Qi, Z. Shi, "Remote Sensing Image Change Detection With Transformers", IEEE Transactions on Geoscience
and Remote Sensing 60, 2022 (early access 2021), doi:10.1109/TGRS.2021.3095166, https://arxiv.org/abs/2103.00208.

``bit`` (:class:`BIT`) follows the paper's BIT_S4 configuration:

1. A Siamese CNN backbone (an smp encoder, ResNet-18 up to ``layer3`` with dilation so the output stride is 8; both
   dates as one batch), upsampled x2 and projected to ``dim=32`` channels: feature maps at 1/4 resolution.
2. A semantic tokenizer per date: ``token_len`` spatial attention maps (1x1 conv, softmax over the pixels) pool the
   feature map into ``token_len`` tokens.
3. A transformer encoder (``enc_depth`` layers, learned positional embedding) over the ``2 * token_len`` tokens of
   both dates, which models context in space and time.
4. A transformer decoder per date (``dec_depth`` layers of cross-attention, pixels as queries, that date's refined
   tokens as keys/values) projects the context back onto the pixels.
5. The absolute difference of the two refined feature maps, upsampled x4 (bilinear) to the input size, goes through
   a shallow FCN head (3x3 conv, BN, ReLU, 3x3 conv) to change logits (one channel here instead of two classes).

The backbone is random-initialised (no weights are downloaded). Inputs are padded to a multiple of 8 and the output
is cropped back. The model is not symmetric in the dates: the learned positional embedding tells the transformer
which tokens come from BEFORE and which from AFTER, as in the paper.

>>> import torch
>>> from changedet.models import create_model
>>> model = create_model("bit", in_channels=13).eval()
>>> model(torch.randn(1, 13, 45, 67), torch.randn(1, 13, 45, 67)).shape
torch.Size([1, 1, 45, 67])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from changedet.errors import ModelError
from changedet.models.registry import ChangeModel, cat_pair
from changedet.models.siamese import build_encoder, encoder_channels

__all__ = ["BIT"]


class _Attention(nn.Module):
    """Multi-head (cross-)attention with an inner dimension ``heads * dim_head`` as in BIT."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class _EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP over the tokens."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads, dim_head, dropout)
        self.norm2, self.ff = nn.LayerNorm(dim), _FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        return x + self.ff(self.norm2(x))


class _DecoderLayer(nn.Module):
    """Pre-norm cross-attention (pixels attend to tokens) + MLP, as BIT's transformer decoder."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_x, self.norm_m = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, dim_head, dropout)
        self.norm2, self.ff = nn.LayerNorm(dim), _FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_x(x), self.norm_m(tokens))
        return x + self.ff(self.norm2(x))


class BIT(ChangeModel):
    """BIT: bitemporal image transformer (Chen, Qi, Shi, TGRS 2021), BIT_S4 layout.

    Parameters
    ----------
    in_channels : int
        Bands per date.
    encoder_name : str
        smp encoder of the Siamese backbone (``"resnet18"`` as in the paper; dilation needs an encoder that
        supports ``output_stride=8``).
    encoder_depth : int
        Backbone stages used (4: up to ResNet ``layer3``).
    encoder_weights : None
        Must be None (nothing is downloaded).
    dim : int
        Channels of the token/feature space (32).
    token_len : int
        Semantic tokens per date (4).
    enc_depth, dec_depth : int
        Transformer encoder and decoder layers (1 and 8).
    heads : int
        Attention heads (8).
    enc_dim_head, dec_dim_head : int
        Per-head dimension in encoder and decoder (64 and 8).
    mlp_dim : int
        Hidden size of the transformer MLPs (64).
    dropout : float
        Dropout in the transformer.
    """

    name = "bit"
    pad_multiple = 8
    pair_dim = 0

    def __init__(self, in_channels: int = 3, encoder_name: str = "resnet18", encoder_depth: int = 4,
                 encoder_weights: None = None, dim: int = 32, token_len: int = 4, enc_depth: int = 1,
                 dec_depth: int = 8, heads: int = 8, enc_dim_head: int = 64, dec_dim_head: int = 8,
                 mlp_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__(in_channels)
        ints = dict(encoder_depth=encoder_depth, dim=dim, token_len=token_len, enc_depth=enc_depth,
                    dec_depth=dec_depth, heads=heads, enc_dim_head=enc_dim_head, dec_dim_head=dec_dim_head,
                    mlp_dim=mlp_dim)
        for key, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key.endswith("depth") else 1):
                raise ModelError(f"{self.name}: {key} must be a positive integer, got {value!r}")
        if not 3 <= encoder_depth <= 5:
            raise ModelError(f"{self.name}: encoder_depth must be 3, 4 or 5, got {encoder_depth}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ModelError(f"{self.name}: dropout must be in [0, 1), got {dropout!r}")
        self._record_config(encoder_name=encoder_name, encoder_weights=None, dropout=float(dropout), **ints)
        output_stride = 8 if encoder_depth > 3 else 32
        self.encoder = build_encoder(encoder_name, self.in_channels, encoder_depth, output_stride, encoder_weights,
                                     self.name)
        self.stride = min(self.encoder.output_stride, 2**encoder_depth)
        self.pad_multiple = self.stride
        self.conv_pred = nn.Conv2d(encoder_channels(self.encoder)[-1], dim, kernel_size=3, padding=1)
        self.token_attention = nn.Conv2d(dim, token_len, kernel_size=1, bias=False)
        self.pos_embedding = nn.Parameter(torch.randn(1, 2 * token_len, dim))
        self.transformer = nn.ModuleList(
            [_EncoderLayer(dim, heads, enc_dim_head, mlp_dim, dropout) for _ in range(enc_depth)])
        self.transformer_decoder = nn.ModuleList(
            [_DecoderLayer(dim, heads, dec_dim_head, mlp_dim, dropout) for _ in range(dec_depth)])
        self.classifier = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, 1, kernel_size=3, padding=1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features at 1/4 of the (padded) input resolution, ``dim`` channels."""
        f = self.encoder(x)[-1]
        f = F.interpolate(f, scale_factor=2, mode="nearest")
        return self.conv_pred(f)

    def tokenize(self, f: torch.Tensor) -> torch.Tensor:
        """Semantic tokens (N, token_len, dim) from a feature map (N, dim, h, w)."""
        attn = torch.softmax(self.token_attention(f).flatten(2), dim=-1)  # (N, L, hw)
        return torch.einsum("nlp,ncp->nlc", attn, f.flatten(2))

    def _forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        n, _, h, w = before.shape
        f = self.features(cat_pair(before, after, 0))  # (2N, dim, h/4, w/4)
        tokens = self.tokenize(f)  # (2N, L, dim)
        tokens = torch.cat((tokens[:n], tokens[n:]), dim=1) + self.pos_embedding  # (N, 2L, dim)
        for layer in self.transformer:
            tokens = layer(tokens)
        tokens = torch.cat(tokens.chunk(2, dim=1), dim=0)  # (2N, L, dim)
        fh, fw = f.shape[-2:]
        x = f.flatten(2).transpose(1, 2)  # (2N, hw, dim)
        for layer in self.transformer_decoder:
            x = layer(x, tokens)
        x = x.transpose(1, 2).reshape(2 * n, -1, fh, fw)
        diff = torch.abs(x[:n] - x[n:])
        diff = F.interpolate(diff, size=(h, w), mode="bilinear", align_corners=False)
        return self.classifier(diff)
