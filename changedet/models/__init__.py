"""Change-detection networks: a registry of Siamese architectures, checkpoints and bundled models.

>>> from changedet.models import create_model, list_models
>>> list_models()
['bit', 'fc-ef', 'fc-siam-conc', 'fc-siam-diff', 'metric-siam', 'siam-unet']

``changedet.models`` never imports rasterio; segmentation-models-pytorch is imported only by the architectures that
use its encoders (``siam-unet``, ``bit``).
"""

from __future__ import annotations

from changedet.models.registry import (
    ChangeModel,
    ConvReLU2d,
    cat_pair,
    count_parameters,
    create_model,
    flush_denormals,
    fold_logit_affine,
    list_models,
    model_class,
    optimize_for_inference,
)

__all__ = [
    "ChangeModel",
    "ConvReLU2d",
    "cat_pair",
    "count_parameters",
    "create_model",
    "flush_denormals",
    "fold_logit_affine",
    "list_models",
    "model_class",
    "optimize_for_inference",
]
