"""Bundled checkpoints (``changedet/weights/<name>.safetensors|.json|.md``) and model resolution.

:func:`resolve_model` turns what a user gives (nothing, a bundled name, a checkpoint path, or an architecture name
with a checkpoint) into a ready model and its :class:`~changedet.models.checkpoint.CheckpointMeta`. Without a
``spec`` the default is chosen from the input:

======================================  ===============
input                                   default
======================================  ===============
13 bands (Sentinel-2 L1C stack)         ``s2-rgb`` on B04, B03, B02 (by name, else the sensor order
                                        B01..B08, B8A, B09..B12: bands 4, 3, 2)
3 bands, pixel size >= 5 m              ``s2-rgb``
3 bands, finer or unknown pixel size    ``aerial-rgb``
other counts, bands named B04,B03,B02   ``s2-rgb`` (e.g. a 12-band Sentinel-2 L2A stack, or B02,B03,B04,B08)
other counts, red/green/blue colours    the 3-band default by pixel size, on the bands whose colour
                                        interpretation is red, green, blue (RGBA drone orthomosaics, RGBN)
anything else                           an error naming the bundled models and how to train one
======================================  ===============

The 13-band ``s2-13band`` stays bundled (``--model s2-13band``) but is no longer a default: trained the same way,
the true-colour ``s2-rgb`` scored higher on the validation cities (F1 45.2 +/- 3.0 against 40.6 +/- 0.9, three
seeds) and on two held-out test cities (33.6 +/- 3.3 against 30.5 +/- 0.6, three seeds trained without them; see
the model cards), and it is faster.

>>> from changedet.models.bundled import default_model_name
>>> default_model_name(13), default_model_name(3, 10.0), default_model_name(3, 0.5)
('s2-rgb', 's2-rgb', 'aerial-rgb')
>>> default_model_name(12, 10.0, band_names=["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
...                                          "B09", "B11", "B12"])  # Sentinel-2 L2A: no B10
's2-rgb'
>>> default_model_name(4, 0.05, colors=["red", "green", "blue", "alpha"])  # an RGBA drone orthomosaic
'aerial-rgb'
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from torch import nn

from changedet.errors import ChangedetWarning, CheckpointError, UnknownModelError
from changedet.models.checkpoint import CheckpointMeta, checkpoint_paths, load_checkpoint, read_meta
from changedet.models.registry import list_models

__all__ = ["DEFAULT_FOR", "S2_BANDS", "S2_RGB", "WEIGHTS_DIR", "bundled_path", "default_model_name", "list_bundled", "model_cache", "model_cache_info",
           "resolve_model"]

log = logging.getLogger(__name__)

#: Folder of the bundled checkpoints.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"

_TRAIN_HINT = ("train one with `changedet train` (see `changedet train --help`) and pass the checkpoint with "
               "--model PATH/TO/model.safetensors")


def list_bundled(weights_dir: str | os.PathLike[str] | None = None) -> list[CheckpointMeta]:
    """Metadata of the bundled checkpoints, sorted by name (those whose weights file is missing are skipped).

    Parameters
    ----------
    weights_dir : path-like, optional
        Folder to scan instead of :data:`WEIGHTS_DIR`.
    """
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    out: list[CheckpointMeta] = []
    for json_path in sorted(folder.glob("*.json")):
        weights, _ = checkpoint_paths(json_path)
        if not weights.is_file():
            log.warning("%s: bundled checkpoint has no weights file %s; skipped", json_path, weights.name)
            continue
        meta = read_meta(json_path)
        if not meta.name:
            meta.name = json_path.stem
        out.append(meta)
    return out


def bundled_path(name: str, weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the ``.safetensors`` of a bundled checkpoint (raises UnknownModelError listing the bundled names)."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    names = [m.name for m in list_bundled(folder)]
    if name not in names:
        raise UnknownModelError(name, names or ["(none bundled)"], what="bundled model")
    return folder / f"{name}.safetensors"


#: What each bundled model is the default for, in words (:func:`default_model_name` decides; ``changedet models``
#: prints this). A bundled model not listed is used only when named.
DEFAULT_FOR = {
    "s2-rgb": "13-band Sentinel-2 (its B04, B03, B02), Sentinel-2 stacks of other band counts with named bands, "
              "and 3 bands (or red, green, blue bands) at 5 m or coarser",
    "aerial-rgb": "3 bands (or red, green, blue bands) finer than 5 m or without a pixel size",
}

#: Sentinel-2 L1C band names in sensor order (the bands of ``s2-13band``) and the true-colour ones of ``s2-rgb``.
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_RGB = ("B04", "B03", "B02")


def default_model_name(band_count: int, pixel_size: float | None = None, *,
                       band_names: Sequence[str | None] | None = None,
                       colors: Sequence[str] | None = None) -> str:
    """Name of the default bundled model for an input of ``band_count`` bands and ``pixel_size`` metres.

    ``band_names`` (the band descriptions) and ``colors`` (the colour each band stands for, ``"red"``...: GDAL's
    colour interpretation or a band name such as ``Red`` or Landsat's ``SR_B4``, see
    :func:`changedet.io.bands.band_colours`) let an input of another band count use a bundled model on some of its
    bands (see the table above).

    Raises
    ------
    CheckpointError
        When no default fits the band count (the message lists the bundled models and how to train one).
    """
    rgb_default = "s2-rgb" if pixel_size is not None and pixel_size >= 5.0 else "aerial-rgb"
    if band_count == len(S2_BANDS):
        return "s2-rgb"  # a Sentinel-2 L1C stack: its true-colour bands (see the table above)
    if band_count == 3:
        return rgb_default
    names = {str(n).strip().upper() for n in (band_names or ()) if n}
    if names >= set(S2_RGB):
        return "s2-rgb"
    if {"red", "green", "blue"} <= {str(c).lower() for c in (colors or ())}:
        return rgb_default
    bundled = ", ".join(f"{m.name} ({m.in_channels} bands)" for m in list_bundled()) or "none"
    raise CheckpointError(
        f"no bundled model takes {band_count} bands (defaults exist for 13-band Sentinel-2 and 3-band RGB, and for "
        f"bands named B04, B03, B02, Red, Green, Blue or Landsat SR_B* or with a red/green/blue colour "
        f"interpretation; bundled: {bundled}); select 3 "
        f"or 13 bands (e.g. --indexes 1,2,3 with --model aerial-rgb or s2-rgb), or {_TRAIN_HINT}"
    )


def _looks_like_path(spec: str) -> bool:
    p = Path(spec)
    return p.suffix in (".safetensors", ".json", ".pt", ".pth") or os.sep in spec or "/" in spec or p.exists()


def _check_pixel_size(meta: CheckpointMeta, pixel_size: float | None, source: str) -> None:
    if pixel_size is None or meta.pixel_size is None:
        return
    ratio = pixel_size / meta.pixel_size
    if ratio > 2.0 or ratio < 0.5:
        warnings.warn(
            f"{source}: the model was trained at {meta.pixel_size:g} m pixels but the input has {pixel_size:g} m; "
            "results may be poor (resample the input or use a model trained at this resolution)",
            ChangedetWarning, stacklevel=3,
        )


def resolve_model(spec: str | os.PathLike[str] | None = None, *, band_count: int, pixel_size: float | None = None,
                  checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu",
                  weights_dir: str | os.PathLike[str] | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Load the model to apply to an input of ``band_count`` bands.

    Inside :func:`model_cache` the loaded model is kept and handed out again to later calls with the same arguments
    (and the same checkpoint file modification time): one load per process for a batch of pairs.

    Parameters
    ----------
    spec : str or path-like, optional
        A bundled name (``s2-13band``...), a checkpoint path (``.safetensors``/``.json``/stem), an architecture
        name (then ``checkpoint`` is required), or None for the default by band count and pixel size.
    band_count : int
        Bands per date of the input; a checkpoint for another count raises CheckpointError with both numbers.
    pixel_size : float, optional
        Input pixel size in metres (chooses between ``s2-rgb`` and ``aerial-rgb``; a model trained at a very
        different resolution gives a warning).
    checkpoint : path-like, optional
        Checkpoint to load (with ``spec`` None or an architecture name that it must match).
    device : str
        Torch device for the weights.
    weights_dir : path-like, optional
        Folder of bundled checkpoints instead of :data:`WEIGHTS_DIR`.

    Returns
    -------
    (model, meta)
        The model in eval mode and its checkpoint metadata.

    Raises
    ------
    UnknownModelError
        ``spec`` is neither a bundled name, an architecture, nor an existing path.
    CheckpointError
        The checkpoint does not fit (band count...), an architecture without checkpoint, or no default bundled.
    """
    kwargs: dict[str, Any] = {"band_count": band_count, "pixel_size": pixel_size, "checkpoint": checkpoint,
                              "device": device, "weights_dir": weights_dir}
    scope = _CACHE_SCOPE.get()
    if scope is None:
        return _resolve(spec, **kwargs)
    key = (str(spec) if spec is not None else None, _file_stamp(spec),
           str(checkpoint) if checkpoint is not None else None, _file_stamp(checkpoint),
           *sorted((k, str(v)) for k, v in kwargs.items() if k != "checkpoint"), scope)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            hit = _resolve(spec, **kwargs)
            _CACHE[key] = hit
            _CACHE_STATS["loads"] += 1
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
            _CACHE_STATS["hits"] += 1
    return hit[0], copy.deepcopy(hit[1])


