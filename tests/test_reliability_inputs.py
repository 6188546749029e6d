"""Bad-input matrix: every case through the Python API (``changedet.detect`` / ``check_pair``) and the CLI.

Each failing case asserts the error class, the CLI exit code, that the message names the file and the fix, and that
no output file is left behind (the output folder holds nothing, or only the hidden ``.changedet-partial/`` resume
folder). Each case that must work asserts its warning and what the outputs hold.

Decision for an overlap smaller than one tile: it works. The tile shrinks to the common grid (rounded up to the
model's ``required_multiple`` and padded by reflection/replication), and a ``PairWarning`` says how little of BEFORE
is compared (``covers 0.038% of before.tif``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from changedet import check_pair, detect
from changedet.cli.main import cli
from changedet.errors import (
    CheckpointError,
    InputError,
    InputRangeWarning,
    NoOverlapError,
    NotGeoreferencedError,
    NothingToCompareWarning,
    OutputError,
    OutputExistsError,
    PairMismatchError,
    PairWarning,
    RasterReadError,
    ReprojectedInputWarning,
    UnknownModelError,
)
from changedet.testing import make_geotiff, make_pair

VISIBLE_OUTPUTS = ("probability.tif", "change.tif", "changes.gpkg", "changes.geojson", "report.json")
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def assert_nothing_left(out: Path) -> None:
    """No output and no temporary file in ``out``: only the documented hidden resume folder may remain."""
    if not out.exists():
        return
    left = sorted(p.name for p in out.iterdir())
    assert set(left) <= {".changedet-partial"}, f"left behind in {out}: {left}"


def tiny_checkpoint(folder: Path, bands: int, *, name: str = "tiny", normalization: dict | None = None) -> Path:
    """A small saved fc-siam-diff checkpoint (random weights: only loading and shapes matter here)."""
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=bands)
    meta = CheckpointMeta(band_names=[f"B{i + 1}" for i in range(bands)], pixel_size=10.0, threshold=0.5, name=name,
                          normalization=normalization or {"mode": "scene", "mean": [], "std": []})
    return save_checkpoint(model, folder / name, meta)


def run_cli(*args: Any) -> Any:
    """The CLI in this process (click's CliRunner): fast, but warnings go to pytest, not to stderr."""
    return CliRunner().invoke(cli, ["-q", *(str(a) for a in args)], catch_exceptions=False)


def run_changedet(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed ``changedet`` command in a subprocess (warnings printed on stderr as a user sees them)."""
    exe = Path(sys.executable).with_name("changedet")
    return subprocess.run([str(exe), "-q", *(str(a) for a in args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def api_detect(before: Path, after: Path, out: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("method", "cva")
    return detect(before, after, output_dir=out, quicklook=False, **kwargs)


def indexes_arg(indexes: list) -> str:
    """``[1, 2, 3]`` -> ``1,2,3``; ``[[1, 2], [2, 1]]`` -> ``1,2:2,1``."""
    if isinstance(indexes[0], list):
        return ":".join(",".join(map(str, v)) for v in indexes)
    return ",".join(map(str, indexes))


def cli_options(kwargs: dict[str, Any]) -> list[str]:
    """The CLI options equivalent to the keyword arguments of :func:`changedet.detect` used here."""
    args: list[str] = ["--no-quicklook"]
    for key, value in kwargs.items():
        opt = "--" + key.replace("_", "-")
        if key == "indexes":
            value = indexes_arg(value)
        args += [opt, str(value)]
    if "method" not in kwargs:
        args += ["--method", "cva"]
    return args


# ---------------------------------------------------------------------------------------------------------------
# the failing cases
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    build: Callable[[Path], tuple[Path, Path, dict[str, Any]]]
    error: type[Exception]
    exit_code: int
    patterns: list[str] = field(default_factory=list)  # regexes the message must match (file, finding, fix)
    check_pair_too: bool = True


def _aligned(tmp: Path, **kw: Any) -> tuple[Path, Path]:
    return make_pair(tmp / "pair", "aligned", size=64, **kw)


def _empty(tmp: Path) -> tuple[Path, Path, dict]:
    before, _ = _aligned(tmp)
    after = tmp / "empty.tif"
    after.write_bytes(b"")
    return before, after, {}


def _truncated(tmp: Path) -> tuple[Path, Path, dict]:
    before, after = make_pair(tmp / "pair", "corrupt", size=64)
    return before, after, {}


def _text(tmp: Path) -> tuple[Path, Path, dict]:
    before, _ = _aligned(tmp)
    after = tmp / "notes.tif"
    after.write_text("<!-- saved from a browser -->\nthis is not a raster\n")
    return before, after, {}


def _directory(tmp: Path) -> tuple[Path, Path, dict]:
    before, _ = _aligned(tmp)
    after = tmp / "scene_folder"
    after.mkdir()
    return before, after, {}


def _no_crs_one_date(tmp: Path) -> tuple[Path, Path, dict]:
    before, after = make_pair(tmp / "pair", "no-crs", size=64)
    return before, after, {}


def _no_overlap(tmp: Path) -> tuple[Path, Path, dict]:
    before, _ = _aligned(tmp)
    arr = np.random.default_rng(0).integers(1, 3000, (3, 64, 64)).astype("uint16")
    # Web Mercator, around (0, 0): nowhere near BEFORE (UTM 31N, northern Europe)
    after = make_geotiff(tmp / "far.tif", arr, crs="EPSG:3857", origin=(0.0, 0.0), res=10)
    return before, after, {}


def _band_mismatch(tmp: Path) -> tuple[Path, Path, dict]:
    before, after = make_pair(tmp / "pair", "band-mismatch", size=64)
    return before, after, {}


def _band_index_out_of_range(tmp: Path) -> tuple[Path, Path, dict]:
    before, after = make_pair(tmp / "pair", "band-mismatch", size=64)
    return before, after, {"indexes": [1, 2, 5]}


def _checkpoint_bands(tmp: Path) -> tuple[Path, Path, dict]:
    before, after = _aligned(tmp)
    ckpt = tiny_checkpoint(tmp, 4, name="four_band")
    return before, after, {"method": "model", "model": str(ckpt)}


def _unknown_model(tmp: Path) -> tuple[Path, Path, dict]:
    before, after = _aligned(tmp)
    return before, after, {"method": "model", "model": "resnet-9000"}


def _gigantic_header(tmp: Path) -> tuple[Path, Path, dict]:
    before, _ = _aligned(tmp)
    after = gigantic_geotiff(tmp / "huge.tif")
    return before, after, {}


def gigantic_geotiff(path: Path) -> Path:
    """A valid GeoTIFF of 2**20 x 2**20 pixels whose tiles are all sparse: a 50 kB file, a 1 TB header."""
    with rasterio.open(path, "w", driver="GTiff", width=2**20, height=2**20, count=1, dtype="uint8", tiled=True,
                       blockxsize=16384, blockysize=16384, sparse_ok=True, crs="EPSG:32631",
                       transform=rasterio.transform.from_origin(500000, 5700000, 10, 10)):
        pass
    assert path.stat().st_size < 1_000_000
    return path


FAILING = [
    Case("empty-file", _empty, RasterReadError, 2, [r"empty\.tif", r"empty \(0 bytes\)", r"Re-download or re-export"]),
    Case("truncated-geotiff", _truncated, RasterReadError, 2,
         [r"after\.tif", r"truncated or corrupt", r"[Rr]e-download or re-export"]),
    Case("text-named-tif", _text, RasterReadError, 2,
         [r"notes\.tif", r"not a raster format", r"text starting with", r"re-download or re-export"]),
    Case("directory-as-raster", _directory, RasterReadError, 2,
         [r"scene_folder", r"is a directory", r"changedet stack"]),
    Case("no-crs-one-date", _no_crs_one_date, NotGeoreferencedError, 2,
         [r"after\.tif: has no georeferencing", r"before\.tif has \(EPSG:32631\)", r"Georeference it"]),
    Case("no-overlap", _no_overlap, NoOverlapError, 2,
         [r"do not overlap", r"BEFORE bounds \(500000, 5\.69936e\+06, 500640, 5\.7e\+06\) in EPSG:32631",
          r"AFTER bounds \(0, -640, 640, 0\) in EPSG:3857", r"in BEFORE's CRS",
          r"Check that the two files cover the same place"]),
    Case("band-count-mismatch", _band_mismatch, PairMismatchError, 2,
         [r"after\.tif: 4 band\(s\) but before\.tif has 3", r"--indexes 1,2,3"]),
    Case("band-index-out-of-range", _band_index_out_of_range, PairMismatchError, 2,
         [r"before\.tif: band index \[5\] out of range; it has 3 band\(s\)", r"1-based"]),
    Case("checkpoint-bands", _checkpoint_bands, CheckpointError, 2,
         [r"before\.tif: has 3 bands", r"expects 4", r"--indexes with 4"], check_pair_too=False),
    Case("unknown-model", _unknown_model, UnknownModelError, 2,
         [r"unknown model 'resnet-9000'", r"fc-siam-diff", r"changedet models"], check_pair_too=False),
    Case("gigantic-header", _gigantic_header, RasterReadError, 2,
         [r"huge\.tif", r"1048576 x 1048576 pixels", r"CHANGEDET_MAX_SAMPLES"]),
]


@pytest.mark.parametrize("case", FAILING, ids=[c.id for c in FAILING])
def test_bad_input_api(case: Case, tmp_path: Path) -> None:
    before, after, kwargs = case.build(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(case.error) as info:
        api_detect(before, after, out, **kwargs)
    for pattern in case.patterns:
        assert info.match(pattern), f"{pattern!r} not in {info.value}"
    assert info.value.exit_code == case.exit_code
    assert not out.exists(), "a failed run must not leave the output folder it created"
    if case.check_pair_too:  # the same problem, collected (not raised) by check_pair
        indexes = kwargs.get("indexes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = check_pair(before, after, indexes=indexes, estimate_shift=False)
        assert not report.ok
        assert report.problem_classes[0] is case.error
        text = " ".join(report.problems)
        for pattern in case.patterns:
            assert re.search(pattern, text), (pattern, text)


@pytest.mark.parametrize("case", FAILING, ids=[c.id for c in FAILING])
def test_bad_input_cli(case: Case, tmp_path: Path) -> None:
    before, after, kwargs = case.build(tmp_path)
    out = tmp_path / "out"
    res = run_cli("detect", before, after, "-o", out, *cli_options(kwargs))
    assert res.exit_code == case.exit_code, res.output
    assert res.stderr.startswith("error: "), res.stderr
    message = " ".join(res.stderr.split())  # the message as one line (terminal wrapping aside)
    for pattern in case.patterns:
        assert re.search(pattern, message), (pattern, res.stderr)
    assert "Traceback" not in res.output
    assert not out.exists()
    if case.check_pair_too:
        extra = ["--indexes", indexes_arg(kwargs["indexes"])] if "indexes" in kwargs else []
        res = run_cli("check", before, after, *extra)
        assert res.exit_code == 1, res.output
        assert "NOT OK" in res.stdout or "NOT OK" in res.output


def test_output_path_that_is_a_file_is_an_input_error(tmp_path: Path) -> None:
    before, after = _aligned(tmp_path)
    target = tmp_path / "results"
    target.write_text("keep me")
    with pytest.raises(InputError, match=r"results: exists and is not a folder; give a folder path"):
        api_detect(before, after, target)
    res = run_cli("detect", before, after, "-o", target, "--method", "cva")
    assert res.exit_code == 2 and "is not a folder" in res.stderr
    assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------------
# existing outputs, read-only folder
# ---------------------------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_existing_output_without_overwrite_changes_nothing(tmp_path: Path) -> None:
    before, after = _aligned(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "change.tif").write_bytes(b"an older result")
    (out / "report.json").write_text('{"older": true}')
    (out / "notes.txt").write_text("the user's own file")
    snap = _snapshot(out)
    with pytest.raises(OutputExistsError, match=r"change\.tif, report\.json already exist\(s\); pass --overwrite"):
        api_detect(before, after, out)
    assert _snapshot(out) == snap
    res = run_cli("detect", before, after, "-o", out, "--method", "cva")
    assert res.exit_code == 2
    assert "already exist(s); pass --overwrite" in res.stderr
    assert _snapshot(out) == snap
    # and with --overwrite the outputs are replaced, the user's own file kept
    res = run_cli("detect", before, after, "-o", out, "--method", "cva", "--no-quicklook", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert json.loads((out / "report.json").read_text())["changedet_version"]
    with rasterio.open(out / "change.tif") as ds:
        assert ds.shape == (64, 64)


_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _drop_capabilities() -> None:  # pragma: no cover - runs in the child, before exec
    """Empty the capability bounding set: the child stays uid 0 but without CAP_DAC_OVERRIDE, so file modes
    apply to it (root ignores chmod otherwise)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; numbers past the last capability fail harmlessly


def _run_without_privileges(args: list[str]) -> subprocess.CompletedProcess:
    """Run a command for which a read-only folder is read-only (as root: without capabilities)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          preexec_fn=_drop_capabilities if _AS_ROOT else None)


@pytest.fixture
def read_only_setup(tmp_path: Path) -> Any:
    """BEFORE/AFTER and a read-only (mode 555) output folder."""
    before, after = make_pair(tmp_path / "pair", "aligned", size=64)
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    yield before, after, ro
    ro.chmod(0o755)


def test_read_only_output_folder_cli(read_only_setup: Any) -> None:
    before, after, ro = read_only_setup
    changedet = str(Path(sys.executable).with_name("changedet"))
    for out in (ro, ro / "sub"):  # the folder itself, and a folder to create inside it
        res = _run_without_privileges([changedet, "-q", "detect", str(before), str(after), "-o", str(out),
                                       "--method", "cva", "--no-quicklook"])
        assert res.returncode == 1, res.stderr
        assert f"error: {out}: cannot write there" in res.stderr
        assert "choose a writable output folder" in res.stderr
        assert "Traceback" not in res.stderr
        assert sorted(os.listdir(ro)) == []


def test_read_only_output_folder_api(read_only_setup: Any) -> None:
    before, after, ro = read_only_setup
    code = (
        "import json, sys\n"
        "from changedet import detect\n"
        "from changedet.errors import ChangedetError\n"
        "try:\n"
        f"    detect({str(before)!r}, {str(after)!r}, method='cva', output_dir={str(ro)!r}, quicklook=False)\n"
        "except ChangedetError as exc:\n"
        "    print(json.dumps([type(exc).__name__, str(exc), exc.exit_code, isinstance(exc, OSError)]))\n"
    )
    if not _AS_ROOT:  # chmod is effective: run in this process
        with pytest.raises(OutputError, match=r"cannot write there .*choose a writable output folder") as info:
            api_detect(before, after, ro)
        assert info.value.exit_code == 1
    else:
        res = _run_without_privileges([sys.executable, "-c", code])
        assert res.returncode == 0, res.stderr
        name, message, exit_code, is_oserror = json.loads(res.stdout.strip().splitlines()[-1])
        assert name == OutputError.__name__ and exit_code == 1 and is_oserror
        assert message.startswith(f"{ro}: cannot write there") and "choose a writable output folder" in message
    assert sorted(os.listdir(ro)) == []


# ---------------------------------------------------------------------------------------------------------------
# cases that must work
# ---------------------------------------------------------------------------------------------------------------
def test_crs_mismatch_is_reprojected_with_a_warning(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path / "pair", "other-crs", size=64)
    with pytest.warns(ReprojectedInputWarning, match=r"after\.tif: CRS EPSG:32632 differs from before\.tif "
                                                     r"\(EPSG:32631\).*resampled \(bilinear\) onto the before\.tif grid"):
        result = api_detect(before, after, tmp_path / "api")
    assert result.report["grid"]["crs"] == "EPSG:32631"
    assert result.report["alignment"]["resampled"] is True
    res = run_changedet("detect", before, after, "-o", tmp_path / "cli", "--method", "cva", "--no-quicklook")
    assert res.returncode == 0, res.stderr
    assert "warning: after.tif: CRS EPSG:32632 differs" in res.stderr
    with rasterio.open(tmp_path / "cli" / "change.tif") as ds:
        assert ds.crs.to_epsg() == 32631 and ds.shape == (64, 64)


@pytest.mark.parametrize("indexes", [[1, 2, 3], [[1, 2, 3], [2, 3, 4]]], ids=["same", "before:after"])
def test_band_count_mismatch_works_with_indexes(tmp_path: Path, indexes: list) -> None:
    before, after = make_pair(tmp_path / "pair", "band-mismatch", size=64)
    result = api_detect(before, after, tmp_path / "api", indexes=indexes)
    want = indexes if isinstance(indexes[0], list) else [indexes, indexes]
    assert result.report["alignment"]["indexes"] == {"before": want[0], "after": want[1]}
    res = run_cli("detect", before, after, "-o", tmp_path / "cli", *cli_options({"indexes": indexes}))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["alignment"]["indexes"] == {"before": want[0], "after": want[1]}
    with rasterio.open(tmp_path / "api" / "probability.tif") as a, rasterio.open(tmp_path / "cli" / "probability.tif") as c:
        np.testing.assert_array_equal(a.read(), c.read())


def test_checkpoint_with_indexes_selecting_its_bands_works(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path / "pair", "aligned", size=64, bands=4)
    ckpt = tiny_checkpoint(tmp_path, 3)
    result = api_detect(before, after, tmp_path / "api", method="model", model=str(ckpt), indexes=[4, 3, 2])
    assert result.report["alignment"]["indexes"]["before"] == [4, 3, 2]
    res = run_cli("detect", before, after, "-o", tmp_path / "cli", "--model", ckpt, "--indexes", "4,3,2",
                  "--no-quicklook")
    assert res.exit_code == 0, res.output


def _nan_inf_pair(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    base = (0.2 + 0.05 * rng.standard_normal((3, 64, 64))).astype("float32")
    after = base.copy()
    after[:, :8, :] = np.nan  # a NaN strip
    after[1, 20:30, 20:30] = np.inf  # one band infinite
    after[0, 40:44, 40:44] = -np.inf
    before = base.copy()
    before[2, 50:52, 0:5] = np.nan
    return make_geotiff(tmp / "before.tif", before), make_geotiff(tmp / "after.tif", after)


def _assert_nan_inf_outputs(out: Path) -> None:
    with rasterio.open(out / "change.tif") as m, rasterio.open(out / "probability.tif") as p:
        mask, prob = m.read(1), p.read(1)
        assert m.nodata == 255 and p.nodata == -1
    invalid = np.zeros((64, 64), bool)
    invalid[:8, :] = invalid[20:30, 20:30] = invalid[40:44, 40:44] = invalid[50:52, 0:5] = True
    assert (mask[invalid] == 255).all() and (prob[invalid] == -1).all()
    assert set(np.unique(mask[~invalid])) <= {0, 1}
    assert np.isfinite(prob).all() and (prob[~invalid] >= 0).all() and (prob[~invalid] <= 1).all()
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["valid_pixels"] == int((~invalid).sum())


@pytest.mark.parametrize("method", ["cva", "model"])
def test_nan_and_inf_pixels_are_nodata_in_the_outputs(tmp_path: Path, method: str) -> None:
    before, after = _nan_inf_pair(tmp_path)
    kwargs: dict[str, Any] = {"method": method}
    if method == "model":
        kwargs["model"] = str(tiny_checkpoint(tmp_path, 3))
    api_detect(before, after, tmp_path / "api", **kwargs)
    _assert_nan_inf_outputs(tmp_path / "api")
    res = run_cli("detect", before, after, "-o", tmp_path / "cli", *cli_options(kwargs))
    assert res.exit_code == 0, res.output
    _assert_nan_inf_outputs(tmp_path / "cli")


def test_all_nodata_pair_is_an_empty_result_through_the_cli(tmp_path: Path) -> None:
    zeros = np.zeros((3, 64, 64), "uint16")
    before = make_geotiff(tmp_path / "before.tif", zeros, nodata=0)
    after = make_geotiff(tmp_path / "after.tif", zeros, nodata=0)
    with pytest.warns(NothingToCompareWarning, match=r"nothing to compare"):
        result = api_detect(before, after, tmp_path / "api")
    assert result.report["summary"]["nothing_to_compare"] is True and len(result.polygons) == 0
    res = run_changedet("detect", before, after, "-o", tmp_path / "cli", "--method", "cva", "--no-quicklook", "--json")
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr and "nothing to compare" in res.stderr
    report = json.loads(res.stdout)
    assert report["summary"]["nothing_to_compare"] is True and report["summary"]["n_polygons"] == 0
    assert len(gpd.read_file(tmp_path / "cli" / "changes.gpkg", layer="changes")) == 0
    with rasterio.open(tmp_path / "cli" / "change.tif") as ds:
        assert (ds.read(1) == 255).all()


def _tiny_overlap_pair(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    before = make_geotiff(tmp / "before.tif", rng.integers(1, 3000, (3, 256, 256)).astype("uint16"))
    # AFTER's upper-left corner lies 251 px right and down of BEFORE's: a 5 x 5 px common grid
    after = make_geotiff(tmp / "after.tif", rng.integers(1, 3000, (3, 256, 256)).astype("uint16"),
                         origin=(500000 + 2510, 5700000 - 2510))
    return before, after


@pytest.mark.parametrize("method", ["cva", "model"])
def test_overlap_smaller_than_one_tile_works(tmp_path: Path, method: str) -> None:
    before, after = _tiny_overlap_pair(tmp_path)
    kwargs: dict[str, Any] = {"method": method, "tile_size": 128}
    if method == "model":
        kwargs["model"] = str(tiny_checkpoint(tmp_path, 3))
    with pytest.warns(PairWarning, match=r"after\.tif covers 0\.038% of before\.tif; only the common extent "
                                         r"\(5 x 5 px of 256 x 256\)"):
        result = api_detect(before, after, tmp_path / "api", **kwargs)
    assert result.report["summary"]["valid_pixels"] == 25
    with rasterio.open(tmp_path / "api" / "probability.tif") as ds:
        assert ds.shape == (5, 5)
        assert ds.transform.c == 500000 + 2510 and ds.transform.f == 5700000 - 2510
        prob = ds.read(1)
        assert ((prob >= 0) & (prob <= 1)).all()
    res = run_changedet("detect", before, after, "-o", tmp_path / "cli", *cli_options(kwargs))
    assert res.returncode == 0, res.stderr
    assert "covers 0.038% of before.tif" in res.stderr


def _bright_uint16_pair(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    arr = rng.integers(55000, 65535, (3, 64, 64)).astype("uint16")  # e.g. 16-bit DNs where reflectance x 1e4 was used
    before = make_geotiff(tmp / "before.tif", arr)
    after = make_geotiff(tmp / "after.tif", np.maximum(arr, 60000).astype("uint16"))
    return before, after


def test_values_beyond_a_fixed_checkpoints_training_range_warn_naming_the_bands(tmp_path: Path) -> None:
    before, after = _bright_uint16_pair(tmp_path)
    norm = {"mode": "fixed", "mean": [1500.0, 1500.0, 60000.0], "std": [400.0, 400.0, 3000.0]}
    ckpt = tiny_checkpoint(tmp_path, 3, name="s2-fixed", normalization=norm)
    with pytest.warns(InputRangeWarning) as caught:
        result = api_detect(before, after, tmp_path / "api", method="model", model=str(ckpt))
    messages = [str(w.message) for w in caught if issubclass(w.category, InputRangeWarning)]
    assert len(messages) == 2  # one per date
    assert messages[0].startswith(str(before)) and messages[1].startswith(str(after))
    for msg in messages:
        assert "B1 mean" in msg and "B2 mean" in msg and "B3 mean" not in msg  # B3 was trained on that range
        assert "trained on 1500 +/- 400" in msg and "check the units and scaling" in msg
    assert result.report["model"]["out_of_training_range"] == {"before": ["B1", "B2"], "after": ["B1", "B2"]}
    res = run_changedet("detect", before, after, "-o", tmp_path / "cli", "--model", ckpt, "--no-quicklook")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("values far outside the statistics the model s2-fixed was trained on") == 2


def test_values_beyond_range_with_a_scene_normalised_checkpoint_do_not_crash(tmp_path: Path) -> None:
    """A "scene" checkpoint records no training statistics: each date is z-scored with its own, so no warning."""
    before, after = _bright_uint16_pair(tmp_path)
    ckpt = tiny_checkpoint(tmp_path, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        result = api_detect(before, after, tmp_path / "api", method="model", model=str(ckpt))
    stats = result.report["model"]["scene_stats"]
    assert min(stats["before_mean"]) > 55000  # recorded in report.json for diagnosis
    assert "out_of_training_range" not in result.report["model"]
    with rasterio.open(tmp_path / "api" / "probability.tif") as ds:
        prob = ds.read(1)
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


def test_reports_name_inputs_by_their_full_path(tmp_path: Path) -> None:
    """Paths given as pathlib.Path (as the CLI does) keep their folder in report.json."""
    before, after = _aligned(tmp_path)
    result = api_detect(before, after, tmp_path / "out")
    assert result.report["inputs"]["before"]["source"] == str(before)
    assert result.report["inputs"]["after"]["path"] == str(after.resolve())


def test_cli_runs_from_another_working_directory(tmp_path: Path) -> None:
    before, after = _aligned(tmp_path)
    res = run_changedet("detect", before, after, "-o", tmp_path / "out", "--method", "cva", "--no-quicklook",
                        "--qgis-project", cwd=Path(tempfile.gettempdir()))
    assert res.returncode == 0, res.stderr
    project = (tmp_path / "out" / "project.qgs").read_text()
    assert "before.tif" in project and "after.tif" in project
