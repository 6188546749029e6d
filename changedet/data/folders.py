"""Reader of the A/B/label folder layout of LEVIR-CD, DSIFN-CD, WHU-CD and the BIT / ChangeFormer code bases.

Layout::

    <root>/A/<name>.png        before
    <root>/B/<name>.png        after
    <root>/label/<name>.png    0 = no change, 255 (or 1) = change
    <root>/list/train.txt      optional: one file name per line (train.txt, val.txt, test.txt, demo.txt)

Other folder names are accepted (``before_dir``, ``after_dir``, ``label_dir``), as are GeoTIFFs (a georeferenced
pair keeps its CRS and transform).

>>> from changedet.data import read_folders  # doctest: +SKIP
>>> scenes = read_folders("/data/LEVIR-CD", split="val")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from changedet.data.generic import Scene, oscd_no_change_labels, read_pair_files, read_text
from changedet.errors import InputError

__all__ = ["list_folder_pairs", "read_folders"]

_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _files(folder: Path) -> dict[str, Path]:
    """Image files by stem; hidden files (macOS ``._name`` forks, ``.DS_Store``) are skipped, and two images of
    one stem (``p1.png`` and ``p1.jpg``) are an error, since either could be meant."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in _SUFFIXES:
            continue
        if p.stem in out:
            raise InputError(f"{folder}: {out[p.stem].name} and {p.name} are both pair {p.stem!r}; keep one of them")
        out[p.stem] = p
    return out


def list_folder_pairs(
    root: str | Path,
    *,
    split: str | None = None,
    before_dir: str = "A",
    after_dir: str = "B",
    label_dir: str = "label",
    warn_unmatched: bool = True,
) -> list[str]:
    """Names (file stems) of the pairs in an A/B/label folder, in list order when ``split`` names a list file.

    ``split`` is the stem of a file in ``<root>/list/`` (``"train"``, ``"val"``, ``"test"``, ``"demo"``); without it,
    every name present in A, B and label is listed (sorted), and (``warn_unmatched``) a warning names the files
    left out because the other folders have no file of that name.
    """
    root = Path(root).expanduser()
    dirs = {k: root / d for k, d in (("before", before_dir), ("after", after_dir), ("label", label_dir))}
    missing = [str(p) for p in dirs.values() if not p.is_dir()]
    if missing:
        raise InputError(
            f"{root}: missing folder(s) {', '.join(missing)}; expected the A/B/label layout of LEVIR-CD "
            "(set before_dir/after_dir/label_dir for other names)"
        )
    files = {k: _files(d) for k, d in dirs.items()}
    present = set(files["before"]) & set(files["after"]) & set(files["label"])
    if split is None:
        names = sorted(present)
        unmatched = sorted(str(p.relative_to(root)) for f in files.values() for n, p in f.items() if n not in present)
        if unmatched and warn_unmatched:
            warnings.warn(
                f"{root}: {len(unmatched)} file(s) left out, with no file of the same name in the other folders of "
                f"{before_dir}/, {after_dir}/, {label_dir}/: {', '.join(unmatched[:5])}"
                + (" ..." if len(unmatched) > 5 else ""), UserWarning, stacklevel=2,
            )
    else:
        list_file = root / "list" / f"{split}.txt"
        if not list_file.is_file():
            lists = sorted(p.stem for p in (root / "list").glob("*.txt")) if (root / "list").is_dir() else []
            raise InputError(f"{list_file}: no such list; lists present: {', '.join(lists) or 'none'}")
        text = read_text(list_file, encoding="utf-8-sig", what="list")
        names = [Path(line.strip()).stem for line in text.splitlines() if line.strip()]
        absent = [n for n in names if n not in present]
        if absent:
            raise InputError(
                f"{list_file}: {len(absent)} listed pair(s) lack an A, B or label file, e.g. {absent[0]!r}"
            )
    if not names:
        raise InputError(f"{root}: no pair found with the same name in {before_dir}/, {after_dir}/ and {label_dir}/")
    return names


def read_folders(
    root: str | Path,
    *,
    split: str | None = None,
    names: Sequence[str] | None = None,
    before_dir: str = "A",
    after_dir: str = "B",
    label_dir: str = "label",
    pixel_size: float | None = None,
    band_names: Sequence[str] | None = None,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
) -> list[Scene]:
    """Read the pairs of an A/B/label folder as :class:`~changedet.data.Scene` objects.

    Parameters
    ----------
    root : path
        Folder holding A/, B/ and label/.
    split : str, optional
        Read only the pairs named in ``list/<split>.txt``.
    names : sequence of str, optional
        Read only these pairs (file stems).
    pixel_size : float, optional
        Nominal pixel size in metres for non-georeferenced images (LEVIR-CD: 0.5).
    band_names : sequence of str, optional
        Band names (default ``red, green, blue`` for 3-band images, else the file's descriptions).
    change_values, no_change_values : sequence of float, optional
        Which label values are change (and which no change; others unknown), for labels that are not 0/1, 0/255
        or 1/2, e.g. JPEG labels (``change_values`` as in :func:`~changedet.data.read_pair_files`). Without them,
        labels of 1/2 (OSCD) anywhere in the folder make the all-1 labels (scenes without change) no change.
    """
    root = Path(root).expanduser()
    all_names = list_folder_pairs(root, split=split, before_dir=before_dir, after_dir=after_dir, label_dir=label_dir)
    if names is not None:
        unknown = [n for n in names if n not in all_names]
        if unknown:
            raise InputError(f"{root}: no pair named {', '.join(unknown)}")
        all_names = [n for n in all_names if n in set(names)]
    before_files, after_files, label_files = (_files(root / d) for d in (before_dir, after_dir, label_dir))
    no_change: set[Path] = set()
    if change_values is None and no_change_values is None:
        every = list_folder_pairs(root, before_dir=before_dir, after_dir=after_dir, label_dir=label_dir,
                                  warn_unmatched=False)
        no_change = oscd_no_change_labels([label_files[n] for n in every])
    scenes = []
    for name in all_names:
        oscd_none = label_files[name] in no_change  # OSCD's all-1 label of a scene without change
        scene = read_pair_files(
            before_files[name], after_files[name], label_files[name], name=name, pixel_size=pixel_size,
            change_values=[2.0] if oscd_none else change_values,
            no_change_values=[1.0] if oscd_none else no_change_values,
        )
        if band_names is not None:
            if len(band_names) != scene.count:
                raise InputError(f"{before_files[name]}: {scene.count} bands but {len(band_names)} band names given")
            scene.band_names = list(band_names)
        elif scene.count == 3 and all(n.startswith("band") for n in scene.band_names):
            scene.band_names = ["red", "green", "blue"]
        scenes.append(scene)
    return scenes
