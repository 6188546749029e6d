"""Build train/validation scenes from a dataset mapping (the ``dataset:`` entry of a ``changedet train`` config).

Examples of specs (YAML)::

    dataset: {type: oscd, root: ../shared/data/oscd, val_cities: [bercy, rennes], bands: [B04, B03, B02]}
    dataset: {type: airchange, root: ../shared/data/sztaki-airchange, val_pairs: [Szada/7, Tiszadob/5]}
    dataset: {type: folders, root: LEVIR-CD, split: train, val_split: val, pixel_size: 0.5}
    dataset: {type: list, path: pairs.csv, val_names: [site3], change_values: [255]}

For OSCD and AirChange, the training scenes default to every labelled city/pair on disk that is not in the
validation or test set. ``test_cities`` / ``test_pairs`` / ``test_names`` name scenes held out for a final test:
they are never read for training or validation, only recorded (``DatasetSplit.info["test"]``) for evaluation
scripts such as ``scripts/reproduce.py``. Relative paths are resolved against ``base`` (the config file's folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changedet.data.generic import Scene
from changedet.errors import InputError

__all__ = ["DatasetSplit", "load_dataset", "resolve_paths"]

#: Keys of a dataset mapping that hold paths (relative ones resolve against ``base``).
PATH_KEYS = ("root", "path", "val_root", "val_path")

_KEYS: dict[str, set[str]] = {
    "oscd": {"root", "cities", "val_cities", "test_cities", "bands"},
    "airchange": {"root", "pairs", "val_pairs", "test_pairs", "crop", "val_crop"},
    "folders": {
        "root", "split", "names", "val_root", "val_split", "val_names", "test_names", "before_dir", "after_dir",
        "label_dir", "pixel_size", "band_names", "change_values", "no_change_values",
    },
    "list": {
        "path", "names", "val_path", "val_names", "test_names", "bands", "change_values", "no_change_values",
        "pixel_size",
    },
}  # fmt: skip


@dataclass
class DatasetSplit:
    """Training and validation scenes plus a JSON-safe description of the split (stored in checkpoints)."""

    train: list[Scene]
    val: list[Scene]
    info: dict[str, Any] = field(default_factory=dict)


def _path(value: Any, base: Path | None) -> Path:
    p = Path(str(value)).expanduser()
    return (p if p.is_absolute() or base is None else base / p).resolve()


def resolve_paths(spec: Mapping[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """A copy of a dataset mapping whose paths (:data:`PATH_KEYS`) are absolute: relative ones resolved against
    ``base`` (the config file's folder), or the current directory without it. What a checkpoint records, so that
    ``changedet calibrate`` finds the data again from any folder."""
    out = dict(spec)
    base_path = Path(base).expanduser() if base is not None else None
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, (str, Path)) and str(value) and "://" not in str(value):
            out[key] = str(_path(value, base_path.resolve() if base_path is not None else Path.cwd()))
    return out


def _check_disjoint(train: list[str], val: list[str], test: list[str]) -> None:
    for a_name, a, b_name, b in (("training", train, "validation", val), ("training", train, "test", test),
                                 ("validation", val, "test", test)):
        overlap = sorted(set(a) & set(b))
        if overlap:
            raise InputError(f"{overlap} are in both the {a_name} and the {b_name} set")


def _names(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise InputError(f"dataset {key} must be a list of names, got {value!r}")


#: Keys of a dataset mapping that list scene names.
NAME_KEYS = ("cities", "val_cities", "test_cities", "pairs", "val_pairs", "test_pairs", "names", "val_names",
             "test_names")


def _numeric_names(spec: Mapping[str, Any]) -> list[str]:
    """The scene names that YAML read as numbers (``4_4`` is the integer 44 to YAML), as :func:`_names` writes
    them."""
    found: list[str] = []
    for key in NAME_KEYS:
        value = spec.get(key)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                found.append(str(v))
    return found


def _yaml_number_hint(exc: InputError, numeric: list[str]) -> InputError | None:
    """The error about names that are not there, with a hint when some of those names were numbers in YAML:
    YAML reads unquoted digits joined by underscores (DSIFN's ``4_4``) as one integer (44), and the original text
    cannot be recovered, so the user is told to quote the names."""
    import re

    message = str(exc)
    shown = [n for n in dict.fromkeys(numeric) if re.search(rf"(?<![\w.]){re.escape(n)}(?![\w.])", message)]
    if not shown or type(exc) is not InputError:
        return None
    return InputError(
        f"{message}. {', '.join(shown)} {'was' if len(shown) == 1 else 'were'} read by YAML as "
        f"{'a number' if len(shown) == 1 else 'numbers'}: YAML reads unquoted digits joined by underscores as one "
        "integer (4_4 becomes 44); quote the scene names, e.g. val_names: ['4_4'] (on the command line: "
        "--dataset.val-names \"['4_4']\")"
    )


def _check_value_types(spec: Mapping[str, Any]) -> None:
    """An :class:`InputError` naming the key for a dataset value of the wrong type (before any file is read)."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for key in ("change_values", "no_change_values"):
        value = spec.get(key)
        if value is not None and not (number(value) or (isinstance(value, (list, tuple)) and value
                                                         and all(number(v) for v in value))):
            raise InputError(f"dataset {key} must be a number or a list of numbers (e.g. [2] or [1, 2]), got {value!r}")
    value = spec.get("pixel_size")
    if value is not None and not (number(value) and value > 0):
        raise InputError(f"dataset pixel_size must be a positive number of metres (e.g. 10), got {value!r}")
    for key in ("bands", "band_names"):
        value = spec.get(key)
        if value is not None and not isinstance(value, (str, list, tuple)):
            raise InputError(f"dataset {key} must be a list of band names (e.g. [B04, B03, B02]), got {value!r}")
    for key in ("crop", "val_crop"):
        value = spec.get(key)
        if value and not (isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, int) for v in value)):
            raise InputError(f"dataset {key} must be four integers [row_off, col_off, height, width], got {value!r}")
    for key in PATH_KEYS:
        value = spec.get(key)
        if value is not None and not isinstance(value, (str, Path)):
            raise InputError(f"dataset {key} must be a path, got {value!r}")


