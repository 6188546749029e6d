"""Block-split detection of one very large scene: :func:`plan_blocks` (row blocks with their halo of tiles),
the block tasks run on Dask workers and merged into full-scene COGs, and :func:`detect_blocks`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changedet.distributed.cluster import _require_distributed, _worker_address
from changedet.distributed.pairs import _is_remote
from changedet.distributed.report import _read_json
from changedet.errors import ChangedetWarning, InputError
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from changedet.api import ChangeResult
    from changedet.inference import PredictStats

#: Default height of a row block (pixels).
DEFAULT_BLOCK_ROWS = 4096


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
