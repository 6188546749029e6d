"""changedet: find what changed on the ground between two georeferenced rasters.

The public entry points are re-exported lazily so that ``import changedet`` stays light (no torch import until a
model is needed):

>>> import changedet
>>> changedet.__version__  # doctest: +ELLIPSIS
'...'
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from changedet._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> "module:attribute"
_LAZY = {
    "detect": "changedet.api:detect",
    "detect_series": "changedet.series:detect_series",
    "ChangeResult": "changedet.api:ChangeResult",
    "open_pair": "changedet.io.alignment:open_pair",
    "check_pair": "changedet.io.alignment:check_pair",
    "align": "changedet.io.alignment:align",
    "vectorize": "changedet.vectorize:vectorize",
    "create_model": "changedet.models:create_model",
    "list_models": "changedet.models:list_models",
    "load_checkpoint": "changedet.models.checkpoint:load_checkpoint",
    "save_checkpoint": "changedet.models.checkpoint:save_checkpoint",
}

__all__ = ["__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # pragma: no cover
    from changedet.api import ChangeResult, detect  # noqa: F401
    from changedet.io.alignment import align, check_pair, open_pair  # noqa: F401
    from changedet.models import create_model, list_models  # noqa: F401
    from changedet.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401
    from changedet.series import detect_series  # noqa: F401
    from changedet.vectorize import vectorize  # noqa: F401


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'changedet' has no attribute {name!r}") from None
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
