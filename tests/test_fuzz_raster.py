"""Fuzzing the raster-opening front: mutated GeoTIFF/COG/VRT bytes through ``open_raster`` + ``raster_info`` + a
window read must raise nothing but a :class:`~changedet.errors.ChangedetError` (warnings are fine).

The run is deterministic (fixed seeds), bounded (a few hundred cases, a few seconds) and isolated: it runs in a child
process with an address-space limit, so a crash or a runaway allocation in GDAL fails this test instead of the test
session. Cases that fail are written next to the test's tmp folder for reproduction. What the fuzzer found and
changedet now handles: an undecodable CRS/metadata text (UnicodeDecodeError from rasterio), a strip or tile of
gigabytes declared by a damaged header (a whole-block read allocated it), and an open-time probe that read whole
blocks (now a corner of at most 256 x 256 pixels).
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses resource limits")

MUTATIONS = ("flip", "truncate", "header", "zero", "ff", "ifd")


# ---------------------------------------------------------------------------------------------------------------
# seeds and mutations (also used by the child process)
# ---------------------------------------------------------------------------------------------------------------
def make_seeds(folder: Path) -> list[Path]:
    """Small valid rasters of different layouts: tiled DEFLATE GeoTIFF, striped LZW float, COG, VRT."""
    from changedet.io import write_cog
    from changedet.testing import make_geotiff

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds = [make_geotiff(folder / "tiled.tif", rng.integers(0, 3000, (3, 64, 64)).astype("uint16"), nodata=0,
                          tags={"ACQUISITION_DATE": "2019-05-01"}, descriptions=["B2", "B3", "B4"])]
    striped = folder / "striped.tif"
    with rasterio.open(striped, "w", driver="GTiff", width=50, height=40, count=2, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(5, 45, 0.001, 0.001), compress="lzw") as ds:
        ds.write(rng.random((2, 40, 50)).astype("float32"))
    seeds.append(striped)
    seeds.append(write_cog(folder / "cog.tif", rng.random((1, 300, 260)).astype("float32"), crs="EPSG:32631",
                           transform=from_origin(500000, 5700000, 10, 10), nodata=-1, blocksize=128))
    vrt = folder / "mosaic.vrt"
    rasterio.shutil.copy(seeds[0], vrt, driver="VRT")
    seeds.append(vrt)
    return seeds


def _tiff_ifd(data: bytearray) -> tuple[int, int] | None:
    """(offset, entry count) of the first IFD of a little-endian classic TIFF, or None."""
    if data[:4] != b"II*\x00" or len(data) < 8:
        return None
    off = struct.unpack("<I", bytes(data[4:8]))[0]
    if off + 2 > len(data):
        return None
    return off, struct.unpack("<H", bytes(data[off:off + 2]))[0]


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random mutation of a file: bit flips, truncation, header bytes, zeroed/0xFF runs, IFD entry values."""
    buf = bytearray(data)
    kind = rng.choice(MUTATIONS)
    ifd = _tiff_ifd(buf)
    if kind == "ifd" and ifd is None:
        kind = "header"
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        buf = buf[: rng.randrange(8, len(buf))]
    elif kind == "header":
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(min(len(buf), 1024))] = rng.randrange(256)
    elif kind in ("zero", "ff"):
        i, n = rng.randrange(min(len(buf), 1024 if kind == "ff" else len(buf))), rng.randint(1, 64)
        buf[i:i + n] = (b"\x00" if kind == "zero" else b"\xff") * len(buf[i:i + n])
    else:  # an IFD entry (width, height, tile size, offsets, counts, GeoKeys...) set to an extreme value
        assert ifd is not None
        off, n = ifd
        for _ in range(rng.randint(1, 3)):
            e = off + 2 + 12 * rng.randrange(max(1, n))
            if e + 12 > len(buf):
                continue
            value = rng.choice([0, 1, 3, 255, 65535, 2**20, 2**31 - 1, 2**32 - 1, rng.randrange(2**32)])
            how = rng.random()
            if how < 0.5:  # as a LONG, so that it can exceed 65535
                buf[e + 2:e + 12] = struct.pack("<HII", 4, 1, value)
            elif how < 0.8:
                buf[e + 8:e + 12] = struct.pack("<I", value)
            else:
                buf[e + 4:e + 8] = struct.pack("<I", value)
    return bytes(buf), kind


def exercise(path: Path) -> None:
    """The raster-opening front: validated open, header metadata, windows at both corners."""
    from rasterio.windows import Window

    from changedet.io import open_raster, raster_info, read_window

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_raster(path) as ds:
            info = raster_info(ds)
            json.dumps(info.to_dict(), default=str)
            w, h = min(16, ds.width), min(16, ds.height)
            read_window(ds, Window(0, 0, w, h))
            read_window(ds, Window(ds.width - w, ds.height - h, w, h), out_dtype="float32")


def run_fuzz(folder: Path, n: int, seed: int, keep: Path) -> dict[str, Any]:
    """Run ``n`` mutated files; return outcome counts, unexpected exceptions and the slowest case."""
    from changedet.errors import ChangedetError

    seeds = make_seeds(folder / "seeds")
    originals = [p.read_bytes() for p in seeds]
    rng = random.Random(seed)
    outcomes = {"ok": 0, "changedet_error": 0}
    unexpected: list[dict[str, Any]] = []
    slowest = (0.0, "")
    for i in range(n):
        k = i % len(seeds)
        data, kind = mutate(originals[k], rng)
        path = folder / f"case{seeds[k].suffix}"
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            exercise(path)
            outcomes["ok"] += 1
        except ChangedetError:
            outcomes["changedet_error"] += 1
        except BaseException as exc:  # noqa: BLE001 - what the fuzzer looks for
            saved = keep / f"fuzz_{seed}_{i}{seeds[k].suffix}"
            saved.write_bytes(data)
            unexpected.append({"case": i, "seed_file": seeds[k].name, "mutation": kind,
                               "error": f"{type(exc).__name__}: {exc}"[:300], "saved": str(saved)})
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest = (dt, f"case {i} ({seeds[k].name}, {kind})")
    return {"outcomes": outcomes, "unexpected": unexpected, "slowest": slowest}


