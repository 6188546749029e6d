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
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL errors that are not RasterioError (e.g. a truncated file)
from rasterio.windows import Window

from changedet.errors import ChangedetError, InputError, OutputError
from changedet.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, Tile, TileGrid, balanced_tile_size

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


class TilePredictor(Protocol):
    """Turns a batch of tiles into change probabilities.

    ``predict(before, after, valid)`` takes float32 arrays (N, C, h, w) of raw (un-normalised) pixel values and a
    boolean validity mask (N, h, w), and returns float32 probabilities (N, h, w) in [0, 1]. ``multiple``: the engine
    sizes tiles and spaces their starts in multiples of it (a network's downsampling factor, so that every tile
    pools on the same pixel phase as a whole-image pass; 1 for per-pixel methods).
    """

    multiple: int
    name: str

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------------------------
# predictors
# ---------------------------------------------------------------------------------------------------------------
#: Test-time augmentation modes of :class:`TorchPredictor` (``--tta``), with the number of forward passes per tile.
TTA_MODES = {"none": 1, "flip": 4, "d4": 8, "swap": 2, "flip+swap": 8, "d4+swap": 16}


def parse_tta(mode: str | None) -> str:
    """The canonical name of a test-time augmentation mode (``"swap+flip"`` -> ``"flip+swap"``; None -> ``"none"``).

    Raises :class:`~changedet.errors.InputError` for anything not in :data:`TTA_MODES`.
    """
    key = "none" if mode is None else str(mode).lower().replace(" ", "")
    parts = key.split("+")
    canonical = "+".join(p for p in ("flip", "d4", "swap") if p in parts)
    if key != "none" and (canonical not in TTA_MODES or len(parts) != len(set(parts))
                          or set(parts) - {"flip", "d4", "swap"}):
        raise InputError(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return canonical or "none"


def tta_transforms(mode: str) -> list[tuple[int, bool, bool]]:
    """The views of a test-time augmentation mode, as ``(quarter turns, mirrored, dates swapped)``.

    ``"flip"``: the tile, mirrored left-right, turned 180 degrees, and mirrored top-bottom (the four symmetries that
    keep a rectangle's shape); ``"d4"``: all eight rotations and reflections of the square; ``"swap"``: each view
    also with BEFORE and AFTER exchanged (change is symmetric in time; the bundled models are trained with date
    swaps). ``"none"`` is the identity alone.

    >>> tta_transforms("flip+swap")[:3]
    [(0, False, False), (0, False, True), (0, True, False)]
    >>> len(tta_transforms("d4"))
    8
    """
    parts = parse_tta(mode).split("+")
    geometry = ([(k, m) for k in range(4) for m in (False, True)] if "d4" in parts
                else [(0, False), (0, True), (2, False), (2, True)] if "flip" in parts else [(0, False)])
    swaps = (False, True) if "swap" in parts else (False,)
    return [(k, m, s) for k, m in geometry for s in swaps]


class TorchPredictor:
    """A Siamese network applied tile by tile (an eval-mode copy with batch norm folded into the convolutions).

    Parameters
    ----------
    model
        A changedet model (``forward(before, after) -> logits (N,1,H,W)``).
    mean_before, std_before, mean_after, std_after
        Per-band normalisation of each date (from the checkpoint for ``"fixed"`` normalisation, or per-scene
        statistics for ``"scene"``); each a 1-D sequence of length C.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision
        ``"float32"`` or ``"bf16"`` (the whole model in bfloat16; faster on CPUs with AVX-512 bf16 and on GPUs).
    tta
        Test-time augmentation (:data:`TTA_MODES`, :func:`tta_transforms`): the probability is the mean over the
        views of each tile, each mapped back onto the tile; costs one forward pass per view. ``"none"`` (default).
    """

    def __init__(
        self,
        model: Any,
        mean_before: Sequence[float],
        std_before: Sequence[float],
        mean_after: Sequence[float],
        std_after: Sequence[float],
        *,
        device: str = "cpu",
        precision: str = "float32",
        name: str = "model",
        tta: str = "none",
    ) -> None:
        import torch

        if precision not in ("float32", "bf16"):
            raise InputError(f"unknown precision {precision!r}; choose float32 or bf16")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        from changedet.models import flush_denormals, optimize_for_inference

        self._flush_denormals = flush_denormals

        self.model = optimize_for_inference(model, dtype=self.dtype, channels_last=True).to(self.device)
        # Tiles are sized, and their starts spaced, in multiples of the network's downsampling factor (its
        # pad_multiple, 16 for the FC models): then every tile pools on the same pixel phase as a whole-image pass.
        # On OSCD beirut, tiles of 415 px (multiples of 1) changed 556 (s2-13band) and 361 (s2-rgb) mask pixels
        # against one whole-image pass, tiles of 416 px 3 and 37 (scripts/seam_check.py).
        self.multiple = max(int(getattr(model, "required_multiple", 1)), int(getattr(model, "pad_multiple", 1)))
        pair_dim = getattr(model, "pair_dim", None)
        self._pair_dim = pair_dim if pair_dim in (0, 1) else None
        self.name = name
        self.tta = parse_tta(tta)
        self._views = tta_transforms(self.tta)

        def _stat(v: Sequence[float] | np.ndarray) -> Any:
            return torch.as_tensor(np.asarray(v, dtype=np.float32)).view(1, -1, 1, 1).to(self.device)

        std_b = np.where(np.asarray(std_before, np.float32) > 0, std_before, 1.0)
        std_a = np.where(np.asarray(std_after, np.float32) > 0, std_after, 1.0)
        self._mb, self._sb = _stat(mean_before), _stat(std_b)
        self._ma, self._sa = _stat(mean_after), _stat(std_a)
        # (x - mean) / std as one fused x * scale + shift into the channels-last tensor: half the memory passes
        self._norm_b = (1.0 / self._sb, -self._mb / self._sb)
        self._norm_a = (1.0 / self._sa, -self._ma / self._sa)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state (the model and the normalisation), so that a predictor can be sent to Dask workers."""
        return {
            "model": self.model,
            "stats": [t.detach().cpu().numpy().ravel() for t in (self._mb, self._sb, self._ma, self._sa)],
            "device": str(self.device),
            "precision": "bf16" if self.dtype == self.torch.bfloat16 else "float32",
            "name": self.name,
            "tta": self.tta,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], *state["stats"], device=state["device"],  # type: ignore[misc]
                      precision=state["precision"], name=state["name"], tta=state.get("tta", "none"))

    def _prep(self, before: np.ndarray, after: np.ndarray, dim: int | None,
              valid: np.ndarray | None = None) -> tuple[Any, Any]:
        """Both dates as normalised channels-last tensors of the model's dtype; non-finite values and the pixels
        that ``valid`` (n, h, w) rules out become 0 after normalisation (each date's mean, as training fills them),
        so that nodata looks the same in both dates instead of two different raw fill values.

        With ``dim`` (the model's ``pair_dim``) they share one buffer, AFTER right after BEFORE along it, so that the
        model joins them without a copy (:func:`changedet.models.cat_pair`); with None they are two tensors.
        """
        torch = self.torch
        n, c, h, w = before.shape
        shape = (n, c, h, w) if dim is None else (2 * n, c, h, w) if dim == 0 else (n, 2 * c, h, w)

        def empty() -> Any:
            return torch.empty(shape, dtype=torch.float32, device=self.device, memory_format=torch.channels_last)

        if dim is None:
            bufs = [empty(), empty()]
            parts = bufs
        else:
            bufs = [empty()]
            parts = [bufs[0][:n], bufs[0][n:]] if dim == 0 else [bufs[0][:, :c], bufs[0][:, c:]]
        for x, (scale, shift), part in zip((before, after), (self._norm_b, self._norm_a), parts, strict=True):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            torch.addcmul(shift, t, scale, out=part)  # (x - mean) / std in one pass
        for buf in bufs:
            buf.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        if valid is not None and not valid.all():
            keep = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32)[:, None]).to(self.device)
            for part in parts:
                part.mul_(keep)
        if dim is None:
            return bufs[0].to(self.dtype), bufs[1].to(self.dtype)  # .to keeps channels-last
        joint = bufs[0].to(self.dtype)
        return (joint[:n], joint[n:]) if dim == 0 else (joint[:, :c], joint[:, c:])

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        torch = self.torch
        _n, _c, h, w = before.shape
        with torch.inference_mode(), self._flush_denormals():
            # the views of test-time augmentation are transformed one date at a time: no joint buffer for them
            tb, ta = self._prep(before, after, self._pair_dim if len(self._views) == 1 else None, valid)
            ph, pw = (-h) % self.multiple, (-w) % self.multiple
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                tb = torch.nn.functional.pad(tb, (0, pw, 0, ph), mode=mode)
                ta = torch.nn.functional.pad(ta, (0, pw, 0, ph), mode=mode)
            if len(self._views) == 1:
                prob = torch.sigmoid(self.model(tb, ta).float())
            else:
                prob = self._augmented(tb, ta)
            return prob[:, 0, :h, :w].cpu().numpy()

    def _augmented(self, tb: Any, ta: Any) -> Any:
        """Mean probability over the test-time augmentation views, each mapped back onto the tile."""
        torch = self.torch
        total: Any = None
        for turns, mirrored, swapped in self._views:
            views = []
            for t in (ta, tb) if swapped else (tb, ta):
                v = t.flip(-1) if mirrored else t
                v = torch.rot90(v, turns, (-2, -1)) if turns else v
                views.append(v.contiguous(memory_format=torch.channels_last))
            p = torch.sigmoid(self.model(*views).float())
            p = torch.rot90(p, -turns, (-2, -1)) if turns else p
            p = p.flip(-1) if mirrored else p
            total = p if total is None else total.add_(p)
        return total / len(self._views)


class ScorerPredictor:
    """A fitted unsupervised scorer (``predict(before, after, valid) -> (h, w)``) used tile by tile."""

    multiple = 1

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.name = str(getattr(scorer, "name", type(scorer).__name__))

    def predict(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.stack(
            [np.asarray(self.scorer.predict(b, a, v), dtype=np.float32) for b, a, v in zip(before, after, valid, strict=True)]
        )


# ---------------------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _partial_compression() -> dict[str, Any]:
    """Creation options of the partial files: ZSTD level 1 where GDAL has it, else DEFLATE level 1.

    The partial files are rewritten once into the final COG, so they want speed, not size: for a 4096 x 4096
    float32 probability raster, ZSTD-1 writes in 0.23 s and reads in 0.21 s, DEFLATE-1 in 1.20 s and 0.46 s, for
    the same size (62 MB); uncompressed would be faster still but takes a full scene of disk per output.
    """
    import warnings

    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings(), MemoryFile() as mem:
            warnings.simplefilter("ignore")
            with mem.open(driver="GTiff", width=16, height=16, count=1, dtype="uint8", tiled=True, blockxsize=16,
                          blockysize=16, compress="zstd") as ds:
                ds.write(np.zeros((1, 16, 16), np.uint8))
            with mem.open() as ds:
                ok = ds.compression is not None and ds.compression.name.lower() == "zstd"
    except Exception:  # noqa: BLE001 - any failure means: not available
        ok = False
    return {"compress": "zstd", "zstd_level": 1} if ok else {"compress": "deflate", "zlevel": 1}


class StripWriter:
    """Writes row blocks of a single-band raster into a temporary tiled GeoTIFF, then a COG.

    The temporary file (``<final>.partial.tif``) can be reopened with ``resume=True`` to continue an interrupted
    run; :meth:`finalize` converts it to a Cloud-Optimised GeoTIFF at ``final_path`` (DEFLATE, 512 px blocks,
    overviews) through a temporary name and an atomic rename, then removes the partial file.
    """

    def __init__(
        self,
        final_path: Path,
        *,
        width: int,
        height: int,
        dtype: str,
        nodata: float,
        crs: Any,
        transform: Any,
        description: str,
        tags: dict[str, str] | None = None,
        resume: bool = False,
        partial_dir: Path,
        row_offset: int = 0,
        cog: bool = True,
    ) -> None:
        self.final_path = Path(final_path)
        self.row_offset = int(row_offset)
        self.cog = cog
        self.partial = Path(partial_dir) / (self.final_path.stem + ".partial.tif")
        self.description = description
        self.tags = tags or {}
        self.resampling = "AVERAGE" if dtype == "float32" else "NEAREST"
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": dtype,
            "nodata": nodata,
            "crs": crs,
            "transform": transform,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            **_partial_compression(),
            "bigtiff": "if_safer",
        }
        if not crs:
            profile.pop("crs")
        if resume and self.partial.exists():
            self.ds = rasterio.open(self.partial, "r+")
        else:
            # an earlier run's file (unreadable after a full disk, say) is removed first: GDAL's Create opens the
            # file it replaces and fails on a corrupt one, which kept every later run from starting over
            self.partial.unlink(missing_ok=True)
            self.ds = rasterio.open(self.partial, "w", **profile)
            self.ds.set_band_description(1, description)
            if self.tags:
                self.ds.update_tags(**self.tags)

    def write(self, array: np.ndarray, row_off: int) -> None:
        """Write rows starting at scene row ``row_off`` (the file's first row is scene row ``row_offset``)."""
        h, w = array.shape
        self.ds.write(array, 1, window=Window(0, row_off - self.row_offset, w, h))

    def sync(self) -> None:
        """Flush every written block to the file (close and reopen it), so that the journal never claims rows
        that a killed process (SIGKILL, power cut of the process) held only in GDAL's block cache."""
        if not self.ds.closed:
            self.ds.close()
        self.ds = rasterio.open(self.partial, "r+")

    def close(self) -> None:
        if not self.ds.closed:
            self.ds.close()

    @staticmethod
    def usable_partial(path: Path, width: int, height: int, dtype: str) -> bool:
        """Whether a partial file left by an earlier run can be continued (exists, opens, same grid and type)."""
        try:
            with rasterio.open(path) as ds:
                return (ds.width, ds.height, ds.count, ds.dtypes[0]) == (width, height, 1, dtype)
        except (rasterio.errors.RasterioError, CPLE_BaseError, OSError):
            return False

    def finalize(self, keep_partial: bool = False) -> Path:
        """Convert the partial file into a COG at ``final_path`` atomically; return the path.

        With ``cog=False`` the tiled GeoTIFF is renamed onto ``final_path`` as it is (for intermediate files), or
        copied with ``keep_partial``, which leaves the partial file for a later resume.
        """
        from changedet.io.raster import to_cog

        self.close()
        if not self.cog:
            if keep_partial:
                shutil.copyfile(self.partial, self.final_path)
            else:
                os.replace(self.partial, self.final_path)
            return self.final_path
        tmp = self.final_path.with_name(f".{self.final_path.name}.{os.getpid()}.tmp")
        try:
            to_cog(self.partial, tmp, overview_resampling=self.resampling,
                   predictor=self.resampling == "AVERAGE", name=self.final_path)
            os.replace(tmp, self.final_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not keep_partial:
            self.partial.unlink(missing_ok=True)
        return self.final_path

    def discard(self) -> None:
        self.close()
        self.partial.unlink(missing_ok=True)



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


def _input_fingerprint(pair: Any) -> list[Any]:
    """What identifies a pair's inputs for a resume: each file's path, size and modification time (when it is a
    local file), the grid and the bands read."""
    parts: list[Any] = [str(getattr(pair, "crs", None)), list(getattr(pair, "transform", ()) or ())[:6],
                        list(getattr(pair, "band_names", None) or [])]
    for which in ("before_info", "after_info"):
        info = getattr(pair, which, None)
        name = str(getattr(info, "path", "") or "")
        try:
            st = os.stat(name)
            parts.append([os.path.abspath(name), st.st_size, st.st_mtime_ns])
        except OSError:
            parts.append([name])
    return parts


class _Journal:
    """Which rows of the outputs are final, kept next to the partial files so an interrupted run can resume."""

    def __init__(self, path: Path, signature: dict[str, Any]) -> None:
        self.path = path
        self.signature = signature
        self.rows_done = 0
        self.valid = 0
        self.changed = 0

    def load(self) -> bool:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if data.get("signature") != self.signature:
            log.warning("resume: the journal in %s is for other settings; starting over", self.path.parent)
            return False
        self.rows_done, self.valid, self.changed = int(data["rows_done"]), int(data["valid"]), int(data["changed"])
        return True

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = {"signature": self.signature, "rows_done": self.rows_done, "valid": self.valid, "changed": self.changed}
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


class TileStreams:
    """The reader and writer threads around a streaming engine's main loop (used by :func:`predict_pair` and
    :func:`changedet.series.engine.predict_series`).

    ``read(tile)`` returns the tile's arrays; it runs in a prefetch thread that keeps up to ``prefetch`` tiles
    ready (or, with ``prefetch=0``, in the calling thread between forward passes). :meth:`items` yields
    ``(tile, *arrays)`` in order. :meth:`put` hands a job (a block of finished rows) to ``write(job)`` in the
    writer thread, :meth:`finish` waits until every job is written. Errors in either thread surface in the calling
    thread. As a context manager it starts the threads inside :func:`large_allocations` and, on the way out, stops
    the reader and, after an error, drops pending writes; ``timing`` holds the seconds spent reading and writing.
    """

    def __init__(self, read: Callable[[Tile], tuple[Any, ...]], tiles: Sequence[Tile],
                 write: Callable[[Any], None], *, prefetch: int = 2, name: str = "changedet") -> None:
        self._read, self._tiles, self._write, self.prefetch = read, list(tiles), write, int(prefetch)
        self.timing = {"read": 0.0, "write": 0.0}
        self._stop = threading.Event()
        self._abort = False  # set after an error in the main thread: drop the writes still queued
        self._tile_q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        self._write_q: queue.Queue = queue.Queue(maxsize=2)
        self._errors: list[BaseException] = []
        self._reader = threading.Thread(target=self._read_all, daemon=True, name=f"{name}-read")
        self._writer = threading.Thread(target=self._write_all, daemon=True, name=f"{name}-write")
        self._allocs = contextlib.ExitStack()

    # threads ---------------------------------------------------------------------------------------------------
    def _read_one(self, tile: Tile) -> tuple[Any, ...]:
        t0 = time.perf_counter()
        item = (tile, *self._read(tile))
        self.timing["read"] += time.perf_counter() - t0
        return item

    def _offer(self, item: Any) -> None:
        """Queue ``item`` for the main thread unless it has stopped listening (then drop it)."""
        while not self._stop.is_set():
            try:
                self._tile_q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _read_all(self) -> None:
        try:
            for tile in self._tiles:
                if self._stop.is_set():
                    return
                self._offer(self._read_one(tile))
            self._offer(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._offer(exc)

    def _write_all(self) -> None:
        while True:
            try:
                job = self._write_q.get(timeout=0.2)
            except queue.Empty:
                if self._abort:
                    return
                continue
            if job is None or self._abort:
                return
            if self._errors:
                continue
            try:
                t0 = time.perf_counter()
                self._write(job)
                self.timing["write"] += time.perf_counter() - t0
            except BaseException as exc:  # noqa: BLE001 - raised in the main thread by put/finish
                self._errors.append(exc)

    # main thread -----------------------------------------------------------------------------------------------
    def __enter__(self) -> TileStreams:
        self._allocs.enter_context(large_allocations())
        if self.prefetch > 0:
            self._reader.start()
        self._writer.start()
        return self

    def items(self) -> Iterator[tuple[Any, ...]]:
        """``(tile, *arrays)`` for every tile, in order."""
        if self.prefetch <= 0:
            for tile in self._tiles:
                yield self._read_one(tile)
            return
        while True:
            item = self._tile_q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def put(self, job: Any) -> None:
        """Queue a write job (raises the writer's error, if it had one)."""
        if self._errors:
            raise self._errors[0]
        self._write_q.put(job)

    def finish(self) -> None:
        """Wait until every queued job is written."""
        self._write_q.put(None)
        self._writer.join()
        if self._errors:
            raise self._errors[0]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if exc_type is not None and self._writer.is_alive():
            self._abort = True  # the block being written is finished (journal consistent), the rest dropped
            self._writer.join(timeout=60)
        if self._reader.is_alive():
            self._reader.join(timeout=30)
        self._allocs.close()


def auto_prefetch(predictor: Any) -> int:
    """How many tiles to read ahead in a thread for ``predictor``: 0 when its CPU threads already use every core.

    A reader thread competes with torch's intra-op threads for the cores; when torch uses all of them, each
    preempted worker stalls the others at the end of every parallel region. On this project's 2-core machine (2
    torch threads, 4096 x 4096 x 13 bands) reading in a thread made the forward passes 38 % (float32) and 49 %
    (bf16) slower, and the whole prediction slower than reading between forward passes. With spare cores, a GPU,
    or an unsupervised scorer (numpy, mostly one thread), reading ahead is free: 2.
    """
    torch_mod = getattr(predictor, "torch", None)
    device = getattr(predictor, "device", None)
    if torch_mod is None or (device is not None and getattr(device, "type", "cpu") != "cpu"):
        return 2
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 0 if torch_mod.get_num_threads() >= cores else 2


class StripBuffers:
    """Full-width row strips of a streaming engine: float accumulators and boolean masks, shifted up as rows finish.

    ``floats`` float32 and ``masks`` bool arrays of ``rows x width``; ``top`` is the scene row of their first row.
    """

    def __init__(self, rows: int, width: int, *, floats: int, masks: int, top: int = 0) -> None:
        self.rows, self.top = int(rows), int(top)
        self.floats = [np.zeros((self.rows, width), np.float32) for _ in range(floats)]
        self.masks = [np.zeros((self.rows, width), bool) for _ in range(masks)]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (*self.floats, *self.masks)))

    def shift(self, n: int) -> None:
        """Drop the first ``n`` rows (written out): move the rest up, zero the freed rows, advance ``top``."""
        for buf in (*self.floats, *self.masks):
            buf[:-n] = buf[n:].copy() if n < self.rows else buf[:0]
            buf[-n:] = 0
        self.top += n


class RowCursor:
    """Walks the tile rows of a grid and flushes every block of scene rows that no later tile row touches.

    ``flush(upto)`` is called with increasing row numbers, each a multiple of ``block`` except the scene's last.
    """

    def __init__(self, grid: TileGrid, flush: Callable[[int], None], *, start_row: int = 0, block: int = 512) -> None:
        self.grid, self.flush, self.row, self.block = grid, flush, int(start_row), int(block)

    def advance(self, tile_row: int) -> None:
        """Tile row ``tile_row`` has started: flush what the tile rows before it finished."""
        while tile_row > self.row:
            final = self.grid.rows_final_after(self.row)
            self.flush(final if final >= self.grid.height else final // self.block * self.block)
            self.row += 1


_MALLOC_LOCK = threading.Lock()
_MALLOC_DEPTH = 0


@contextlib.contextmanager
def large_allocations() -> Iterator[None]:
    """Keep freed memory in glibc's heap while tiles are predicted, then give it back.

    By default glibc serves every allocation above 128 KiB-32 MiB with a fresh ``mmap`` and returns it with
    ``munmap`` when freed, so each convolution's output (tens of MB on a 512-1024 px tile) is page-faulted in anew on
    every forward pass. Measured on this project's 2-core machine (FC-Siam-diff, 13 bands, float32, 2 threads,
    in-memory tiles): 1.27 -> 1.37 Mpx/s at tile 512, 0.93 -> 1.35 at tile 1024; bf16 at 512: 2.37 -> 2.64.
    Set ``CHANGEDET_MALLOPT=0`` to compare. Inside this context the mmap
    threshold is raised to 1 GiB and heap trimming is disabled, so the same pages are reused; on exit the defaults
    come back and ``malloc_trim`` returns the free heap to the system, so peak RSS, not steady RSS, pays for it.
    Nested and concurrent uses are counted; outside glibc (macOS, Windows, musl) or with ``CHANGEDET_MALLOPT=0``
    it does nothing.
    """
    global _MALLOC_DEPTH
    libc = _glibc()
    if libc is None:
        yield
        return
    with _MALLOC_LOCK:
        if _MALLOC_DEPTH == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
            libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        _MALLOC_DEPTH += 1
    try:
        yield
    finally:
        with _MALLOC_LOCK:
            _MALLOC_DEPTH -= 1
            if _MALLOC_DEPTH == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
                libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
                libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def _glibc() -> Any:
    if os.environ.get("CHANGEDET_MALLOPT", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``, without the copy for a batch of one (the default; a 512 px 13-band tile is 14 MB)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
        "threshold": float(threshold), "predictor": predictor.name, "tta": getattr(predictor, "tta", "none"),
        "inputs": _input_fingerprint(pair),  # a resume must not continue another pair's rows
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
