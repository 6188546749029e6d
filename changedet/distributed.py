"""Past one machine with Dask: change detection over many pairs, and over scenes too large for one worker.

* :func:`run_batch` runs :func:`changedet.api.detect` over the pairs of a CSV (:func:`read_pairs`) on a
  ``dask.distributed`` cluster, one task per pair, each in its own output folder. Failed pairs are retried (Dask
  ``retries``) and never stop the others; pairs whose outputs are complete (``report.json`` present) are skipped,
  so a re-run resumes where the last one stopped (a pair whose ``report.json`` names other input files than its
  row now does fails with a message, rather than passing off those outputs as its own). ``batch-report.json`` in the output folder is rewritten
  (atomically) after every pair, so a killed run leaves an accurate report.
* :func:`detect_blocks` runs :func:`~changedet.api.detect` on one very large scene whose row blocks
  (:func:`plan_blocks`) are predicted on different workers, with the tiles above and below each block as halo, and
  merged into the usual Cloud-Optimised GeoTIFFs before vectorising once. The result is bit-identical to a
  single-process ``detect`` (same tiles, same order, same blending sums) with ``batch_size=1``.
* Each worker loads a model once and keeps it (:func:`model_cache_info`); the tasks use it through
  :func:`changedet.api.detect` unchanged.

The cluster is a :class:`distributed.LocalCluster` by default (:func:`open_client`), or any running one
(``dask scheduler`` and ``dask worker`` processes, ``Client("tcp://host:8786")``); input rasters and the output
folder must then be reachable under the same paths (or URLs) from every worker.

Dask is an optional dependency (``pip install 'changedet[distributed]'``): it is imported only when needed, and a
missing installation raises :class:`~changedet.errors.InputError` saying how to install it.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import datetime as _dt
import inspect
import json
import logging
import os
import re
import shutil
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from changedet._version import __version__
from changedet.errors import ChangedetError, ChangedetWarning, InputError, OutputError, UnknownModelError
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from changedet.api import ChangeResult
    from changedet.inference import PredictStats

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_REPORT",
    "BatchPair",
    "BatchReport",
    "Block",
    "PairFailedError",
    "dashboard_link",
    "detect_blocks",
    "model_cache_info",
    "open_client",
    "plan_blocks",
    "read_pairs",
    "run_batch",
]

#: Name of the batch report written into the batch output folder.
BATCH_REPORT = "batch-report.json"
#: Default scene size (pixels) above which ``run_batch`` splits a scene into row blocks.
DEFAULT_BLOCK_PIXELS = 100_000_000
#: Default height of a row block (pixels).
DEFAULT_BLOCK_ROWS = 4096
_NOT_FOR_BATCH = ("output_dir", "overwrite", "resume", "progress")


def _require_distributed() -> Any:
    """Import ``distributed`` or raise an InputError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            f"dask.distributed is not installed ({exc}); batch and block-split detection need it: "
            "pip install 'changedet[distributed]'"
        ) from exc
    return distributed


# ---------------------------------------------------------------------------------------------------------------
# the pairs CSV
# ---------------------------------------------------------------------------------------------------------------
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


