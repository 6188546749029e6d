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

import contextlib
import functools
import importlib
import itertools
import json
import math
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from changedet.errors import ModelArgumentError, ModelError, UnknownModelError

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
    ModelArgumentError
        If a keyword argument is not accepted by the architecture (a :class:`ModelError` and an
        :class:`~changedet.errors.InputError`: exit 2 in the CLI).
    ModelError
        If a keyword argument has an invalid value.

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
    except TypeError as exc:  # an unknown (misspelt) or missing keyword: bad input, exit 2 in the CLI
        raise ModelArgumentError(f"cannot create model {name!r} with {sorted(kwargs)}: {exc}") from exc


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


def cat_pair(before: torch.Tensor, after: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.cat((before, after), dim)``, without the copy where AFTER directly follows BEFORE in memory.

    :class:`~changedet.inference.TorchPredictor` normalises both dates into one buffer laid out as the model joins
    them (:attr:`ChangeModel.pair_dim`), so that this is a view of that buffer rather than a new tensor (a 512 px
    13-band tile: 1-7 % faster in `TorchPredictor.predict`, README Performance). The view is returned only when
    no gradient is needed and the two tensors share storage, dtype, strides and every size but ``dim``, with AFTER
    starting where BEFORE ends along ``dim``; it then holds exactly the values ``torch.cat`` would. Otherwise (and
    always in training) this is ``torch.cat``. The result may alias the inputs, so callers must not write into it.
    """
    ok = (
        not (torch.is_grad_enabled() and (before.requires_grad or after.requires_grad))
        and before.ndim == after.ndim and before.dtype == after.dtype and before.device == after.device
        and before.stride() == after.stride()
        and all(a == b for i, (a, b) in enumerate(zip(before.shape, after.shape, strict=True)) if i != dim % before.ndim)
        and before.untyped_storage().data_ptr() == after.untyped_storage().data_ptr()
        and after.storage_offset() == before.storage_offset() + before.shape[dim] * before.stride(dim)
    )
    if not ok:
        return torch.cat((before, after), dim=dim)
    shape = list(before.shape)
    shape[dim] += after.shape[dim]
    return before.as_strided(shape, before.stride(), before.storage_offset())


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
    pair_dim : int or None
        The dimension along which the model joins the two dates first (1: channels, early fusion; 0: batch, one
        shared encoder for both), through :func:`cat_pair`; None when it does not. An inference caller that lays
        BEFORE and AFTER out next to each other along it spares the model that copy.
    config : dict
        JSON-safe constructor keyword arguments including ``"name"``; ``create_model(**model.config)`` rebuilds the
        architecture.
    """

    name: ClassVar[str] = ""
    is_metric: ClassVar[bool] = False
    pad_multiple: int = 1
    required_multiple: int = 1
    pair_dim: int | None = None

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


def _fold_pairs(parent: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d inside ``parent`` into that convolution."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    children = dict(parent.named_children())
    pairs: list[tuple[str, str]] = []
    if isinstance(parent, nn.Sequential):
        names = list(children)
        pairs = list(itertools.pairwise(names))
    else:  # torchvision ResNet blocks and stems: conv1 -> bn1, conv2 -> bn2, ...
        pairs = [(n, "bn" + n[4:]) for n in children if n.startswith("conv") and "bn" + n[4:] in children]
    folded = 0
    for conv_name, bn_name in pairs:
        conv, bn = children[conv_name], children[bn_name]
        if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                and bn.running_mean is not None):
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            children[conv_name], children[bn_name] = getattr(parent, conv_name), getattr(parent, bn_name)
            folded += 1
    return folded


@functools.lru_cache(maxsize=1)
def _onednn_conv_relu() -> bool:
    """Whether this torch has oneDNN's fused convolution + pointwise kernel (the one ``torch.compile`` uses on CPUs)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class ConvReLU2d(nn.Conv2d):
    """A ``Conv2d`` whose output goes through ReLU, run on the CPU as one oneDNN kernel (inference copies only).

    :func:`optimize_for_inference` turns each ``Conv2d`` that a ``ReLU`` follows in an ``nn.Sequential`` into this
    class (same weights, no copy) and drops the ReLU. Fusing saves a full pass over the feature map per layer: in
    bfloat16 a separate ``relu_`` took about as long as the 3x3 convolution before it (PyTorch's bf16 elementwise
    kernels are slow on the CPU). Elsewhere (CUDA, gradients, a torch without oneDNN) it is ``relu(conv(x))``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and not (torch.is_grad_enabled() and x.requires_grad)
                and _onednn_conv_relu()):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                "relu", [], "")
        return F.relu(super().forward(x), inplace=True)