def load_dataset(spec: Mapping[str, Any], *, base: str | Path | None = None) -> DatasetSplit:
    """Read the scenes a dataset spec names, split into training and validation.

    Parameters
    ----------
    spec : mapping
        ``type`` (``oscd``, ``airchange``, ``folders`` or ``list``) and that type's keys (see the module docstring).
    base : path, optional
        Folder against which relative paths are resolved.

    Returns
    -------
    DatasetSplit
    """
    if not isinstance(spec, Mapping):
        raise InputError(f"dataset must be a mapping with a 'type' key, got {spec!r}")
    kind = spec.get("type")
    if kind not in _KEYS:
        raise InputError(f"unknown dataset type {kind!r}; choose one of {', '.join(sorted(_KEYS))}")
    unknown = set(spec) - _KEYS[kind] - {"type"}
    if unknown:
        raise InputError(
            f"unknown key(s) {sorted(unknown)} for a {kind} dataset; known keys: {', '.join(sorted(_KEYS[kind]))}"
        )
    _check_value_types(spec)
    numeric = _numeric_names(spec)
    try:
        return _load(spec, kind, base)
    except InputError as exc:
        hinted = _yaml_number_hint(exc, numeric) if numeric else None
        if hinted is None:
            raise
        raise hinted from exc