_CHILD = r"""
import json, resource, sys
from pathlib import Path
limit = int(sys.argv[5])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, sys.argv[1])
from test_fuzz_raster import run_fuzz
print(json.dumps(run_fuzz(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[2]))))
"""


@pytest.mark.parametrize("seed", [1234, 2024])
def test_mutated_rasters_raise_only_changedet_errors(tmp_path: Path, seed: int) -> None:
    n = int(os.environ.get("CHANGEDET_FUZZ_CASES", "300"))
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(Path(__file__).parent), str(tmp_path), str(n), str(seed), str(4 << 30)],
        capture_output=True, text=True, timeout=600,
    )
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, f"the fuzz child died (crash or memory): rc {res.returncode}\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["unexpected"] == [], json.dumps(report["unexpected"], indent=1)
    outcomes = report["outcomes"]
    assert sum(outcomes.values()) == n
    assert outcomes["changedet_error"] > n // 10 and outcomes["ok"] > n // 20  # the mutations bite, not all fatal
    assert report["slowest"][0] < 30, report["slowest"]  # no case hangs on a gigantic declared block
    assert elapsed < 300


def test_mutation_is_deterministic(tmp_path: Path) -> None:
    seeds = make_seeds(tmp_path)
    data = seeds[0].read_bytes()
    first = [mutate(data, r)[0] for r in [random.Random(5)] for _ in range(20)]
    second = [mutate(data, r)[0] for r in [random.Random(5)] for _ in range(20)]
    assert first == second and any(m != data for m in first)


def test_the_cases_the_fuzzer_found(tmp_path: Path) -> None:
    """Regression cases, built directly: each is a RasterReadError naming the file, not a crash or a huge read."""
    from changedet.errors import RasterReadError
    from changedet.io import open_raster

    seeds = make_seeds(tmp_path / "seeds")
    # 1. a strip of 20 rows x 826,343,071 columns (the header's width changed): 66 GB for one strip
    data = bytearray(seeds[1].read_bytes())
    off, n = _tiff_ifd(data)  # type: ignore[misc]
    for k in range(n):
        e = off + 2 + 12 * k
        if struct.unpack("<H", bytes(data[e:e + 2]))[0] == 256:  # ImageWidth
            data[e + 2:e + 12] = struct.pack("<HII", 4, 1, 826_343_071)
    wide = tmp_path / "wide.tif"
    wide.write_bytes(bytes(data))
    t0 = time.perf_counter()
    with pytest.raises(RasterReadError, match=r"wide\.tif: the header declares blocks of 826343071 x 20 pixels"):
        open_raster(wide)
    assert time.perf_counter() - t0 < 5
    # 2. tiles of 64 x 1,048,576 pixels for a 64 x 64 image (the header's TileLength changed)
    data = bytearray(seeds[0].read_bytes())
    off, n = _tiff_ifd(data)  # type: ignore[misc]
    for k in range(n):
        e = off + 2 + 12 * k
        if struct.unpack("<H", bytes(data[e:e + 2]))[0] == 323:  # TileLength
            data[e + 2:e + 12] = struct.pack("<HII", 4, 1, 2**20)
    tall = tmp_path / "tall_tiles.tif"
    tall.write_bytes(bytes(data))
    with pytest.raises(RasterReadError, match=r"tall_tiles\.tif: the header declares blocks of 64 x 1048576 pixels"):
        open_raster(tall)
    # 3. a custom CRS whose name is not valid UTF-8 (rasterio raised UnicodeDecodeError while reading the CRS)
    from rasterio.crs import CRS

    crs = CRS.from_wkt(
        'PROJCS["My local grid",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
        'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",4],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'
    )
    bad_crs = tmp_path / "bad_crs.tif"
    with rasterio.open(bad_crs, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=crs,
                       transform=from_origin(500000, 5700000, 10, 10)) as ds:
        ds.write(np.zeros((1, 8, 8), "uint8"))
    raw = bytearray(bad_crs.read_bytes())
    i = raw.find(b"My local grid")
    assert i > 0
    raw[i:i + 3] = b"\xaf\xf4\xaf"
    bad_crs.write_bytes(bytes(raw))
    with pytest.raises(RasterReadError, match=r"bad_crs\.tif: cannot be opened as a raster \('utf-8' codec"):
        open_raster(bad_crs)


def test_block_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet.errors import RasterReadError
    from changedet.io import open_raster

    seeds = make_seeds(tmp_path)
    monkeypatch.setenv("CHANGEDET_MAX_BLOCK_BYTES", "1000")
    with pytest.raises(RasterReadError, match=r"tiled\.tif: the header declares blocks of 64 x 64 pixels \(24,576 "
                                              r"bytes each\), more than the limit of 1,000 bytes.*gdal_translate"):
        open_raster(seeds[0])
    monkeypatch.setenv("CHANGEDET_MAX_BLOCK_BYTES", "lots")
    with pytest.raises(RasterReadError, match=r"CHANGEDET_MAX_BLOCK_BYTES='lots' is not a number"):
        open_raster(seeds[0])
    monkeypatch.delenv("CHANGEDET_MAX_BLOCK_BYTES")
    open_raster(seeds[0]).close()
