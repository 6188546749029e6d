"""The files a detect run writes: their names, the check of the output folder, the pieces of ``report.json``, the
QGIS styles and project, and the small atomic writers (a temporary name renamed when complete).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from changedet.errors import InputError, OutputError, OutputExistsError

#: Files a detect run writes into its output folder.
OUTPUT_NAMES = {
    "probability": "probability.tif",
    "change": "change.tif",
    "gpkg": "changes.gpkg",
    "geojson": "changes.geojson",
    "report": "report.json",
    "quicklook": "quicklook.png",
    "project": "project.qgs",
}
_SIDE_CARS = ("probability.qml", "change.qml", "changes.qml")

#: Files a series run writes at the top of its output folder (plus one ``pair_NN_<before>_<after>`` folder per pair);
#: :data:`changedet.series.SERIES_OUTPUT_NAMES`.
SERIES_OUTPUT_NAMES = {
    "change_count": "change_count.tif",
    "first_change": "first_change.tif",
    "last_change": "last_change.tif",
    "gpkg": "changes.gpkg",
    "geojson": "changes.geojson",
    "report": "report.json",
    "quicklook": "quicklook.png",
    "project": "project.qgs",
}
#: QGIS styles written beside the series rasters and polygons (``changes.qml`` with the polygons only).
SERIES_SIDE_CARS = ("change_count.qml", "first_change.qml", "last_change.qml", "changes.qml")
#: A series' pair folder (``pair_01_2019-05-01_2020-05-01``, :func:`changedet.series.pair_dir_name`).
_PAIR_DIR = re.compile(r"pair_\d{2,}_.+")
#: Every file a detect run of either kind (two dates or a series) writes at the top of its output folder: the only
#: names, with the pair folders, that ``--overwrite`` removes when the new run does not write them.
_KNOWN_OUTPUTS = tuple(dict.fromkeys((*OUTPUT_NAMES.values(), *_SIDE_CARS, *SERIES_OUTPUT_NAMES.values(),
                                      *SERIES_SIDE_CARS)))


def _check_outputs(output_dir: Path, names: Sequence[str], overwrite: bool, resume: bool) -> None:
    try:
        output_dir.exists()
    except OSError as exc:  # a name longer than the file system allows (ENAMETOOLONG), say
        raise OutputError(f"{output_dir}: cannot write there ({exc.strerror or exc}); choose another output "
                          "folder") from None
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder; give a folder path with -o/--output-dir")
    existing = [n for n in names if (output_dir / n).exists()]
    if existing and resume and not overwrite and not (output_dir / ".changedet-partial" / "journal.json").is_file():
        raise OutputExistsError(
            f"{output_dir}: {', '.join(existing)} already exist(s) and there is nothing to resume there (no "
            "interrupted run's journal); pass --overwrite (overwrite=True) to replace them, or choose another folder"
        )
    if existing and not (overwrite or resume):
        raise OutputExistsError(
            f"{output_dir}: {', '.join(existing)} already exist(s); pass --overwrite (overwrite=True) to replace "
            "them, or choose another output folder"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".changedet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"{output_dir}: cannot write there ({exc.strerror or exc}); choose a writable output folder"
        ) from exc


def _remove_outputs_not_written(out: Path, names: Sequence[str]) -> None:
    """Remove the outputs of an earlier run in ``out`` that this run (``--overwrite``/``--resume``) did not write,
    two-date or series outputs alike: polygons left from a run that vectorised, beside a new ``change.tif`` made
    without ``--vectorize``, would describe another scene (and :meth:`ChangeResult.load` would read them); a series'
    ``change_count.tif`` and pair folders beside a new two-date ``report.json`` (or a pair's ``change.tif`` beside a
    series) would describe another run.

    Only the names a detect run writes are touched (:data:`_KNOWN_OUTPUTS`, a style only when its layer is not
    written, and ``pair_NN_*`` folders holding a ``change.tif`` or ``probability.tif``): never another file. The
    other kind's outputs go only when an earlier run's ``report.json`` is still in ``out`` (the new one is moved in
    after this call): a finished run, which this one may replace only under ``--overwrite``/``--resume``; files
    of those names without it are someone else's.
    """
    keep = set(names)
    series = bool(keep & (set(SERIES_OUTPUT_NAMES.values()) - set(OUTPUT_NAMES.values())))
    own = (*SERIES_OUTPUT_NAMES.values(), *SERIES_SIDE_CARS) if series else (*OUTPUT_NAMES.values(), *_SIDE_CARS)
    earlier_run = (out / OUTPUT_NAMES["report"]).is_file()
    for name in _KNOWN_OUTPUTS if earlier_run else own:
        stem, ext = os.path.splitext(name)
        if name in keep or (ext == ".qml" and {f"{stem}.tif", f"{stem}.gpkg"} & keep):
            continue  # written by this run, or the style of a layer it writes
        path = out / name
        if path.is_file() or path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for item in list(out.iterdir()) if out.is_dir() and (series or earlier_run) else []:
        if (item.name not in keep and _PAIR_DIR.fullmatch(item.name) and item.is_dir() and not item.is_symlink()
                and any((item / f).exists() for f in (OUTPUT_NAMES["change"], OUTPUT_NAMES["probability"]))):
            shutil.rmtree(item)


_XARRAY_TMP_PREFIX = "changedet-xarray-"  # the folder of the GeoTIFFs written from xarray inputs


def _in_memory(name: str) -> bool:
    """Whether an input's file is the temporary GeoTIFF written from an xarray input (gone with the result)."""
    return Path(name).parent.name.startswith(_XARRAY_TMP_PREFIX)


