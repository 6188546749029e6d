"""One streamed pass over the tiles that predicts every pair of a series (:func:`predict_series`)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from changedet.errors import InputError
from changedet.series.stack import _zeroed
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

log = logging.getLogger(__name__)

__all__ = ["SeriesStats", "index_dtype", "predict_series"]


# ---------------------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SeriesStats:
    """What one :func:`predict_series` run did (per pair and for the series)."""

    tiles_total: int = 0
    tiles_read: int = 0
    tiles_skipped: int = 0
    predictions: int = 0  # tile x pair forward passes
    pair_valid: list[int] = field(default_factory=list)
    pair_changed: list[int] = field(default_factory=list)
    valid_pixels: int = 0  # valid in at least one pair
    changed_pixels: int = 0  # changed in at least one pair
    first_change_pixels: list[int] = field(default_factory=list)  # pixels whose first change is pair k (1-based)
    seconds_read: float = 0.0
    seconds_predict: float = 0.0
    seconds_write: float = 0.0
    seconds_finalize: float = 0.0
    seconds_total: float = 0.0
    strip_buffer_bytes: int = 0
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def index_dtype(n_pairs: int) -> tuple[str, int]:
    """Data type and nodata of ``first_change``/``last_change``/``change_count`` for ``n_pairs`` pairs.

    >>> index_dtype(3), index_dtype(300)
    (('uint8', 255), ('uint16', 65535))
    """
    return ("uint8", 255) if n_pairs <= 254 else ("uint16", 65535)


def predict_series(
    stack: Any,
    pairs: Sequence[tuple[int, int]],
    predictors: Sequence[Any],
    *,
    out_dir: Path,
    pair_dirs: Sequence[str],
    thresholds: Sequence[float],
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    blend: str = "cosine",
    batch_size: int = 1,
    prefetch: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    pair_tags: Sequence[dict[str, str]] | None = None,
    index_tags: dict[str, str] | None = None,
) -> SeriesStats:
    """Predict every pair of a series in one streamed pass over the tiles.

    For each tile the dates are read once (``stack.read(window) -> (values (N,C,h,w), valid (N,h,w))``), each
    pair's predictor runs on its two dates (invalid pixels zeroed, as in a two-date read) and the probabilities
    are blended into that pair's strip accumulator; rows that no later tile touches are thresholded and written.

    Parameters
    ----------
    stack
        A :class:`SeriesStack` (or anything with ``height``, ``width``, ``crs``, ``transform`` and ``read``).
    pairs
        (before, after) date indexes, 0-based (see :func:`series_pairs`).
    predictors
        One :class:`~changedet.inference.TilePredictor` per pair (all with the same ``multiple``).
    out_dir
        Receives ``<pair_dir>/probability.tif`` and ``change.tif`` per pair, ``change_count.tif``,
        ``first_change.tif`` and ``last_change.tif`` (COGs; existing files are replaced).
    pair_dirs
        Folder name of each pair inside ``out_dir``.
    thresholds
        Probability threshold of each pair.
    tile_size, overlap, blend, batch_size, prefetch, progress
        As in :func:`~changedet.inference.predict_pair` (``progress`` is None or a callable; :func:`detect_series`
        turns ``progress=True`` into a :class:`~changedet.inference.TileProgress` bar).
    pair_tags, index_tags
        Metadata tags of each pair's rasters and of the three series rasters.

    Returns
    -------
    SeriesStats
    """
    from changedet.inference import (
        MASK_NODATA,
        PROB_NODATA,
        RowCursor,
        StripBuffers,
        StripWriter,
        TileStreams,
        _batches,
        auto_prefetch,
        engine_grid,
    )

    t_start = time.perf_counter()
    n_pairs = len(pairs)
    if not (n_pairs == len(predictors) == len(pair_dirs) == len(thresholds)):
        raise ValueError("pairs, predictors, pair_dirs and thresholds must have the same length")
    if progress is not None and not callable(progress):  # checked before any output is started
        raise InputError(f"progress must be None or a callable(tiles_done, tiles_total, pixels_done), not "
                         f"{type(progress).__name__} (detect_series turns progress=True into a progress bar)")
    out_dir = Path(out_dir)
    H, W = int(stack.height), int(stack.width)
    multiples = {max(1, int(p.multiple)) for p in predictors}
    multiple = max(multiples)
    grid = engine_grid(H, W, multiple=multiple, tile_size=tile_size, overlap=overlap, blend=blend)
    tile_size, overlap = grid.tile_size, grid.overlap
    stats = SeriesStats(tiles_total=len(grid), pair_valid=[0] * n_pairs, pair_changed=[0] * n_pairs,
                        first_change_pixels=[0] * n_pairs)
    idx_dtype, idx_nodata = index_dtype(n_pairs)
    partial_root = out_dir / ".changedet-partial"
    common = {"width": W, "height": H, "crs": stack.crs, "transform": stack.transform}
    writers: list[Any] = []
    try:
        for p, name in enumerate(pair_dirs):
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            part = partial_root / name
            part.mkdir(parents=True, exist_ok=True)
            tags = (pair_tags[p] if pair_tags else None)
            writers.append(StripWriter(out_dir / name / "probability.tif", dtype="float32", nodata=PROB_NODATA,
                                       description="change probability", tags=tags, partial_dir=part, **common))
            writers.append(StripWriter(out_dir / name / "change.tif", dtype="uint8", nodata=MASK_NODATA,
                                       description="change (1) / no change (0)", tags=tags, partial_dir=part,
                                       **common))
        partial_root.mkdir(parents=True, exist_ok=True)
        for key, desc in (
            ("change_count", f"number of pairs changed (of {n_pairs})"),
            ("first_change", "first pair changed (1..n, 0 never); dates in tags PAIR_k"),
            ("last_change", "last pair changed (1..n, 0 never); dates in tags PAIR_k"),
        ):
            writers.append(StripWriter(out_dir / f"{key}.tif", dtype=idx_dtype, nodata=idx_nodata, description=desc,
                                       tags=index_tags, partial_dir=partial_root, **common))
    except BaseException:
        for w in writers:
            w.discard()
        raise

    block = 512
    # as in predict_pair: rows from the last written block to the bottom of the current tile row, one weighted sum
    # of predictions per pair; the sum of the weights is the grid's (TileGrid.weight_sums)
    strips = StripBuffers(tile_size + block, W, floats=n_pairs, masks=n_pairs)
    acc, vbuf = strips.floats, strips.masks
    row_wsum, col_wsum = grid.weight_sums
    stats.strip_buffer_bytes = strips.nbytes

    def _read(tile: Any) -> tuple[np.ndarray, np.ndarray]:
        stats.tiles_read += 1
        return stack.read(Window(*tile.window))

    def _write(job: tuple[int, list[np.ndarray]]) -> None:
        row_off, arrays = job
        for w, a in zip(writers, arrays, strict=True):
            w.write(a, row_off)

    if prefetch is None:
        prefetch = min(auto_prefetch(p) for p in predictors)
    streams = TileStreams(_read, grid.tiles, _write, prefetch=prefetch, name="changedet-series")

    def _flush(upto: int) -> None:
        n = upto - strips.top
        if n <= 0:
            return
        count = np.zeros((n, W), np.int32)
        first = np.zeros((n, W), np.int32)
        last = np.zeros((n, W), np.int32)
        any_valid = np.zeros((n, W), bool)
        arrays: list[np.ndarray] = []
        for p in range(n_pairs):
            v = vbuf[p][:n]
            prob = np.full((n, W), PROB_NODATA, np.float32)
            np.divide(acc[p][:n], row_wsum[strips.top : upto, None], out=prob, where=v)
            np.divide(prob, col_wsum[None, :], out=prob, where=v)
            np.clip(prob, 0.0, 1.0, out=prob, where=v)
            mask = np.full((n, W), MASK_NODATA, np.uint8)
            changed = v & (prob >= thresholds[p])
            mask[v] = 0
            mask[changed] = 1
            arrays += [prob, mask]
            stats.pair_valid[p] += int(v.sum())
            stats.pair_changed[p] += int(changed.sum())
            any_valid |= v
            count += changed
            first[(first == 0) & changed] = p + 1
            last[changed] = p + 1
        for k in range(1, n_pairs + 1):
            stats.first_change_pixels[k - 1] += int((first == k).sum())
        stats.valid_pixels += int(any_valid.sum())
        stats.changed_pixels += int((count > 0).sum())
        for a in (count, first, last):
            out = a.astype(idx_dtype)
            out[~any_valid] = idx_nodata
            arrays.append(out)
        streams.put((strips.top, arrays))
        strips.shift(n)

    cursor = RowCursor(grid, _flush, block=block)
    done = 0
    pixels_done = 0
    try:
        with streams:
            for batch in _batches(streams.items(), max(1, batch_size)):
                pvalid = [[it[2][i] & it[2][j] for it in batch] for (i, j) in pairs]
                used = [any(pvalid[p][k].any() for p in range(n_pairs)) for k in range(len(batch))]
                stats.tiles_skipped += used.count(False)
                probs: list[dict[int, np.ndarray]] = []
                for p, (i, j) in enumerate(pairs):
                    todo = [k for k in range(len(batch)) if pvalid[p][k].any()]
                    out: dict[int, np.ndarray] = {}
                    if todo:
                        parts = [_zeroed(batch[k][1][i], batch[k][1][j], pvalid[p][k]) for k in todo]
                        t0 = time.perf_counter()
                        pr = predictors[p].predict(np.stack([x[0] for x in parts]),
                                                   np.stack([x[1] for x in parts]), np.stack([x[2] for x in parts]))
                        stats.seconds_predict += time.perf_counter() - t0
                        stats.predictions += len(todo)
                        out = dict(zip(todo, pr, strict=True))
                    probs.append(out)
                for k, (tile, _values, _valid) in enumerate(batch):
                    # flush in tile order: the tiles of the previous row in this batch are blended in first
                    cursor.advance(tile.row)
                    if not used[k]:
                        continue
                    rs, cs = tile.slices
                    br = slice(rs.start - strips.top, rs.stop - strips.top)
                    wt = grid.weights(tile)
                    for p in range(n_pairs):
                        if k in probs[p]:
                            acc[p][br, cs] += probs[p][k] * wt
                            vbuf[p][br, cs] |= pvalid[p][k]
                done += len(batch)
                pixels_done += sum(t.height * t.width for t, *_ in batch)
                if progress is not None:
                    progress(done, len(grid), pixels_done)
            cursor.advance(len(grid.row_starts))
            _flush(H)
            streams.finish()
        t0 = time.perf_counter()
        for w in writers:
            rel = w.final_path.relative_to(out_dir)
            stats.paths[str(rel)] = str(w.finalize())
        stats.seconds_finalize = time.perf_counter() - t0
        shutil.rmtree(partial_root, ignore_errors=True)
    except BaseException:
        for w in writers:
            w.discard()
        shutil.rmtree(partial_root, ignore_errors=True)
        raise
    stats.seconds_read, stats.seconds_write = streams.timing["read"], streams.timing["write"]
    stats.seconds_total = time.perf_counter() - t_start
    return stats
