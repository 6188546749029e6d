"""Checks of a training run's settings and labels before anything is trained.

``_check_choice`` validates a setting against its choices; ``_check_label_classes`` checks that the training and
validation labels hold both classes, with a message naming the label values found (``_no_change_message``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.data.generic import Scene
from changedet.errors import ChangedetWarning, InputError


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value



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
