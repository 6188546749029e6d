"""The pairs CSV of a batch run: :class:`BatchPair` and :func:`read_pairs` (paths resolved, names derived), and
the test for remote inputs (URLs, GDAL paths) that the other modules share."""

from __future__ import annotations

import collections
import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from changedet.errors import InputError


@dataclass(frozen=True)
class BatchPair:
    """One row of a pairs CSV: the two dates (absolute paths or URLs) and the name of its output folder."""

    name: str
    before: str
    after: str
    line: int = 0


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GDAL_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]+:")  # NETCDF:..., HDF5:..., GPKG:... connection strings
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _is_remote(text: str) -> bool:
    return bool(_URL.match(text) or text.startswith("/vsi") or _GDAL_PREFIX.match(text))


def _resolve(text: str, base: Path) -> str:
    if _is_remote(text):
        return text
    p = Path(text).expanduser()
    return str((p if p.is_absolute() else base / p).resolve())


def _stem(text: str) -> tuple[str, str]:
    """(file stem, parent folder name) of a path or URL."""
    path = PurePosixPath(urlparse(text).path if _URL.match(text) else text.replace("\\", "/"))
    return path.stem, path.parent.name


def _sanitise(name: str) -> str:
    return _SAFE_NAME.sub("_", name).strip("._") or "pair"


def read_pairs(csv_path: str | os.PathLike[str], keep_names: Iterable[BatchPair] = ()) -> list[BatchPair]:
    """Read a pairs CSV: a header with ``before`` and ``after`` columns and an optional ``name`` column.

    Relative paths are resolved against the CSV's folder; URLs and GDAL paths (``/vsis3/...``, ``https://...``)
    are kept as they are. A missing ``name`` is derived from the file names (``<before>__<after>``, with the
    parent folder name when that is ambiguous, then ``-2``, ``-3`` ...), so names are unique (case-insensitively).
    Other columns are ignored.

    A derived name depends on the other rows (a row added later can make it ambiguous), so a re-run into the same
    output folder passes the pairs of that folder's ``batch-report.json`` as ``keep_names`` (:func:`run_batch`
    does): a row without a name whose ``before`` and ``after`` are those of a recorded pair keeps the recorded
    name, and the other derived names avoid every recorded one. Names are thus stable from one run to the next:
    appending rows to the CSV never renames (and recomputes) a pair that is already done.

    Parameters
    ----------
    csv_path
        The CSV file (UTF-8, a BOM is accepted).
    keep_names
        Pairs of an earlier run (resolved paths, as :attr:`BatchPair.before` / ``after``) whose names rows with the
        same inputs keep; empty (default) derives every name from this CSV alone.

    Returns
    -------
    list of BatchPair
        In file order.

    Raises
    ------
    InputError
        The file cannot be read, lacks a column, has empty cells, invalid or duplicate names; the message names
        the file and lists every problem with its line number.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "pairs.csv").write_text("before,after\\nsiteA/2019.tif,siteA/2020.tif\\n"
    ...                                        "siteB/2019.tif,siteB/2020.tif\\n")
    >>> [p.name for p in read_pairs(folder / "pairs.csv")]
    ['siteA_2019__2020', 'siteB_2019__2020']
    """
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the pairs CSV ({exc}); give a UTF-8 CSV file") from exc
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    columns = [c.strip().lower() for c in header] if header else []
    if "before" not in columns or "after" not in columns:
        raise InputError(
            f"{path}: the header has the columns {columns or 'none'}; expected at least 'before' and 'after' "
            "(and optionally 'name'), e.g. 'name,before,after'"
        )
    ib, ia = columns.index("before"), columns.index("after")
    iname = columns.index("name") if "name" in columns else None
    base = path.resolve().parent
    problems: list[str] = []
    rows: list[tuple[int, str, str, str]] = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [c.strip() for c in row] + [""] * len(columns)
        before, after = cells[ib], cells[ia]
        name = cells[iname] if iname is not None else ""
        missing = [c for c, v in (("before", before), ("after", after)) if not v]
        if missing:
            problems.append(f"line {line}: empty {' and '.join(missing)}")
            continue
        if name and (name in (".", "..") or "/" in name or "\\" in name):
            problems.append(f"line {line}: name {name!r} is not a plain folder name (no '/', '\\', '..')")
            continue
        rows.append((line, name, _resolve(before, base), _resolve(after, base)))
    explicit: dict[str, int] = {}
    for line, name, _b, _a in rows:
        if name:
            if name.lower() in explicit:
                problems.append(f"line {line}: name {name!r} is also used on line {explicit[name.lower()]}")
            explicit.setdefault(name.lower(), line)
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems) + "; fix these rows and run again")
    if not rows:
        raise InputError(f"{path}: no pairs (only a header); add one 'before,after' row per pair")

    stems = {line: (_stem(b), _stem(a)) for line, _n, b, a in rows}

    def short(line: int) -> str:
        (sb, _pb), (sa, _pa) = stems[line]
        return _sanitise(sb if sb == sa else f"{sb}__{sa}")

    counts = collections.Counter(short(line).lower() for line, n, _b, _a in rows if not n)
    recorded: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for prev in keep_names:
        recorded[(prev.before, prev.after)].append(prev.name)
    reserved = {n.lower() for names in recorded.values() for n in names}
    kept: dict[int, str] = {}  # line -> the recorded name it keeps
    for line, name, before, after in rows:
        if name:
            continue
        free = [n for n in recorded.get((before, after), ()) if n.lower() not in explicit]
        if free:
            kept[line] = free[0]
            recorded[(before, after)].remove(free[0])
    taken = set(explicit) | {n.lower() for n in kept.values()}
    avoid = set(explicit) | reserved
    pairs: list[BatchPair] = []
    for line, name, before, after in rows:
        if not name and line in kept:
            name = kept[line]
        elif not name:
            name = short(line)
            parent = _sanitise(stems[line][0][1]) if stems[line][0][1] else ""
            if (counts[name.lower()] > 1 or name.lower() in avoid) and parent:
                name = f"{parent}_{name}"
            candidate, k = name, 2
            while candidate.lower() in taken or candidate.lower() in reserved:
                candidate, k = f"{name}-{k}", k + 1
            name = candidate
        taken.add(name.lower())
        pairs.append(BatchPair(name=name, before=before, after=after, line=line))
    return pairs