def _resolve(spec: str | os.PathLike[str] | None, *, band_count: int, pixel_size: float | None,
             checkpoint: str | os.PathLike[str] | None, device: str,
             weights_dir: str | os.PathLike[str] | None) -> tuple[nn.Module, CheckpointMeta]:
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    bundled = {m.name: m for m in list_bundled(folder)}
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint, in_channels=band_count, device=device)
        if spec is not None and str(spec) != meta.architecture:
            raise CheckpointError(f"{checkpoint}: holds a {meta.architecture!r} model, not {str(spec)!r}")
        _check_pixel_size(meta, pixel_size, str(checkpoint))
        return model, meta
    if spec is None:
        name = default_model_name(band_count, pixel_size)
        if name not in bundled:
            raise CheckpointError(
                f"the default model for {band_count} bands ({'unknown' if pixel_size is None else f'{pixel_size:g} m'}"
                f" pixels) is {name!r}, which is not bundled with this installation (bundled: "
                f"{', '.join(bundled) or 'none'}); {_TRAIN_HINT}"
            )
        takes = bundled[name].in_channels or len(bundled[name].band_names or ())
        if takes and takes != band_count:  # the default reads some of the input's bands (13 -> s2-rgb's 3)
            fits = [n for n, m in bundled.items() if m.in_channels == band_count]
            raise CheckpointError(
                f"the default model for {band_count}-band input is {name!r}, which reads {takes} of its bands "
                f"({', '.join(bundled[name].band_names or ()) or 'unnamed'}): pass those {takes} bands "
                "(changedet.detect picks them by name), or name a model that takes all "
                f"{band_count} ({', '.join(fits) or 'none bundled'})"
            )
        spec = name
    spec = str(spec)
    if spec in bundled:
        path = folder / f"{spec}.safetensors"
        model, meta = load_checkpoint(path, in_channels=band_count, device=device)
        meta.name = meta.name or spec
        _check_pixel_size(meta, pixel_size, f"bundled model {spec!r}")
        return model, meta
    if spec in list_models():
        raise CheckpointError(
            f"{spec!r} is an architecture without trained weights; give its checkpoint (checkpoint=PATH, "
            f"--model PATH) or a bundled model ({', '.join(bundled) or 'none bundled'}), or {_TRAIN_HINT}"
        )
    if _looks_like_path(spec):
        model, meta = load_checkpoint(spec, in_channels=band_count, device=device)
        _check_pixel_size(meta, pixel_size, spec)
        return model, meta
    raise UnknownModelError(spec, [*bundled, *list_models()], what="model")


