"""Model registry and the base class every change-detection network derives from.

Models are registered by name with a lazily imported ``"module:Class"`` target, so ``list_models()`` is cheap and
building an FC model never imports segmentation-models-pytorch.

Every model is a :class:`ChangeModel`: ``forward(before, after)`` takes two (N, C, H, W) float tensors (the two
dates, normalised) and returns change logits (N, 1, H, W) (apply ``torch.sigmoid`` for a probability). Inputs of any
height and width are accepted: they are padded internally (reflect, or replicate for tiny inputs) to the
architecture's native multiple (:attr:`ChangeModel.pad_multiple`) and the output is cropped back, so
:attr:`ChangeModel.required_multiple` is 1 for every model here. Tiles whose sides are multiples of ``pad_multiple``
avoid the padding cost.

>>> from changedet.models import create_model, list_models
>>> "fc-siam-diff" in list_models()
True
>>> model = create_model("fc-siam-diff", in_channels=13)
>>> model.config["name"], model.config["in_channels"]
('fc-siam-diff', 13)
"""

from __future__ import annotations

import importlib
import json
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from changedet.errors import ModelError, UnknownModelError

__all__ = ["ChangeModel", "count_parameters", "create_model", "list_models", "model_class"]

# name -> "module:Class" (imported on first use)
_MODELS: dict[str, str] = {
    "fc-ef": "changedet.models.fcn:FCEF",
    "fc-siam-conc": "changedet.models.fcn:FCSiamConc",
    "fc-siam-diff": "changedet.models.fcn:FCSiamDiff",
    "siam-unet": "changedet.models.siamese:SiamUNet",
    "metric-siam": "changedet.models.metric:MetricSiam",
    "bit": "changedet.models.attention:BIT",
}


def list_models() -> list[str]:
    """Return the names of the registered architectures, sorted.

    Returns
    -------
    list of str
        Names accepted by :func:`create_model`.
    """
    return sorted(_MODELS)


def model_class(name: str) -> type[ChangeModel]:
    """Return the class registered under ``name`` (raises :class:`UnknownModelError` listing the names)."""
    try:
        target = _MODELS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(str(name), list_models(), what="architecture") from None
    module_name, attr = target.split(":")
    cls: type[ChangeModel] = getattr(importlib.import_module(module_name), attr)
    return cls


def create_model(name: str, **kwargs: Any) -> ChangeModel:
    """Build a change-detection network by name.

    Parameters
    ----------
    name : str
        One of :func:`list_models` (``fc-ef``, ``fc-siam-conc``, ``fc-siam-diff``, ``siam-unet``, ``metric-siam``,
        ``bit``).
    **kwargs
        Constructor keyword arguments of that architecture, e.g. ``in_channels=13``. ``create_model(**model.config)``
        rebuilds an identical (untrained) model.

    Returns
    -------
    ChangeModel
        A ``torch.nn.Module`` with ``forward(before, after) -> logits (N, 1, H, W)``.

    Raises
    ------
    UnknownModelError
        If ``name`` is not registered (the message lists the known names).
    ModelError
        If a keyword argument is not accepted by the architecture or has an invalid value.

    Examples
    --------
    >>> import torch
    >>> model = create_model("fc-siam-diff", in_channels=4).eval()
    >>> before, after = torch.randn(1, 4, 45, 67), torch.randn(1, 4, 45, 67)
    >>> model(before, after).shape
    torch.Size([1, 1, 45, 67])
    """
    cls = model_class(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ModelError(f"cannot create model {name!r} with {sorted(kwargs)}: {exc}") from exc


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_json_safe(config: dict[str, Any], name: str) -> None:
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{name}: constructor arguments must be JSON-safe to be saved in a checkpoint: {exc}") from exc


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) ``x`` at the bottom and right so that H and W are multiples of ``multiple``.

    Reflect padding is used when the input is large enough for it, replicate padding otherwise.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class ChangeModel(nn.Module):
    """Base class of changedet's change-detection networks.

    Subclasses set :attr:`name`, :attr:`is_metric` and :attr:`pad_multiple`, call :meth:`_record_config` in their
    constructor with their keyword arguments and implement :meth:`_forward` on padded inputs.

    Attributes
    ----------
    name : str
        Registry name of the architecture.
    in_channels : int
        Number of bands of each date.
    required_multiple : int
        H and W of the inputs must be multiples of it; 1 here, since inputs are padded internally.
    pad_multiple : int
        Native multiple of the architecture (e.g. 16 for 4 poolings); inputs are padded up to it.
    is_metric : bool
        True for metric-learning models (they also provide ``forward_with_embeddings``).
    config : dict
        JSON-safe constructor keyword arguments including ``"name"``; ``create_model(**model.config)`` rebuilds the
        architecture.
    """

    name: ClassVar[str] = ""
    is_metric: ClassVar[bool] = False
    pad_multiple: int = 1
    required_multiple: int = 1

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ModelError(f"{self.name}: in_channels must be a positive integer, got {in_channels!r}")
        self.in_channels = int(in_channels)
        self._config: dict[str, Any] = {"name": self.name, "in_channels": self.in_channels}

    def _record_config(self, **kwargs: Any) -> None:
        config = {"name": self.name, "in_channels": self.in_channels, **kwargs}
        _check_json_safe(config, self.name)
        self._config = config

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-safe, with ``"name"``): ``create_model(**model.config)``."""
        return json.loads(json.dumps(self._config))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "name")

    # -- input handling ---------------------------------------------------------------------------------------
    def _check_inputs(self, before: torch.Tensor, after: torch.Tensor) -> None:
        if before.ndim != 4 or after.ndim != 4:
            raise ModelError(
                f"{self.name}: inputs must be (N, C, H, W) tensors, got shapes {tuple(before.shape)} and "
                f"{tuple(after.shape)}"
            )
        if before.shape != after.shape:
            raise ModelError(
                f"{self.name}: BEFORE {tuple(before.shape)} and AFTER {tuple(after.shape)} must have the same shape"
            )
        if before.shape[1] != self.in_channels:
            raise ModelError(
                f"{self.name}: the model expects {self.in_channels} bands per date but the input has "
                f"{before.shape[1]}; select the bands the model was trained on or train a model for "
                f"{before.shape[1]} bands"
            )

    def _pad(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_to_multiple(before, self.pad_multiple), pad_to_multiple(after, self.pad_multiple)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Change logits (N, 1, H, W) for BEFORE and AFTER (N, C, H, W); ``sigmoid`` gives a probability."""
        self._check_inputs(before, after)
        h, w = before.shape[-2:]
        b, a = self._pad(before, after)
        out = self._forward(b, a)
        return out[..., :h, :w]

    def _forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