def _fuse_conv_relu(parent: nn.Module) -> int:
    """In an ``nn.Sequential``, fuse each Conv2d with the ReLU that follows it (past identities and eval dropouts)."""
    if not isinstance(parent, nn.Sequential):
        return 0
    names = list(dict(parent.named_children()))
    fused = 0
    for i, name in enumerate(names):
        conv = getattr(parent, name)
        if type(conv) is not nn.Conv2d:
            continue
        for later in names[i + 1:]:
            nxt = getattr(parent, later)
            if isinstance(nxt, nn.ReLU):
                conv.__class__ = ConvReLU2d  # same parameters and buffers; only forward changes
                setattr(parent, later, nn.Identity())
                fused += 1
                break
            if not isinstance(nxt, (nn.Identity, nn.Dropout, nn.Dropout2d)):
                break
    return fused


_DENORMALS = threading.local()


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat subnormal floats as zero on the CPU inside the block (``torch.set_flush_denormal``).

    Subnormal numbers (below about 1.2e-38 in float32) take a slow path in the CPU's vector units. Late in training,
    some gradients reach that range, and the convolution backward passes then slow down many times over (one
    13-band FC-EF seed went from 53 to 129-264 seconds per epoch after epoch 32, while two other seeds on the same
    machine did not; ``python scripts/bench_denormals.py`` measures the effect on one convolution). Flushing them to zero
    changes results only by values below that range. :func:`changedet.training.train` and the detect engine's
    :class:`~changedet.inference.TorchPredictor` run inside this block.

    Nested blocks are cheap; the outermost one switches flushing off again on the way out (torch's default), also
    when it was on before the block. A no-op where the CPU does not support it (``set_flush_denormal`` returns
    False); CUDA kernels are not affected.
    """
    depth = getattr(_DENORMALS, "depth", 0)
    switched = depth == 0 and torch.set_flush_denormal(True)
    _DENORMALS.depth = depth + 1
    try:
        yield
    finally:
        _DENORMALS.depth = depth
        if switched:
            torch.set_flush_denormal(False)


def optimize_for_inference(model: nn.Module, *, dtype: torch.dtype = torch.float32,
                           channels_last: bool = True, fuse_relu: bool = True) -> nn.Module:
    """Return an inference copy of ``model``: eval mode, batch norm folded into convolutions, dtype, memory format.

    Folding removes one full pass over every feature map per normalised convolution (about 15-20 % of the FC
    models' CPU time). The copy computes the same function up to float rounding; it is for inference only (its
    ``state_dict`` no longer matches the architecture, so save the original). Folding covers ``Conv2d`` followed by
    ``BatchNorm2d`` in ``nn.Sequential`` containers and torchvision-style ``convN``/``bnN`` pairs (ResNet encoders);
    other normalisations are left as they are. A ``Conv2d`` followed by ``ReLU`` in an ``nn.Sequential`` (the FC
    models' blocks) then becomes a :class:`ConvReLU2d`, one oneDNN kernel on the CPU instead of two passes.

    Parameters
    ----------
    model : nn.Module
        A trained model (any mode; the original is not modified).
    dtype : torch.dtype
        ``torch.float32`` or ``torch.bfloat16``.
    channels_last : bool
        Convert the weights to channels-last memory format (give the inputs the same format).
    fuse_relu : bool
        Turn ``Conv2d`` + ``ReLU`` into :class:`ConvReLU2d` (False keeps them apart, for comparison).

    Examples
    --------
    >>> import torch
    >>> model = create_model("fc-siam-diff", in_channels=3).eval()
    >>> fast = optimize_for_inference(model)
    >>> x, y = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    >>> bool(torch.allclose(model(x, y), fast(x, y), atol=1e-5))
    True
    """
    import copy

    fast = copy.deepcopy(model).eval()
    for module in list(fast.modules()):
        _fold_pairs(module)
    if fuse_relu:
        for module in list(fast.modules()):
            _fuse_conv_relu(module)
    fast = fast.to(dtype=dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


@torch.no_grad()
def fold_logit_affine(model: nn.Module, scale: float, bias: float, *, example_size: int = 64) -> nn.Module:
    """Make ``model(before, after)`` return ``scale * logits + bias`` by rescaling its last convolution, in place.

    This is how a probability calibration (Platt scaling, :func:`changedet.calibration.calibrate_probabilities`)
    travels inside a checkpoint: the weights change, the architecture and the checkpoint format do not, so every
    consumer of the model (``detect``, Dask workers, other changedet versions) gets calibrated probabilities.

    The last layer is found by running the model once on random inputs of ``example_size`` pixels: it must be a
    ``Conv2d`` with one output channel and a bias whose output is the model's output (or reaches it through
    cropping or interpolation, which commute with an affine map); the result is checked numerically.

    >>> import torch
    >>> model = create_model("fc-ef", in_channels=3).eval()
    >>> x, y = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    >>> before = model(x, y)
    >>> _ = fold_logit_affine(model, 0.5, -1.0)
    >>> bool(torch.allclose(model(x, y), 0.5 * before - 1.0, atol=1e-5))
    True

    Raises
    ------
    ModelError
        A metric model (calibrate it with its own ``calibrate``), no suitable last layer, or a check that fails.
    """
    from changedet.errors import ModelError

    if getattr(model, "is_metric", False):
        raise ModelError("metric models calibrate their distances with model.calibrate(); nothing to fold")
    if not (math.isfinite(scale) and math.isfinite(bias) and scale > 0):
        raise ModelError(f"a logit calibration needs a finite scale > 0 and a finite bias, got {scale!r}, {bias!r}")
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        c = int(getattr(model, "in_channels", 0)) or int(param.shape[1])
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, example_size, example_size, generator=gen).to(param)
        y = torch.randn(1, c, example_size, example_size, generator=gen).to(param)
        seen: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda mod, _i, _o: seen.append(mod))
                 for m in model.modules() if isinstance(m, nn.Conv2d)]
        try:
            reference = model(x, y).clone()
        finally:
            for h in hooks:
                h.remove()
        last = seen[-1] if seen else None
        if last is None or not isinstance(last, nn.Conv2d) or last.out_channels != 1 or last.bias is None:
            raise ModelError(f"{getattr(model, 'name', type(model).__name__)}: the last layer is not a one-channel "
                             "Conv2d with a bias; cannot fold a logit calibration into it")
        last.weight.mul_(float(scale))
        last.bias.mul_(float(scale)).add_(float(bias))
        folded = model(x, y)
        expected = float(scale) * reference + float(bias)
        tol = 1e-4 * (1.0 + float(expected.abs().max()))
        if not bool(torch.allclose(folded, expected, atol=tol)):
            last.bias.sub_(float(bias)).div_(float(scale))  # undo
            last.weight.div_(float(scale))
            raise ModelError(f"{getattr(model, 'name', type(model).__name__)}: the output is not an affine image of "
                             "its last convolution; cannot fold a logit calibration into it")
    finally:
        model.train(was_training)
    return model