# ---------------------------------------------------------------------------------------------------------------
# per-process model cache (batch tasks: one load per worker, not one per pair)
# ---------------------------------------------------------------------------------------------------------------
_CACHE_SCOPE: ContextVar[tuple[Any, ...] | None] = ContextVar("changedet_model_cache_scope", default=None)
_CACHE: collections.OrderedDict[tuple[Any, ...], tuple[nn.Module, CheckpointMeta]] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_STATS = {"loads": 0, "hits": 0}
_CACHE_SIZE = 4


def _file_stamp(spec: Any) -> Any:
    """Modification time of a checkpoint given by path (so a retrained file is reloaded), else None."""
    if spec is None:
        return None
    with contextlib.suppress(OSError, ValueError, TypeError):
        weights, _json = checkpoint_paths(spec)
        return weights.stat().st_mtime_ns
    return None


@contextlib.contextmanager
def model_cache(*scope: Any) -> Iterator[None]:
    """Reuse the models that :func:`resolve_model` loads in this context (and this thread or task).

    A model is keyed by everything that chooses or transforms it (spec, checkpoint and its file time, band count,
    pixel size, device, weights folder) plus ``scope`` (e.g. the device and precision of the task), so a cached
    model is exactly the one :func:`resolve_model` would load. Up to 4 models are kept per process, least recently
    used first out. The models are shared: callers must not modify them (``detect`` does not: it runs an
    optimised copy). :func:`changedet.distributed.run_batch` wraps each pair's task in it.

    >>> with model_cache("cpu", "float32"):
    ...     a, _ = resolve_model("s2-rgb", band_count=3)
    ...     b, _ = resolve_model("s2-rgb", band_count=3)
    >>> a is b, resolve_model("s2-rgb", band_count=3)[0] is a
    (True, False)
    """
    token = _CACHE_SCOPE.set(tuple(str(s) for s in scope))
    try:
        yield
    finally:
        _CACHE_SCOPE.reset(token)


def model_cache_info() -> dict[str, Any]:
    """Models loaded and reused inside :func:`model_cache` in this process (on Dask workers: ``client.run``).

    Returns
    -------
    dict
        ``loads`` (models loaded), ``hits`` (calls that reused one), ``cached`` (models held now).
    """
    with _CACHE_LOCK:
        return {**_CACHE_STATS, "cached": len(_CACHE)}
