"""Checks of a training run's settings and labels before anything is trained.

``_check_choice`` validates a setting against its choices (``OPTIMIZERS``, ``SCHEDULES``...); ``_check_settings``
checks the settings of :func:`~changedet.training.train` that need nothing read, in the order they have always been
checked; ``_check_label_classes`` checks that the training and validation labels hold both classes, with a message
naming the label values found (``_no_change_message``).
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.data.generic import Scene
from changedet.data.sampling import parse_normalization
from changedet.errors import ChangedetWarning, InputError


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


OPTIMIZERS = ("adam", "adamw", "sgd")

SCHEDULES = ("cosine", "step", "none")

#: The most torch threads a run takes (``changedet detect --threads`` has the same limits, 1..512).
MAX_THREADS = 512


def _check_threads(threads: Any) -> None:
    """An :class:`InputError` unless ``threads`` is None (torch's choice) or a whole number from 1 to 512."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or not 1 <= int(threads) <= MAX_THREADS):
        raise InputError(f"threads must be a whole number from 1 to {MAX_THREADS} (or null: torch's choice), "
                         f"got {threads!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _expected_kind(param: inspect.Parameter) -> str | None:
    """What a constructor parameter takes, from its annotation (or its default): "int", "number", "bool" or None
    (anything else, left to the constructor)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        default = param.default
        annotation = type(default).__name__ if isinstance(default, (bool, int, float)) else ""
    elif not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", "")
    members = {m.strip() for m in str(annotation).split("|")} - {"None"}
    if members == {"bool"}:
        return "bool"
    if members == {"int"}:
        return "int"
    if members and members <= {"int", "float"}:
        return "number"
    return None


def _check_kwargs_values(key: str, owner: str, params: Mapping[str, inspect.Parameter],
                         kwargs: Mapping[str, Any]) -> None:
    """An :class:`InputError` naming ``key.<name>`` for a value whose type the constructor's signature rules out
    (a word where a number belongs...); keys the constructor does not take are left to it."""
    wanted = {"int": "an integer", "number": "a number", "bool": "true/false"}
    for name, value in kwargs.items():
        param = params.get(name)
        kind = None if param is None else _expected_kind(param)
        if kind is None or (value is None and param is not None and "None" in str(param.annotation)):
            continue
        ok = (isinstance(value, bool) if kind == "bool"
              else isinstance(value, numbers.Integral) and not isinstance(value, bool) if kind == "int"
              else _is_number(value))
        if not ok:
            raise InputError(f"{key}.{name} must be {wanted[kind]} ({owner} option {name}), got {value!r}")


def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    return {k: v for k, v in inspect.signature(cls.__init__).parameters.items()  # type: ignore[misc]
            if k != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}


def _check_model_kwargs(model: str, model_kwargs: Mapping[str, Any] | None) -> None:
    if model_kwargs is None:
        return
    if not isinstance(model_kwargs, Mapping):
        raise InputError(f"model_kwargs must be a mapping of {model}'s options (e.g. {{dropout: 0.1}}), "
                         f"got {model_kwargs!r}")
    from changedet.errors import UnknownModelError
    from changedet.models.registry import model_class

    try:
        cls = model_class(model)
    except UnknownModelError:
        return  # create_model names the known architectures
    _check_kwargs_values("model_kwargs", f"model {model!r}", _init_params(cls), model_kwargs)


def _check_loss_kwargs(loss: str, loss_kwargs: Mapping[str, Any] | None, ohem: float | None) -> None:
    if loss_kwargs is None:
        return
    if not isinstance(loss_kwargs, Mapping):
        raise InputError(f"loss_kwargs must be a mapping of the loss's options (e.g. {{gamma: 2}}), got {loss_kwargs!r}")
    from changedet.losses import LOSSES
    from changedet.training.objective import OHEMLoss

    parts = [p.strip().lower() for p in loss.split("+")]
    params: dict[str, inspect.Parameter] = {}
    for cls in [OHEMLoss] if ohem else [LOSSES[p] for p in parts if p in LOSSES]:
        params = {**_init_params(cls), **params}
    _check_kwargs_values("loss_kwargs", f"loss {loss!r}", params, loss_kwargs)
    weights = loss_kwargs.get("weights")
    if weights is not None and not ohem and not (isinstance(weights, (list, tuple)) and all(_is_number(w) for w in weights)):
        raise InputError(f"loss_kwargs.weights must be a list of numbers, one per loss of {loss!r} "
                         f"(e.g. {[1.0] * len(parts)}), got {weights!r}")


def _check_augment(augment: Any) -> None:
    """Types and ranges of an ``augment`` mapping (or true/false), before anything is read."""
    from changedet.data.augment import Augment

    if isinstance(augment, Mapping):
        for key, value in augment.items():
            if key in ("flips", "rotations") and not (isinstance(value, bool) or (_is_number(value)
                                                                                and value in (0, 1))):
                raise InputError(f"augment.{key} must be true/false, got {value!r}")
            # date_swap: true/false were always taken (always / never swap), as the probabilities 1 and 0
            if key == "date_swap" and not (isinstance(value, bool) or _is_number(value)):
                raise InputError(f"augment.date_swap must be a probability from 0 to 1 (or true/false), got {value!r}")
            if key in ("gain", "offset") and not _is_number(value):
                raise InputError(f"augment.{key} must be a number, got {value!r}")
        augment = dict(augment)
    Augment.from_config(augment)


def _check_settings(
    *,
    loss: str,
    optimizer: str,
    schedule: str,
    threshold_method: str,
    probability_calibration: str,
    pos_weight: float | str | None,
    epochs: int,
    chips_per_epoch: int,
    batch_size: int,
    chip_size: int,
    val_every: int,
    val_tile_size: int,
    normalization: str | Mapping[str, Any],
    patience: int | None,
    lr: float,
    ema: float | None,
    name: str,
    threads: int | None = None,
    num_workers: int = 0,
    augment: Any = True,
    model: str = "",
    model_kwargs: Mapping[str, Any] | None = None,
    loss_kwargs: Mapping[str, Any] | None = None,
    ohem: float | None = None,
    min_valid: float = 0.5,
    positive_fraction: float = 0.5,
) -> None:
    """Raise an :class:`InputError` for the first setting that is not usable; nothing is read or created."""
    if not isinstance(loss, str) or not loss:
        raise InputError(f"loss must be a name such as 'bce' or 'bce+dice', got {loss!r}")
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("threshold_method", threshold_method, ("f1", "otsu", "fixed"))
    _check_choice("probability_calibration", probability_calibration, ("platt", "none"))
    if isinstance(pos_weight, str) and pos_weight != "auto":
        raise InputError(f"pos_weight must be a number, 'auto' or null, got {pos_weight!r}")
    if pos_weight is not None and not isinstance(pos_weight, str) and not (_is_number(pos_weight) and pos_weight > 0):
        raise InputError(f"pos_weight must be a number > 0 (the weight of a change pixel in the BCE loss), 'auto' or "
                         f"null, got {pos_weight!r}")
    for key, value in (("min_valid", min_valid), ("positive_fraction", positive_fraction)):
        if not (_is_number(value) and 0.0 <= value <= 1.0):
            raise InputError(f"{key} must be a fraction from 0 to 1, got {value!r}")
    for key, value, low in (("epochs", epochs, 1), ("chips_per_epoch", chips_per_epoch, 1),
                            ("batch_size", batch_size, 1), ("chip_size", chip_size, 8), ("val_every", val_every, 1),
                            ("val_tile_size", val_tile_size, 2 * 64 + 1)):  # predict_scene's overlap is 64
        if not isinstance(value, int) or value < low:
            raise InputError(f"{key} must be an integer >= {low}, got {value!r}")
    parse_normalization(normalization)  # unknown keys, a mean without a std...: before anything is read
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience must be >= 1 or null (never stop early), got {patience!r}")
    if lr <= 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 < ema < 1.0):
        raise InputError(f"ema must be a decay between 0 and 1 (e.g. 0.99) or null, got {ema!r}")
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise InputError(f"name must be a file name without folders (the checkpoint's stem inside out), got {name!r}")
    _check_threads(threads)
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise InputError(f"num_workers must be a whole number >= 0 (0: chips are cut in the main process), "
                         f"got {num_workers!r}")
    _check_augment(augment)
    _check_model_kwargs(model, model_kwargs)
    _check_loss_kwargs(loss, loss_kwargs, ohem)


def _class_counts(scenes: Sequence[Scene]) -> tuple[int, int]:
    """(changed, unchanged) valid labelled pixels of scenes."""
    changed = unchanged = 0
    for s in scenes:
        if s.label is None:
            continue
        n_valid = int(np.count_nonzero(s.valid))
        n_changed = int(np.count_nonzero(s.label[s.valid]))
        changed += n_changed
        unchanged += n_valid - n_changed
    return changed, unchanged



def _scene_names(scenes: Sequence[Scene], limit: int = 5) -> str:
    names = [s.name for s in scenes]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")



def _no_change_message(scenes: Sequence[Scene], dataset: Mapping[str, Any] | None) -> str:
    """Why the training scenes hold no changed pixel: the label values found and the change_values that match none."""
    from changedet.data.generic import _label_values

    files = [Path(str(s.meta["label"])) for s in scenes if s.meta.get("label")][:5]
    found: set[float] = set()
    for f in files:
        with contextlib.suppress(InputError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found |= _label_values(f)
    shown = "{" + ", ".join(f"{v:g}" for v in sorted(found)[:10]) + (", ..." if len(found) > 10 else "") + "}"
    where = f" ({', '.join(str(f) for f in files[:3])}{' ...' if len(files) > 3 else ''})" if files else ""
    change_values = dataset.get("change_values") if isinstance(dataset, Mapping) else None
    head = f"the training scenes ({_scene_names(scenes)}) hold no changed pixel, so there is nothing to learn"
    if change_values is not None:
        values = f" {shown}{where}" if files else ""
        return (f"{head}: change_values {change_values} matches none of their labels' values{values}; set "
                "change_values to the value(s) that mark change" + (f" (e.g. [{max(found):g}])" if found - {0.0} else ""))
    if files:
        return (f"{head}: their labels hold only the values {shown}{where}, read as no change; check the labels, "
                "or say which values are change with change_values")
    return f"{head}: every labelled pixel is 0 (no change); give scenes whose labels hold change"



def _check_label_classes(train: Sequence[Scene], val: Sequence[Scene], dataset: Mapping[str, Any] | None) -> bool:
    """Check that the splits' labels hold both classes: an :class:`InputError` when the training scenes hold no
    changed pixel, a :class:`~changedet.errors.ChangedetWarning` when a split holds one class only. Returns whether
    the validation scenes hold change (else their F1 is undefined and the epoch is chosen by validation loss)."""
    changed, unchanged = _class_counts(train)
    if changed == 0:
        raise InputError(_no_change_message(train, dataset))
    if unchanged == 0:
        warnings.warn(
            f"the training scenes ({_scene_names(train)}) hold only changed pixels, no unchanged one: check the "
            "labels (a label tagged with nodata 0 loses its no-change class) and change_values", ChangedetWarning,
            stacklevel=3,
        )
    if not val:
        return True
    changed, unchanged = _class_counts(val)
    if changed == 0:
        warnings.warn(
            f"the validation scenes ({_scene_names(val)}) hold no changed pixel: their F1 is undefined, so the "
            "best epoch is chosen by validation loss and the threshold is not calibrated (0.5); add a validation "
            "scene with change (val_names...) for F1-based selection and calibration", ChangedetWarning,
            stacklevel=3,
        )
        return False
    if unchanged == 0:
        warnings.warn(
            f"the validation scenes ({_scene_names(val)}) hold only changed pixels, no unchanged one: their scores "
            "and the calibrated threshold say little; check the labels (a label tagged with nodata 0 loses its "
            "no-change class) and change_values", ChangedetWarning, stacklevel=3,
        )
    return True
