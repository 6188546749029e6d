"""Batch detection over the pairs of a CSV on a Dask cluster: :func:`run_batch` (one task per pair, retried,
resumed, reported), the options checked once before the cluster is used, and the per-pair task."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changedet._version import __version__
from changedet.distributed.blocks import DEFAULT_BLOCK_ROWS, detect_blocks
from changedet.distributed.cluster import _require_distributed, _worker_address, dashboard_link
from changedet.distributed.pairs import BatchPair, _is_remote, read_pairs
from changedet.distributed.report import (
    BATCH_REPORT,
    BatchReport,
    _json_safe,
    _now,
    _read_json,
    _report_inputs,
)
from changedet.errors import ChangedetError, InputError, UnknownModelError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

#: Default scene size (pixels) above which ``run_batch`` splits a scene into row blocks.
DEFAULT_BLOCK_PIXELS = 100_000_000
_NOT_FOR_BATCH = ("output_dir", "overwrite", "resume", "progress")
_WARNINGS_KEY = "_warnings"


def model_cache_info() -> dict[str, Any]:
    """Models loaded and reused by batch tasks in this process (run it on workers with ``client.run``).

    See :func:`changedet.models.bundled.model_cache_info`.
    """
    from changedet.models.bundled import model_cache_info as info

    return info()


class PairFailedError(ChangedetError):
    """A pair's detection failed on a worker; carries the original error's class name, message and traceback.

    The original exception is not shipped itself (its class may not unpickle on the client); the three strings are.
    """

    def __init__(self, error_type: str, message: str, traceback_text: str = "") -> None:
        super().__init__(error_type, message, traceback_text)
        self.error_type, self.message, self.traceback_text = error_type, message, traceback_text

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


_CAUGHT: ContextVar[list[tuple[str, str, str]] | None] = ContextVar("changedet_batch_warnings", default=None)
_PREVIOUS_SHOW: list[Callable[..., Any]] = [warnings.showwarning]


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    sink = _CAUGHT.get()
    if sink is None:
        _PREVIOUS_SHOW[0](message, category, filename, lineno, file, line)
    else:
        sink.append((category.__module__, category.__qualname__, str(message)))


@contextlib.contextmanager
def _caught_warnings() -> Iterator[list[tuple[str, str, str]]]:
    """Collect the warnings shown by this task (thread) as (module, class name, message), to ship to the client.

    A process-wide ``warnings.showwarning`` hook, installed once, sends them to the running task's list (a context
    variable, so tasks on threads of one worker do not mix); ``warnings.catch_warnings`` would swap process-wide
    state that concurrent tasks restore out of order.
    """
    if warnings.showwarning is not _show_warning:
        _PREVIOUS_SHOW[0] = warnings.showwarning
        warnings.showwarning = _show_warning
    caught: list[tuple[str, str, str]] = []
    token = _CAUGHT.set(caught)
    try:
        yield caught
    finally:
        _CAUGHT.reset(token)


def _detect_pair(before: str, after: str, output_dir: str, options: dict[str, Any], block_pixels: int,
                 block_rows: int) -> dict[str, Any]:
    """Task: detect one pair into ``output_dir`` (block-split when larger than ``block_pixels``)."""
    from changedet.api import detect
    from changedet.io.raster import raster_info
    from changedet.models.bundled import model_cache

    t0 = time.perf_counter()
    failure = None
    try:
        with _caught_warnings() as caught, model_cache(options.get("device", "cpu"),
                                                        options.get("precision", "float32")):
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
        # shipped to the client, which shows them (the worker's stderr is not the user's) and records them
        _WARNINGS_KEY: caught,
    }


def _reraise_warnings(rec: dict[str, Any]) -> None:
    """Show the warnings a pair's task caught on its worker in this process (the CLI prints ``warning: ...``) and
    record them in the pair's record as ``"warnings": ["Category: message", ...]``."""
    shipped = rec.pop(_WARNINGS_KEY, None) or []
    for module, qualname, message in shipped:
        category: Any = None
        with contextlib.suppress(Exception):  # a class the client cannot import is shown as a UserWarning
            category = importlib.import_module(module)
            for part in qualname.split("."):
                category = getattr(category, part)
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = UserWarning
        warnings.warn(message, category, stacklevel=2)
    if shipped:
        rec["warnings"] = [f"{qualname}: {message}" for _m, qualname, message in shipped]


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
    from changedet.models.bundled import _looks_like_path, list_bundled, resolve_model
    from changedet.models.registry import list_models
    from changedet.tiling import DEFAULT_OVERLAP

    method = options.get("method", "model")
    _checked_tta(options.get("tta", "none"), method)
    check_detect(overlap=options.get("overlap", DEFAULT_OVERLAP), blend=options.get("blend", "cosine"),
                 geojson_crs=geojson_crs_option(options.get("geojson_crs", "EPSG:4326"))
                 if options.get("vectorize", True) else None,
                 device=options.get("device") if method == "model" and local else None,
                 tile_size=options.get("tile_size"), batch_size=options.get("batch_size"),
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
    bundled = [m.name for m in list_bundled()]
    if str(model) in bundled:
        return
    if str(model) in list_models():
        # an architecture needs its trained weights: detect's own check (resolve_model raises its CheckpointError
        # before it loads anything), so the batch fails at once with detect's message and exit code 2
        resolve_model(str(model), band_count=1)
        return
    known = bundled + list(list_models())
    if not _looks_like_path(str(model)):
        raise UnknownModelError(str(model), known, what="model")
    read_meta(model)


def _recorded_pairs(output_dir: str | os.PathLike[str]) -> list[BatchPair]:
    """The pairs (name, before, after) recorded in ``output_dir/batch-report.json`` by an earlier run; [] if none.

    :func:`run_batch` passes them to :func:`read_pairs` as ``keep_names``, so a re-run keeps their folder names.
    """
    report = _read_json(Path(output_dir) / BATCH_REPORT)
    records = report.get("pairs") if isinstance(report, dict) else None
    out: list[BatchPair] = []
    for rec in records if isinstance(records, list) else []:
        if not isinstance(rec, dict):
            continue
        name, before, after = (rec.get(k) for k in ("name", "before", "after"))
        if not all(isinstance(v, str) and v for v in (name, before, after)):
            continue
        name = str(name)
        if name not in (".", "..") and "/" not in name and "\\" not in name:  # a plain folder name, as read_pairs
            out.append(BatchPair(name, str(before), str(after)))
    return out


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
        :class:`BatchPair` objects, or the path of a pairs CSV (:func:`read_pairs`; a row without a name whose
        inputs are those of a pair recorded in ``output_dir``'s ``batch-report.json`` keeps that pair's name).
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
    out = Path(output_dir).expanduser().resolve()
    if not isinstance(pairs, (list, tuple)):
        csv_path: str | None = str(Path(pairs).resolve())  # type: ignore[arg-type]
        # a re-run keeps the names of the pairs this folder already holds (a row added since may not rename them)
        pairs = read_pairs(pairs, keep_names=_recorded_pairs(out))  # type: ignore[arg-type]
    else:
        csv_path = None
    # a client of a cluster started here (LocalCluster) has `.cluster`; one connected to a scheduler address not
    options = _check_options(options, local=client is None or getattr(client, "cluster", None) is not None)
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
                _reraise_warnings(rec)
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