def _abspath(name: str) -> str | None:
    """The absolute path of an input file for the report; None for an in-memory (xarray) input."""
    if _in_memory(name):
        return None
    p = Path(name)
    return str(p.resolve()) if p.exists() else name


def _relpath(name: str, out: Path) -> str | None:
    """An input file's path relative to the output folder ``out`` (what survives moving both together, e.g. a
    whole site folder: ``changedet export qgis`` falls back to it); None for an in-memory input or another drive."""
    path = _abspath(name)
    if path is None or not Path(path).is_absolute():
        return None
    try:
        return os.path.relpath(path, Path(out).resolve())
    except ValueError:  # another drive (Windows)
        return None


def _info_dict(pair: Any, which: str) -> dict[str, Any]:
    info = getattr(pair, f"{which}_info", None)
    if info is None:
        return {}
    d = info.to_dict() if hasattr(info, "to_dict") else {}
    return {k: d.get(k) for k in ("path", "driver", "crs", "width", "height", "count", "dtypes", "nodata", "res",
                                  "date", "descriptions") if k in d}


def _pair_report(pair: Any) -> dict[str, Any]:
    rep = getattr(pair, "report", None)
    if rep is None:
        return {}
    return rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)


def _summary(stats: Any, polygons: Any, areas: tuple[float | None, float | None]) -> dict[str, Any]:
    """The report's summary; ``areas`` (valid, changed m^2) from :func:`changedet.geodesy.area_summary`."""
    valid, changed = int(stats.valid_pixels), int(stats.changed_pixels)
    return {
        "valid_pixels": valid,
        "changed_pixels": changed,
        "changed_percent": round(100.0 * changed / valid, 4) if valid else 0.0,
        "valid_area_m2": areas[0],
        "changed_area_m2": areas[1],
        "n_polygons": len(polygons) if polygons is not None else None,
        "nothing_to_compare": valid == 0,
    }


def _iso(d: Any) -> str | None:
    return d.isoformat() if isinstance(d, (_dt.date, _dt.datetime)) else (str(d) if d else None)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


def _write_styles(staging: Path, thr: float) -> None:
    """QGIS styles: ``.qml`` sidecars of every layer and the default style embedded in the GeoPackage."""
    from changedet.export import change_style_qml, probability_style_qml

    # the polygon style (embedded in the GeoPackage + changes.qml) is written by export.write_vectors
    sidecars = {"probability": probability_style_qml(thr), "change": change_style_qml()}
    for stem, text in sidecars.items():
        _write_text(staging / f"{stem}.qml", text)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_project(out: Path, thr: float, source_names: tuple[str, str]) -> None:
    """``project.qgs`` in ``out``, with BEFORE and AFTER when they are files (paths stored relative)."""
    from changedet.export import write_qgis_project

    # in-memory (xarray) inputs are left out: their temporary GeoTIFFs go away with the result
    inputs = [Path(n).resolve() if Path(n).is_file() and not _in_memory(n) else None for n in source_names]
    write_qgis_project(out, before=inputs[0], after=inputs[1], threshold=thr, path=OUTPUT_NAMES["project"])
