"""Metric-learning change detection: per-pixel embeddings of both dates and their distance.

``metric-siam`` (:class:`MetricSiam`): a fully convolutional encoder-decoder (Daudt et al.'s FC U-Net, applied to one
date at a time with shared weights; both dates run as one batch) maps every pixel of each date to a
``embed_dim``-dimensional embedding (unit length with ``normalize=True``). The change score of a pixel is the distance
between its two embeddings (``l1``, ``l2`` or ``cosine``), in the spirit of the metric-learning change detectors
trained with a contrastive loss (Zhan et al., "Change Detection Based on Deep Siamese Convolutional Network for
Optical Aerial Images", IEEE GRSL 2017; Chen & Shi, STANet, Remote Sensing 2020).

``forward`` returns logits ``(distance - center) * scale`` so that ``sigmoid(logits)`` is a probability and a
probability threshold (0.5 by default) means a distance threshold of ``center``. ``center`` and ``scale`` are buffers
(saved in checkpoints) set by :meth:`MetricSiam.calibrate` on validation distances and labels (1-D logistic
regression) or by :meth:`MetricSiam.set_calibration`. The defaults (``center=0.5``, ``scale=10``) put the decision at
half the default contrastive margin (1.0) of :class:`changedet.losses.ContrastiveLoss`.

Identical dates give distance 0 everywhere and therefore the lowest possible logit, ``-center * scale``.

>>> import torch
>>> from changedet.models import create_model
>>> model = create_model("metric-siam", in_channels=3, embed_dim=8).eval()
>>> x = torch.randn(1, 3, 32, 32)
>>> logits, emb_before, emb_after = model.forward_with_embeddings(x, x)
>>> emb_before.shape, bool((logits == -0.5 * 10.0).all())
(torch.Size([1, 8, 32, 32]), True)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from changedet.errors import ModelError
from changedet.losses import IGNORE_INDEX, feature_distance
from changedet.models.fcn import _ENC_CHANNELS, FCDecoder, FCEncoder, _check_dropout
from changedet.models.registry import ChangeModel, cat_pair

__all__ = ["MetricSiam"]


class MetricSiam(ChangeModel):
    """Siamese per-pixel embedding network; change score = embedding distance.

    Parameters
    ----------
    in_channels : int
        Bands per date.
    embed_dim : int
        Embedding dimension per pixel.
    distance : {"l2", "l1", "cosine"}
        Distance between the two dates' embeddings.
    normalize : bool
        Scale embeddings to unit length (bounded distances: l2 and cosine in [0, 2]).
    dropout : float
        Dropout2d rate of the encoder-decoder during training.
    """

    name = "metric-siam"
    is_metric = True
    pad_multiple = 16
    pair_dim = 0

    center: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_channels: int = 3, embed_dim: int = 16, distance: Literal["l1", "l2", "cosine"] = "l2",
                 normalize: bool = True, dropout: float = 0.2) -> None:
        super().__init__(in_channels)
        if distance not in ("l1", "l2", "cosine"):
            raise ModelError(f"{self.name}: distance must be 'l1', 'l2' or 'cosine', got {distance!r}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ModelError(f"{self.name}: embed_dim must be a positive integer, got {embed_dim!r}")
        dropout = _check_dropout(self.name, dropout)
        self._record_config(embed_dim=embed_dim, distance=distance, normalize=bool(normalize), dropout=dropout)
        self.distance = distance
        self.normalize = bool(normalize)
        self.encoder = FCEncoder(self.in_channels, dropout)
        self.decoder = FCDecoder(_ENC_CHANNELS, _ENC_CHANNELS[-1], embed_dim, dropout)
        self.register_buffer("center", torch.tensor(0.5))
        self.register_buffer("scale", torch.tensor(10.0))

    # -- embeddings and distances --------------------------------------------------------------------------------
    def _embed(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = before.shape[0]
        skips, x = self.encoder(cat_pair(before, after, 0))
        emb = self.decoder(skips, x)
        if self.normalize:
            emb = F.normalize(emb, p=2.0, dim=1, eps=1e-6)
        return emb[:n], emb[n:]

    def _to_logits(self, dist: torch.Tensor) -> torch.Tensor:
        return (dist - self.center.to(dist.dtype)) * self.scale.to(dist.dtype)

    def forward_with_embeddings(self, before: torch.Tensor, after: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits (N,1,H,W), emb_before (N,D,H,W), emb_after (N,D,H,W))`` for inputs (N,C,H,W)."""
        self._check_inputs(before, after)
        h, w = before.shape[-2:]
        b, a = self._pad(before, after)
        eb, ea = self._embed(b, a)
        eb, ea = eb[..., :h, :w], ea[..., :h, :w]
        dist = feature_distance(eb, ea, self.distance, dim=1, keepdim=True)
        return self._to_logits(dist), eb, ea

    def distance_map(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Uncalibrated change score: the embedding distance (N, 1, H, W)."""
        _, eb, ea = self.forward_with_embeddings(before, after)
        return feature_distance(eb, ea, self.distance, dim=1, keepdim=True)

    def _forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        eb, ea = self._embed(before, after)
        return self._to_logits(feature_distance(eb, ea, self.distance, dim=1, keepdim=True))

    # -- calibration -------------------------------------------------------------------------------------------
    def set_calibration(self, center: float, scale: float) -> None:
        """Set logits = (distance - center) * scale; ``scale`` must be > 0 (larger distance = more change)."""
        if not (torch.isfinite(torch.tensor(float(center))) and float(scale) > 0 and
                torch.isfinite(torch.tensor(float(scale)))):
            raise ModelError(f"{self.name}: calibration needs a finite center and a finite scale > 0, got "
                             f"center={center!r}, scale={scale!r}")
        self.center.fill_(float(center))
        self.scale.fill_(float(scale))

    @torch.no_grad()
    def calibrate(self, distance: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *,
                  ignore_index: int = IGNORE_INDEX, iterations: int = 50) -> tuple[float, float]:
        """Fit ``center`` and ``scale`` by logistic regression of the labels on the distances.

        Parameters
        ----------
        distance : Tensor
            Distances from :meth:`distance_map` on validation data (any shape).
        target : Tensor
            Labels of the same shape: 0 unchanged, 1 changed, ``ignore_index`` ignored.
        valid : Tensor, optional
            Bool mask of usable pixels.
        iterations : int
            Newton iterations (the problem is convex in two parameters).

        Returns
        -------
        (center, scale)
            The values now stored in the buffers.

        Raises
        ------
        ModelError
            If the labels lack either class or the distances do not separate them in the right direction.
        """
        from changedet.calibration import fit_logistic
        from changedet.errors import InputError

        d = distance.detach().reshape(-1).to(torch.float64)
        t = target.detach().reshape(-1)
        mask = (t != ignore_index) & torch.isfinite(d)
        if valid is not None:
            mask &= valid.detach().reshape(-1).bool()
        try:
            slope, intercept = fit_logistic(d[mask].cpu().numpy(), t[mask].cpu().numpy(), iterations=iterations)
        except InputError as exc:
            raise ModelError(f"{self.name}: calibration needs changed and unchanged labelled pixels") from exc
        if not slope > 0:
            raise ModelError(f"{self.name}: calibration found changed pixels at smaller distances than unchanged "
                             "ones; the embeddings are not trained yet")
        scale = slope
        center = -intercept / slope
        self.set_calibration(center, scale)
        return center, scale
