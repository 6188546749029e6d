"""The options of :func:`changedet.api.detect` checked before anything is read or written, and the settings a run
works under: GDAL's block cache and decoding threads, torch's intra-op threads.

:func:`changedet.series.detect_series` and :func:`changedet.distributed.run_batch` check their options with the same
functions, so the three give the same messages.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

from changedet.errors import ChangedetWarning, InputError

METHODS = ("model", "cva", "irmad", "dsfa")

#: The allowed ``tile_size`` (pixels per side) and ``batch_size`` (tiles per forward pass), both ends included: the
#: ranges of ``--tile-size`` and ``--batch-size`` on the command line and of the keyword arguments in Python
#: (:func:`_check_options`), so that the two cannot drift apart.
TILE_SIZE_RANGE = (16, 8192)
BATCH_SIZE_RANGE = (1, 256)


def _env_count(name: str, default: int, what: str) -> int:
    """A whole number >= 1 from the environment variable ``name`` (``default`` when unset or empty); an
    :class:`InputError` naming the variable when it holds anything else."""
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{name}={env!r} is not a whole number >= 1; set it to {what} or unset it")
    return value


def gdal_cache_bytes() -> int:
    """GDAL's block cache during a detect run: ``CHANGEDET_GDAL_CACHE_MB`` (default 128) MiB, bounded so that memory
    stays flat whatever the scene size."""
    return _env_count("CHANGEDET_GDAL_CACHE_MB", 128, "a size in MiB such as 128") * 2**20


def gdal_read_threads() -> int:
    """Threads GDAL may use to decode the blocks of one read (``GDAL_NUM_THREADS`` during a detect run).

    The engine reads a tile between forward passes (see :func:`changedet.inference.auto_prefetch`), while torch's
    threads wait, so the decoding may use every core: a 512-pixel tile touches 4 blocks of 512, decoded in
    parallel. On this project's 2-core machine, two threads read the 81 tiles of a 4096 x 4096 x 13-band uint16
    DEFLATE pair 1.2-1.4x faster (4.5-5.9 s against 3.8-4.2 s over two runs). ``CHANGEDET_GDAL_THREADS``
    overrides it.
    """
    if os.environ.get("CHANGEDET_GDAL_THREADS", "").strip():
        return _env_count("CHANGEDET_GDAL_THREADS", 1, "a thread count such as 2")
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _checked_tta(tta: str | None, method: str) -> str:
    """The canonical test-time augmentation mode; an :class:`InputError` for an unknown one or a non-network method."""
    from changedet.inference import parse_tta

    tta = parse_tta(tta)
    if tta != "none" and method != "model":
        raise InputError(f"--tta {tta} augments a network's predictions; --method {method} has none (drop --tta)")
    return tta


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Any:
    """torch's intra-op thread count set to ``threads`` for the block and restored afterwards (None: untouched).

    ``detect(threads=N)`` and ``detect_series(threads=N)`` run under it, so a notebook's later calls, and methods
    fitted with torch such as DSFA, see the thread count they were given rather than the last run's.
    """
    if not threads:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _ignored_options(*, method: str, vectorize: bool, precision: str, device: str, min_area: float,
                     simplify: float, fill_holes: float, geojson_crs: str | None) -> None:
    """A warning naming the options this run will not use (a network's precision or device with an unsupervised
    method, polygon options without polygons), instead of ignoring them without a word."""
    said = []
    if method != "model":
        net = [f"--precision {precision}"] * (precision != "float32") + [f"--device {device}"] * (device != "cpu")
        if net:
            said.append(f"{', '.join(net)}: not used, since --method {method} runs no network")
    if not vectorize:
        poly = [f"--{k.replace('_', '-')} {v:g}" for k, v in (("min_area", min_area), ("simplify", simplify),
                                                               ("fill_holes", fill_holes)) if v]
        poly += [f"--geojson-crs {geojson_crs}"] * (geojson_crs not in (None, "EPSG:4326"))
        if poly:
            said.append(f"{', '.join(poly)}: not used, since no polygons are made (--no-vectorize)")
    if said:
        warnings.warn("; ".join(said), ChangedetWarning, stacklevel=3)


def _check_options(*, overlap: int, blend: str, geojson_crs: str | None, device: str | None,
                   tile_size: int | None = None, threshold: float | None = None, threads: int | None = None,
                   indexes: Any = None, n_dates: int = 2, batch_size: int | None = None) -> None:
    """Options that can be checked before anything is read or written (an :class:`InputError` naming the option);
    ``tile_size`` and ``batch_size`` must be whole numbers in :data:`TILE_SIZE_RANGE` and :data:`BATCH_SIZE_RANGE`
    (None: not checked), and the tile size is checked against the scene and the model once both are known. ``indexes`` is one list of bands
    for every date or one list per date: ``n_dates`` lists (BEFORE, AFTER for a pair; one per raster of a series)."""
    import math
    import numbers

    from changedet.tiling import BLENDS

    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
        raise InputError(f"--threshold must be a probability between 0 and 1, got {threshold!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or threads < 1):
        raise InputError(f"--threads must be a whole number >= 1 (or None: torch's choice), got {threads!r}")
    if indexes is not None:
        lists = isinstance(indexes, Sequence) and len(indexes) > 0 and all(
            isinstance(s, Sequence) and not isinstance(s, (str, bytes)) for s in indexes)
        if isinstance(indexes, (str, bytes)) or not isinstance(indexes, Sequence) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool)
                for i in ([i for part in indexes for i in part] if lists else indexes)):
            per_date = "a BEFORE/AFTER pair of lists" if n_dates == 2 else f"one list per raster ({n_dates})"
            raise InputError(f"--indexes must be a list of 1-based band numbers such as [4, 3, 2], or {per_date} "
                             f"such as ({', '.join(['[1, 2, 3]', '[3, 2, 1]', *['[1, 2, 3]'] * (n_dates - 2)])}); "
                             f"got {indexes!r}")
        if lists and len(indexes) != n_dates:
            raise InputError(
                f"--indexes gives {len(indexes)} lists of bands for {n_dates} rasters: give one list for every date, "
                f"or one list per raster, in the order the rasters are given ({n_dates} lists; on the command line "
                f"separated by ':', such as {':'.join(['1,2,3', '3,2,1', *['1,2,3'] * (n_dates - 2)])})")
    for name, value, (low, high), unit in (("tile-size", tile_size, TILE_SIZE_RANGE, "pixels per tile side"),
                                           ("batch-size", batch_size, BATCH_SIZE_RANGE, "tiles per forward pass")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or not low <= value <= high):
            raise InputError(f"--{name} must be a whole number from {low} to {high} ({unit}), got {value!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0:
        raise InputError(f"--overlap must be a whole number of pixels >= 0, got {overlap!r}")
    if isinstance(tile_size, numbers.Integral) and not isinstance(tile_size, bool) and overlap >= tile_size:
        raise InputError(f"--overlap {overlap} must be smaller than --tile-size {tile_size} (tiles overlap by a "
                         "part of themselves); the default 32 suits tiles of 512")
    if blend not in BLENDS:
        raise InputError(f"unknown --blend {blend!r}; choose one of {', '.join(BLENDS)}")
    if geojson_crs is not None:
        from pyproj import CRS as ProjCRS

        try:
            ProjCRS.from_user_input(geojson_crs)
        except Exception as exc:  # noqa: BLE001 - rasterio's and PROJ's errors alike mean: not a CRS
            raise InputError(
                f"--geojson-crs {geojson_crs!r} is not a coordinate reference system ({exc}); give e.g. EPSG:4326 "
                "(the GeoJSON standard's) or EPSG:32631"
            ) from None
    if device is not None:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"--device {device!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device} requested but CUDA is not available here; use --device cpu")
