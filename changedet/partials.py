"""The resumable outputs of the streaming engines: partial files, their conversion to COGs, and the row journal.

:class:`StripWriter` writes row blocks of a single-band raster into a temporary tiled GeoTIFF in the partial folder
and converts it into a Cloud-Optimised GeoTIFF when complete; :class:`_Journal` records which rows are final, and
:func:`_input_fingerprint` what identifies the inputs, so that an interrupted :func:`changedet.inference.predict_pair`
run can resume with the same result. Re-exported by :mod:`changedet.inference`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL errors that are not RasterioError (e.g. a truncated file)
from rasterio.windows import Window

log = logging.getLogger("changedet.inference")  # the engine's logger: its resume messages keep their source name

__all__ = ["StripWriter"]


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


def _input_fingerprint(pair: Any) -> list[Any]:
    """What identifies a pair's inputs for a resume: each file's path, size and modification time (when it is a
    local file), the grid, the bands read, how AFTER is resampled, and the corrections applied to it (the
    co-registration shift of ``--coregister`` and the fitted ``--match-histograms`` mapping)."""
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
    indexes = getattr(pair, "indexes", None)
    shift = getattr(pair, "shift", None)
    matcher = getattr(pair, "_matcher", None)
    resampling = getattr(pair, "_resampling", None)
    parts.append({
        "indexes": [[int(i) for i in idx] for idx in indexes] if indexes else None,
        "resampling": None if resampling is None else str(getattr(resampling, "name", resampling)),
        "shift": None if shift is None else [float(shift.dy), float(shift.dx)],
        "match_histograms": None if matcher is None else _digest(
            getattr(matcher, "source_quantiles", None), getattr(matcher, "target_quantiles", None)),
    })
    return parts


def _digest(*values: Any) -> str:
    """A SHA-256 of arrays, tensors, nested lists of them and JSON-able values (for the resume signature)."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            h.update(b"[%d" % len(v))
            for x in v:
                feed(x)
            h.update(b"]")
        elif isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            h.update(f"a{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        elif hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor (any dtype, bfloat16 included)
            import torch

            t = v.detach().cpu().reshape(-1).contiguous()
            h.update(f"t{t.dtype}{tuple(v.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps(v, sort_keys=True, default=str).encode())

    feed(list(values))
    return h.hexdigest()


def _predictor_fingerprint(predictor: Any) -> dict[str, Any]:
    """What identifies a predictor for a resume: everything that changes the probabilities it gives.

    Its name, test-time augmentation, and for a network (:class:`~changedet.predictors.TorchPredictor`) the
    precision, the device type, a digest of the weights (two checkpoints of one architecture share a name) and of
    the normalisation statistics; for a fitted scorer (:class:`~changedet.predictors.ScorerPredictor`) a digest of
    its parameters and fitted statistics.
    """
    fp: dict[str, Any] = {"name": str(getattr(predictor, "name", type(predictor).__name__)),
                          "tta": str(getattr(predictor, "tta", "none"))}
    model = getattr(predictor, "model", None)
    if model is not None and hasattr(model, "state_dict"):
        fp["dtype"] = str(getattr(predictor, "dtype", None))
        device = getattr(predictor, "device", None)
        fp["device"] = str(getattr(device, "type", device))
        fp["weights"] = _digest(*(item for kv in sorted(model.state_dict().items()) for item in kv))
        fp["normalization"] = _digest(*(getattr(predictor, k, None) for k in ("_mb", "_sb", "_ma", "_sa")))
    scorer = getattr(predictor, "scorer", None)
    if scorer is not None:
        to_dict = getattr(scorer, "to_dict", None)
        fp["scorer"] = _digest(type(scorer).__qualname__, to_dict() if callable(to_dict) else repr(scorer))
    return fp


class _Journal:
    """Which rows of the outputs are final, kept next to the partial files so an interrupted run can resume."""

    def __init__(self, path: Path, signature: dict[str, Any]) -> None:
        self.path = path
        self.signature = json.loads(json.dumps(signature))  # as load() reads it back (tuples become lists)
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