def _load(spec: Mapping[str, Any], kind: str, base: str | Path | None) -> DatasetSplit:
    """:func:`load_dataset` once the spec's keys and value types are checked."""
    base_path = None if base is None else Path(base)
    info: dict[str, Any] = {"type": kind}
    if kind == "oscd":
        from changedet.data.oscd import list_oscd_cities, read_oscd

        root = _path(spec.get("root"), base_path) if spec.get("root") else None
        if root is None:
            raise InputError("an oscd dataset needs 'root' (the OSCD folder)")
        on_disk = list_oscd_cities(root)
        val = _names(spec.get("val_cities"), "val_cities") or []
        test = _names(spec.get("test_cities"), "test_cities") or []
        train = _names(spec.get("cities"), "cities") or [c for c in on_disk if c not in val and c not in test]
        for city in [*train, *val, *test]:
            if city not in on_disk:
                raise InputError(f"OSCD city {city!r} has no label on disk under {root}; labelled: {', '.join(on_disk)}")
        _check_disjoint(train, val, test)
        bands = spec.get("bands")
        bands = _names(bands, "bands") if bands is not None else None
        info.update(root=str(root), train=train, val=val, test=test, bands=bands)
        return DatasetSplit(
            [read_oscd(root, c, bands=bands) for c in train], [read_oscd(root, c, bands=bands) for c in val], info
        )
    if kind == "airchange":
        from changedet.data.airchange import list_airchange_pairs, read_airchange

        if not spec.get("root"):
            raise InputError("an airchange dataset needs 'root' (the AirChange folder)")
        root = _path(spec["root"], base_path)
        on_disk = list_airchange_pairs(root)
        val = _names(spec.get("val_pairs"), "val_pairs") or []
        test = _names(spec.get("test_pairs"), "test_pairs") or []
        train = _names(spec.get("pairs"), "pairs") or [p for p in on_disk if p not in val and p not in test]
        for pair in [*train, *val, *test]:
            if pair not in on_disk:
                raise InputError(f"AirChange pair {pair!r} not found under {root}; pairs on disk: {', '.join(on_disk)}")
        _check_disjoint(train, val, test)
        crop = tuple(spec["crop"]) if spec.get("crop") else None
        val_crop = tuple(spec["val_crop"]) if spec.get("val_crop") else None
        info.update(root=str(root), train=train, val=val, test=test)
        return DatasetSplit(
            [read_airchange(root, p, crop=crop) for p in train],  # type: ignore[arg-type]
            [read_airchange(root, p, crop=val_crop) for p in val],  # type: ignore[arg-type]
            info,
        )
    if kind == "folders":
        from changedet.data.folders import read_folders

        if not spec.get("root"):
            raise InputError("a folders dataset needs 'root' (the folder holding A/, B/ and label/)")
        root = _path(spec["root"], base_path)
        common = {
            k: spec[k] for k in ("before_dir", "after_dir", "label_dir", "pixel_size", "band_names", "change_values",
                                 "no_change_values") if k in spec
        }
        val_scenes: list[Scene] = []
        val_set: set[str] = set()
        if spec.get("val_root") or spec.get("val_split") or spec.get("val_names"):
            val_root = _path(spec["val_root"], base_path) if spec.get("val_root") else root
            val_scenes = read_folders(
                val_root, split=spec.get("val_split"), names=_names(spec.get("val_names"), "val_names"), **common
            )
            val_set = {s.name for s in val_scenes} if val_root == root else set()
        test = _names(spec.get("test_names"), "test_names") or []
        train_names = _names(spec.get("names"), "names")
        if val_set or test:  # each scene read once: not the validation and test scenes again for training
            from changedet.data.folders import list_folder_pairs

            dirs = {k: spec[k] for k in ("before_dir", "after_dir", "label_dir") if k in spec}
            listed = list_folder_pairs(root, split=spec.get("split"), warn_unmatched=False, **dirs)
            train_names = [n for n in (train_names if train_names is not None else listed)
                           if n not in val_set and n not in test]
        train_scenes = read_folders(root, split=spec.get("split"), names=train_names, **common)
        _check_disjoint([s.name for s in train_scenes], [s.name for s in val_scenes], test)
        info.update(root=str(root), train=[s.name for s in train_scenes], val=[s.name for s in val_scenes], test=test)
        return DatasetSplit(train_scenes, val_scenes, info)
    # list
    from changedet.data.generic import read_list

    if not spec.get("path"):
        raise InputError("a list dataset needs 'path' (a CSV or YAML list of before/after/label rasters)")
    path = _path(spec["path"], base_path)
    common = {k: spec[k] for k in ("bands", "change_values", "no_change_values", "pixel_size") if k in spec}
    val_names = _names(spec.get("val_names"), "val_names")
    test = _names(spec.get("test_names"), "test_names") or []
    if spec.get("val_path"):
        val_scenes = read_list(_path(spec["val_path"], base_path), names=val_names, **common)
        train_scenes = read_list(path, names=_names(spec.get("names"), "names"), **common)
    else:
        names = _names(spec.get("names"), "names")
        wanted = None if names is None else sorted(set(names) | set(val_names or []))
        all_scenes = read_list(path, names=wanted, **common)
        if val_names:
            missing = set(val_names) - {s.name for s in all_scenes}
            if missing:
                raise InputError(f"{path}: no rows named {', '.join(sorted(missing))} for validation")
        val_scenes = [s for s in all_scenes if val_names and s.name in val_names]
        train_scenes = [
            s for s in all_scenes if (not val_names or s.name not in val_names) and (names is None or s.name in names)
        ]
    train_scenes = [s for s in train_scenes if s.name not in test]
    _check_disjoint([s.name for s in train_scenes], [s.name for s in val_scenes], test)
    info.update(path=str(path), train=[s.name for s in train_scenes], val=[s.name for s in val_scenes], test=test)
    return DatasetSplit(train_scenes, val_scenes, info)