def read_pairs(csv_path: str | os.PathLike[str]) -> list[BatchPair]:
    """Read a pairs CSV: a header with ``before`` and ``after`` columns and an optional ``name`` column.

    Relative paths are resolved against the CSV's folder; URLs and GDAL paths (``/vsis3/...``, ``https://...``)
    are kept as they are. A missing ``name`` is derived from the file names (``<before>__<after>``, with the
    parent folder name when that is ambiguous, then ``-2``, ``-3`` ...), so names are unique (case-insensitively)
    and stable from one run to the next. Other columns are ignored.

    Parameters
    ----------
    csv_path
        The CSV file (UTF-8, a BOM is accepted).

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
    taken = set(explicit)
    pairs: list[BatchPair] = []
    for line, name, before, after in rows:
        if not name:
            name = short(line)
            parent = _sanitise(stems[line][0][1]) if stems[line][0][1] else ""
            if (counts[name.lower()] > 1 or name.lower() in explicit) and parent:
                name = f"{parent}_{name}"
            candidate, k = name, 2
            while candidate.lower() in taken:
                candidate, k = f"{name}-{k}", k + 1
            name = candidate
        taken.add(name.lower())
        pairs.append(BatchPair(name=name, before=before, after=after, line=line))
    return pairs


# ---------------------------------------------------------------------------------------------------------------
# row blocks
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """A block of scene rows predicted as one task.

    Attributes
    ----------
    index : int
        Position in the plan.
    rows : (int, int)
        Scene rows ``[start, stop)`` this block writes.
    tile_rows : (int, int)
        Tile rows ``[first, stop)`` of the engine's grid that touch ``rows`` (predicted by this block).
    read_rows : (int, int)
        Scene rows read: ``rows`` plus the halo of the tiles above and below.
    """

    index: int
    rows: tuple[int, int]
    tile_rows: tuple[int, int]
    read_rows: tuple[int, int]


def plan_blocks(height: int, width: int, *, block_rows: int = DEFAULT_BLOCK_ROWS, tile_size: int = DEFAULT_TILE_SIZE,
                overlap: int = DEFAULT_OVERLAP, blend: str = "cosine", multiple: int = 1) -> list[Block]:
    """Split a ``height x width`` scene into row blocks of ``block_rows`` rows for :func:`detect_blocks`.

    Each block lists the tile rows of the engine's grid (:func:`changedet.inference.engine_grid`, the same
    tiles as a whole-scene run) that touch its rows: predicting them gives the block's rows exactly as a
    whole-scene run would. Tiles that straddle a block boundary are predicted by both blocks (the halo).

    >>> [b.rows for b in plan_blocks(1000, 300, block_rows=400, tile_size=256, overlap=32)]
    [(0, 400), (400, 800), (800, 1000)]
    >>> [b.read_rows for b in plan_blocks(1000, 300, block_rows=400, tile_size=256, overlap=32)]
    [(0, 614), (194, 1000), (582, 1000)]
    """
    from changedet.inference import engine_grid, tile_rows_for

    if block_rows < 1:
        raise InputError(f"block_rows must be at least 1, got {block_rows}")
    grid = engine_grid(height, width, multiple=multiple, tile_size=tile_size, overlap=overlap, blend=blend)
    th = grid.tiles[0].height
    blocks: list[Block] = []
    for start in range(0, height, block_rows):
        stop = min(height, start + block_rows)
        k0, k1 = tile_rows_for(grid, start, stop)
        blocks.append(Block(len(blocks), (start, stop), (k0, k1),
                            (grid.row_starts[k0], grid.row_starts[k1 - 1] + th)))
    return blocks


@dataclass(frozen=True)
class _PairSpec:
    """How to reopen an aligned pair in another process exactly as the driver opened it."""

    before: str
    after: str
    indexes: Any
    shift: Any
    matcher: Any
    match_histograms: bool

    def open(self) -> Any:
        from changedet.io.alignment import open_pair

        with warnings.catch_warnings():  # the driver has already reported them
            warnings.simplefilter("ignore", ChangedetWarning)
            pair = open_pair(self.before, self.after, indexes=self.indexes, allow_empty=True,
                             match_histograms=self.match_histograms and self.matcher is None)
        if self.shift is not None:
            pair.set_shift(self.shift)
        if self.matcher is not None:
            pair.set_histogram_matcher(self.matcher)
        return pair


def _source(src: Any) -> str:
    """The path or URL of an input given as a path, URL or open rasterio dataset."""
    if isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        return text if _is_remote(str(text)) else str(Path(text).resolve())
    return str(src.name)  # an open rasterio dataset


def _predict_block(spec: _PairSpec, predictor: Any, block: Block, folder: str, settings: dict[str, Any],
                   resume: bool) -> dict[str, Any]:
    """Task: predict one row block into ``folder`` (tiled GeoTIFFs) and record its stats there."""
    from changedet.inference import predict_pair

    done = Path(folder) / "stats.json"
    if resume and done.is_file():
        return json.loads(done.read_text())
    if settings.get("threads"):
        import torch

        torch.set_num_threads(int(settings["threads"]))
    pair = spec.open()
    try:
        stats = predict_pair(
            pair, predictor, out_dir=Path(folder), threshold=settings["threshold"], tile_size=settings["tile_size"],
            overlap=settings["overlap"], blend=settings["blend"], batch_size=settings["batch_size"],
            resume=resume, partial_dir=Path(folder) / ".partial", rows=block.rows, cog=False,
        )
    finally:
        pair.close()
    out = {k: v for k, v in stats.to_dict().items() if k != "paths"}
    out["rows"] = list(block.rows)
    out["worker"] = _worker_address()
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, done)
    return out


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


def _merge_blocks(pair: Any, plan: list[Block], folders: list[Path], out_dir: Path, partial_dir: Path,
                  tags: dict[str, str] | None) -> dict[str, str]:
    """Copy every block's rows into full-scene COGs ``probability.tif`` and ``change.tif`` in ``out_dir``."""
    import rasterio
    from rasterio.windows import Window

    from changedet.inference import MASK_NODATA, PROB_NODATA, StripWriter

    common = {"width": pair.width, "height": pair.height, "crs": pair.crs, "transform": pair.transform,
              "partial_dir": partial_dir, "tags": tags}
    writers = {
        "probability": StripWriter(out_dir / "probability.tif", dtype="float32", nodata=PROB_NODATA,
                                   description="change probability", **common),
        "change": StripWriter(out_dir / "change.tif", dtype="uint8", nodata=MASK_NODATA,
                              description="change (1) / no change (0)", **common),
    }
    try:
        for block, folder in zip(plan, folders, strict=True):
            for key, writer in writers.items():
                with rasterio.open(folder / f"{key}.tif") as src:
                    for off in range(0, src.height, 512):
                        h = min(512, src.height - off)
                        writer.write(src.read(1, window=Window(0, off, src.width, h)), block.rows[0] + off)
        return {key: str(w.finalize()) for key, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.discard()
        raise


class _BlockEngine:
    """A :func:`changedet.inference.use_engine` engine: predicts row blocks on Dask workers and merges them."""

    def __init__(self, spec: _PairSpec, block_rows: int, client: Any, threads: int | None) -> None:
        self.spec = spec
        self.block_rows = block_rows
        self.client = client
        self.threads = threads
        self.plan: list[Block] = []

    def __call__(self, pair: Any, predictor: Any, *, out_dir: Path, threshold: float, tile_size: int = DEFAULT_TILE_SIZE,
                 overlap: int = DEFAULT_OVERLAP, blend: str = "cosine", batch_size: int = 1, progress: Any = None,
                 resume: bool = False, partial_dir: Path | None = None, tags: dict[str, str] | None = None,
                 **_ignored: Any) -> PredictStats:
        from changedet.inference import PredictStats, engine_grid

        t0 = time.perf_counter()
        out_dir = Path(out_dir)
        partial_dir = Path(partial_dir) if partial_dir else out_dir / ".changedet-partial"
        spec = self.spec
        if spec.shift is None and getattr(pair, "shift", None) is not None:
            spec = _replace(spec, shift=pair.shift)
        if spec.matcher is None and getattr(pair, "_matcher", None) is not None:
            spec = _replace(spec, matcher=pair._matcher)  # ship the fitted matcher instead of refitting it
        plan = plan_blocks(pair.height, pair.width, block_rows=self.block_rows, tile_size=tile_size,
                           overlap=overlap, blend=blend, multiple=predictor.multiple)
        self.plan = plan
        grid = engine_grid(pair.height, pair.width, multiple=predictor.multiple, tile_size=tile_size,
                           overlap=overlap, blend=blend)
        settings = {"threshold": float(threshold), "tile_size": tile_size, "overlap": overlap, "blend": blend,
                    "batch_size": batch_size, "threads": self.threads}
        root = partial_dir / "blocks"
        manifest = {"height": pair.height, "width": pair.width, "predictor": predictor.name,
                    "blocks": [list(b.rows) for b in plan], **{k: v for k, v in settings.items() if k != "threads"}}
        if not (resume and _read_json(root / "plan.json") == manifest):
            shutil.rmtree(root, ignore_errors=True)
            resume = False
        root.mkdir(parents=True, exist_ok=True)
        (root / "plan.json").write_text(json.dumps(manifest))
        folders = [root / f"{b.rows[0]:09d}-{b.rows[1]:09d}" for b in plan]
        for f in folders:
            f.mkdir(exist_ok=True)
        # the blocks reopen the pair as the driver has it: with its co-registration shift and fitted histogram
        # matcher (self.spec lacks them: --coregister was dropped on split scenes)
        results = self._run_blocks(spec, plan, folders, predictor, settings, resume, progress)
        t_merge = time.perf_counter()
        paths = _merge_blocks(pair, plan, folders, out_dir, partial_dir, tags)
        merge_seconds = time.perf_counter() - t_merge
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            partial_dir.rmdir()
        stats = PredictStats(
            tiles_total=len(grid),
            tile_size=grid.tile_size,
            overlap=grid.overlap,
            tiles_predicted=sum(r["tiles_predicted"] for r in results),
            tiles_skipped=sum(r["tiles_skipped"] for r in results),
            valid_pixels=sum(r["valid_pixels"] for r in results),
            changed_pixels=sum(r["changed_pixels"] for r in results),
            seconds_read=sum(r["seconds_read"] for r in results),
            seconds_predict=sum(r["seconds_predict"] for r in results),
            seconds_write=sum(r["seconds_write"] for r in results),
            seconds_finalize=merge_seconds,
            paths=paths,
        )
        stats.seconds_total = time.perf_counter() - t0
        stats._pixels = pair.height * pair.width
        stats.blocks = [  # type: ignore[attr-defined]  # reported in report.json "stats"
            {"rows": r["rows"], "tiles": r["tiles_total"], "seconds": round(r["seconds_total"], 3),
             "worker": r.get("worker")} for r in results
        ]
        return stats

    def _run_blocks(self, spec: _PairSpec, plan: list[Block], folders: list[Path], predictor: Any,
                    settings: dict[str, Any], resume: bool, progress: Any) -> list[dict[str, Any]]:
        total = sum((b.tile_rows[1] - b.tile_rows[0]) for b in plan)
        done_rows = 0
        results: dict[int, dict[str, Any]] = {}

        def _advance(block: Block, result: dict[str, Any]) -> None:
            nonlocal done_rows
            results[block.index] = result
            done_rows += block.tile_rows[1] - block.tile_rows[0]
            if progress is not None:
                progress(done_rows, total, sum(r["valid_pixels"] for r in results.values()))

        if len(plan) == 1 or self.client is None:
            for block, folder in zip(plan, folders, strict=True):
                _advance(block, _predict_block(spec, predictor, block, str(folder), settings, resume))
            return [results[i] for i in range(len(plan))]
        distributed = _require_distributed()
        with self.client() as client:
            remote = client.scatter(predictor, broadcast=True, hash=False)
            futures = {
                client.submit(_predict_block, spec, remote, block, str(folder), settings, resume,
                              key=f"changedet-block-{block.index}-{uuid.uuid4().hex[:8]}", pure=False): block
                for block, folder in zip(plan, folders, strict=True)
            }
            try:
                for fut in distributed.as_completed(futures):
                    _advance(futures[fut], fut.result())
            finally:
                client.cancel(list(futures))
                del remote
        return [results[i] for i in range(len(plan))]


def _replace(spec: _PairSpec, **changes: Any) -> _PairSpec:
    return _PairSpec(**{**spec.__dict__, **changes})


def _report_inputs(report: dict[str, Any]) -> tuple[str, str] | None:
    """(before, after) recorded in a pair's report.json, or None when it does not say."""
    inputs = report.get("inputs") or {}
    before, after = ((inputs.get(k) or {}).get("path") for k in ("before", "after"))
    if not (isinstance(before, str) and before and isinstance(after, str) and after):
        return None
    return before, after


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _client_context(client: Any) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """A factory of context managers yielding the client for block tasks (None: run the blocks in-process)."""
    if client is not None:
        return lambda: contextlib.nullcontext(client)
    try:
        distributed = _require_distributed()
    except InputError:
        return None
    try:
        distributed.get_worker()
    except ValueError:
        pass
    else:  # inside a task: secede from the worker's thread pool while the blocks run
        return distributed.worker_client
    try:
        default = distributed.default_client()
    except ValueError:
        return None
    return lambda: contextlib.nullcontext(default)


def detect_blocks(before: Any, after: Any, model: Any = None, *, output_dir: str | os.PathLike[str] | None = None,
                  block_rows: int = DEFAULT_BLOCK_ROWS, client: Client | None = None,
                  **options: Any) -> ChangeResult:
    """:func:`changedet.api.detect` with the prediction split into row blocks run on Dask workers.

    Everything but the prediction runs here as in ``detect`` (validation, model, scene statistics, vectorising
    once, report, quick-look). The scene is split by :func:`plan_blocks`; each block task reopens the pair, predicts
    the tiles touching its rows (the rows above and below are the halo) with the same predictor (sent once to
    every worker) and writes its rows to a temporary GeoTIFF; the blocks are then merged into
    ``probability.tif`` and ``change.tif`` (COGs). With ``batch_size=1`` (default) the rasters are bit-identical
    to a single-process ``detect``. ``report.json`` lists the blocks under ``stats.blocks``.

    Parameters
    ----------
    before, after
        Paths or URLs of the two dates, readable from every worker under the same name.
    model, output_dir, **options
        As for :func:`changedet.api.detect` (``resume=True`` also reuses finished blocks of an interrupted run).
    block_rows
        Rows per block; the last block takes the remainder.
    client
        A ``distributed.Client``. None uses the running task's cluster when called inside a Dask task, else the
        default client if one exists, else runs the blocks one after the other in this process (no Dask needed).

    Returns
    -------
    ChangeResult

    Examples
    --------
    >>> from distributed import Client  # doctest: +SKIP
    >>> with Client("tcp://scheduler:8786") as client:  # doctest: +SKIP
    ...     detect_blocks("s3/2019.tif", "s3/2020.tif", output_dir="out", client=client, block_rows=4096)
    """
    from changedet.api import detect
    from changedet.inference import use_engine

    spec = _PairSpec(before=_source(before), after=_source(after), indexes=None, shift=None, matcher=None,
                     match_histograms=bool(options.get("match_histograms", False)))
    engine = _BlockEngine(spec, int(block_rows), _client_context(client), options.get("threads"))

    def _engine(pair: Any, predictor: Any, **kwargs: Any) -> PredictStats:
        engine.spec = _replace(engine.spec, indexes=getattr(pair, "indexes", None))
        return engine(pair, predictor, **kwargs)

    with use_engine(_engine):
        return detect(before, after, model, output_dir=output_dir, **options)


def model_cache_info() -> dict[str, Any]:
    """Models loaded and reused by batch tasks in this process (run it on workers with ``client.run``).

    See :func:`changedet.models.bundled.model_cache_info`.
    """
    from changedet.models.bundled import model_cache_info as info

    return info()


# ---------------------------------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------------------------------
class PairFailedError(ChangedetError):
    """A pair's detection failed on a worker; carries the original error's class name, message and traceback.

    The original exception is not shipped itself (its class may not unpickle on the client); the three strings are.
    """

    def __init__(self, error_type: str, message: str, traceback_text: str = "") -> None:
        super().__init__(error_type, message, traceback_text)
        self.error_type, self.message, self.traceback_text = error_type, message, traceback_text

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


def _detect_pair(before: str, after: str, output_dir: str, options: dict[str, Any], block_pixels: int,
                 block_rows: int) -> dict[str, Any]:
    """Task: detect one pair into ``output_dir`` (block-split when larger than ``block_pixels``)."""
    from changedet.api import detect
    from changedet.io.raster import raster_info
    from changedet.models.bundled import model_cache

    t0 = time.perf_counter()
    failure = None
    try:
        with model_cache(options.get("device", "cpu"), options.get("precision", "float32")):
            info = raster_info(before)
            big = bool(block_pixels) and info.width * info.height > block_pixels
            if big:
                result = detect_blocks(before, after, output_dir=output_dir, block_rows=block_rows, **options)
            else:
                result = detect(before, after, output_dir=output_dir, **options)
    except Exception as exc:  # noqa: BLE001 - reported per pair; Dask retries it
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        failure = PairFailedError(type(exc).__name__, str(exc), tb)
    if failure is not None:  # raised outside the handler: no __context__ chain (GDAL errors do not unpickle)
        raise failure
    report = result.report
    grid = report.get("grid", {})
    return {
        "seconds": round(time.perf_counter() - t0, 3),
        "megapixels": round(grid.get("width", 0) * grid.get("height", 0) / 1e6, 4),
        "blocks": len(report.get("stats", {}).get("blocks") or []) or None,
        "summary": report.get("summary"),
        "worker": _worker_address(),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class BatchReport:
    """Per-pair status of a batch run, written to ``batch-report.json`` (atomically) after every change.

    ``pairs`` holds one dict per pair: ``name``, ``before``, ``after``, ``output_dir``, ``status`` (``pending``,
    ``done``, ``failed``, ``skipped``), and when known ``seconds``, ``megapixels``, ``blocks``, ``summary`` (from
    the pair's ``report.json``), ``worker``, ``error`` (``type``, ``message``, ``traceback``) or ``reason``.
    """

    path: Path
    meta: dict[str, Any]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    #: Why the last write of ``batch-report.json`` failed (disk full, read-only folder), or None.
    write_error: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        c = collections.Counter(p["status"] for p in self.pairs)
        return {s: c.get(s, 0) for s in ("done", "skipped", "failed", "pending")}

    @property
    def exit_code(self) -> int:
        """0 when every pair is done or skipped and the report could be written, 1 otherwise."""
        c = self.counts
        return 0 if c["failed"] == 0 and c["pending"] == 0 and self.write_error is None else 1

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta, "updated": _now(), "counts": self.counts, "pairs": self.pairs}

    def write(self) -> None:
        """Write the report atomically; an :class:`~changedet.errors.OutputError` (exit 1) when it cannot be."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str, allow_nan=False))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutputError(f"{self.path}: cannot write the batch report ({exc.strerror or exc}); check the free "
                              "disk space and write permission of the batch folder") from exc

    def write_or_warn(self) -> None:
        """:meth:`write` while pairs are running: a failure is a warning (once) and :attr:`write_error`, so that
        a full disk does not abandon the pairs still running; the exit code then says the batch did not finish
        cleanly."""
        try:
            self.write()
        except OutputError as exc:
            if self.write_error is None:
                warnings.warn(f"{exc}; the pairs go on", ChangedetWarning, stacklevel=2)
            self.write_error = str(exc)
        else:
            self.write_error = None

    def table(self) -> str:
        """A plain-text summary table, one row per pair."""
        head = ("name", "status", "seconds", "Mpx", "changed %", "polygons", "detail")
        rows = []
        for p in self.pairs:
            s = p.get("summary") or {}
            detail = ""
            if p["status"] == "failed":
                err = p.get("error") or {}
                detail = f"{err.get('type')}: {err.get('message')}".replace("\n", " ")
                detail = detail if len(detail) <= 100 else detail[:97] + "..."
            elif p["status"] == "skipped":
                detail = p.get("reason", "")
            elif p.get("blocks"):
                detail = f"{p['blocks']} blocks"
            rows.append((
                p["name"], p["status"], f"{p['seconds']:.1f}" if p.get("seconds") is not None else "",
                f"{p['megapixels']:.2f}" if p.get("megapixels") is not None else "",
                f"{s['changed_percent']:.3f}" if s.get("changed_percent") is not None else "",
                str(s["n_polygons"]) if s.get("n_polygons") is not None else "", detail,
            ))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        c = self.counts
        lines.append(f"{len(self.pairs)} pairs: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed"
                     + (f", {c['pending']} pending" if c["pending"] else ""))
        return "\n".join(lines)


@contextlib.contextmanager
def open_client(scheduler: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                dashboard_address: str = ":8787", silence_logs: int | bool = logging.WARNING) -> Iterator[Client]:
    """A ``distributed.Client``: connected to ``scheduler``, or to a new LocalCluster closed on exit.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``); None starts a :class:`distributed.LocalCluster`
        of ``n_workers`` worker processes with ``threads_per_worker`` threads each.
    n_workers
        Worker processes of the LocalCluster (default: one per CPU core, at most 8).
    threads_per_worker
        Dask threads of each LocalCluster worker (pairs a worker runs at once).
    dashboard_address
        Where the LocalCluster serves its dashboard (``":0"`` for any free port).
    silence_logs
        Log level of the LocalCluster's workers (False leaves Dask's logging configuration alone).
    """
    distributed = _require_distributed()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(
                f"cannot connect to the Dask scheduler at {scheduler} ({exc}); start one with `dask scheduler` "
                "(and workers with `dask worker " + scheduler + "`) or leave out --scheduler for a local cluster"
            ) from exc
        with client:
            yield client
        return
    n = n_workers or max(1, min(8, os.cpu_count() or 1))
    with distributed.LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                  dashboard_address=dashboard_address, silence_logs=silence_logs) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL of the client's scheduler, or None when it serves none (bokeh missing)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - informative only
        return None


def _check_options(options: dict[str, Any], local: bool = True) -> dict[str, Any]:
    from changedet.api import METHODS, detect

    bad = [k for k in options if k in _NOT_FOR_BATCH]
    if bad:
        raise InputError(f"run_batch sets {', '.join(bad)} itself; do not pass them")
    try:
        inspect.signature(detect).bind("before", "after", **options)
    except TypeError as exc:
        raise InputError(f"unknown detect option for the batch: {exc}") from None
    if options.get("method", "model") not in METHODS:
        raise InputError(f"unknown method {options['method']!r}; choose one of {', '.join(METHODS)}")
    _check_detect_options(options, local)
    out = dict(options)
    for key in ("model", "checkpoint"):  # workers may have another working folder
        value = out.get(key)
        if value is not None and not _is_remote(str(value)) and Path(value).expanduser().exists():
            out[key] = str(Path(value).expanduser().resolve())
    return out


def _check_detect_options(options: dict[str, Any], local: bool = True) -> None:
    """What detect checks before it reads anything, checked once before the cluster starts: an unknown model or a
    CUDA device that is not there fails the batch at once (exit 2) instead of failing every pair, with retries.
    Without ``local`` (the workers are another cluster's) the device and the checkpoint files are the workers' to
    check: a CPU login node may submit ``--device cuda`` to GPU workers."""
    from changedet.api import _check_options as check_detect
    from changedet.api import _checked_tta
    from changedet.export.vector import geojson_crs_option
    from changedet.models.bundled import _looks_like_path, list_bundled
    from changedet.models.registry import list_models
    from changedet.tiling import DEFAULT_OVERLAP

    method = options.get("method", "model")
    _checked_tta(options.get("tta", "none"), method)
    check_detect(overlap=options.get("overlap", DEFAULT_OVERLAP), blend=options.get("blend", "cosine"),
                 geojson_crs=geojson_crs_option(options.get("geojson_crs", "EPSG:4326"))
                 if options.get("vectorize", True) else None,
                 device=options.get("device") if method == "model" and local else None,
                 tile_size=options.get("tile_size"),
                 threshold=options.get("threshold"), indexes=options.get("indexes"))
    indexes = options.get("indexes")
    if indexes and len(indexes) == 2 and all(isinstance(i, (list, tuple)) for i in indexes) and (
            len(indexes[0]) != len(indexes[1])):
        raise InputError(f"--indexes {indexes[0]} and {indexes[1]}: select as many bands in BEFORE as in AFTER")
    if method != "model" or not local:
        return
    from changedet.models.checkpoint import read_meta

    model, checkpoint = options.get("model"), options.get("checkpoint")
    if checkpoint is not None and not _is_remote(str(checkpoint)):
        read_meta(checkpoint)  # a CheckpointError naming the file when it is missing or unreadable
    if model is None or checkpoint is not None or _is_remote(str(model)):
        return
    known = [m.name for m in list_bundled()] + list(list_models())
    if str(model) in known:
        return
    if not _looks_like_path(str(model)):
        raise UnknownModelError(str(model), known, what="model")
    read_meta(model)


def run_batch(
    pairs: Sequence[BatchPair] | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    client: Client,
    retries: int = 2,
    overwrite: bool = False,
    block_pixels: int = DEFAULT_BLOCK_PIXELS,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    on_update: Callable[[dict[str, Any], BatchReport], None] | None = None,
    **options: Any,
) -> BatchReport:
    """Run :func:`changedet.api.detect` over many pairs on a Dask cluster, one output folder per pair.

    Parameters
    ----------
    pairs
        :class:`BatchPair` objects, or the path of a pairs CSV (:func:`read_pairs`).
    output_dir
        Batch folder: pair ``name`` writes into ``output_dir/name``; ``batch-report.json`` goes here.
    client
        A ``distributed.Client`` (:func:`open_client` gives one); inputs and ``output_dir`` must be reachable
        from its workers under the same paths.
    retries
        Times a failed pair is run again (Dask ``retries``) before it is reported failed.
    overwrite
        Recompute every pair; otherwise pairs with a ``report.json`` (complete outputs) are skipped (failed when
        it records other input files than the row's) and the others resume from what an interrupted run left (``detect(resume=True)``).
    block_pixels
        Scenes with more pixels than this are split into row blocks of ``block_rows`` rows spread over the
        workers (:func:`detect_blocks`); 0 never splits.
    on_update
        Called as ``on_update(pair_record, report)`` after each pair finishes (the report file is already
        written).
    **options
        :func:`changedet.api.detect` options for every pair (``method``, ``model``, ``tile_size``, ``threads``...).

    Returns
    -------
    BatchReport
        Also written to ``output_dir/batch-report.json``; ``report.exit_code`` is 1 if any pair failed.
    """
    distributed = _require_distributed()
    if not isinstance(pairs, (list, tuple)):
        csv_path: str | None = str(Path(pairs).resolve())  # type: ignore[arg-type]
        pairs = read_pairs(pairs)  # type: ignore[arg-type]
    else:
        csv_path = None
    # a client of a cluster started here (LocalCluster) has `.cluster`; one connected to a scheduler address not
    options = _check_options(options, local=client is None or getattr(client, "cluster", None) is not None)
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a folder for the batch outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the batch output folder ({exc}); choose a writable one") from exc

    workers = client.scheduler_info().get("workers", {})
    report = BatchReport(out / BATCH_REPORT, {
        "changedet_version": __version__,
        "started": _now(),
        "finished": None,
        "csv": csv_path,
        "output_dir": str(out),
        "scheduler": getattr(client.scheduler, "address", None),
        "dashboard": dashboard_link(client),
        "workers": len(workers),
        "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
        "retries": retries,
        "overwrite": overwrite,
        "block_pixels": block_pixels,
        "block_rows": block_rows,
        "options": _json_safe(options),
    })
    from changedet.api import _abspath  # the input paths as report.json records them

    todo: list[tuple[BatchPair, dict[str, Any]]] = []
    for pair in pairs:
        folder = out / pair.name
        rec: dict[str, Any] = {"name": pair.name, "before": pair.before, "after": pair.after,
                               "output_dir": str(folder), "status": "pending"}
        done_report = folder / "report.json"
        if done_report.is_file() and not overwrite:
            previous = _read_json(done_report) or {}
            made_from = _report_inputs(previous)
            if made_from is not None and made_from != (_abspath(pair.before), _abspath(pair.after)):
                # the row now names other rasters: those outputs are not this pair's
                rec.update(status="failed", error={
                    "type": "OutputExistsError",
                    "message": f"{folder}: its outputs were made from {made_from[0]} and {made_from[1]}, not this "
                               "row's rasters; --overwrite recomputes them (or give the pair another name)",
                    "traceback": ""})
            else:
                rec.update(status="skipped", reason="outputs exist (report.json); --overwrite recomputes them",
                           summary=previous.get("summary"))
        else:
            todo.append((pair, rec))
        report.pairs.append(rec)
    report.write()

    pair_options = {**options, "overwrite": overwrite, "resume": not overwrite}
    futures = {}
    run = uuid.uuid4().hex[:8]
    for pair, rec in todo:
        fut = client.submit(_detect_pair, pair.before, pair.after, rec["output_dir"], pair_options, block_pixels,
                            block_rows, retries=retries, pure=False, key=f"changedet-detect-{pair.name}-{run}")
        futures[fut] = rec
    try:
        for fut in distributed.as_completed(futures):
            rec = futures[fut]
            try:
                rec.update(fut.result(), status="done")
            except PairFailedError as exc:
                rec.update(status="failed", error={"type": exc.error_type, "message": exc.message,
                                                   "traceback": exc.traceback_text})
            except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError...: the pair failed
                rec.update(status="failed", error={"type": type(exc).__name__, "message": str(exc)})
            report.write_or_warn()
            if on_update is not None:
                on_update(rec, report)
    finally:
        client.cancel(list(futures))
    report.meta["finished"] = _now()
    report.write_or_warn()
    return report
