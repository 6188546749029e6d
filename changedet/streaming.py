"""The machinery around a streaming engine's main loop (:func:`changedet.inference.predict_pair`,
:func:`changedet.series.engine.predict_series`).

:class:`TileStreams` runs the reader and writer threads (:func:`auto_prefetch` picks how far to read ahead),
:class:`StripBuffers` holds the full-width row strips that tiles are blended into, :class:`RowCursor` says when a
block of rows is final, and :func:`large_allocations` keeps freed tensor memory in glibc's heap while tiles are
predicted. Re-exported by :mod:`changedet.inference`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from changedet.tiling import Tile, TileGrid

__all__ = ["RowCursor", "StripBuffers", "TileStreams", "auto_prefetch", "large_allocations"]


class TileStreams:
    """The reader and writer threads around a streaming engine's main loop (used by
    :func:`~changedet.inference.predict_pair` and :func:`changedet.series.engine.predict_series`).

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
