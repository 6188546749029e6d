"""Streamed, tiled, batched prediction over an aligned pair.

The engine walks a :class:`~changedet.tiling.TileGrid` in row-major order. A prefetch thread (or, when torch's
threads already occupy every core, the main thread between forward passes: :func:`auto_prefetch`) reads the windows
of both dates from the :class:`~changedet.io.alignment.AlignedPair` (GDAL releases the GIL while it decodes), the main
thread runs the predictor, blends each tile's probabilities into a strip accumulator, and a writer thread writes
every block of rows that no later tile touches. Memory is bounded by a few tiles plus one strip of
``tile_size + 512`` rows, whatever the scene size.

Predictors turn a batch of tiles into change probabilities:

* :class:`TorchPredictor` wraps a Siamese network with its checkpoint's band normalisation, ``torch.inference_mode``,
  channels-last memory format, optional bf16, reflection padding up to the model's ``required_multiple`` and optional
  test-time augmentation (``tta``: the mean probability over flips, rotations and/or the swapped dates);
* :class:`ScorerPredictor` wraps a fitted unsupervised scorer (CVA, IR-MAD, DSFA; see :mod:`changedet.unsupervised`).

Outputs (float32 probability 0..1 with nodata -1, uint8 change 0/1 with nodata 255) are written to temporary tiled
GeoTIFFs and converted to Cloud-Optimised GeoTIFFs when complete (:class:`StripWriter`). A journal of finished row
blocks lets an interrupted run resume (``resume=True``) with the same result.

This module holds the engine (:func:`predict_pair`, :func:`engine_grid`, :func:`tile_rows_for`, :func:`use_engine`,
:class:`PredictStats`) and the progress bar (:class:`TileProgress`); the predictors live in
:mod:`changedet.predictors`, the writer and the resume journal in :mod:`changedet.partials`, the reader/writer
threads, strip buffers and :func:`large_allocations` in :mod:`changedet.streaming`. All are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from changedet.errors import ChangedetError, InputError, OutputError
from changedet.partials import StripWriter, _input_fingerprint, _Journal, _predictor_fingerprint
from changedet.predictors import (
    TTA_MODES,
    ScorerPredictor,
    TilePredictor,
    TorchPredictor,
    parse_tta,
    tta_transforms,
)
from changedet.streaming import (
    RowCursor,
    StripBuffers,
    TileStreams,
    _batches,
    _stacked,
    auto_prefetch,
    large_allocations,
)
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, TileGrid, balanced_tile_size

log = logging.getLogger(__name__)

__all__ = [
    "MASK_NODATA",
    "PROB_NODATA",
    "TTA_MODES",
    "PredictStats",
    "ScorerPredictor",
    "StripWriter",
    "TilePredictor",
    "TorchPredictor",
    "auto_prefetch",
    "engine_grid",
    "large_allocations",
    "parse_tta",
    "predict_pair",
    "tile_rows_for",
    "tta_transforms",
    "use_engine",
]

PROB_NODATA = -1.0
MASK_NODATA = 255
ProgressCallback = Callable[[int, int, int], None]  # (tiles_done, tiles_total, pixels_done)


# ---------------------------------------------------------------------------------------------------------------
# engine
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PredictStats:
    """What one :func:`predict_pair` run did, for ``report.json``."""

    tiles_total: int = 0
    tiles_predicted: int = 0
    tiles_skipped: int = 0
    tiles_resumed: int = 0
    valid_pixels: int = 0
    changed_pixels: int = 0
    seconds_read: float = 0.0
    seconds_predict: float = 0.0
    seconds_write: float = 0.0
    seconds_finalize: float = 0.0
    seconds_total: float = 0.0
    tile_size: int = 0  # the tile edge used (see engine_grid: at most the requested one)
    overlap: int = 0
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        total = max(self.seconds_total, 1e-9)
        d["megapixels_per_second"] = round(self._pixels / 1e6 / total, 3) if self._pixels else None
        d.pop("_pixels", None)
        return d

    _pixels: int = 0


_ENGINE: ContextVar[Callable[..., PredictStats] | None] = ContextVar("changedet_predict_engine", default=None)


@contextlib.contextmanager
def use_engine(engine: Callable[..., PredictStats] | None) -> Iterator[None]:
    """Route whole-scene :func:`predict_pair` calls made in this context through ``engine``.

    ``engine`` is called with :func:`predict_pair`'s arguments and must return a :class:`PredictStats` after
    writing ``probability.tif`` and ``change.tif`` into ``out_dir``; while it runs, ``predict_pair`` is the
    plain local engine again (so the engine may call it, e.g. with ``rows=``). The setting is a context
    variable: it applies to the current thread (or task) only. :func:`changedet.distributed.detect_blocks` uses
    it to spread the row blocks of a very large scene over a Dask cluster while :func:`changedet.api.detect` does
    everything else (validation, model, vectorisation, report) as usual.
    """
    token = _ENGINE.set(engine)
    try:
        yield
    finally:
        _ENGINE.reset(token)


def engine_grid(
    height: int, width: int, *, multiple: int = 1, tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP, blend: str = "cosine", balance: bool = True,
) -> TileGrid:
    """The :class:`~changedet.tiling.TileGrid` that :func:`predict_pair` walks for a scene and a predictor.

    ``tile_size`` is rounded down to the predictor's ``multiple``, ``overlap`` rounded up to it (so that every tile
    but the last of a row or column starts at a multiple of it) and reduced below the tile size, as the engine
    does, so that callers splitting a scene (see :func:`tile_rows_for`) use exactly the engine's tiles.
    ``tile_size`` is an upper bound: with ``balance`` (default) the tiles shrink to the smallest size that covers
    the scene with as many tiles (:func:`~changedet.tiling.balanced_tile_size`), which saves the compute that an
    edge tile moved far inward would repeat.

    >>> g = engine_grid(1000, 700, multiple=16, tile_size=250, overlap=300)
    >>> g.tile_size, g.overlap
    (240, 224)
    >>> engine_grid(2048, 2048, multiple=16, tile_size=512, overlap=32).tile_size
    448
    """
    multiple = max(1, int(multiple))
    tile_size = max(multiple, int(tile_size) // multiple * multiple)
    overlap = int(overlap)
    if overlap > 0:  # rounded up: tile starts stay multiples of `multiple` (a negative one is TileGrid's error)
        overlap = -(-overlap // multiple) * multiple
    overlap = min(overlap, tile_size - multiple) if tile_size > multiple else 0
    if balance:
        tile_size = balanced_tile_size(height, width, tile_size, overlap, multiple)
        overlap = min(overlap, tile_size - multiple) if tile_size > multiple else 0
    return TileGrid(int(height), int(width), tile_size=tile_size, overlap=overlap, multiple=multiple,
                    blend=blend)  # type: ignore[arg-type]


def tile_rows_for(grid: TileGrid, row_start: int, row_stop: int) -> tuple[int, int]:
    """Tile rows ``[first, stop)`` of ``grid`` whose tiles touch scene rows ``[row_start, row_stop)``.

    These tiles are every contribution to those rows' blended output: predicting them, in the engine's order,
    gives rows bit-identical to a whole-scene run (the tiles above and below act as the halo).

    >>> g = TileGrid(1000, 700, tile_size=256, overlap=32)
    >>> g.row_starts
    [0, 224, 448, 672, 744]
    >>> tile_rows_for(g, 0, 230), tile_rows_for(g, 500, 1000)
    ((0, 2), (2, 5))
    """
    if not 0 <= row_start < row_stop <= grid.height:
        raise InputError(f"rows [{row_start}, {row_stop}) are not inside the grid's {grid.height} rows")
    th = grid.tiles[0].height
    needed = [k for k, s in enumerate(grid.row_starts) if s < row_stop and s + th > row_start]
    return needed[0], needed[-1] + 1


def predict_pair(
    pair: Any,
    predictor: TilePredictor,
    *,
    out_dir: Path,
    threshold: float,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    blend: str = "cosine",
    batch_size: int = 1,
    prefetch: int | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    partial_dir: Path | None = None,
    tags: dict[str, str] | None = None,
    rows: tuple[int, int] | None = None,
    cog: bool = True,
    keep_partial: bool = False,
) -> PredictStats:
    """Predict change over an aligned pair and stream ``probability.tif`` and ``change.tif`` into ``out_dir``.

    Parameters
    ----------
    pair
        An :class:`~changedet.io.alignment.AlignedPair` (anything with ``height``, ``width``, ``crs``,
        ``transform`` and ``read(window) -> (before, after, valid)``).
    predictor
        A :class:`TilePredictor` (:class:`TorchPredictor` or :class:`ScorerPredictor`).
    out_dir
        Folder that receives ``probability.tif`` and ``change.tif`` (COGs). Existing files are replaced: the
        caller checks ``overwrite`` (see :func:`changedet.api.detect`).
    threshold
        Probability at or above which a valid pixel is changed (1) in ``change.tif``.
    tile_size, overlap, blend
        See :class:`~changedet.tiling.TileGrid`; ``tile_size`` is reduced to the scene size (rounded up to the
        model's multiple) for small scenes.
    batch_size
        Tiles per forward pass (1 is fastest on CPUs; larger batches help GPUs).
    prefetch
        Tiles read ahead by the reader thread; 0 reads each tile in the calling thread between forward passes.
        None (default): :func:`auto_prefetch`, i.e. 0 when the model's CPU threads already occupy every core.
    progress
        Called as ``progress(tiles_done, tiles_total, pixels_done)`` after each batch.
    resume
        Continue from the journal and partial files in ``partial_dir`` left by an interrupted run with the same
        settings; the result is identical to an uninterrupted run.
    partial_dir
        Where partial files and the journal live (default ``out_dir/.changedet-partial``).
    rows
        ``(row_start, row_stop)``: predict only these scene rows. The outputs then hold just those rows (their
        transform is shifted accordingly) and are bit-identical to the same rows of a whole-scene run: the engine
        predicts every tile that touches them (:func:`tile_rows_for`), in the same order. Used to split very large
        scenes into row blocks processed on different machines (:func:`changedet.distributed.detect_blocks`).
    cog
        Convert the outputs to Cloud-Optimised GeoTIFFs (default); False keeps the tiled GeoTIFFs (intermediate
        files that will be merged).
    keep_partial
        Leave the finished partial files and the journal in ``partial_dir`` (the caller removes them once its own
        later steps are done): an interruption after the prediction, while vectorising say, then resumes without
        predicting again. Not used when an engine (:func:`use_engine`) runs the call.

    Inside :func:`use_engine`, a whole-scene call (``rows=None``) is handed to that engine instead.

    Returns
    -------
    PredictStats
        Counts, timings and the written paths.
    """
    engine = _ENGINE.get()
    if engine is not None and rows is None:
        with use_engine(None):
            return engine(pair, predictor, out_dir=out_dir, threshold=threshold, tile_size=tile_size,
                          overlap=overlap, blend=blend, batch_size=batch_size, prefetch=prefetch, progress=progress,
                          resume=resume, partial_dir=partial_dir, tags=tags, cog=cog)
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    partial_dir = Path(partial_dir) if partial_dir else out_dir / ".changedet-partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    H, W = int(pair.height), int(pair.width)
    grid = engine_grid(H, W, multiple=predictor.multiple, tile_size=tile_size, overlap=overlap, blend=blend)
    tile_size, overlap = grid.tile_size, grid.overlap
    r_lo, r_hi = (0, H) if rows is None else (int(rows[0]), int(rows[1]))
    k_lo, k_hi = tile_rows_for(grid, r_lo, r_hi)
    n_cols = len(grid.col_starts)
    stats = PredictStats(tiles_total=(k_hi - k_lo) * n_cols, tile_size=tile_size, overlap=overlap)

    signature = {
        "height": H, "width": W, "tile_size": tile_size, "overlap": overlap, "blend": blend,
        "threshold": float(threshold),
        # a resume must not continue rows predicted by another model, precision, test-time augmentation or
        # normalisation, nor rows of another pair or of other corrections (co-registration, histogram matching)
        "predictor": _predictor_fingerprint(predictor),
        "inputs": _input_fingerprint(pair),
    }
    if rows is not None:
        signature["rows"] = [r_lo, r_hi]
    journal = _Journal(partial_dir / "journal.json", signature)
    resumed = resume and journal.load()
    if resumed and not all(
        StripWriter.usable_partial(partial_dir / f"{stem}.partial.tif", W, r_hi - r_lo, dtype)
        for stem, dtype in (("probability", "float32"), ("change", "uint8"))
    ):
        log.warning("resume: the partial outputs in %s are missing or unreadable (was the run killed?); "
                    "starting over", partial_dir)
        resumed = False
    if not resumed:
        journal.rows_done = journal.valid = journal.changed = 0
    transform = pair.transform
    if r_lo and transform is not None:
        from affine import Affine

        transform = transform * Affine.translation(0, r_lo)
    common = {"width": W, "height": r_hi - r_lo, "crs": pair.crs, "transform": transform,
              "partial_dir": partial_dir, "resume": resumed, "tags": tags, "row_offset": r_lo, "cog": cog}
    writers = (
        StripWriter(out_dir / "probability.tif", dtype="float32", nodata=PROB_NODATA,
                    description="change probability", **common),
        StripWriter(out_dir / "change.tif", dtype="uint8", nodata=MASK_NODATA,
                    description="change (1) / no change (0)", **common),
    )
    journal.save()

    th = grid.tiles[0].height
    block = 512
    # rows from the last written block boundary to the bottom of the current tile row: < block + tile height.
    # Only the weighted sum of predictions is kept; the sum of the weights is the grid's (TileGrid.weight_sums).
    strips = StripBuffers(tile_size + block, W, floats=1, masks=1,
                          top=max(journal.rows_done, grid.row_starts[k_lo]))
    (acc,) = strips.floats
    row_wsum, col_wsum = grid.weight_sums
    (vbuf,) = strips.masks

    start_row = next((r for r, r0 in enumerate(grid.row_starts) if r0 + th > strips.top), len(grid.row_starts))
    start_row = max(start_row, k_lo)
    tiles = [t for t in grid.tiles if start_row <= t.row < k_hi]
    stats.tiles_resumed = stats.tiles_total - len(tiles)
    prob_w, mask_w = writers

    def _write(job: tuple[int, np.ndarray, np.ndarray, int, int]) -> None:
        row_off, prob, mask, n_valid, n_changed = job
        prob_w.write(prob, row_off)
        mask_w.write(mask, row_off)
        prob_w.sync()  # on disk before the journal says so
        mask_w.sync()
        journal.rows_done = row_off + prob.shape[0]
        journal.valid += n_valid
        journal.changed += n_changed
        journal.save()

    streams = TileStreams(lambda tile: pair.read(Window(*tile.window)), tiles, _write,
                          prefetch=auto_prefetch(predictor) if prefetch is None else prefetch)

    def _flush(upto: int) -> None:
        top = strips.top
        n = upto - top
        if n <= 0:
            return
        v = vbuf[:n]
        prob = np.full((n, W), PROB_NODATA, np.float32)
        np.divide(acc[:n], row_wsum[top:upto, None], out=prob, where=v)
        np.divide(prob, col_wsum[None, :], out=prob, where=v)
        np.clip(prob, 0.0, 1.0, out=prob, where=v)
        mask = np.full((n, W), MASK_NODATA, np.uint8)
        changed = v & (prob >= threshold)
        mask[v] = 0
        mask[changed] = 1
        lo, hi = max(top, r_lo), min(upto, r_hi)  # only the requested rows are written
        if hi > lo:
            s = slice(lo - top, hi - top)
            streams.put((lo, prob[s], mask[s], int(v[s].sum()), int(changed[s].sum())))
        strips.shift(n)

    cursor = RowCursor(grid, _flush, start_row=start_row, block=block)
    done = stats.tiles_resumed
    pixels_done = 0
    try:
        with streams:
            for batch in _batches(streams.items(), max(1, batch_size)):
                todo = [item for item in batch if item[3].any()]
                stats.tiles_skipped += len(batch) - len(todo)
                probs: dict[int, np.ndarray] = {}
                if todo:
                    t0 = time.perf_counter()
                    out = predictor.predict(*(_stacked([i[k] for i in todo]) for k in (1, 2, 3)))
                    stats.seconds_predict += time.perf_counter() - t0
                    stats.tiles_predicted += len(todo)
                    probs = {item[0].index: p for item, p in zip(todo, out, strict=True)}
                for tile, _b, _a, valid in batch:
                    # a tile row is complete once a tile of the next row arrives: flush in tile order, so that the
                    # tiles of the previous row that share this batch are blended in before their rows are written
                    cursor.advance(tile.row)
                    if tile.index not in probs:
                        continue
                    rs, cs = tile.slices
                    r0 = max(rs.start, strips.top)  # rows above the strips' top are already written (resume)
                    if r0 >= rs.stop:
                        continue
                    skip = r0 - rs.start
                    br = slice(r0 - strips.top, rs.stop - strips.top)
                    wt = grid.weights(tile)[skip:]
                    acc[br, cs] += probs[tile.index][skip:] * wt
                    vbuf[br, cs] |= valid[skip:]
                done += len(batch)
                pixels_done += sum(t.height * t.width for t, *_ in batch)
                if progress is not None:
                    progress(done, stats.tiles_total, pixels_done)
            cursor.advance(k_hi)
            _flush(r_hi)
            streams.finish()
        t0 = time.perf_counter()
        for w in writers:
            stats.paths[w.final_path.stem] = str(w.finalize(keep_partial=keep_partial))
        stats.seconds_finalize = time.perf_counter() - t0
        if not keep_partial:
            (partial_dir / "journal.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                partial_dir.rmdir()
    except BaseException:
        for w in writers:
            w.close()
        raise
    stats.seconds_read, stats.seconds_write = streams.timing["read"], streams.timing["write"]
    stats.valid_pixels, stats.changed_pixels = journal.valid, journal.changed
    stats.seconds_total = time.perf_counter() - t_start
    stats._pixels = (r_hi - r_lo) * W
    return stats


def wrap_errors(exc: BaseException, what: str) -> ChangedetError:
    """Turn an OS-level write failure into an :class:`~changedet.errors.OutputError` naming ``what``."""
    if isinstance(exc, ChangedetError):
        return exc
    return OutputError(f"{what}: could not write ({exc}); check free disk space and write permission")


class TileProgress:
    """A ``progress(tiles_done, tiles_total, pixels_done)`` callback drawing a tqdm bar on stderr: tiles, megapixels
    per second and time left (what ``changedet detect`` shows; ``detect(..., progress=True)`` in Python)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.t0 = 0.0
        self.p0 = 0

    def __call__(self, done: int, total: int, pixels: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tile", desc="detect", leave=False, dynamic_ncols=True)
            self.bar.update(done - 1 if done > 1 else 0)
            # the rate counts from the first finished tile: opening, statistics and the model load are not in it
            self.t0, self.p0 = now, pixels
        self.bar.update(done - self.bar.n)
        dt = now - self.t0
        if dt > 0 and pixels > self.p0:
            self.bar.set_postfix_str(f"{(pixels - self.p0) / 1e6 / dt:.2f} Mpx/s")
        if done >= total:  # the last tile: the bar goes, so that later messages start on a line of their own
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
